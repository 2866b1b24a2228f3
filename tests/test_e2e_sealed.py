"""Sealed shared credentials end to end: the API, a real worker, real systems.

An operator seals the legacy database's emergency password with the command; the
worker rotates it away at once. Alice checks the account out, Bob and Carol
approve with codes from their phones, Alice logs in with the revealed secret,
and at the grant's end the worker sets a new secret: hers stops working, the one
the product sealed works.
"""

import secrets
import subprocess
import sys

import psycopg
import pytest
import redis
from psycopg import sql

from breakglass import vault
from breakglass.models import AuditEvent, SealedCredential
from tests.conftest import otp_code
from tests.fixtures.e2e import (
    assert_no_secret,
    assert_one_signed_webhook_per_event,
    assert_trail_intact,
    event_texts,
    reveal,
    trail,
    wait_for_status,
)
from tests.fixtures.waiting import wait_until
from tests.fixtures.worker import REPO
from tests.sealed_helpers import make_sealed_target

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

DSN_ENV = "BG_E2E_LEGACY_DB_DSN"
REDIS_ENV = "BG_E2E_LEGACY_CACHE_URL"
ROTATION_TIMEOUT_SECONDS = 30
EXPIRY_TIMEOUT_SECONDS = 90
REVOKE_TIMEOUT_SECONDS = 15


@pytest.fixture
def worker_env(pg_target, redis_target):
    return {DSN_ENV: pg_target.admin_dsn, REDIS_ENV: redis_target.admin_url}


@pytest.fixture
def emergency_role(pg_target):
    name = f"emergency_{secrets.token_hex(3)}"
    typed = secrets.token_urlsafe(16)
    with pg_target.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(typed)
            )
        )
        conn.execute(sql.SQL("GRANT orders_read TO {}").format(sql.Identifier(name)))
    yield name, typed
    pg_target.drop_role(name)


@pytest.fixture
def emergency_user(redis_target):
    name = f"emergency_{secrets.token_hex(3)}"
    typed = secrets.token_urlsafe(16)
    with redis_target.admin() as client:
        client.execute_command("ACL", "SETUSER", name, "on", f">{typed}", "~*", "+@all")
    yield name, typed
    with redis_target.admin() as client:
        client.execute_command("ACL", "DELUSER", name)


def seal_with_command(worker, target_name, secret):
    """Seal a secret as an operator does: piped into `manage.py seal_credential`."""
    result = subprocess.run(
        [sys.executable, "manage.py", "seal_credential", target_name, "--actor", "ops"],
        cwd=REPO,
        env=worker.env,
        input=secret + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "its rotation is queued" in result.stdout
    # Queued by the command after its commit, not left for the sweep to find.
    wait_until(
        lambda: "breakglass.tasks.rotate_credential" in worker.log(),
        timeout=ROTATION_TIMEOUT_SECONDS,
        what="the rotation task to reach the worker",
    )
    return result.stdout + result.stderr


def rotations(target):
    return AuditEvent.objects.filter(
        action="credential.rotated", target=target.name
    ).count()


def wait_for_rotations(target, count):
    """Wait for the worker to have rotated the secret `count` times in all."""
    wait_until(
        lambda: rotations(target) >= count,
        timeout=ROTATION_TIMEOUT_SECONDS,
        what=f"rotation {count} of {target.name}",
    )
    credential = SealedCredential.objects.get(target=target)
    assert credential.rotation_due_at is None
    assert credential.pending_secret is None
    assert not credential.is_compromised
    return vault.unseal(credential.secret)


def checked_out(api, alice, bob, carol, *, target, minutes):
    """Request the account, approve twice with real codes, wait for the grant."""
    as_alice = api(alice)
    created = as_alice.post(
        "/api/v1/requests/",
        {
            "target": target,
            "scope": "read",
            "duration_minutes": minutes,
            "reason": "the nightly export is stuck",
            "incident": "INC-9001",
        },
        format="json",
    )
    assert created.status_code == 201, created.data
    request_id = created.data["id"]
    for approver, comment in ((bob, "go"), (carol, "confirmed")):
        approved = api(approver).post(
            f"/api/v1/requests/{request_id}/approve/",
            {"otp": otp_code(approver), "comment": comment},
            format="json",
        )
        assert approved.status_code == 200, approved.data
    wait_for_status(as_alice, request_id, "active")
    return as_alice, request_id


def pg_login(pg_target, role, password):
    return psycopg.connect(pg_target.dsn(user=role, password=password), autocommit=True)


def can_log_in(pg_target, role, password):
    try:
        with pg_login(pg_target, role, password) as conn:
            return conn.execute("SELECT current_user").fetchone() == (role,)
    except psycopg.OperationalError:
        return False


def whole_trail(api, cora):
    as_cora = api(cora)
    response = as_cora.get("/api/v1/audit/")
    assert response.status_code == 200, response.data
    assert_trail_intact(as_cora, response.data)
    return response.data


def test_a_sealed_database_password_is_rotated_after_its_grant_expires(
    api, alice, bob, carol, cora, worker, webhook_receiver, pg_target, emergency_role
):
    role, typed = emergency_role
    target = make_sealed_target(
        "legacy-db",
        {"kind": "postgres", "connection_env": DSN_ENV, "username": role},
    )

    output = seal_with_command(worker, "legacy-db", typed)
    sealed = wait_for_rotations(target, 1)
    assert not can_log_in(pg_target, role, typed)
    assert can_log_in(pg_target, role, sealed)

    as_alice, request_id = checked_out(
        api, alice, bob, carol, target="legacy-db", minutes=1
    )
    credential = reveal(as_alice, request_id)
    assert credential["kind"] == "sealed"
    assert credential["username"] == role
    assert (credential["host"], credential["port"], credential["dbname"]) == (
        "127.0.0.1",
        pg_target.port,
        "orders",
    )
    revealed = credential["password"]
    assert revealed == sealed
    session = pg_login(pg_target, role, revealed)
    assert session.execute("SELECT count(*) FROM orders").fetchone() == (3,)

    ended = wait_for_status(
        as_alice, request_id, "expired", timeout=EXPIRY_TIMEOUT_SECONDS
    )
    new = wait_for_rotations(target, 2)

    assert new != revealed
    assert not can_log_in(pg_target, role, revealed)
    assert can_log_in(pg_target, role, new)
    # The session opened with the old secret does not outlive it.
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT count(*) FROM orders")
    session.close()
    assert ended["ended_at"] is not None

    events = trail(api(cora), request_id)
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
        ("credential.rotated", "system"),
    ]
    assert events[-1]["data"]["username"] == role
    assert events[-1]["data"]["was_compromised"] is False
    everything = whole_trail(api, cora)
    assert [(e["action"], e["actor"]) for e in everything[:2]] == [
        ("credential.sealed", "ops"),
        ("credential.rotated", "system"),
    ]
    assert everything[2:] == events
    deliveries = assert_one_signed_webhook_per_event(webhook_receiver, everything)
    assert_no_secret(
        [typed, revealed, new, pg_target.password],
        output,
        *event_texts(everything, deliveries, worker),
    )


def redis_login(redis_target, username, password):
    client = redis.Redis(
        host=redis_target.host,
        port=redis_target.port,
        username=username,
        password=password,
    )
    try:
        return client.ping()
    except redis.AuthenticationError:
        return False
    finally:
        client.close()


def test_a_sealed_redis_password_is_rotated_when_its_grant_is_ended_early(
    api,
    alice,
    bob,
    carol,
    cora,
    worker,
    webhook_receiver,
    redis_target,
    emergency_user,
    settings,
):
    name, typed = emergency_user
    target = make_sealed_target(
        "legacy-cache",
        {"kind": "redis", "connection_env": REDIS_ENV, "username": name},
    )
    output = seal_with_command(worker, "legacy-cache", typed)
    sealed = wait_for_rotations(target, 1)
    assert not redis_login(redis_target, name, typed)

    as_alice, request_id = checked_out(
        api, alice, bob, carol, target="legacy-cache", minutes=30
    )
    credential = reveal(as_alice, request_id)
    revealed = credential["password"]
    assert (credential["username"], revealed) == (name, sealed)
    assert (credential["host"], credential["port"]) == ("127.0.0.1", redis_target.port)
    assert redis_login(redis_target, name, revealed)
    settings.BREAKGLASS_REVOKE_WAIT_SECONDS = REVOKE_TIMEOUT_SECONDS

    revoked = api(bob).post(
        f"/api/v1/requests/{request_id}/revoke/",
        {"reason": "export running again"},
        format="json",
    )
    assert revoked.status_code == 200, revoked.data
    assert revoked.data["status"] == "revoked"
    new = wait_for_rotations(target, 2)

    assert not redis_login(redis_target, name, revealed)
    assert redis_login(redis_target, name, new)
    actions = [e["action"] for e in trail(api(cora), request_id)]
    assert actions[-3:] == ["grant.revoked", "review.due", "credential.rotated"]
    everything = whole_trail(api, cora)
    deliveries = assert_one_signed_webhook_per_event(webhook_receiver, everything)
    assert_no_secret(
        [typed, revealed, new, redis_target.password],
        output,
        *event_texts(everything, deliveries, worker),
    )
