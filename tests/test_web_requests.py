"""The web pages for asking, deciding, revealing and ending, as each person sees."""

import os
import re
import subprocess
from html import unescape

import pytest
from django.test import Client

from approvals.models import Approval
from breakglass import roles, services
from breakglass.models import AccessRequest, Alert, AuditEvent, Grant
from breakglass.views import connection_help

from .conftest import make_target, make_user, otp_code
from .web_helpers import actions, approve, issue, login, make_ssh_target, open_request

Status = AccessRequest.Status


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    return make_ssh_target(tmp_path, monkeypatch)


@pytest.fixture
def pending(bastion, alice):
    return open_request(alice)


def detail_url(access_request, action=""):
    return f"/requests/{access_request.pk}/{action + '/' if action else ''}"


def wrong_code(user):
    return "000000" if otp_code(user) != "000000" else "111111"


# Home


def test_home_shows_own_requests_and_the_decisions_waiting(pending, bob, dave, oscar):
    page = login(pending.requester).get("/")
    assert page.status_code == 200
    assert "My requests" in page.text
    assert detail_url(pending) in page.text
    assert "New request" in page.text

    page = login(bob).get("/")
    assert "Waiting for my decision" in page.text
    assert detail_url(pending) in page.text
    assert "New request" not in page.text

    page = login(dave).get("/")
    assert "Nothing waits for your decision." in page.text
    assert detail_url(pending) not in page.text

    page = login(oscar).get("/")
    assert "holds no role" in page.text


def test_pages_need_a_login(pending):
    for url in ["/", "/requests/new/", detail_url(pending), "/trail/"]:
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/")


def test_login_page_logs_in_with_password(alice):
    client = Client()
    assert client.get("/login/").status_code == 200
    response = client.post("/login/", {"username": "alice", "password": "pw-alice"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200

    response = client.post("/logout/")
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_login_refuses_a_wrong_password(alice):
    response = Client().post("/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.text


# Asking


def test_new_request_form_shows_each_target_with_its_policy(bastion, alice):
    make_target("payments-db", "postgres", grants=["x"], requester_groups=["payments"])
    page = login(alice).get("/requests/new/")

    assert page.status_code == 200
    text = unescape(page.text)
    assert "For you now: 2 approvals: production (from sre-leads; at most 60" in text
    assert "Base: 2 approvals from sre-leads, for at most 60 minutes;" in text
    assert "No rules: the base applies at any time." in text
    assert "^INC-[0-9]+$" in text
    assert '<optgroup label="bastion">' in text
    assert "Not open to you" in text
    assert "Only members of payments may request access to payments-db" in text
    assert 'value="payments-db"' not in text


def test_new_request_creates_the_request_and_its_event(bastion, alice, bob):
    response = login(alice).post(
        "/requests/new/",
        {
            "target": "bastion",
            "scope": "bastion:read",
            "duration_minutes": "20",
            "reason": "Disk full",
            "incident": "INC-42",
        },
    )

    created = AccessRequest.objects.get()
    assert response.status_code == 302
    assert response["Location"] == detail_url(created)
    assert (created.requester, created.status) == (alice, Status.PENDING)
    assert (created.duration_minutes, created.incident) == (20, "INC-42")
    event = AuditEvent.objects.get(action="request.created")
    assert (event.actor, event.request_id) == ("alice", created.pk)


def test_new_request_shows_policy_refusals_on_their_fields(bastion, alice):
    response = login(alice).post(
        "/requests/new/",
        {
            "target": "bastion",
            "scope": "bastion:read",
            "duration_minutes": "90",
            "reason": "Disk full",
            "incident": "whatever",
        },
    )

    assert response.status_code == 400
    text = unescape(response.text)
    assert "Must be between 1 and 60 minutes for bastion now." in text
    assert "Must match the pattern ^INC-[0-9]+$ for bastion." in text
    assert 'value="whatever"' in text
    assert not AccessRequest.objects.exists()
    assert not AuditEvent.objects.exists()


def test_new_request_refuses_a_scope_of_another_target(bastion, alice):
    make_target("orders-db", "postgres", grants=["pg_read_all_data"])
    response = login(alice).post(
        "/requests/new/",
        {
            "target": "bastion",
            "scope": "orders-db:read",
            "duration_minutes": "20",
            "reason": "Disk full",
            "incident": "INC-1",
        },
    )

    assert response.status_code == 400
    assert "Scope read belongs to orders-db, not bastion." in response.text
    assert not AccessRequest.objects.exists()


def test_new_request_is_for_requesters_only(bastion, bob, oscar):
    assert login(bob).get("/requests/new/").status_code == 403
    response = login(oscar).post("/requests/new/", {"target": "bastion"})
    assert response.status_code == 403
    assert not AccessRequest.objects.exists()


# Who sees a request


def test_request_is_visible_to_requester_approvers_and_compliance(
    pending, bob, carol, cora, ada, dave, oscar
):
    for user in [pending.requester, bob, carol, cora, ada]:
        page = login(user).get(detail_url(pending))
        assert page.status_code == 200, user
        assert "Disk full on the primary" in page.text
        assert "2 approvals: production" in page.text
        assert "Why it needs 2 approvals" in page.text

    for user in [dave, oscar]:
        assert login(user).get(detail_url(pending)).status_code == 404, user
        response = login(user).post(detail_url(pending, "cancel"))
        assert response.status_code == 404, user
    assert login(bob).get("/requests/999999/").status_code == 404


def test_the_trail_of_a_request_is_shown_to_its_requester_and_compliance(
    pending, bob, cora
):
    for user in [pending.requester, cora]:
        page = login(user).get(detail_url(pending))
        assert "Trail of this request" in page.text
        assert "request.created" in page.text
    assert "Trail of this request" not in login(bob).get(detail_url(pending)).text


# Deciding


def test_full_flow_through_the_web_with_real_codes(pending, bob, carol):
    alice = pending.requester
    page = login(alice).get(detail_url(pending))
    assert 'name="otp"' not in page.text
    assert "Nobody can approve their own request" in page.text

    page = login(bob).get(detail_url(pending))
    assert 'autocomplete="one-time-code"' in page.text
    assert 'inputmode="numeric"' in page.text
    assert 'pattern="[0-9]{6}"' in page.text

    response = login(bob).post(
        detail_url(pending, "approve"), {"otp": otp_code(bob), "comment": "ok"}
    )
    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.status == Status.PENDING
    page = login(bob).get(detail_url(pending))
    assert "1 of 2 received" in page.text
    assert "You have decided on this request." in page.text
    assert 'name="otp"' not in page.text

    response = login(carol).post(
        detail_url(pending, "approve"), {"otp": otp_code(carol), "comment": ""}
    )
    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.status == Status.APPROVED

    issue(pending)
    pending.refresh_from_db()
    assert pending.status == Status.ACTIVE
    page = login(alice).get(detail_url(pending))
    assert "Reveal credential" in page.text
    assert "otp_totp.totpdevice/" in page.text
    assert list(Approval.objects.values_list("approver__username", "decision")) == [
        ("bob", "approved"),
        ("carol", "approved"),
    ]
    assert actions(request=pending) == [
        "request.created",
        "approval.approved",
        "approval.approved",
        "request.approved",
        "grant.issued",
    ]


def test_requester_who_is_also_an_approver_cannot_approve(bastion):
    rita = make_user(
        "rita",
        roles.REQUESTER,
        roles.APPROVER,
        groups=["oncall", "sre-leads"],
        totp=True,
    )
    mine = open_request(rita)
    page = login(rita).get(detail_url(mine))
    assert 'name="otp"' not in page.text

    response = login(rita).post(detail_url(mine, "approve"), {"otp": otp_code(rita)})

    assert response.status_code == 403
    assert "Nobody can approve their own request." in response.text
    assert not Approval.objects.exists()
    assert actions() == ["request.created"]


def test_wrong_code_is_refused_on_the_page_and_recorded(pending, bob, settings):
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]

    code = wrong_code(bob)
    response = login(bob).post(
        detail_url(pending, "approve"), {"otp": code, "comment": "ok"}
    )

    assert response.status_code == 403
    assert "The one-time code is wrong, expired or already used." in response.text
    assert f'value="{code}"' not in response.text
    assert not Approval.objects.exists()
    failed = AuditEvent.objects.get(action="otp.failed")
    assert (failed.actor, failed.request_id) == ("bob", pending.pk)
    assert Alert.objects.filter(event=failed, channel="email").count() == 1
    pending.refresh_from_db()
    assert pending.status == Status.PENDING


def test_missing_code_is_a_form_error(pending, bob):
    response = login(bob).post(detail_url(pending, "approve"), {"otp": ""})
    assert response.status_code == 400
    assert "Enter the 6-digit code" in response.text
    assert not Approval.objects.exists()


def test_deny_ends_the_request(pending, carol, bob):
    response = login(carol).post(
        detail_url(pending, "deny"), {"otp": otp_code(carol), "comment": "no INC"}
    )

    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.status == Status.DENIED
    assert actions(request=pending)[-2:] == ["approval.denied", "request.denied"]

    response = login(bob).post(detail_url(pending, "approve"), {"otp": otp_code(bob)})
    assert response.status_code == 409
    assert "already denied" in response.text


def test_outside_approver_is_refused(pending, dave, ada):
    # Ada administers but holds no approver role: she sees the request, not a vote.
    page = login(ada).get(detail_url(pending))
    assert 'name="otp"' not in page.text
    response = login(ada).post(detail_url(pending, "approve"), {"otp": otp_code(ada)})
    assert response.status_code == 403
    assert "not an eligible approver" in response.text
    assert not Approval.objects.exists()


def test_csrf_token_is_required_on_decisions(pending, bob):
    client = login(bob, enforce_csrf_checks=True)

    response = client.post(detail_url(pending, "approve"), {"otp": otp_code(bob)})
    assert response.status_code == 403
    assert not Approval.objects.exists()

    page = client.get(detail_url(pending))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
    response = client.post(
        detail_url(pending, "approve"),
        {"otp": otp_code(bob), "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302
    assert Approval.objects.filter(approver=bob).exists()


def test_decision_pages_refuse_get(pending, bob):
    assert login(bob).get(detail_url(pending, "approve")).status_code == 405


# Cancelling and ending


def test_requester_cancels_a_pending_request(pending, bob):
    alice = pending.requester
    assert login(bob).post(detail_url(pending, "cancel")).status_code == 403

    response = login(alice).post(detail_url(pending, "cancel"))
    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.status == Status.CANCELLED
    assert actions(request=pending)[-1] == "request.cancelled"

    response = login(alice).post(detail_url(pending, "cancel"))
    assert response.status_code == 409
    assert "only a pending request can be cancelled" in response.text


@pytest.fixture
def active(pending, bob, carol):
    approve(pending, bob, carol)
    issue(pending)
    pending.refresh_from_db()
    return pending


def test_an_approver_ends_an_active_grant(active, bob, dave):
    page = login(bob).get(detail_url(active))
    assert "End access now" in page.text

    assert login(dave).post(detail_url(active, "end")).status_code == 404
    response = login(bob).post(detail_url(active, "end"), {"reason": "done"})

    assert response.status_code == 302
    grant = Grant.objects.get(request=active)
    assert (grant.end_requested_by, grant.end_reason) == ("bob", "done")
    assert services.end_grant(grant.pk)
    active.refresh_from_db()
    assert active.status == Status.REVOKED
    assert actions(request=active)[-2:] == ["grant.revoked", "review.due"]
    assert "End access now" not in login(bob).get(detail_url(active)).text


# Revealing


def test_credential_is_revealed_once(active, bob):
    alice = active.requester
    assert login(bob).post(detail_url(active, "credential")).status_code == 403

    client = login(alice)
    response = client.post(detail_url(active, "credential"))

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    text = unescape(response.text)
    assert "ssh-ed25519-cert-v01@openssh.com " in text
    assert "-----BEGIN OPENSSH PRIVATE KEY-----" in text
    key = f"~/.ssh/breakglass-{active.pk}"
    assert f"ssh -i {key} -o CertificateFile={key}-cert.pub root@bastion" in text
    assert "will not be shown again" in text
    grant = Grant.objects.get(request=active)
    assert grant.revealed_at is not None and grant.sealed_credential is None
    revealed = AuditEvent.objects.get(action="credential.revealed")
    assert (revealed.actor, revealed.data) == ("alice", {"principal": grant.principal})

    again = client.post(detail_url(active, "credential"))
    assert again.status_code == 410
    assert "already revealed" in again.text
    assert "BEGIN OPENSSH PRIVATE KEY" not in again.text
    page = client.get(detail_url(active))
    assert "revealed at" in page.text
    assert "Reveal credential" not in page.text
    assert AuditEvent.objects.filter(action="credential.revealed").count() == 1


def test_certificate_for_a_given_public_key_is_readable_by_ssh_keygen(
    bastion, alice, bob, carol, tmp_path
):
    key = tmp_path / "alice"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
    )
    mine = open_request(alice, public_key=(tmp_path / "alice.pub").read_text())
    approve(mine, bob, carol)
    issue(mine)

    response = login(alice).post(detail_url(mine, "credential"))

    text = unescape(response.text)
    assert "PRIVATE KEY" not in text
    certificate = re.search(r'id="certificate"[^>]*>([^<]+)</pre>', response.text)[1]
    (tmp_path / "alice-cert.pub").write_text(unescape(certificate))
    shown = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(tmp_path / "alice-cert.pub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "root" in shown and f"breakglass request {mine.pk}" in shown
    assert f"-o CertificateFile=~/.ssh/breakglass-{mine.pk}-cert.pub" in text


def test_revealed_postgres_credential_works_with_the_psql_command(
    alice, bob, carol, monkeypatch
):
    monkeypatch.setenv(
        "WEB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    make_target(
        "orders-db", "postgres", grants=["pg_read_all_data"], env_var="WEB_TEST_PG_DSN"
    )
    mine = open_request(alice, target="orders-db")
    approve(mine, bob, carol)
    grant = issue(mine)
    try:
        response = login(alice).post(detail_url(mine, "credential"))
        text = unescape(response.text)
        command = re.search(r'id="psql"[^>]*>([^<]+)</pre>', response.text)[1]
        command = unescape(command)
        password = unescape(
            re.search(r'id="password"[^>]*>([^<]+)</pre>', response.text)[1]
        )
        assert command == (
            f'psql "host=127.0.0.1 port=5432 dbname=postgres user={grant.principal}"'
        )
        assert "PGPASSWORD" in text
        conninfo = command.removeprefix("psql ").strip('"')
        result = subprocess.run(
            ["psql", conninfo, "-XAtc", "select current_user"],
            env={**os.environ, "PGPASSWORD": password},
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.strip() == grant.principal
    finally:
        services.request_end(mine.pk, actor=alice)
        assert services.end_grant(grant.pk)


def test_redis_help_uses_askpass():
    credential = {
        "kind": "redis",
        "username": "bg_alice_1_ab",
        "password": "secret",
        "host": "10.0.0.5",
        "port": 6380,
    }
    assert connection_help(credential, None) == {
        "redis_cli": "redis-cli -h 10.0.0.5 -p 6380 --user bg_alice_1_ab --askpass"
    }


def test_reveal_before_issuance_is_refused(pending):
    response = login(pending.requester).post(detail_url(pending, "credential"))
    assert response.status_code == 409
    assert "there is no credential to reveal" in response.text
    assert not AuditEvent.objects.filter(action="credential.revealed").exists()
