"""Shared people, targets and helpers.

The people: Alice asks for access (on call), Bob and Carol approve (SRE leads),
Oscar is an outsider with no role, Dave approves for another team, Cora reviews for
compliance, Ada administers.
"""

import pytest
from django.contrib.auth.models import Group, User
from django.test import TransactionTestCase
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice
from knox.models import AuthToken
from rest_framework.test import APIClient

from breakglass import roles
from breakglass.models import Policy, Scope, Target

from . import secret_scan


def make_user(username, *role_names, groups=(), totp=False):
    user = User.objects.create_user(
        username, f"{username}@example.com", "pw-" + username
    )
    user.is_superuser = user.is_staff = roles.ADMIN in role_names
    user.save()
    for name in [r for r in role_names if r != roles.ADMIN] + list(groups):
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    if totp:
        TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    return user


def otp_code(user, *, offset_steps=0):
    """Return the current TOTP code of the user's device, as a phone would show it."""
    device = TOTPDevice.objects.get(user=user)
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = totp.time + offset_steps * device.step
    return f"{totp.token():0{device.digits}d}"


@pytest.fixture
def alice(db):
    return make_user("alice", roles.REQUESTER, groups=["oncall"])


@pytest.fixture
def bob(db):
    return make_user("bob", roles.APPROVER, groups=["sre-leads"], totp=True)


@pytest.fixture
def carol(db):
    return make_user("carol", roles.APPROVER, groups=["sre-leads"], totp=True)


@pytest.fixture
def dave(db):
    return make_user("dave", roles.APPROVER, groups=["payments-leads"], totp=True)


@pytest.fixture
def oscar(db):
    return make_user("oscar")


@pytest.fixture
def cora(db):
    return make_user("cora", roles.COMPLIANCE)


@pytest.fixture
def ada(db):
    return make_user("ada", roles.ADMIN, totp=True)


def make_target(
    name,
    kind,
    *,
    grants,
    approvals=2,
    env_var="",
    ca_env="",
    approver_groups=("sre-leads",),
    requester_groups=(),
    max_minutes=60,
    window_minutes=30,
    incident_pattern=r"^INC-[0-9]+$",
):
    target = Target.objects.create(
        name=name,
        kind=kind,
        environment="production",
        connection_env=env_var,
        ca_key_env=ca_env,
    )
    Scope.objects.create(target=target, name="read", grants=list(grants))
    policy = Policy.objects.create(
        target=target,
        approvals_required=approvals,
        max_duration_minutes=max_minutes,
        approval_window_minutes=window_minutes,
        incident_pattern=incident_pattern,
    )
    policy.approver_groups.set(
        [Group.objects.get_or_create(name=g)[0] for g in approver_groups]
    )
    policy.requester_groups.set(
        [Group.objects.get_or_create(name=g)[0] for g in requester_groups]
    )
    return target


@pytest.fixture
def api():
    """Return a function giving an API client authenticated with a user's token."""

    def client_for(user=None):
        client = APIClient()
        if user is not None:
            _, token = AuthToken.objects.create(user=user, expiry=None)
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        return client

    return client_for


pytest_plugins = ["tests.fixtures"]


def _flush_past_the_trail_triggers(teardown):
    """Let the test database be emptied between transactional tests.

    The trail refuses TRUNCATE even from a superuser while its triggers are on;
    the test runner, which is the database's superuser, sets them aside to flush.
    """

    def flush(self):
        from .tampering import triggers_disabled

        with triggers_disabled():
            teardown(self)

    return flush


TransactionTestCase._fixture_teardown = _flush_past_the_trail_triggers(
    TransactionTestCase._fixture_teardown
)


@pytest.fixture(autouse=True)
def _no_secret_leaves_its_credential(request, caplog):
    """Fail a test whose issued secrets show up in an event, alert, email or log."""
    uses_db = request.node.get_closest_marker("django_db") or {
        "db",
        "transactional_db",
    } & set(request.fixturenames)
    if not uses_db:
        yield
        return
    # Set up after the database so that the check runs before it is emptied.
    request.getfixturevalue("_django_db_helper")
    secret_scan.issued.clear()
    yield

    secrets = secret_scan.secrets_of_the_test()
    if secrets:
        texts = secret_scan.produced_texts(
            log_text=caplog.text,
            # Already stopped by now; its log stays on disk.
            worker=request.node.funcargs.get("worker"),
            receiver=request.node.funcargs.get("webhook_receiver"),
        )
        assert secret_scan.leaks(secrets, texts) == []


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The people above log in with passwords; a slow hash would only slow the suite.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def wrong_password(password):
    """Return the password with its last character changed: surely wrong."""
    return password[:-1] + ("y" if password.endswith("x") else "x")
