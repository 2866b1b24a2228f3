"""`manage.py create_user` and `manage.py verify_audit` (CONTRACT.md, section 2)."""

import io
import json
from io import StringIO
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.http import HttpRequest
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from approvals import otp
from breakglass import audit
from breakglass.models import AuditEvent

from .tampering import triggers_disabled

PASSWORD = "a long pass phrase for tests"


def create_user(*args, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    out = StringIO()
    call_command("create_user", *args, stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def _groups(user):
    return sorted(user.groups.values_list("name", flat=True))


def test_plain_user(db):
    assert create_user("rita", "--role", "requester") == {"username": "rita"}

    rita = User.objects.get(username="rita")
    assert _groups(rita) == ["requester"]
    assert not rita.has_usable_password()
    assert not rita.is_superuser


def test_roles_groups_and_email(db):
    result = create_user(
        "bea",
        "--role",
        "approver",
        "--role",
        "compliance",
        "--group",
        "sre-leads",
        "--group",
        "payments-leads",
        "--email",
        "bea@example.com",
    )

    assert result == {"username": "bea"}
    bea = User.objects.get(username="bea")
    assert _groups(bea) == ["approver", "compliance", "payments-leads", "sre-leads"]
    assert bea.email == "bea@example.com"


def test_admin_role_is_a_superuser(db):
    create_user("root", "--role", "admin")

    root = User.objects.get(username="root")
    assert root.is_superuser and root.is_staff
    assert _groups(root) == []


def test_token_authenticates_on_the_api(db):
    result = create_user("rita", "--role", "requester", "--token")

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {result['token']}")
    assert client.get("/api/v1/requests/").status_code == 200


def test_totp_uri_uses_the_usual_parameters_and_confirms_votes(db):
    result = create_user("bea", "--role", "approver", "--totp")

    uri = urlsplit(result["totp_uri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert uri.path.endswith("bea")
    params = {k: v[0] for k, v in parse_qs(uri.query).items()}
    assert (params["algorithm"], params["digits"], params["period"]) == (
        "SHA1",
        "6",
        "30",
    )

    # A phone set up from the URI shows codes the server accepts.
    device = TOTPDevice.objects.get(user__username="bea")
    import base64

    key = base64.b32decode(params["secret"] + "=" * (-len(params["secret"]) % 8))
    assert key == device.bin_key
    code = f"{TOTP(key, step=30, digits=6).token():06d}"
    assert otp.verify(device.user, code) == device


def test_password_from_the_first_line_of_stdin(db, client, monkeypatch):
    create_user(
        "rita",
        "--role",
        "requester",
        "--password-stdin",
        stdin=f"{PASSWORD}\nnot this line\n",
        monkeypatch=monkeypatch,
    )

    rita = User.objects.get(username="rita")
    assert rita.check_password(PASSWORD)
    assert client.login(request=HttpRequest(), username="rita", password=PASSWORD)


@pytest.mark.parametrize("stdin", ["", "\n", "short\n", "password\n"])
def test_missing_or_weak_password_is_refused(db, monkeypatch, stdin):
    with pytest.raises(CommandError):
        create_user(
            "rita",
            "--role",
            "requester",
            "--password-stdin",
            stdin=stdin,
            monkeypatch=monkeypatch,
        )

    assert not User.objects.filter(username="rita").exists()


def test_updating_an_existing_user(db, client, monkeypatch):
    create_user(
        "rita",
        "--role",
        "requester",
        "--group",
        "oncall",
        "--totp",
        "--password-stdin",
        stdin=PASSWORD + "\n",
        monkeypatch=monkeypatch,
    )
    first_device = TOTPDevice.objects.get(user__username="rita")

    result = create_user("rita", "--role", "approver", "--group", "sre-leads", "--totp")

    rita = User.objects.get(username="rita")
    assert User.objects.filter(username="rita").count() == 1
    # Roles are replaced; team groups are added to.
    assert _groups(rita) == ["approver", "oncall", "sre-leads"]
    assert rita.check_password(PASSWORD)
    # One authenticator: the new one replaces the old.
    device = TOTPDevice.objects.get(user=rita)
    assert device.pk != first_device.pk
    assert result["totp_uri"].startswith("otpauth://totp/")


@pytest.mark.parametrize(
    "args",
    [
        ["rita"],
        ["rita", "--role", "superhero"],
        ["rita", "--role", "requester", "--email", "not-an-address"],
        ["  ", "--role", "requester"],
    ],
)
def test_bad_arguments_are_refused(db, args):
    with pytest.raises(CommandError):
        create_user(*args)

    assert not User.objects.exists()


def _verify_audit():
    out, err = StringIO(), StringIO()
    try:
        call_command("verify_audit", stdout=out, stderr=err)
    except SystemExit as exit:
        return exit.code, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def test_creating_and_changing_a_user_is_in_the_trail(db):
    create_user("rita", "--role", "requester", "--group", "oncall")
    create_user("rita", "--role", "approver", "--group", "sre-leads")
    create_user("rita", "--role", "approver", "--group", "sre-leads")

    events = list(AuditEvent.objects.order_by("seq"))
    assert [(e.action, e.actor) for e in events] == [
        ("user.created", "system"),
        ("user.changed", "system"),
    ]
    assert events[0].data == {
        "user": "rita",
        "groups": ["oncall", "requester"],
        "is_active": True,
        "is_staff": False,
        "is_superuser": False,
    }
    # Groups that are not roles stay: only the roles are replaced.
    assert events[1].data == {
        "user": "rita",
        "groups_added": ["approver", "sre-leads"],
        "groups_removed": ["requester"],
    }


def test_verify_audit_exits_0_with_the_count(db):
    for n in range(3):
        audit.record_event("config.applied", actor="ada", data={"n": n})

    code, out, _ = _verify_audit()

    assert code == 0
    assert "3 events checked" in out


def test_verify_audit_on_an_empty_trail(db):
    code, out, _ = _verify_audit()

    assert code == 0
    assert "0 events checked" in out


def test_verify_audit_exits_1_naming_the_event(db):
    for n in range(3):
        audit.record_event("config.applied", actor="ada", data={"n": n})
    with triggers_disabled():
        AuditEvent.objects.filter(seq=2).update(actor="mallory")

    code, _, err = _verify_audit()

    assert code == 1
    assert "seq 2" in err


@pytest.mark.parametrize("username", ["bad user!", "x" * 151, ""])
def test_create_user_refuses_a_bad_username(db, username):
    with pytest.raises(CommandError, match="username"):
        call_command("create_user", username, "--role", "requester", stdout=StringIO())

    assert not User.objects.exists()


def test_create_user_refuses_a_name_that_differs_only_by_case(db):
    call_command("create_user", "zed", "--role", "approver", stdout=StringIO())

    with pytest.raises(CommandError, match="'zed' exists already"):
        call_command("create_user", "Zed", "--role", "approver", stdout=StringIO())

    assert list(User.objects.values_list("username", flat=True)) == ["zed"]
