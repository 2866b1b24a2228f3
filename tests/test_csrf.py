"""Every unsafe address refuses a session-authenticated call without a CSRF token.

For each unsafe call of tests/routes.py, someone allowed to make it does so from
a logged-in browser session: without the token it is refused with 403 and
changes nothing; with the token it succeeds. The API does the same for a session,
and needs no token with `Authorization: Token`, which a browser never sends on
its own.
"""

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from rest_framework.test import APIClient

from .routes import (  # noqa: F401 - world is a fixture
    ADMIN_LOGIN,
    API,
    LOGIN,
    ROUTES,
    client_for,
    last_seq,
    prepare,
    send,
    world,
)
from .web_helpers import login

UNSAFE = [call for call in ROUTES if call.method not in ("GET", "HEAD", "OPTIONS")]


def _allowed_caller(call):
    """Return someone whom the call lets through on their own request."""
    for caller, expected in call.expect.items():
        own = expected[0] if isinstance(expected, tuple) else expected
        if own not in (LOGIN, ADMIN_LOGIN, 401, 403, 404):
            return caller, own
    raise AssertionError(f"nobody may {call.id}")


def _session_client(call, user):
    if user is None:
        return Client(enforce_csrf_checks=True)
    if call.kind == API:
        client = APIClient(enforce_csrf_checks=True)
        client.force_login(user)
        return client
    return login(user, enforce_csrf_checks=True)


def _with_token(client, call):
    token = _get_new_csrf_string()
    client.cookies[settings.CSRF_COOKIE_NAME] = token
    return {"HTTP_X_CSRFTOKEN": token}


def test_every_unsafe_address_is_checked():
    assert {c.id for c in UNSAFE} >= {
        "POST /requests/{pk}/approve/",
        "POST /api/v1/requests/{pk}/approve/",
        "DELETE /api/v1/oncall/{shift}/",
        "POST /logout/",
    }


@pytest.mark.parametrize("call", UNSAFE, ids=lambda c: c.id)
def test_a_session_without_the_token_is_refused(world, call):  # noqa: F811
    caller, _ = _allowed_caller(call)
    user = None if caller == "anonymous" else User.objects.get(username=caller)
    path = prepare(call, world, "own")
    before = last_seq()

    response = send(call, user, path, client=_session_client(call, user))

    assert response.status_code == 403, response.content[:300]
    if call.kind == API:
        assert response.json()["code"] == "not_allowed"
        assert "CSRF" in response.json()["detail"]
    else:
        assert "This form has expired" in response.text
        assert "Nothing was changed." in response.text
    assert last_seq() == before


@pytest.mark.parametrize("call", UNSAFE, ids=lambda c: c.id)
def test_a_session_with_the_token_is_served(world, call):  # noqa: F811
    caller, expected = _allowed_caller(call)
    user = None if caller == "anonymous" else User.objects.get(username=caller)
    path = prepare(call, world, "own")
    client = _session_client(call, user)

    response = send(call, user, path, client=client, **_with_token(client, call))

    assert response.status_code == expected, response.content[:300]


@pytest.mark.parametrize(
    "call", [c for c in UNSAFE if c.kind == API], ids=lambda c: c.id
)
def test_a_token_needs_no_csrf_token(world, call):  # noqa: F811
    caller, expected = _allowed_caller(call)
    user = User.objects.get(username=caller)
    path = prepare(call, world, "own")
    client = client_for(call, user)
    client.enforce_csrf_checks = True
    client.handler.enforce_csrf_checks = True

    response = send(call, user, path, client=client)

    assert response.status_code == expected, response.content[:300]


def test_the_login_form_needs_the_token(alice):
    client = Client(enforce_csrf_checks=True)

    response = client.post("/login/", {"username": "alice", "password": "pw-alice"})

    assert response.status_code == 403
    assert client.get("/").status_code == 302
