"""Reconciliation: `bg_` principals that no live grant accounts for are removed.

A crash between creating a credential and recording it leaves a login role or an
ACL user that nothing would revoke. These tests create them directly, as such a
crash would, on a private PostgreSQL cluster and a private Redis server, next to
the credentials of grants that are active or being issued.
"""

import secrets
import threading
from datetime import timedelta

import psycopg
import pytest
import redis
import time_machine
from django.core import mail
from django.db import connection
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from breakglass import alerts, reconcile, services
from breakglass.models import AccessRequest, Alert, AuditEvent, Target

from .conftest import make_target
from .fixtures.waiting import wait_until
from .flows import approve, issued_request, open_request

Status = AccessRequest.Status

PG_ENV = "BG_TEST_RECONCILE_PG_DSN"
REDIS_ENV = "BG_TEST_RECONCILE_REDIS_URL"
RULES = ["~cache:*", "+get", "+set", "+ping"]
WEAK_ADMIN = "reconcile_weak_admin"


def _remove_every_principal(pg_target, redis_target):
    # The servers are private to this test session; earlier tests' leftovers
    # would be orphans here too.
    with pg_target.connect() as conn:
        names = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'bg\\_%'"
        ).fetchall()
    for (name,) in names:
        pg_target.drop_role(name)
    with redis_target.admin() as admin:
        for name in admin.acl_users():
            if name.startswith("bg_"):
                admin.acl_deluser(name)


@pytest.fixture
def servers(pg_target, redis_target, monkeypatch):
    monkeypatch.setenv(PG_ENV, pg_target.admin_dsn)
    monkeypatch.setenv(REDIS_ENV, redis_target.admin_url)
    _remove_every_principal(pg_target, redis_target)
    yield pg_target, redis_target
    _remove_every_principal(pg_target, redis_target)


@pytest.fixture
def targets(db, servers, settings):
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]
    orders = make_target(
        "orders-db", "postgres", grants=["orders_read"], env_var=PG_ENV
    )
    cache = make_target("cache", "redis", grants=RULES, env_var=REDIS_ENV)
    return orders, cache


def _principal():
    # Named as the product names them: a crash leaves exactly such a name.
    return f"bg_alice_{secrets.randbelow(10**6)}_{secrets.token_hex(4)}"


def _make_role(pg_target, name, password):
    with pg_target.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        conn.execute(sql.SQL("GRANT orders_read TO {}").format(sql.Identifier(name)))


def _make_acl_user(redis_target, name, password):
    with redis_target.admin() as admin:
        admin.execute_command(
            "ACL", "SETUSER", name, "reset", "on", f">{password}", *RULES
        )


def _redis_login(redis_target, name, password):
    client = redis.Redis(
        host=redis_target.host,
        port=redis_target.port,
        username=name,
        password=password,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
    )
    client.ping()
    return client


def _removed_events():
    return list(AuditEvent.objects.filter(action=reconcile.REMOVED).order_by("seq"))


def _failed_events():
    return list(
        AuditEvent.objects.filter(action=reconcile.REMOVAL_FAILED).order_by("seq")
    )


def test_orphans_are_removed_with_their_sessions_and_alerted_once(
    alice, bob, carol, targets, servers
):
    pg_target, redis_target = servers
    active_role = issued_request(alice, bob, carol, target="orders-db").grant
    # A code is accepted once: the second request is approved a step later.
    with time_machine.travel(timedelta(seconds=31)):
        active_user = issued_request(alice, bob, carol, target="cache").grant
    password = secrets.token_urlsafe(18)
    orphan_role, orphan_user = _principal(), _principal()
    _make_role(pg_target, orphan_role, password)
    _make_acl_user(redis_target, orphan_user, password)
    session = pg_target.connect(user=orphan_role, password=password)
    client = _redis_login(redis_target, orphan_user, password)

    counts = reconcile.reconcile_targets()

    assert counts == {"targets": 2, "orphans": 2, "removed": 2, "failed": 0}
    assert pg_target.role(orphan_role) is None
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    assert orphan_user not in redis_target.users()
    assert redis_target.connections(orphan_user) == []
    with pytest.raises(redis.ConnectionError):
        client.get("cache:x")
    # The credentials of live grants are not touched.
    assert pg_target.role(active_role.principal) is not None
    assert active_user.principal in redis_target.users()

    events = _removed_events()
    assert [(e.target, e.data) for e in events] == [
        ("orders-db", {"target": "orders-db", "principal": orphan_role}),
        ("cache", {"target": "cache", "principal": orphan_user}),
    ]
    assert all(e.actor == "system" and e.request_id is None for e in events)
    assert password not in str([e.data for e in events])
    assert [Alert.objects.filter(event=e).count() for e in events] == [1, 1]
    assert alerts.payload(events[0])["severity"] == "info"

    services.sweep()
    subjects = [m.subject for m in mail.outbox if reconcile.REMOVED in m.subject]
    assert sorted(subjects) == [
        f"[breakglass] {reconcile.REMOVED} cache",
        f"[breakglass] {reconcile.REMOVED} orders-db",
    ]


def test_a_second_run_does_nothing_more(alice, bob, carol, targets, servers):
    pg_target, redis_target = servers
    _make_role(pg_target, _principal(), "x-" + secrets.token_hex(8))
    _make_acl_user(redis_target, _principal(), "x-" + secrets.token_hex(8))
    assert reconcile.reconcile_targets()["removed"] == 2
    alerts_before = Alert.objects.count()

    counts = reconcile.reconcile_targets()

    assert counts == {"targets": 2, "orphans": 0, "removed": 0, "failed": 0}
    assert len(_removed_events()) == 2
    assert Alert.objects.count() == alerts_before


def test_the_principal_of_a_grant_being_issued_is_left_alone(
    alice, bob, carol, targets, servers
):
    pg_target, redis_target = servers
    issuing = open_request(alice, target="orders-db")
    approve(issuing, bob)
    approve(issuing, carol)
    issuing.refresh_from_db()
    assert issuing.status == Status.APPROVED
    # The provider has created the role; the grant is not recorded as issued yet.
    principal = issuing.grant.principal
    _make_role(pg_target, principal, "x-" + secrets.token_hex(8))

    counts = reconcile.reconcile_targets()

    assert counts["orphans"] == 0
    assert pg_target.role(principal) is not None
    assert _removed_events() == []
    # Once issued, the grant owns it as before.
    services.issue_grant(issuing.grant.pk)
    issuing.refresh_from_db()
    assert issuing.status == Status.ACTIVE
    assert reconcile.reconcile_targets()["orphans"] == 0
    assert pg_target.role(principal) is not None


def test_the_principal_of_a_failed_grant_is_an_orphan(
    alice, bob, carol, targets, servers, monkeypatch
):
    pg_target, _ = servers
    failing = open_request(alice, target="orders-db")
    approve(failing, bob)
    approve(failing, carol)
    grant = failing.grant
    # The target cannot be reached while issuing, nor for the cleanup after the
    # last attempt; the first attempt had created the role before it failed.
    monkeypatch.setenv(PG_ENV, pg_target.dsn(password="wrong-" + secrets.token_hex(4)))
    for attempt in range(services.MAX_ISSUE_ATTEMPTS):
        with time_machine.travel(timedelta(minutes=attempt + 1)):
            services.issue_grant(grant.pk)
    failing.refresh_from_db()
    assert failing.status == Status.FAILED
    _make_role(pg_target, grant.principal, "x-" + secrets.token_hex(8))
    monkeypatch.setenv(PG_ENV, pg_target.admin_dsn)

    counts = reconcile.reconcile_targets()

    assert counts["removed"] == 1
    assert pg_target.role(grant.principal) is None
    assert [e.data["principal"] for e in _removed_events()] == [grant.principal]


def test_one_unreachable_target_does_not_stop_the_others(targets, servers, monkeypatch):
    pg_target, redis_target = servers
    orphan_role, orphan_user = _principal(), _principal()
    _make_role(pg_target, orphan_role, "x-" + secrets.token_hex(8))
    _make_acl_user(redis_target, orphan_user, "x-" + secrets.token_hex(8))
    monkeypatch.delenv(PG_ENV)

    counts = reconcile.reconcile_targets()

    assert counts == {"targets": 1, "orphans": 1, "removed": 1, "failed": 0}
    assert pg_target.role(orphan_role) is not None
    assert orphan_user not in redis_target.users()
    assert [e.data["principal"] for e in _removed_events()] == [orphan_user]


def test_inactive_and_ssh_targets_are_not_listed(targets, servers):
    pg_target, redis_target = servers
    orders, cache = targets
    Target.objects.filter(pk=cache.pk).update(is_active=False)
    make_target("bastion", "ssh", grants=["root"], ca_env="BG_TEST_NO_CA")
    orphan_user = _principal()
    _make_acl_user(redis_target, orphan_user, "x-" + secrets.token_hex(8))

    counts = reconcile.reconcile_targets()

    assert counts == {"targets": 1, "orphans": 0, "removed": 0, "failed": 0}
    assert orphan_user in redis_target.users()


@pytest.fixture
def weak_admin(pg_target):
    """Return a DSN for a role that can list roles but not drop what they own."""
    password = secrets.token_hex(12)
    with pg_target.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                sql.Identifier(WEAK_ADMIN), sql.Literal(password)
            )
        )
    yield pg_target.dsn(user=WEAK_ADMIN, password=password)
    pg_target.drop_role(WEAK_ADMIN)


def test_a_failed_removal_is_a_critical_alert_and_is_tried_again(
    targets, servers, weak_admin, monkeypatch
):
    pg_target, _ = servers
    orphan_role = _principal()
    _make_role(pg_target, orphan_role, "x-" + secrets.token_hex(8))
    with pg_target.connect("scratch") as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int)").format(
                sql.Identifier(f"left_by_{orphan_role}")
            )
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                sql.Identifier(f"left_by_{orphan_role}"), sql.Identifier(orphan_role)
            )
        )
    monkeypatch.setenv(PG_ENV, weak_admin)

    counts = reconcile.reconcile_targets()

    assert counts["failed"] == 1 and counts["removed"] == 0
    assert pg_target.role(orphan_role) is not None
    (failure,) = _failed_events()
    assert failure.actor == "system" and failure.request_id is None
    assert failure.data["principal"] == orphan_role
    assert failure.data["target"] == "orders-db"
    assert failure.data["error"].startswith("PostgreSQL: ")
    assert weak_admin.split("password=")[-1].split()[0] not in failure.data["error"]
    assert alerts.payload(failure)["severity"] == "critical"
    assert Alert.objects.filter(event=failure).count() == 1

    # Every run tries again, and says so, until it succeeds.
    assert reconcile.reconcile_targets()["failed"] == 1
    assert len(_failed_events()) == 2
    monkeypatch.setenv(PG_ENV, pg_target.admin_dsn)
    assert reconcile.reconcile_targets()["removed"] == 1
    assert pg_target.role(orphan_role) is None
    assert [e.data["principal"] for e in _removed_events()] == [orphan_role]


def test_removing_again_what_is_gone_or_claimed_records_nothing(
    alice, bob, carol, targets, servers
):
    pg_target, _ = servers
    orders, _ = targets
    active = issued_request(alice, bob, carol, target="orders-db").grant
    gone = _principal()

    assert reconcile.remove_orphan(orders.pk, gone) is None
    assert reconcile.remove_orphan(orders.pk, active.principal) is None

    assert pg_target.role(active.principal) is not None
    assert _removed_events() == [] and _failed_events() == []


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_at_once_remove_each_orphan_once(targets, servers):
    pg_target, redis_target = servers
    orphans = [_principal() for _ in range(3)]
    for name in orphans[:2]:
        _make_role(pg_target, name, "x-" + secrets.token_hex(8))
    _make_acl_user(redis_target, orphans[2], "x-" + secrets.token_hex(8))
    barrier = threading.Barrier(2)
    results = []

    def run():
        try:
            barrier.wait()
            results.append(reconcile.reconcile_targets())
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(results) == 2
    assert sum(r["removed"] for r in results) == 3
    assert sum(r["failed"] for r in results) == 0
    assert sorted(e.data["principal"] for e in _removed_events()) == sorted(orphans)
    assert all(pg_target.role(name) is None for name in orphans[:2])
    assert orphans[2] not in redis_target.users()


@pytest.fixture
def worker_env(pg_target, redis_target):
    return {
        PG_ENV: pg_target.admin_dsn,
        REDIS_ENV: redis_target.admin_url,
        "BREAKGLASS_RECONCILE_SECONDS": "1",
    }


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_the_scheduler_runs_reconciliation(targets, servers, worker, webhook_receiver):
    pg_target, redis_target = servers
    orphan_role, orphan_user = _principal(), _principal()
    _make_role(pg_target, orphan_role, "x-" + secrets.token_hex(8))
    _make_acl_user(redis_target, orphan_user, "x-" + secrets.token_hex(8))

    wait_until(
        lambda: (
            pg_target.role(orphan_role) is None
            and orphan_user not in redis_target.users()
        ),
        timeout=20,
        what="the orphans to be removed",
    )

    wait_until(
        lambda: not Alert.objects.filter(delivered_at__isnull=True).exists(),
        timeout=20,
        what="the alerts to be delivered",
    )
    events = _removed_events()
    assert sorted(e.data["principal"] for e in events) == sorted(
        [orphan_role, orphan_user]
    )
    deliveries = [
        d for d in webhook_receiver.deliveries if d.event == reconcile.REMOVED
    ]
    assert sorted(d.json()["data"]["principal"] for d in deliveries) == sorted(
        [orphan_role, orphan_user]
    )
    assert all(webhook_receiver.is_signed(d) for d in deliveries)
    assert "reconcile" in worker.log()


def test_a_role_or_user_that_only_starts_with_bg_is_never_touched(targets, servers):
    pg_target, redis_target = servers
    _make_role(pg_target, "bg_app", "x-" + secrets.token_hex(8))
    _make_acl_user(redis_target, "bg_cache_writer", "x-" + secrets.token_hex(8))
    try:
        counts = reconcile.reconcile_targets()

        assert counts["orphans"] == 0
        assert pg_target.role("bg_app") is not None
        assert "bg_cache_writer" in redis_target.users()
        assert _removed_events() == []
    finally:
        with pg_target.connect() as conn:
            conn.execute("DROP OWNED BY bg_app")
            conn.execute("DROP ROLE bg_app")
        with redis_target.admin() as admin:
            admin.execute_command("ACL", "DELUSER", "bg_cache_writer")
