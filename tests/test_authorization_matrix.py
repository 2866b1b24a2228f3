"""Who may do what, on every address of the project: the authorization matrix.

Each address of the resolver is called by every kind of caller, on a request of
their own and on one that is not: nobody, Alice (a requester), Bob (an approver
of her request), Dave (an approver of Eve's), Cora (compliance), Ada (an admin)
and Oscar (no role). Only the allowed cells succeed; the others are refused with
the exact status of tests/routes.py. An address the resolver knows and the
table does not fails the first test, so a new endpoint needs its row.
"""

import pytest
from django.contrib.auth.models import User

from .routes import (  # noqa: F401 - world is a fixture
    ADMIN_LOGIN,
    CALLERS,
    LOGIN,
    ROUTES,
    client_for,
    last_seq,
    prepare,
    resolver_patterns,
    send,
    world,
)


def test_every_address_has_its_row():
    assert sorted(set(resolver_patterns())) == sorted({c.pattern for c in ROUTES})


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


@pytest.mark.parametrize("call, caller, which, expected", _cells())
def test_the_matrix(world, call, caller, which, expected):  # noqa: F811
    user = None if caller == "anonymous" else User.objects.get(username=caller)

    path = prepare(call, world, which)
    seq_before = last_seq()

    response = send(call, user, path)

    cell = f"{call.id} as {caller} on {which}"
    _assert_status(response, expected, cell)
    if expected in (LOGIN, ADMIN_LOGIN) or expected >= 400:
        # A refusal changes nothing: the trail has no event it did not have.
        assert last_seq() == seq_before, cell


def _other_methods():
    by_pattern = {}
    for call in ROUTES:
        by_pattern.setdefault(call.pattern, []).append(call)
    cases = []
    for pattern, calls in by_pattern.items():
        if pattern in SPECIAL_METHODS:
            continue
        methods = {c.method for c in calls}
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            if method not in methods:
                cases.append(pytest.param(calls[0], method, id=f"{method} {pattern}"))
    return cases


# Addresses that take more methods than the table calls, or answer any of them.
SPECIAL_METHODS = {"login/", "admin/", "api/v1/^(?P<path>.*/)$"}


@pytest.mark.parametrize("call, method", _other_methods())
def test_other_methods_are_not_allowed(world, call, method):  # noqa: F811
    ada = User.objects.get(username="ada")
    path = prepare(call, world, "own")
    client = client_for(call, ada)
    before = last_seq()

    response = getattr(client, method.lower())(path)

    assert response.status_code == 405, response.content[:300]
    assert last_seq() == before
