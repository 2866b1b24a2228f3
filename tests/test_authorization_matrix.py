"""Who may do what, on every address of the project: the authorization matrix.

Each address of the resolver is called by every kind of caller, on a request of
their own and on one that is not: nobody, Alice (a requester), Bob (an approver
of her request), Dave (an approver of Eve's), Cora (compliance), Ada (an admin)
and Oscar (no role). Only the allowed cells succeed; the others are refused with
the exact status of tests/routes.py. An address the resolver knows and the
table does not fails the first test, so a new endpoint needs its row.
"""

from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django.db.models import Max
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice
from knox.models import AuthToken
from rest_framework.test import APIClient

from breakglass import oncall, roles, services
from breakglass.models import AuditEvent, OnCallShift

from .conftest import make_user, otp_code
from .flows import approve, make_ssh_ca, make_ssh_target, open_request
from .routes import ADMIN_LOGIN, API, CALLERS, LOGIN, ROUTES, resolver_patterns
from .web_helpers import login


def test_every_address_has_its_row():
    assert sorted(set(resolver_patterns())) == sorted({c.pattern for c in ROUTES})


@pytest.fixture
def world(db, tmp_path, monkeypatch, alice, bob, carol, dave, cora, ada, oscar):
    eve = make_user("eve", roles.REQUESTER, groups=["oncall"])
    pat = make_user("pat", roles.APPROVER, groups=["payments-leads"], totp=True)
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target("bastion", approvals=1)
    make_ssh_target("vault", approvals=1, approver_groups=("payments-leads",))
    return {
        "own": open_request(alice, target="bastion", incident="INC-1"),
        "other": open_request(eve, target="vault", incident="INC-2"),
        "approvers": {"bastion": carol, "vault": pat},
    }


def _bring_to(access_request, state, approver):
    if state == "pending":
        return access_request
    approve(access_request, approver)
    access_request.refresh_from_db()
    services.issue_grant(access_request.grant.pk)
    if state in ("ended", "submitted"):
        requester = access_request.requester
        services.request_end(access_request.pk, actor=requester, reason="fixed")
        services.end_grant(access_request.grant.pk)
    if state == "submitted":
        services.submit_review(
            access_request.pk, actor=access_request.requester, summary="Cleared."
        )
    access_request.refresh_from_db()
    return access_request


def _body(name, user):
    has_device = user is not None and TOTPDevice.objects.filter(user=user).exists()
    code = otp_code(user) if has_device else "123456"
    bodies = {
        "": {},
        "new_request": {
            "target": "bastion",
            "scope": "read",
            "duration_minutes": 30,
            "reason": "disk full",
            "incident": "INC-9",
        },
        "new_request_form": {
            "target": "bastion",
            "scope": "bastion:read",
            "duration_minutes": 30,
            "reason": "disk full",
            "incident": "INC-9",
        },
        "vote": {"otp": code, "comment": ""},
        "end": {"reason": "done"},
        "review": {"summary": "Cleared the queue."},
        "sign_off": {"comment": ""},
        "send_back": {"comment": "Say which tables."},
        "add_device": {
            "name": "tablet",
            "password": f"pw-{user.username}" if user else "",
            **({"current_code": code} if has_device else {}),
        },
        "confirm_device": {"code": "123456"},
        "shift": {
            "user": "alice",
            "starts_at": "2030-01-01T00:00:00Z",
            "ends_at": "2030-01-02T00:00:00Z",
        },
    }
    return bodies[name]


def _shift():
    ada = User.objects.get(username="ada")
    return oncall.add_oncall_shift(
        user=ada,
        starts_at=datetime(2030, 2, 1, tzinfo=UTC),
        ends_at=datetime(2030, 2, 1, 8, tzinfo=UTC),
        actor=ada,
        source=OnCallShift.Source.API,
    )


def _client(call, user):
    if call.kind == API:
        client = APIClient()
        if user is not None:
            _, token = AuthToken.objects.create(user=user, expiry=None)
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        return client
    return login(user) if user is not None else Client()


def _prepare(call, world, which):
    """Bring the request to the call's state; return the address to call."""
    access_request = _bring_to(
        world[which], call.state, world["approvers"][world[which].target.name]
    )
    shift = _shift() if "{shift}" in call.path else None
    path = call.path.format(
        pk=access_request.pk,
        shift=shift and shift.pk,
        incident=access_request.incident,
    )
    return path


def _send(call, user, path):
    client = _client(call, user)
    data = _body(call.body, user)
    method = getattr(client, call.method.lower())
    if call.method == "GET":
        return method(path, call.query)
    if call.kind == API:
        return method(path, data, format="json")
    return method(path, data)


def _assert_status(response, expected, cell):
    if expected == LOGIN:
        assert response.status_code == 302, cell
        assert response["Location"].startswith("/login/"), cell
    elif expected == ADMIN_LOGIN:
        assert response.status_code == 302, cell
        assert response["Location"].startswith("/admin/login/"), cell
    else:
        assert response.status_code == expected, (cell, response.content[:300])


def _cells():
    cells = []
    for call in ROUTES:
        for caller in CALLERS:
            expected = call.expect[caller]
            if not isinstance(expected, tuple):
                cells.append(
                    pytest.param(call, caller, "own", expected, id=_id(call, caller))
                )
                continue
            for which, status in zip(("own", "other"), expected, strict=True):
                cells.append(
                    pytest.param(
                        call, caller, which, status, id=_id(call, caller, which)
                    )
                )
    return cells


def _id(call, caller, which=""):
    return f"{call.id} {caller}" + (f" {which}" if which else "")


def _last_seq():
    return AuditEvent.objects.aggregate(last=Max("seq"))["last"]


@pytest.mark.parametrize("call, caller, which, expected", _cells())
def test_the_matrix(world, call, caller, which, expected):
    user = None if caller == "anonymous" else User.objects.get(username=caller)

    path = _prepare(call, world, which)
    seq_before = _last_seq()

    response = _send(call, user, path)

    cell = f"{call.id} as {caller} on {which}"
    _assert_status(response, expected, cell)
    if expected in (LOGIN, ADMIN_LOGIN) or expected >= 400:
        # A refusal changes nothing: the trail has no event it did not have.
        assert _last_seq() == seq_before, cell
