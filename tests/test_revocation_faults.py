"""Revocation that holds under failure, on a private PostgreSQL cluster and Redis.

What the role created in two databases goes with it; a revoke task delivered twice
has one effect; a worker killed before the scheduled revocation is made good by the
next worker's sweep; a target that refuses is retried with capped backoff and
alerted as critical each time, without leaking connections.
"""

import os
import secrets
import socket
import threading
import time
from datetime import timedelta

import psycopg
import pytest
import redis
import time_machine
from django.core import mail
from django.db import connection
from django.utils import timezone
from psycopg import sql
from psycopg.conninfo import make_conninfo

from breakglass import alerts, services, tasks
from breakglass.models import AccessRequest, Alert, AuditEvent, Grant

from .conftest import make_target
from .fixtures.waiting import wait_until
from .flows import approve, issued_request, open_request

Status = AccessRequest.Status

PG_ENV = "BG_TEST_FAULTS_PG_DSN"
REDIS_ENV = "BG_TEST_FAULTS_REDIS_URL"
WEAK_ADMIN = "faults_weak_admin"
THREAD_TIMEOUT_SECONDS = 60
# How soon after it starts a new worker must have revoked an overdue grant: its
# scheduler sweeps every second.
RESTART_REVOKE_SECONDS = 10


@pytest.fixture
def orders_db(db, pg_target, monkeypatch):
    monkeypatch.setenv(PG_ENV, pg_target.admin_dsn)
    return make_target("orders-db", "postgres", grants=["orders_read"], env_var=PG_ENV)


@pytest.fixture
def build_db(db, pg_target, monkeypatch):
    monkeypatch.setenv(PG_ENV, pg_target.admin_dsn)
    return make_target("build-db", "postgres", grants=["builder"], env_var=PG_ENV)


@pytest.fixture
def cache(db, redis_target, monkeypatch):
    monkeypatch.setenv(REDIS_ENV, redis_target.admin_url)
    return make_target("cache", "redis", grants=["~cache:*", "+get"], env_var=REDIS_ENV)


@pytest.fixture
def weak_admin(pg_target):
    """Return a DSN for a role that can log in and alter roles, not drop them."""
    password = secrets.token_hex(12)
    with pg_target.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                sql.Identifier(WEAK_ADMIN), sql.Literal(password)
            )
        )
    yield pg_target.dsn(user=WEAK_ADMIN, password=password)
    pg_target.drop_role(WEAK_ADMIN)


def _login(pg_target, credential, dbname="orders"):
    return pg_target.connect(
        dbname, user=credential["username"], password=credential["password"]
    )


def _count(action, access_request=None):
    events = AuditEvent.objects.filter(action=action)
    if access_request is not None:
        events = events.filter(request=access_request)
    return events.count()


def _deliver_alerts():
    undelivered = Alert.objects.filter(delivered_at__isnull=True)
    for alert_id in undelivered.values_list("pk", flat=True):
        alerts.deliver(alert_id)


def _unused_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _table_exists(pg_target, dbname, name):
    with pg_target.connect(dbname) as conn:
        return bool(
            conn.execute("SELECT 1 FROM pg_class WHERE relname = %s", [name]).fetchone()
        )


# What the role created or was given


def test_revocation_drops_what_the_role_owns_in_two_databases(
    alice, bob, carol, build_db, pg_target
):
    access_request = issued_request(alice, bob, carol, target="build-db")
    grant = access_request.grant
    credential = services.reveal_credential(access_request.pk, actor=alice)
    principal = credential["username"]
    suffix = principal.rsplit("_", 1)[-1]
    with _login(pg_target, credential, "orders") as conn:
        # A serial column: the role owns a table and a sequence.
        conn.execute(f"CREATE TABLE copy_{suffix} (id serial PRIMARY KEY)")
    with _login(pg_target, credential, "scratch") as conn:
        conn.execute(f"CREATE TABLE notes_{suffix} (line text)")
    with pg_target.connect() as conn:
        # Privileges on what it does not own: a table, a schema and a sequence.
        conn.execute(f"CREATE SEQUENCE numbers_{suffix}")
        for statement in (
            "GRANT SELECT ON orders TO {}",
            "GRANT USAGE ON SCHEMA public TO {}",
            f"GRANT USAGE ON SEQUENCE numbers_{suffix} TO {{}}",
        ):
            conn.execute(sql.SQL(statement).format(sql.Identifier(principal)))
    switched = _login(pg_target, credential, "scratch")
    switched.execute("SET ROLE builder")

    with time_machine.travel(grant.expires_at + timedelta(seconds=1), tick=False):
        assert services.end_grant(grant.pk) is True

    access_request.refresh_from_db()
    assert access_request.status == Status.EXPIRED
    assert pg_target.role(principal) is None
    assert pg_target.sessions(principal) == 0
    with pytest.raises(psycopg.OperationalError):
        switched.execute("SELECT 1")
    switched.close()
    assert not _table_exists(pg_target, "orders", f"copy_{suffix}")
    assert not _table_exists(pg_target, "orders", f"copy_{suffix}_id_seq")
    assert not _table_exists(pg_target, "scratch", f"notes_{suffix}")
    # What the admin owns stays, without the privileges the role had on it.
    assert _table_exists(pg_target, "orders", "orders")
    assert _table_exists(pg_target, "orders", f"numbers_{suffix}")
    with pg_target.connect() as conn:
        acl = conn.execute(
            "SELECT relacl::text FROM pg_class WHERE relname = 'orders'"
        ).fetchone()[0]
        conn.execute(f"DROP SEQUENCE numbers_{suffix}")
    assert principal not in acl
    assert _count("grant.expired", access_request) == 1
    assert _count("grant.revocation_failed") == 0


# A revoke task delivered twice


@pytest.mark.django_db(transaction=True)
def test_end_grant_run_twice_at_once_expires_once_with_one_alert_per_channel(
    alice, bob, carol, orders_db, pg_target, settings, webhook_receiver
):
    settings.BREAKGLASS_ALERT_WEBHOOK_URLS = [webhook_receiver.url]
    settings.BREAKGLASS_ALERT_WEBHOOK_SECRET = webhook_receiver.secret
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]
    access_request = issued_request(alice, bob, carol, target="orders-db")
    grant = access_request.grant
    barrier = threading.Barrier(2)
    results = []

    def end():
        try:
            barrier.wait()
            results.append(services.end_grant(grant.pk))
        finally:
            connection.close()

    with time_machine.travel(grant.expires_at + timedelta(seconds=1)):
        threads = [threading.Thread(target=end) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(THREAD_TIMEOUT_SECONDS)

    assert sorted(results) == [False, True]
    access_request.refresh_from_db()
    assert access_request.status == Status.EXPIRED
    assert pg_target.role(grant.principal) is None
    (event,) = AuditEvent.objects.filter(action="grant.expired")
    assert sorted(
        Alert.objects.filter(event=event).values_list("channel", flat=True)
    ) == ["email", "webhook"]
    assert _count("grant.revoked") == 0

    _deliver_alerts()
    assert [d.event for d in webhook_receiver.deliveries].count("grant.expired") == 1
    assert [m.subject.split()[1] for m in mail.outbox].count("grant.expired") == 1


@pytest.fixture
def worker_env(pg_target):
    return {PG_ENV: pg_target.admin_dsn}


def _active_through_worker(alice, bob, carol, *, minutes=30):
    """Request and approve; return the request once the worker has issued it."""
    access_request = open_request(alice, target="orders-db", duration_minutes=minutes)
    approve(access_request, bob)
    approve(access_request, carol)

    def issued():
        access_request.refresh_from_db()
        assert access_request.status in {Status.APPROVED, Status.ACTIVE}
        return access_request.status == Status.ACTIVE

    wait_until(issued, timeout=30, what="the worker to issue the grant")
    return access_request


def _end_tasks_done(worker):
    return sum(
        "breakglass.tasks.end_grant" in line and "succeeded" in line
        for line in worker.log().splitlines()
    )


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_revoke_task_delivered_twice_to_the_worker_has_one_effect(
    alice, bob, carol, orders_db, worker, webhook_receiver, pg_target
):
    access_request = _active_through_worker(alice, bob, carol)
    grant = Grant.objects.get(request=access_request)
    credential = services.reveal_credential(access_request.pk, actor=alice)
    session = _login(pg_target, credential)

    services.request_end(access_request.pk, actor=bob, reason="resolved")
    tasks.end_grant.apply_async((grant.pk,))
    tasks.end_grant.apply_async((grant.pk,))

    wait_until(
        lambda: _end_tasks_done(worker) >= 3,
        timeout=20,
        what="the worker to run the three end tasks",
    )
    access_request.refresh_from_db()
    assert access_request.status == Status.REVOKED
    assert pg_target.role(grant.principal) is None
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    assert _count("grant.revoked", access_request) == 1
    assert _count("grant.expired") == 0
    wait_until(
        lambda: not Alert.objects.filter(delivered_at__isnull=True).exists(),
        timeout=20,
        what="every alert to be delivered",
    )
    revoked = [d for d in webhook_receiver.deliveries if d.event == "grant.revoked"]
    assert len(revoked) == 1
    assert revoked[0].json()["actor"] == "bob"


# A worker killed before the scheduled revocation


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_grant_whose_worker_was_killed_is_revoked_by_the_next_worker(
    alice, bob, carol, orders_db, worker, webhook_receiver, pg_target
):
    began = time.monotonic()
    access_request = _active_through_worker(alice, bob, carol, minutes=1)
    grant = Grant.objects.get(request=access_request)
    assert pg_target.role(grant.principal) is not None
    wait_until(
        lambda: "breakglass.tasks.end_grant" in worker.log(),
        timeout=10,
        what="the worker to hold the scheduled end",
    )

    worker.kill()
    assert not worker.is_running()
    # The real end of a one-minute grant: no clock can be moved in the worker.
    wait = (grant.expires_at - timezone.now()).total_seconds() + 1
    time.sleep(max(0.0, wait))
    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE
    assert pg_target.role(grant.principal) is not None

    log_before = len(worker.log())
    worker.start()
    restarted = time.monotonic()

    def expired():
        access_request.refresh_from_db()
        return access_request.status == Status.EXPIRED

    wait_until(expired, timeout=RESTART_REVOKE_SECONDS, what="the new worker to revoke")
    lag = time.monotonic() - restarted
    assert pg_target.role(grant.principal) is None
    assert _count("grant.expired", access_request) == 1
    assert _count("grant.revocation_failed") == 0
    # The new worker did it: either its sweep, or the scheduled end that the
    # broker gave back once the killed worker's hold on it lapsed.
    new_log = worker.log()[log_before:]
    assert "'ended': 1" in new_log or f"grant {grant.pk} ended (expired)" in new_log
    wait_until(
        lambda: not Alert.objects.filter(delivered_at__isnull=True).exists(),
        timeout=20,
        what="every alert to be delivered",
    )
    expired_alerts = [
        d for d in webhook_receiver.deliveries if d.event == "grant.expired"
    ]
    assert len(expired_alerts) == 1
    print(
        f"revoked {lag:.1f} s after the new worker was ready; "
        f"test took {time.monotonic() - began:.1f} s"
    )


# A target that refuses


def _operations(api, user):
    response = api(user).get("/api/v1/operations/failing-revocations/")
    assert response.status_code == 200, response.data
    return response.data


def test_a_revocation_that_fails_twice_then_succeeds(
    alice, bob, carol, cora, orders_db, pg_target, monkeypatch, settings, api
):
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]
    access_request = issued_request(alice, bob, carol, target="orders-db")
    grant = access_request.grant
    start = grant.expires_at + timedelta(seconds=1)

    # First the server refuses the admin's password...
    wrong = "wrong-" + secrets.token_hex(6)
    monkeypatch.setenv(PG_ENV, pg_target.dsn(password=wrong))
    with time_machine.travel(start, tick=False):
        assert services.sweep()["ended"] == 0
    grant.refresh_from_db()
    assert grant.revoke_attempts == 1
    assert grant.retry_at == start + timedelta(seconds=2)
    assert "password authentication failed" in grant.last_error
    assert wrong not in grant.last_error
    with time_machine.travel(start + timedelta(seconds=1), tick=False):
        (row,) = _operations(api, cora)["revocations"]
    assert (row["request"], row["principal"], row["state"]) == (
        access_request.pk,
        grant.principal,
        "failing",
    )
    assert row["attempts"] == 1
    assert row["last_error"] == grant.last_error
    assert row["next_attempt_at"] == grant.retry_at.isoformat().replace("+00:00", "Z")

    # ...then nothing listens where it was.
    port = _unused_port()
    monkeypatch.setenv(PG_ENV, make_conninfo(pg_target.admin_dsn, port=str(port)))
    with time_machine.travel(start + timedelta(seconds=1), tick=False):
        assert services.sweep()["ended"] == 0
    grant.refresh_from_db()
    assert grant.revoke_attempts == 1
    with time_machine.travel(start + timedelta(seconds=2), tick=False):
        assert services.sweep()["ended"] == 0
    grant.refresh_from_db()
    assert grant.revoke_attempts == 2
    assert grant.retry_at == start + timedelta(seconds=2 + 4)
    assert str(port) in grant.last_error or "connect" in grant.last_error.lower()

    # The target is back.
    monkeypatch.setenv(PG_ENV, pg_target.admin_dsn)
    with time_machine.travel(start + timedelta(seconds=6), tick=False):
        assert services.sweep()["ended"] == 1
    access_request.refresh_from_db()
    grant.refresh_from_db()
    assert access_request.status == Status.EXPIRED
    assert pg_target.role(grant.principal) is None
    assert (grant.retry_at, grant.last_error) == (None, "")

    events = list(
        AuditEvent.objects.filter(request=access_request)
        .exclude(action="review.due")
        .order_by("seq")
    )[-3:]
    assert [e.action for e in events] == [
        "grant.revocation_failed",
        "grant.revocation_failed",
        "grant.expired",
    ]
    assert [e.data["attempt"] for e in events[:2]] == [1, 2]
    assert all(wrong not in str(e.data) for e in events)
    assert [alerts.payload(e)["severity"] for e in events] == [
        "critical",
        "critical",
        "info",
    ]
    assert [Alert.objects.filter(event=e).count() for e in events] == [1, 1, 1]
    assert _operations(api, cora)["revocations"] == []
    _deliver_alerts()
    subjects = [m.subject.split()[1] for m in mail.outbox]
    assert subjects.count("grant.revocation_failed") == 2
    assert subjects.count("grant.expired") == 1


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def _admin_sessions(pg_target, *users):
    with pg_target.connect("postgres") as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE usename = ANY(%s) AND pid <> pg_backend_pid()",
            [list(users)],
        ).fetchone()[0]


def _fail_to_revoke(grant, times, dsns, monkeypatch, env):
    """Let the sweep try to revoke `times` times, the target refusing each time.

    Return the delays before each next attempt.
    """
    delays = []
    moment = grant.expires_at + timedelta(seconds=1)
    for attempt in range(times):
        monkeypatch.setenv(env, dsns[attempt % len(dsns)])
        with time_machine.travel(moment, tick=False):
            assert services.sweep()["ended"] == 0
        grant.refresh_from_db()
        assert grant.revoke_attempts == attempt + 1
        delays.append(grant.retry_at - moment)
        moment = grant.retry_at
    return delays


def test_twenty_failed_revocations_leak_nothing_and_back_off_to_the_cap(
    alice, bob, carol, orders_db, pg_target, weak_admin, monkeypatch
):
    access_request = issued_request(alice, bob, carol, target="orders-db")
    grant = access_request.grant
    users = ("postgres", WEAK_ADMIN)
    sessions_before = _admin_sessions(pg_target, *users)
    fds_before = _open_fds()

    # Refused at login, or refused half-way once connected (the weak admin may
    # alter the role but not drop what it owns).
    refusing = [pg_target.dsn(password="wrong-" + secrets.token_hex(6)), weak_admin]
    delays = _fail_to_revoke(grant, 20, refusing, monkeypatch, PG_ENV)

    assert _admin_sessions(pg_target, *users) == sessions_before
    assert _open_fds() == fds_before
    assert delays == [
        min(services.MAX_RETRY_DELAY, timedelta(seconds=2**n)) for n in range(1, 21)
    ]
    assert max(delays) == services.MAX_RETRY_DELAY
    failures = AuditEvent.objects.filter(action="grant.revocation_failed")
    assert [e.data["attempt"] for e in failures.order_by("seq")] == list(range(1, 21))
    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE

    monkeypatch.setenv(PG_ENV, pg_target.admin_dsn)
    with time_machine.travel(grant.retry_at, tick=False):
        assert services.sweep()["ended"] == 1
    assert pg_target.role(grant.principal) is None
    assert _count("grant.expired") == 1


@pytest.fixture
def weak_redis_admin(redis_target):
    """Return a URL for an ACL user that can connect but not delete users."""
    name, password = "faults_weak_admin", secrets.token_hex(12)
    with redis_target.admin() as admin:
        admin.execute_command(
            "ACL", "SETUSER", name, "reset", "on", f">{password}", "+ping", "+client"
        )
    yield f"redis://{name}:{password}@{redis_target.host}:{redis_target.port}/0"
    with redis_target.admin() as admin:
        admin.acl_deluser(name)


def test_twenty_failed_redis_revocations_leak_no_connection(
    alice, bob, carol, cache, redis_target, weak_redis_admin, monkeypatch
):
    access_request = issued_request(alice, bob, carol, target="cache")
    grant = access_request.grant
    connections_before = len(redis_target.connections())
    fds_before = _open_fds()

    refusing = [redis_target.url(password="wrong-" + secrets.token_hex(6))]
    refusing.append(weak_redis_admin)
    _fail_to_revoke(grant, 20, refusing, monkeypatch, REDIS_ENV)

    # The count includes the connection that asks.
    assert len(redis_target.connections()) == connections_before
    assert _open_fds() == fds_before
    assert grant.last_error.startswith("Redis: ")
    assert _count("grant.revocation_failed") == 20

    monkeypatch.setenv(REDIS_ENV, redis_target.admin_url)
    with time_machine.travel(grant.retry_at, tick=False):
        assert services.sweep()["ended"] == 1
    assert grant.principal not in redis_target.users()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(
            host=redis_target.host,
            port=redis_target.port,
            username=grant.principal,
            password="anything",
        ).ping()
