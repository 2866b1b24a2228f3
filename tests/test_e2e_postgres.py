"""The whole flow on a real PostgreSQL target, through the API, with a real worker.

Alice asks for read access to the orders database, Bob and Carol approve with codes
from their own phones, the worker creates the role, Alice reads the orders table,
and the worker cuts her off at the end: at expiry, or earlier when Bob revokes.
"""

from datetime import datetime, timedelta

import psycopg
import pytest

from tests.conftest import make_target, otp_code, wrong_password
from tests.fixtures.e2e import (
    assert_no_secret,
    assert_one_signed_webhook_per_event,
    assert_trail_intact,
    event_texts,
    reveal,
    trail,
    wait_for_status,
)

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

DSN_ENV = "BG_E2E_ORDERS_DB_DSN"
# The grant lives one minute, then the end task and the one-second sweep race for it.
EXPIRY_TIMEOUT_SECONDS = 90
REVOKE_TIMEOUT_SECONDS = 15
END_LAG = timedelta(seconds=10)


@pytest.fixture
def worker_env(pg_target):
    return {DSN_ENV: pg_target.admin_dsn}


@pytest.fixture
def orders_db(db):
    return make_target("orders-db", "postgres", grants=["orders_read"], env_var=DSN_ENV)


def _active_grant(api, alice, bob, carol, *, minutes):
    """Request, approve twice with real codes, wait for the worker to issue it."""
    as_alice = api(alice)
    created = as_alice.post(
        "/api/v1/requests/",
        {
            "target": "orders-db",
            "scope": "read",
            "duration_minutes": minutes,
            "reason": "orders stuck in checkout",
            "incident": "INC-4711",
        },
        format="json",
    )
    assert created.status_code == 201, created.data
    request_id = created.data["id"]
    assert created.data["approvals_required"] == 2

    first = api(bob).post(
        f"/api/v1/requests/{request_id}/approve/",
        {"otp": otp_code(bob), "comment": "go"},
        format="json",
    )
    assert first.status_code == 200, first.data
    assert first.data["status"] == "pending"
    second = api(carol).post(
        f"/api/v1/requests/{request_id}/approve/",
        {"otp": otp_code(carol), "comment": "confirmed"},
        format="json",
    )
    assert second.status_code == 200, second.data
    assert second.data["status"] in {"approved", "active"}

    detail = wait_for_status(as_alice, request_id, "active")
    return as_alice, request_id, detail


def _login(pg_target, credential, password=None):
    return psycopg.connect(
        host=credential["host"],
        port=credential["port"],
        dbname=credential["dbname"],
        user=credential["username"],
        password=password or credential["password"],
        connect_timeout=5,
        autocommit=True,
    )


def _check_cut_off(pg_target, credential, session):
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT count(*) FROM orders")
    session.close()
    with pytest.raises(psycopg.OperationalError):
        _login(pg_target, credential)
    assert pg_target.role(credential["username"]) is None
    assert pg_target.sessions(credential["username"]) == 0


def _iso(value):
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_grant_works_until_it_expires_then_is_gone(
    api, alice, bob, carol, cora, orders_db, worker, webhook_receiver, pg_target
):
    as_alice, request_id, detail = _active_grant(api, alice, bob, carol, minutes=1)

    credential = reveal(as_alice, request_id)
    assert credential["kind"] == "postgres"
    assert credential["username"].startswith("bg_alice_")
    assert credential["username"] == detail["principal"]
    assert len(credential["password"]) >= 24
    assert (credential["host"], credential["port"], credential["dbname"]) == (
        "127.0.0.1",
        pg_target.port,
        "orders",
    )
    session = _login(pg_target, credential)
    assert session.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        session.execute("UPDATE orders SET item = 'free'")
    with pytest.raises(psycopg.OperationalError, match="password authentication"):
        _login(pg_target, credential, password=wrong_password(credential["password"]))

    ended = wait_for_status(
        as_alice, request_id, "expired", timeout=EXPIRY_TIMEOUT_SECONDS
    )
    assert _iso(ended["expires_at"]) - _iso(ended["issued_at"]) == timedelta(minutes=1)
    assert _iso(ended["expires_at"]) <= _iso(ended["ended_at"])
    assert _iso(ended["ended_at"]) <= _iso(ended["expires_at"]) + END_LAG
    _check_cut_off(pg_target, credential, session)

    as_cora = api(cora)
    events = trail(as_cora, request_id)
    assert [(e["action"], e["actor"]) for e in events] == [
        ("request.created", "alice"),
        ("approval.approved", "bob"),
        ("approval.approved", "carol"),
        ("request.approved", "carol"),
        ("grant.issued", "system"),
        ("credential.revealed", "alice"),
        ("credential.used", "system"),
        ("grant.expired", "system"),
        ("review.due", "system"),
    ]
    assert all(e["incident"] == "INC-4711" for e in events)
    assert events[4]["data"]["principal"] == credential["username"]
    assert events[-2]["data"]["principal"] == credential["username"]
    assert_trail_intact(as_cora, events)
    deliveries = assert_one_signed_webhook_per_event(webhook_receiver, events)
    assert_no_secret(
        [credential["password"], pg_target.password],
        *event_texts(events, deliveries, worker),
    )


def test_a_grant_revoked_early_is_cut_off_within_seconds(
    api,
    alice,
    bob,
    carol,
    cora,
    orders_db,
    worker,
    webhook_receiver,
    pg_target,
    settings,
):
    as_alice, request_id, _ = _active_grant(api, alice, bob, carol, minutes=30)
    credential = reveal(as_alice, request_id)
    session = _login(pg_target, credential)
    assert session.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    settings.BREAKGLASS_REVOKE_WAIT_SECONDS = REVOKE_TIMEOUT_SECONDS

    revoked = api(bob).post(
        f"/api/v1/requests/{request_id}/revoke/",
        {"reason": "incident resolved"},
        format="json",
    )
    # The answer waits for the worker: it says "revoked" once that is true.
    assert revoked.status_code == 200, revoked.data
    assert revoked.data["status"] == "revoked"

    ended = wait_for_status(
        as_alice, request_id, "revoked", timeout=REVOKE_TIMEOUT_SECONDS
    )
    assert _iso(ended["ended_at"]) < _iso(ended["expires_at"])
    _check_cut_off(pg_target, credential, session)

    as_cora = api(cora)
    events = trail(as_cora, request_id)
    assert [(e["action"], e["actor"]) for e in events] == [
        ("request.created", "alice"),
        ("approval.approved", "bob"),
        ("approval.approved", "carol"),
        ("request.approved", "carol"),
        ("grant.issued", "system"),
        ("credential.revealed", "alice"),
        ("credential.used", "system"),
        ("grant.revoked", "bob"),
        ("review.due", "system"),
    ]
    assert events[-2]["data"]["reason"] == "incident resolved"
    assert_trail_intact(as_cora, events)
    deliveries = assert_one_signed_webhook_per_event(webhook_receiver, events)
    assert_no_secret(
        [credential["password"], pg_target.password],
        *event_texts(events, deliveries, worker),
    )
