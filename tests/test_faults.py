"""Faults injected into the real worker, broker and database during the flow.

A worker killed with SIGKILL at each step of issuance and of revocation leaves
every grant in a true state, no orphan on the target and one event per transition;
duplicated deliveries and two schedulers at once have one effect.

The worker is stopped at a known step by a lock the test holds: the grant's row,
the trail's advisory lock (taken after the target has changed, before the commit)
or a table on the target.
"""

from collections import Counter
from contextlib import contextmanager
from datetime import timedelta

import psycopg
import pytest
import time_machine
from django.utils import timezone

from breakglass import audit, services, tasks
from breakglass.models import AccessRequest, Alert, AuditEvent, Grant

from .conftest import make_target
from .fixtures.waiting import wait_until
from .fixtures.worker import _database_url
from .flows import actions, approve, open_request

Status = AccessRequest.Status

PG_ENV = "BG_TEST_FAULTS_PG_DSN"
# Generous bounds on a loaded machine; the worker sweeps every second.
STEP_TIMEOUT_SECONDS = 30
RECOVERY_TIMEOUT_SECONDS = 30

# The trail of a grant that was issued, revealed and ended early, once each.
ENDED_EARLY = Counter(
    {
        "request.created": 1,
        "approval.approved": 2,
        "request.approved": 1,
        "grant.issued": 1,
        "credential.revealed": 1,
        "grant.revoked": 1,
        "review.due": 1,
    }
)


@pytest.fixture
def worker_env(pg_target):
    return {PG_ENV: pg_target.admin_dsn}


@pytest.fixture
def orders_db(db, pg_target, monkeypatch):
    monkeypatch.setenv(PG_ENV, pg_target.admin_dsn)
    return make_target(
        "orders-db", "postgres", grants=["orders_read", "builder"], env_var=PG_ENV
    )


def _approved_long_ago(alice, bob, carol):
    """Open and approve a request as if it had been approved before the stall limit.

    A grant approved that long ago and still not issued counts as lost with its
    worker: the sweep issues it at once instead of after the limit.
    """
    earlier = timezone.now() - services.ISSUE_STALL - timedelta(seconds=5)
    with time_machine.travel(earlier, tick=True):
        access_request = open_request(alice, target="orders-db")
        approve(access_request, bob)
        approve(access_request, carol)
    access_request.refresh_from_db()
    assert access_request.status == Status.APPROVED
    return access_request


def _active_through_worker(alice, bob, carol):
    access_request = open_request(alice, target="orders-db")
    approve(access_request, bob)
    approve(access_request, carol)
    return _wait_for(access_request, Status.ACTIVE)


def _wait_for(access_request, status, timeout=RECOVERY_TIMEOUT_SECONDS):
    def reached():
        access_request.refresh_from_db()
        return access_request.status == status

    wait_until(reached, timeout=timeout, what=f"request {access_request.pk} {status}")
    return access_request


@contextmanager
def _product_db():
    """Open a session of our own on the product's database, to hold locks in."""
    with psycopg.connect(_database_url(), autocommit=True) as conn:
        yield conn


def _blocked_on_lock():
    """Return whether a session on the product's database waits for a lock."""
    # A fresh session: one inside a transaction sees the activity as it was at
    # its first look.
    with _product_db() as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]


def _hold_grant_row(conn, grant):
    conn.execute("BEGIN")
    conn.execute(
        f"SELECT 1 FROM {Grant._meta.db_table} WHERE id = %s FOR UPDATE", [grant.pk]
    )


def _hold_trail(conn):
    # Every event takes this lock inside its transaction: a worker that reaches
    # its event waits here, after its work on the target, before its commit.
    conn.execute("SELECT pg_advisory_lock(%s)", [audit._CHAIN_LOCK_KEY])


def _principals_of(pg_target, access_request):
    """Return the roles on the target that carry the request's id in their name."""
    prefix = f"bg_{access_request.requester.username}_{access_request.pk}_"
    with pg_target.connect() as conn:
        rows = conn.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", [prefix]
        ).fetchall()
    return [name for (name,) in rows]


def _login(pg_target, credential):
    return pg_target.connect(
        "orders", user=credential["username"], password=credential["password"]
    )


def _trail_of(access_request):
    """Count the request's events by action; detected uses are not transitions."""
    return Counter(a for a in actions(access_request) if a != "credential.used")


def _assert_alerted_once_each(webhook_receiver):
    """Wait for every alert, then check each event reached the webhook exactly once."""
    wait_until(
        lambda: not Alert.objects.filter(delivered_at__isnull=True).exists(),
        timeout=RECOVERY_TIMEOUT_SECONDS,
        what="every alert to be delivered",
    )
    delivered = Counter((d.event, d.json()["seq"]) for d in webhook_receiver.deliveries)
    expected = Counter(AuditEvent.objects.values_list("action", "seq"))
    assert delivered == expected


# A worker killed at each step of issuance


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("worker_autostart", [False])
def test_a_worker_killed_before_issuing_leaves_the_grant_to_the_next_worker(
    alice, bob, carol, orders_db, worker, webhook_receiver, pg_target
):
    access_request = _approved_long_ago(alice, bob, carol)
    grant = access_request.grant

    with _product_db() as holder:
        _hold_grant_row(holder, grant)
        worker.start()
        wait_until(
            _blocked_on_lock,
            timeout=STEP_TIMEOUT_SECONDS,
            what="the worker to wait for the grant's row",
        )
        worker.kill()
        holder.execute("ROLLBACK")

    access_request.refresh_from_db()
    assert access_request.status == Status.APPROVED
    assert _principals_of(pg_target, access_request) == []

    worker.start()
    _wait_for(access_request, Status.ACTIVE)
    credential = services.reveal_credential(access_request.pk, actor=alice)
    with _login(pg_target, credential) as session:
        assert session.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    assert _principals_of(pg_target, access_request) == [grant.principal]
    assert _trail_of(access_request) == ENDED_EARLY - Counter(
        {"grant.revoked": 1, "review.due": 1}
    )
    _assert_alerted_once_each(webhook_receiver)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("worker_autostart", [False])
def test_a_worker_killed_after_creating_the_role_before_commit_leaves_no_orphan(
    alice, bob, carol, orders_db, worker, webhook_receiver, pg_target
):
    access_request = _approved_long_ago(alice, bob, carol)
    grant = access_request.grant

    with _product_db() as holder:
        _hold_trail(holder)
        worker.start()
        # The role is committed on the target; the grant is not, in our database.
        wait_until(
            lambda: pg_target.role(grant.principal) and _blocked_on_lock(),
            timeout=STEP_TIMEOUT_SECONDS,
            what="the worker to create the role and wait to record it",
        )
        worker.kill()

    access_request.refresh_from_db()
    assert access_request.status == Status.APPROVED
    assert Grant.objects.get(pk=grant.pk).issued_at is None
    # The role left behind has a password nobody was ever given.
    assert _principals_of(pg_target, access_request) == [grant.principal]

    worker.start()
    _wait_for(access_request, Status.ACTIVE)
    credential = services.reveal_credential(access_request.pk, actor=alice)
    with _login(pg_target, credential) as session:
        assert session.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    assert _principals_of(pg_target, access_request) == [grant.principal]
    assert AuditEvent.objects.filter(action="grant.issued").count() == 1
    assert _trail_of(access_request) == ENDED_EARLY - Counter(
        {"grant.revoked": 1, "review.due": 1}
    )
    _assert_alerted_once_each(webhook_receiver)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_an_issue_task_delivered_three_times_issues_one_role(
    alice, bob, carol, orders_db, worker, webhook_receiver, pg_target
):
    access_request = open_request(alice, target="orders-db")
    approve(access_request, bob)
    approve(access_request, carol)
    grant = access_request.grant
    tasks.issue_grant.apply_async((grant.pk,))
    tasks.issue_grant.apply_async((grant.pk,))

    _wait_for(access_request, Status.ACTIVE)
    wait_until(
        lambda: worker.log().count("breakglass.tasks.issue_grant") >= 6,
        timeout=STEP_TIMEOUT_SECONDS,
        what="the worker to run the three issue tasks",
    )
    credential = services.reveal_credential(access_request.pk, actor=alice)
    with _login(pg_target, credential) as session:
        assert session.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    assert _principals_of(pg_target, access_request) == [grant.principal]
    assert _trail_of(access_request)["grant.issued"] == 1
    _assert_alerted_once_each(webhook_receiver)


# A worker killed at each step of revocation


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_while_the_target_holds_up_the_drop_revokes_after_restart(
    alice, bob, carol, orders_db, worker, webhook_receiver, pg_target
):
    access_request = _active_through_worker(alice, bob, carol)
    grant = access_request.grant
    credential = services.reveal_credential(access_request.pk, actor=alice)
    table = f"held_{access_request.pk}"
    with _login(pg_target, credential) as session:
        session.execute(f"CREATE TABLE {table} (id integer)")

    # Someone on the target reads the grant's table in a transaction left open:
    # dropping what the role owns waits for it.
    with pg_target.connect() as reader:
        reader.execute("BEGIN")
        reader.execute(f"SELECT * FROM {table}")
        services.request_end(access_request.pk, actor=bob, reason="resolved")
        wait_until(
            lambda: _target_waits_to_drop(pg_target),
            timeout=STEP_TIMEOUT_SECONDS,
            what="the revocation to wait on the target",
        )
        worker.kill()

    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE
    # Half-way: the role can no longer log in, and is still there.
    assert pg_target.role(grant.principal)[1] is False
    with pytest.raises(psycopg.OperationalError):
        _login(pg_target, credential)

    worker.start()
    _wait_for(access_request, Status.REVOKED)
    assert _principals_of(pg_target, access_request) == []
    assert _trail_of(access_request) == ENDED_EARLY
    assert AuditEvent.objects.filter(action="grant.revocation_failed").count() == 0
    _assert_alerted_once_each(webhook_receiver)


def _target_waits_to_drop(pg_target):
    with pg_target.connect() as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE 'DROP OWNED%%'"
        ).fetchone()[0]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_after_dropping_the_role_before_commit_ends_it_once(
    alice, bob, carol, orders_db, worker, webhook_receiver, pg_target
):
    access_request = _active_through_worker(alice, bob, carol)
    grant = access_request.grant
    credential = services.reveal_credential(access_request.pk, actor=alice)

    with _product_db() as holder:
        _hold_trail(holder)
        services.request_end(access_request.pk, actor=bob, reason="resolved")
        # The role is gone from the target; the grant is still active here.
        wait_until(
            lambda: not pg_target.role(grant.principal) and _blocked_on_lock(),
            timeout=STEP_TIMEOUT_SECONDS,
            what="the worker to drop the role and wait to record it",
        )
        worker.kill()

    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE
    with pytest.raises(psycopg.OperationalError):
        _login(pg_target, credential)

    worker.start()
    _wait_for(access_request, Status.REVOKED)
    assert _principals_of(pg_target, access_request) == []
    assert _trail_of(access_request) == ENDED_EARLY
    assert AuditEvent.objects.filter(action="grant.revocation_failed").count() == 0
    _assert_alerted_once_each(webhook_receiver)
