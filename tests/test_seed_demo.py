"""The demo seed: people, targets and devices once, however often it runs."""

import io
import json
import stat
import subprocess
from base64 import b32encode

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django_otp.plugins.otp_totp.models import TOTPDevice

from approvals.services import approve_request
from breakglass import roles, sealing, services
from breakglass.models import AccessRequest, AuditEvent, Target

from .conftest import otp_code

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
NOBODY_LISTENS = "postgresql://postgres@127.0.0.1:1/postgres"
PEOPLE = ["alice", "bob", "carol", "cora", "ada"]


@pytest.fixture
def demo(db, settings, tmp_path, monkeypatch):
    """Run in demo mode with ./var/ in a temporary folder; return that folder."""
    settings.DEMO = True
    settings.VAR_DIR = tmp_path
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    monkeypatch.setenv("BREAKGLASS_DEMO_CA_KEY_FILE", str(tmp_path / "ssh_ca" / "ca"))
    monkeypatch.setenv("BREAKGLASS_DEMO_PG_DSN", LOCAL_PG)
    return tmp_path


def seed(*args):
    out = io.StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def test_seeding_twice_creates_everything_once(demo):
    first = seed()
    second = seed()

    for username in PEOPLE:
        assert User.objects.filter(username=username).count() == 1
    alice_groups = User.objects.get(username="alice").groups.values_list("name")
    assert sorted(name for (name,) in alice_groups) == ["oncall", roles.REQUESTER]
    for approver in ["bob", "carol"]:
        user = User.objects.get(username=approver)
        assert roles.has_role(user, roles.APPROVER)
        assert user.groups.filter(name="sre-leads").exists()
    assert roles.has_role(User.objects.get(username="cora"), roles.COMPLIANCE)
    assert User.objects.get(username="ada").is_superuser
    for username, devices in [
        ("alice", 0),
        ("bob", 1),
        ("carol", 1),
        ("cora", 0),
        ("ada", 1),
    ]:
        assert (
            TOTPDevice.objects.filter(user__username=username, confirmed=True).count()
            == devices
        )

    assert list(Target.objects.values_list("name", flat=True)) == ["bastion", "demo-db"]
    bastion = Target.objects.get(name="bastion")
    assert bastion.kind == "ssh"
    assert bastion.ca_key_env == "BREAKGLASS_DEMO_CA_KEY_FILE"
    assert {s.name: s.grants for s in bastion.scopes.all()} == {
        "deploy": ["deploy"],
        "root": ["root"],
    }
    assert bastion.policy.approvals_required == 2
    assert bastion.policy.max_duration_minutes == 60
    assert list(bastion.policy.approver_groups.values_list("name", flat=True)) == [
        "sre-leads"
    ]
    demo_db = Target.objects.get(name="demo-db")
    assert demo_db.connection_env == "BREAKGLASS_DEMO_PG_DSN"
    assert demo_db.scopes.get().grants == ["pg_read_all_data"]
    assert AuditEvent.objects.filter(action="config.applied").count() == 1

    # The second run prints the same logins and changes no password.
    logins = json.loads((demo / "demo-logins.json").read_text())
    assert sorted(logins) == sorted(PEOPLE)
    for username, password in logins.items():
        assert User.objects.get(username=username).check_password(password)
        assert f"password: {password}" in first
        assert f"password: {password}" in second


def test_secrets_are_kept_private_and_only_the_intended_ones_printed(demo):
    output = seed()

    logins_file = demo / "demo-logins.json"
    ca_key = demo / "ssh_ca" / "ca"
    assert stat.S_IMODE(logins_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_key.parent.stat().st_mode) == 0o700
    private = ca_key.read_text()
    assert "OPENSSH PRIVATE KEY" in private
    assert private not in output and "PRIVATE KEY" not in output
    assert str(ca_key) + ".pub" in output

    for username in ["bob", "carol", "ada"]:
        device = TOTPDevice.objects.get(user__username=username)
        assert b32encode(device.bin_key).decode() in output
        assert device.config_url in output
    # Alice and Cora have no authenticator, so no secret of theirs beyond a password.
    assert output.count("secret: ") == 3
    assert output.count("otpauth://") == 3


def qr_codes_in(output):
    # print_ascii closes every code with a line of upper half blocks.
    return sum(1 for line in output.splitlines() if line and set(line) == {"\u2580"})


def test_qr_codes_come_with_new_devices_and_on_demand(demo):
    first = seed()
    again = seed()
    asked = seed("--qr")

    assert qr_codes_in(first) == 2  # bob's and carol's
    assert qr_codes_in(again) == 0
    assert qr_codes_in(asked) == 2


def test_without_a_reachable_postgresql_there_is_no_postgres_target(demo, monkeypatch):
    monkeypatch.setenv("BREAKGLASS_DEMO_PG_DSN", NOBODY_LISTENS)

    output = seed()

    assert list(Target.objects.values_list("name", flat=True)) == ["bastion"]
    assert "No PostgreSQL target: no PostgreSQL server answered" in output


def test_a_bad_dsn_is_reported_without_its_password(demo, monkeypatch):
    monkeypatch.setenv(
        "BREAKGLASS_DEMO_PG_DSN", "host=127.0.0.1 password=hunter2 nonsense"
    )

    output = seed()

    assert "BREAKGLASS_DEMO_PG_DSN is not a valid connection string" in output
    assert "hunter2" not in output
    assert not Target.objects.filter(kind="postgres").exists()


def test_outside_demo_mode_it_refuses_and_creates_nothing(demo, settings):
    settings.DEMO = False

    with pytest.raises(CommandError, match="BREAKGLASS_DEMO=1"):
        seed()

    assert not User.objects.exists()
    assert not Target.objects.exists()
    assert not (demo / "demo-logins.json").exists()


def test_an_account_it_did_not_create_is_left_alone(demo):
    alice = User.objects.create_user("alice", password="alice's own password")

    output = seed()

    alice.refresh_from_db()
    assert alice.check_password("alice's own password")
    assert not alice.groups.exists()
    assert "alice" not in json.loads((demo / "demo-logins.json").read_text())
    assert "alice  already existed before the demo was seeded" in output


def test_a_lost_database_gets_the_same_logins_back(demo):
    seed()
    logins = json.loads((demo / "demo-logins.json").read_text())
    User.objects.all().delete()

    seed()

    for username, password in logins.items():
        assert User.objects.get(username=username).check_password(password)


def test_the_seeded_bastion_issues_a_certificate_from_the_seeded_ca(demo):
    seed()
    alice, bob, carol = (
        User.objects.get(username=n) for n in ["alice", "bob", "carol"]
    )

    access_request = services.create_request(
        requester=alice,
        target="bastion",
        scope="root",
        duration_minutes=30,
        reason="disk full on the bastion",
        incident="INC-42",
    )
    approve_request(access_request.pk, approver=bob, code=otp_code(bob))
    approve_request(access_request.pk, approver=carol, code=otp_code(carol))
    grant = services.issue_grant(access_request.grant.pk)

    access_request.refresh_from_db()
    assert access_request.status == AccessRequest.Status.ACTIVE
    certificate = sealing.unseal(grant.sealed_credential)["certificate"]
    path = demo / "cert.pub"
    path.write_text(certificate)
    shown = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(demo / "ssh_ca" / "ca.pub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    assert f"Signing CA: ED25519 {fingerprint}" in shown
    assert "root" in shown.split("Principals:")[1]


def test_the_demo_bastion_can_recall_a_certificate_ended_early(demo):
    seed()

    bastion = Target.objects.get(name="bastion")
    assert bastion.revocation_list_path == str(demo / "ssh_ca" / "revoked_keys")
