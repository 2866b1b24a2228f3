"""SSH certificates against a real sshd: they log in, end at their end, and an early
end recalls them through the revocation list the server reads.

Alice asks for the bastion, whose scope grants the server's login user; Bob approves.
The certificates are issued by the service with the CA the test sshd trusts.
"""

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from cryptography.hazmat.primitives import serialization

from breakglass import roles, services
from breakglass.errors import ProviderError
from breakglass.models import AccessRequest, Alert, Grant
from breakglass.providers import krl, provider_for
from tests.conftest import make_target, make_user

from .flows import actions, issued_request, last_event
from .web_helpers import login

Status = AccessRequest.Status
CA_ENV = "BG_TEST_SSHD_CA_KEY"
ALERT_EMAIL = "security@example.com"
REPO = Path(__file__).resolve().parents[1]
provider = provider_for("ssh")


@pytest.fixture(autouse=True)
def empty_revocation_list(sshd):
    """Start every test with nothing recalled on the server."""
    sshd.revoke_nothing()
    Path(f"{sshd.krl}.json").unlink(missing_ok=True)
    yield
    sshd.revoke_nothing()
    Path(f"{sshd.krl}.json").unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def alert_emails(settings):
    settings.BREAKGLASS_ALERT_EMAILS = [ALERT_EMAIL]


@pytest.fixture
def ca_env(sshd, monkeypatch):
    monkeypatch.setenv(CA_ENV, str(sshd.ca_key))


def _bastion(sshd, *, revocation_list_path):
    target = make_target(
        "bastion", "ssh", grants=[sshd.user], approvals=1, ca_env=CA_ENV
    )
    target.revocation_list_path = revocation_list_path
    target.save(update_fields=["revocation_list_path"])
    return target


@pytest.fixture
def bastion(db, sshd, ca_env):
    """A bastion whose servers read the test sshd's revocation list."""
    return _bastion(sshd, revocation_list_path=str(sshd.krl))


@pytest.fixture
def listless_bastion(db, sshd, ca_env):
    """A bastion whose servers read no revocation list."""
    return _bastion(sshd, revocation_list_path="")


def _issue(alice, bob):
    access_request = issued_request(alice, bob)
    assert access_request.status == Status.ACTIVE
    return access_request, Grant.objects.get(request=access_request)


def _reveal(access_request, alice, directory):
    """Reveal the credential and write its key and certificate; return their paths."""
    credential = services.reveal_credential(access_request.pk, actor=alice)
    return _write_credential(credential, directory / f"request-{access_request.pk}")


def _write_credential(credential, key):
    key.write_text(credential["private_key"])
    key.chmod(0o600)
    certificate = key.with_name(key.name + "-cert.pub")
    certificate.write_text(credential["certificate"])
    return key, certificate


def _certificate(path):
    return serialization.load_ssh_public_identity(path.read_bytes())


def _query_list(list_path, certificate):
    """Return what `ssh-keygen -Q` says of the certificate: revoked or not."""
    result = subprocess.run(
        ["ssh-keygen", "-Q", "-f", str(list_path), str(certificate)],
        capture_output=True,
        text=True,
    )
    assert result.returncode in (0, 1), result.stderr
    return "REVOKED" in result.stdout


def _alerted(action):
    event = last_event(action)
    return list(Alert.objects.filter(event=event).values_list("channel", "destination"))


def test_a_certificate_from_the_service_logs_in_and_the_server_names_it(
    alice, bob, bastion, sshd, tmp_path
):
    access_request, grant = _issue(alice, bob)
    key, certificate_path = _reveal(access_request, alice, tmp_path)

    assert sshd.login(key, certificate_path)

    certificate = _certificate(certificate_path)
    login = [
        entry for entry in sshd.accepted_logins() if entry.serial == certificate.serial
    ]
    assert len(login) == 1
    assert login[0].user == sshd.user
    assert f"request {access_request.pk} by alice" in login[0].key_id
    assert login[0].key_id.endswith(f"grant {grant.principal}")
    # Never later than the grant's end, and from the backdate before issuance.
    assert certificate.valid_before == int(grant.expires_at.timestamp())
    assert certificate.valid_after == int(grant.issued_at.timestamp()) - 60
    assert last_event("grant.issued").data["certificate_serial"] == certificate.serial


def test_an_expired_certificate_is_refused(bastion, sshd, ca_env, tmp_path):
    # The server's own clock decides, so this waits out a certificate that
    # lives for two seconds.
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    credential = provider.issue(
        {"kind": "ssh", "ca_key_env": CA_ENV, "grants": [sshd.user]},
        principal="bg_alice_1_0a1b2c3d",
        expires_at=expires_at,
        key_id="breakglass request 1 grant bg_alice_1_0a1b2c3d",
    )
    key, certificate = _write_credential(credential, tmp_path / "short")
    assert sshd.login(key, certificate)

    time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 1)

    assert not sshd.login(key, certificate)
    assert "Certificate invalid: expired" in sshd.log()


def test_an_early_end_recalls_the_certificate_at_once(
    alice, bob, bastion, sshd, tmp_path, django_capture_on_commit_callbacks
):
    access_request, grant = _issue(alice, bob)
    key, certificate_path = _reveal(access_request, alice, tmp_path)
    assert sshd.login(key, certificate_path)

    with django_capture_on_commit_callbacks(execute=False):
        services.request_end(access_request.pk, actor=alice, reason="fixed")
    assert services.end_grant(grant.pk) is True

    certificate = _certificate(certificate_path)
    # Still within its validity: only the revocation list refuses it.
    assert certificate.valid_before > time.time() + 60
    assert _query_list(sshd.krl, certificate_path)
    assert not sshd.login(key, certificate_path)
    assert f"revoked by file {sshd.krl}" in sshd.log()

    access_request.refresh_from_db()
    assert access_request.status == Status.REVOKED
    revoked = last_event("grant.revoked")
    assert revoked.actor == "alice"
    assert revoked.data["certificate_serial"] == certificate.serial
    assert revoked.data["revocation_list_path"] == str(sshd.krl)
    assert "certificate_valid_until" not in revoked.data
    assert _alerted("grant.revoked") == [("email", ALERT_EMAIL)]
    assert "grant.end_requested" not in actions(access_request)

    # A second delivery of the task finds it ended and changes nothing.
    assert services.end_grant(grant.pk) is False
    assert actions(access_request).count("grant.revoked") == 1


def test_the_list_keeps_earlier_recalled_certificates(
    alice, bob, carol, bastion, sshd, tmp_path, django_capture_on_commit_callbacks
):
    # A code is good once: each request gets its own approver.
    erin = make_user("erin", roles.APPROVER, groups=["sre-leads"], totp=True)
    issued = [_issue(alice, approver) for approver in (bob, carol, erin)]
    paths = [_reveal(request, alice, tmp_path) for request, _ in issued]

    for access_request, grant in issued[:2]:
        with django_capture_on_commit_callbacks(execute=False):
            services.request_end(access_request.pk, actor=bob, reason="done")
        assert services.end_grant(grant.pk) is True

    first, second, kept = paths
    assert _query_list(sshd.krl, first[1]) and _query_list(sshd.krl, second[1])
    assert not _query_list(sshd.krl, kept[1])
    assert not sshd.login(*first)
    assert not sshd.login(*second)
    assert sshd.login(*kept)
    assert sorted(krl.recalled_serials(sshd.krl)) == sorted(
        _certificate(path[1]).serial for path in (first, second)
    )


def test_a_failed_publication_is_retried_and_the_grant_stays_active(
    alice, bob, db, sshd, ca_env, tmp_path, django_capture_on_commit_callbacks
):
    missing = tmp_path / "not-yet" / "revoked.krl"
    _bastion(sshd, revocation_list_path=str(missing))
    access_request, grant = _issue(alice, bob)

    with django_capture_on_commit_callbacks(execute=False):
        services.request_end(access_request.pk, actor=alice, reason="done")
    assert services.end_grant(grant.pk) is False

    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE
    failed = last_event("grant.revocation_failed")
    assert "not-yet" in failed.data["error"]
    assert _alerted("grant.revocation_failed") == [("email", ALERT_EMAIL)]
    grant.refresh_from_db()
    assert grant.retry_at is not None

    missing.parent.mkdir()
    with time_machine.travel(grant.retry_at + timedelta(seconds=1)):
        assert services.sweep()["ended"] == 1

    access_request.refresh_from_db()
    assert access_request.status == Status.REVOKED
    assert krl.recalled_serials(missing) == [
        grant.target_snapshot["certificate_serial"]
    ]


def test_an_early_end_without_a_revocation_list_says_the_certificate_stays_valid(
    api, alice, bob, cora, listless_bastion, sshd, tmp_path
):
    access_request, grant = _issue(alice, bob)
    key, certificate = _reveal(access_request, alice, tmp_path)
    valid_until = grant.expires_at.isoformat().replace("+00:00", "Z")

    response = api(alice).post(
        f"/api/v1/requests/{access_request.pk}/revoke/",
        {"reason": "fixed"},
        format="json",
    )
    assert response.status_code == 200, response.data
    assert response.data["status"] == "active"
    assert response.data["revocation"] == {
        "supported": False,
        "note": "This target takes no revocation list: the certificate stays "
        f"valid until {valid_until}, even if access is ended early.",
    }
    assert response.data["end_requested_at"] is not None
    assert services.end_grant(grant.pk) is False

    # Honest: the certificate still works, and nothing claims otherwise.
    assert sshd.login(key, certificate)
    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE
    assert "grant.revoked" not in actions(access_request)
    assert actions(access_request).count("grant.end_requested") == 1
    told = last_event("grant.end_requested")
    assert told.actor == "alice"
    assert told.data["reason"] == "fixed"
    assert told.data["certificate_valid_until"] == grant.expires_at.isoformat()
    assert _alerted("grant.end_requested") == [("email", ALERT_EMAIL)]
    page = login(alice).get(f"/requests/{access_request.pk}/")
    assert page.status_code == 200
    assert "This target takes no revocation list" in page.content.decode()
    assert "being revoked" not in page.content.decode()
    listed = api(cora).get(f"/api/v1/requests/{access_request.pk}/")
    assert listed.data["revocation"]["supported"] is False

    # At its end it expires like any other grant.
    with time_machine.travel(grant.expires_at + timedelta(seconds=1)):
        assert services.sweep()["ended"] == 1
    access_request.refresh_from_db()
    assert access_request.status == Status.EXPIRED
    assert actions(access_request)[-3:] == [
        "grant.end_requested",
        "grant.expired",
        "review.due",
    ]


def test_a_target_with_a_revocation_list_says_so_before_the_end(
    api, alice, bob, bastion
):
    access_request, _ = _issue(alice, bob)

    detail = api(alice).get(f"/api/v1/requests/{access_request.pk}/")

    assert detail.data["revocation"]["supported"] is True
    page = login(alice).get(f"/requests/{access_request.pk}/").content.decode()
    assert "revocation list, which its servers read at every login" in page
    assert "This target takes no revocation list" not in page


def test_the_web_page_warns_before_an_end_that_cannot_recall(
    alice, bob, listless_bastion
):
    access_request, _ = _issue(alice, bob)
    client = login(alice)

    page = client.get(f"/requests/{access_request.pk}/").content.decode()
    assert "End access now" in page
    assert "it does not stop the certificate" in page

    ended = client.post(
        f"/requests/{access_request.pk}/end/", {"reason": "done"}, follow=True
    )
    text = ended.content.decode()
    assert "The end is recorded. This target takes no revocation list" in text
    assert "Ending was asked at" in text
    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE


@pytest.mark.parametrize("backdate", [0, 300])
def test_valid_after_follows_the_backdate_setting(
    settings, backdate, bastion, sshd, ca_env, tmp_path
):
    settings.BREAKGLASS_SSH_BACKDATE_SECONDS = backdate
    now = datetime.now(UTC).replace(microsecond=0)
    with time_machine.travel(now, tick=False):
        credential = provider.issue(
            {"kind": "ssh", "ca_key_env": CA_ENV, "grants": [sshd.user]},
            principal="bg_alice_1_0a1b2c3d",
            expires_at=now + timedelta(minutes=10),
            key_id="breakglass request 1",
        )
    key, certificate = _write_credential(credential, tmp_path / "key")

    assert _certificate(certificate).valid_after == int(now.timestamp()) - backdate
    assert sshd.login(key, certificate)


def test_the_backdate_covers_a_server_clock_running_behind(
    settings, bastion, sshd, ca_env, tmp_path
):
    # Our clock runs two minutes ahead of the server's.
    ahead = datetime.now(UTC) + timedelta(minutes=2)

    def issue(name, backdate):
        settings.BREAKGLASS_SSH_BACKDATE_SECONDS = backdate
        with time_machine.travel(ahead):
            credential = provider.issue(
                {"kind": "ssh", "ca_key_env": CA_ENV, "grants": [sshd.user]},
                principal="bg_alice_1_0a1b2c3d",
                expires_at=ahead + timedelta(minutes=10),
                key_id=f"breakglass request 1 {name}",
            )
        return _write_credential(credential, tmp_path / name)

    assert not sshd.login(*issue("one-minute", 60))
    assert "Certificate invalid: not yet valid" in sshd.log()
    assert sshd.login(*issue("five-minutes", 300))


@pytest.mark.parametrize("value", ["-1", "86401", "soon"])
def test_a_wrong_backdate_stops_the_process_naming_the_variable(value):
    env = {**os.environ, "BREAKGLASS_SSH_BACKDATE_SECONDS": value}
    env["DJANGO_SETTINGS_MODULE"] = "breakglass.settings"

    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )

    assert result.returncode != 0
    assert "BREAKGLASS_SSH_BACKDATE_SECONDS" in result.stderr


# The revocation list on its own


def _ca_public(sshd):
    return " ".join(Path(f"{sshd.ca_key}.pub").read_text().split()[:2])


def test_recalls_at_once_all_land_in_the_list(sshd, tmp_path):
    path = tmp_path / "revoked.krl"
    now = datetime.now(UTC)
    # Apart, so that the list does not fold them into a range.
    serials = list(range(1000, 1080, 10))
    failures = []

    def recall(serial):
        try:
            krl.recall(
                path,
                ca_public_key=_ca_public(sshd),
                serial=serial,
                valid_until=now + timedelta(minutes=5),
                key_id=f"grant {serial}",
                now=now,
            )
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=recall, args=(s,)) for s in serials]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert failures == []
    assert sorted(krl.recalled_serials(path)) == serials
    listed = subprocess.run(
        ["ssh-keygen", "-Q", "-l", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert [f"serial: {s}" in listed for s in serials] == [True] * len(serials)


def test_a_certificate_past_its_end_leaves_the_list(sshd, tmp_path):
    path = tmp_path / "revoked.krl"
    now = datetime.now(UTC)
    common = {"ca_public_key": _ca_public(sshd), "key_id": "grant"}
    krl.recall(
        path, serial=10, valid_until=now + timedelta(minutes=1), now=now, **common
    )
    krl.recall(path, serial=20, valid_until=now + timedelta(hours=1), now=now, **common)

    later = now + timedelta(minutes=2)
    krl.recall(
        path, serial=30, valid_until=later + timedelta(hours=1), now=later, **common
    )

    assert sorted(krl.recalled_serials(path)) == [20, 30]
    listed = subprocess.run(
        ["ssh-keygen", "-Q", "-l", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "serial: 10\n" not in listed
    assert "serial: 20\n" in listed and "serial: 30\n" in listed
    # sshd must be able to read both files when it runs as another user.
    assert path.stat().st_mode & 0o777 == 0o644
    assert Path(f"{path}.json").stat().st_mode & 0o777 == 0o644


def test_a_damaged_state_file_is_refused_not_overwritten(sshd, tmp_path):
    path = tmp_path / "revoked.krl"
    state = Path(f"{path}.json")
    state.write_text("not json")
    now = datetime.now(UTC)

    with pytest.raises(ProviderError, match="not a revocation state file"):
        krl.recall(
            path,
            ca_public_key=_ca_public(sshd),
            serial=7,
            valid_until=now + timedelta(minutes=5),
            key_id="grant",
            now=now,
        )

    assert state.read_text() == "not json"
    assert not path.exists()


def test_an_early_end_after_the_ca_key_rotated_still_recalls_the_certificate(
    alice, bob, bastion, sshd, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    access_request, grant = _issue(alice, bob)
    key, certificate_path = _reveal(access_request, alice, tmp_path)
    # The CA key is rotated while the certificate is still valid.
    new_ca = tmp_path / "new_ca"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(new_ca)], check=True
    )
    monkeypatch.setenv(CA_ENV, str(new_ca))

    with django_capture_on_commit_callbacks(execute=False):
        services.request_end(access_request.pk, actor=alice, reason="fixed")
    assert services.end_grant(grant.pk) is True

    assert _query_list(sshd.krl, certificate_path)
    assert not sshd.login(key, certificate_path)
