"""Faults injected into the real worker, broker and database during the flow.

A worker killed with SIGKILL at each step of issuance and of revocation leaves
every grant in a true state, no orphan on the target and one event per transition;
a task delivered three times and two schedulers at once have one effect; grants
that expire while the broker is down are revoked within seconds of its return; the
web side and the worker carry on after the product's own database restarts.

The worker is stopped at a known step by a lock the test holds: the grant's row,
the trail's advisory lock (taken after the target has changed, before the commit),
a role or a table on the target.
"""

import base64
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
import time_machine
from django.utils import timezone
from django_otp.oath import totp
from kombu import pools

from breakglass import audit, roles, services, tasks
from breakglass.celery import app as celery_app
from breakglass.models import AccessRequest, Alert, AuditEvent, Grant

from .conftest import make_target, make_user
from .fixtures import pg_target as pg_cluster
from .fixtures.waiting import wait_until
from .fixtures.worker import REPO, Worker, _database_url
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
def worker_env(request, pg_target):
    env = {PG_ENV: pg_target.admin_dsn}
    if "own_broker" in request.fixturenames:
        env["CELERY_BROKER_URL"] = request.getfixturevalue("own_broker").url
    return env


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


def _approvers(count):
    """Return approvers of the orders database, each with a code of their own."""
    return [
        make_user(f"approver{n}", roles.APPROVER, groups=["sre-leads"], totp=True)
        for n in range(count)
    ]


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
def test_a_worker_killed_inside_the_targets_transaction_leaves_nothing_there(
    alice, bob, carol, orders_db, worker, webhook_receiver, pg_target
):
    access_request = _approved_long_ago(alice, bob, carol)
    grant = access_request.grant

    # A role of the same name, created in a transaction left open on the target:
    # the worker's CREATE ROLE waits for it, inside the worker's own transaction.
    with pg_target.connect() as rival:
        rival.execute("BEGIN")
        rival.execute(f'CREATE ROLE "{grant.principal}"')
        worker.start()
        wait_until(
            lambda: _target_waits_for(pg_target, "CREATE ROLE"),
            timeout=STEP_TIMEOUT_SECONDS,
            what="the worker to wait on the target",
        )
        worker.kill()
        rival.execute("ROLLBACK")

    access_request.refresh_from_db()
    assert access_request.status == Status.APPROVED
    # What the killed worker had begun on the target is rolled back with it.
    wait_until(
        lambda: not _target_waits_for(pg_target, "CREATE ROLE"),
        timeout=STEP_TIMEOUT_SECONDS,
        what="the killed worker's session to end",
    )
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


def _target_waits_for(pg_target, statement):
    """Return whether a session on the target waits for a lock in the statement."""
    with pg_target.connect() as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND starts_with(upper(query), %s)",
            [statement],
        ).fetchone()[0]


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
            lambda: _target_waits_for(pg_target, "DROP OWNED"),
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


# The broker stopped while grants expire

# How long after the last grant's expiry the broker stays down: the grants expire
# during the outage, which lasts about a minute in all.
BROKER_DOWN_AFTER_EXPIRY_SECONDS = 10
# How soon after the broker answers again every grant must be revoked: a few
# seconds as a rule, but a worker that lived through the outage may retry the
# broker at growing intervals, up to 30 s apart (fixed in kombu).
BROKER_RECOVERY_SECONDS = 45
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A private Redis server that a test may stop and start again on its port."""

    def __init__(self, directory):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.process = None

    def start(self):
        # Nothing is saved: what the broker held is lost with it, as it is on a
        # broker that restarts without persistence.
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self._answers, timeout=20, what="the broker to start")

    def _answers(self):
        try:
            with redis.Redis.from_url(self.url) as client:
                return client.ping()
        except redis.ConnectionError:
            return False

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def _publish_to(url):
    """Point this process's Celery application at another broker."""
    # Connections are pooled per broker in kombu's global pools: drop them all.
    pools.reset()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    celery_app.conf.broker_url = url


@pytest.fixture
def own_broker(tmp_path):
    """Give the worker and this process a broker of their own, which may be stopped."""
    server = RedisServer(tmp_path)
    server.start()
    shared = celery_app.conf.broker_url
    _publish_to(server.url)
    try:
        yield server
    finally:
        _publish_to(shared)
        server.stop()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_grants_that_expire_while_the_broker_is_down_are_revoked_when_it_returns(
    alice, bob, orders_db, own_broker, worker, webhook_receiver, pg_target
):
    began = time.monotonic()
    erin = make_user("erin", roles.REQUESTER, groups=["oncall"])
    approvers = iter(_approvers(6))
    requests = []
    for requester, minutes in ((alice, 1), (erin, 1), (alice, 30)):
        access_request = open_request(
            requester, target="orders-db", duration_minutes=minutes
        )
        approve(access_request, next(approvers))
        approve(access_request, next(approvers))
        requests.append(_wait_for(access_request, Status.ACTIVE))
    *expiring, ended_early = requests
    credentials = [
        services.reveal_credential(r.pk, actor=r.requester) for r in expiring
    ]

    own_broker.stop()
    down = time.monotonic()
    # Ended while nothing can be queued: the request is recorded all the same.
    services.request_end(ended_early.pk, actor=bob, reason="resolved")
    last_expiry = max(r.grant.expires_at for r in expiring)
    outage = (last_expiry - timezone.now()).total_seconds()
    time.sleep(max(0.0, outage) + BROKER_DOWN_AFTER_EXPIRY_SECONDS)
    for access_request in [*expiring, ended_early]:
        access_request.refresh_from_db()
        assert access_request.status == Status.ACTIVE

    own_broker.start()
    back = time.monotonic()
    # Celery may exit on losing the broker while it holds messages (see the
    # README's known limits): restart it, as the supervisor it runs under does.
    exited = not worker.is_running()
    if exited:
        worker.start()
    _wait_for(ended_early, Status.REVOKED, timeout=BROKER_RECOVERY_SECONDS)
    for access_request in expiring:
        _wait_for(access_request, Status.EXPIRED, timeout=BROKER_RECOVERY_SECONDS)
    lag = time.monotonic() - back
    for access_request, credential in zip(expiring, credentials, strict=True):
        assert _principals_of(pg_target, access_request) == []
        with pytest.raises(psycopg.OperationalError):
            _login(pg_target, credential)
    assert _principals_of(pg_target, ended_early) == []
    assert AuditEvent.objects.filter(action="grant.expired").count() == 2
    assert AuditEvent.objects.filter(action="grant.revoked").count() == 1
    _assert_alerted_once_each(webhook_receiver)
    print(
        f"broker down {back - down:.1f} s; worker exited: {exited}; every grant "
        f"revoked {lag:.1f} s after the broker returned; "
        f"test took {time.monotonic() - began:.1f} s"
    )


# Two schedulers at once


@pytest.fixture
def second_worker(worker, tmp_path):
    """Run another `celery worker -B` beside the first: a second scheduler.

    It ignores the scheduler lock, as a deployment on SQLite or one that set its
    own scheduler would: both send every periodic task, and the tasks themselves
    must bear that.
    """
    argv = list(worker.argv)
    argv[argv.index("--hostname") + 1] = "e2e-second@%h"
    argv += ["--scheduler", "celery.beat:PersistentScheduler"]
    var_dir = tmp_path / "second-worker-var"
    var_dir.mkdir()
    second = Worker(argv, worker.env, tmp_path / "second-worker.log", var_dir)
    try:
        second.start()
        yield second
    finally:
        second.stop()
        print("--- second worker log ---")
        print(second.log()[-20000:])


def _sweeps_sent(worker):
    return worker.log().count("Sending due task breakglass.tasks.sweep")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_two_schedulers_at_once_issue_and_end_each_grant_once(
    alice, bob, orders_db, worker, second_worker, webhook_receiver, pg_target
):
    erin = make_user("erin", roles.REQUESTER, groups=["oncall"])
    approvers = iter(_approvers(8))
    requests = []
    for requester in (alice, erin, alice, erin):
        access_request = open_request(requester, target="orders-db")
        approve(access_request, next(approvers))
        approve(access_request, next(approvers))
        requests.append(access_request)
    for access_request in requests:
        _wait_for(access_request, Status.ACTIVE)
        services.reveal_credential(access_request.pk, actor=access_request.requester)

    wait_until(
        lambda: _sweeps_sent(worker) and _sweeps_sent(second_worker),
        timeout=STEP_TIMEOUT_SECONDS,
        what="both schedulers to sweep",
    )
    for access_request in requests:
        services.request_end(access_request.pk, actor=bob, reason="resolved")
    for access_request in requests:
        _wait_for(access_request, Status.REVOKED)

    assert worker.is_running() and second_worker.is_running()
    for access_request in requests:
        assert _principals_of(pg_target, access_request) == []
        assert _trail_of(access_request) == ENDED_EARLY
    assert AuditEvent.objects.filter(action="grant.revocation_failed").count() == 0
    _assert_alerted_once_each(webhook_receiver)
    # Neither scheduler delivered an alert the other had already delivered.
    assert not Alert.objects.filter(attempts__gt=1).exists()


# The product's own database restarted during the flow

TARGETS_FILE = """
targets:
  - name: orders-db
    kind: postgres
    environment: production
    connection_env: {env}
    scopes:
      - name: read
        grants: [orders_read]
    policy:
      approvals_required: 2
      approver_groups: [sre-leads]
      requester_groups: [oncall]
      max_duration_minutes: 60
      incident_pattern: '^INC-[0-9]+$'
"""
WEB_START_TIMEOUT_SECONDS = 60


class ProductDatabase:
    """A private PostgreSQL cluster holding the product's own database."""

    def __init__(self, base):
        self.base = base
        self.data = base / "data"
        self.port = None

    @property
    def url(self):
        return f"postgres://postgres@127.0.0.1:{self.port}/breakglass"

    def create(self):
        pg_cluster._run(
            [
                str(pg_cluster.PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            cwd=self.base,
        )
        self.port = pg_cluster._start(self.base, self.data)
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE breakglass")

    def _ctl(self, *argv):
        pg_cluster._run(
            [str(pg_cluster.PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", *argv],
            cwd=self.base,
        )

    def restart(self):
        # A fast shutdown ends every session, in the middle of whatever it does.
        log = str(self.base / "server.log")
        self._ctl("-l", log, "-m", "fast", "-t", "60", "restart")

    def stop(self):
        self._ctl("-m", "immediate", "stop")


@pytest.fixture
def product_db():
    # Not under the test's temporary directory, which the server's user cannot
    # enter.
    base = Path(tempfile.mkdtemp(prefix="breakglass-product-db-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
    database = ProductDatabase(base)
    database.create()
    try:
        yield database
    finally:
        database.stop()
        shutil.rmtree(base, ignore_errors=True)


def _manage(env, *argv, stdin=None):
    result = subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _create_user(env, username, *options):
    out = _manage(env, "create_user", username, "--token", *options)
    return json.loads(out)


def _code(user):
    """Return the code the user's authenticator app shows now."""
    query = httpx.URL(user["totp_uri"]).params
    key = base64.b32decode(query["secret"] + "=" * (-len(query["secret"]) % 8))
    return f"{totp(key, step=30, digits=6):06d}"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _web(env, log_path):
    """Run the web side under gunicorn; yield its base address."""
    port = _free_port()
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                gunicorn,
                "breakglass.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"

    def answers():
        try:
            return httpx.get(f"{base_url}/api/v1/schema/", timeout=5).status_code
        except httpx.TransportError:
            assert process.poll() is None, log_path.read_text()
            return None

    try:
        wait_until(answers, timeout=WEB_START_TIMEOUT_SECONDS, what="the web side")
        yield base_url
    finally:
        process.terminate()
        process.wait(20)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("worker_autostart", [False])
def test_the_product_recovers_from_its_database_restarting_during_the_flow(
    worker, product_db, webhook_receiver, pg_target, tmp_path
):
    began = time.monotonic()
    env = {**worker.env, "DATABASE_URL": product_db.url}
    _manage(env, "migrate", "--noinput")
    config = tmp_path / "targets.yaml"
    config.write_text(TARGETS_FILE.format(env=PG_ENV))
    _manage(env, "apply_config", str(config))
    alice = _create_user(env, "alice", "--role", "requester", "--group", "oncall")
    bob, carol = (
        _create_user(env, name, "--role", "approver", "--group", "sre-leads", "--totp")
        for name in ("bob", "carol")
    )
    product_worker = Worker(
        worker.argv, env, tmp_path / "product-worker.log", worker.var_dir
    )

    def as_user(user):
        return httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Token {user['token']}"},
            timeout=30,
        )

    def status(request_id):
        response = as_user(alice).get(f"/api/v1/requests/{request_id}/")
        assert response.status_code == 200, response.text
        return response.json()["status"]

    product_worker.start()
    try:
        with _web(env, tmp_path / "web.log") as base_url:
            created = as_user(alice).post(
                "/api/v1/requests/",
                json={
                    "target": "orders-db",
                    "scope": "read",
                    "duration_minutes": 30,
                    "reason": "orders stuck",
                    "incident": "INC-7",
                },
            )
            assert created.status_code == 201, created.text
            request_id = created.json()["id"]
            for approver in (bob, carol):
                voted = as_user(approver).post(
                    f"/api/v1/requests/{request_id}/approve/",
                    json={"otp": _code(approver), "comment": "ok"},
                )
                assert voted.status_code == 200, voted.text
            wait_until(
                lambda: status(request_id) == "active",
                timeout=RECOVERY_TIMEOUT_SECONDS,
                what="the grant to be issued",
            )

            # Every session of the web side and of the worker is cut here.
            product_db.restart()
            revealed = as_user(alice).post(f"/api/v1/requests/{request_id}/credential/")
            assert revealed.status_code == 200, revealed.text
            credential = revealed.json()
            with _login(pg_target, credential) as session:
                assert session.execute("SELECT count(*) FROM orders").fetchone()[0]

            ended = as_user(bob).post(
                f"/api/v1/requests/{request_id}/revoke/", json={"reason": "done"}
            )
            assert ended.status_code == 200, ended.text
            # Again, while the worker revokes.
            product_db.restart()
            wait_until(
                lambda: status(request_id) == "revoked",
                timeout=RECOVERY_TIMEOUT_SECONDS,
                what="the worker to revoke the grant",
            )
            assert pg_target.role(credential["username"]) is None
            assert product_worker.is_running()

            compliance = _create_user(env, "cora", "--role", "compliance")
            verified = as_user(compliance).get("/api/v1/audit/verify/")
            assert verified.status_code == 200, verified.text
            assert verified.json()["ok"] is True
            trail = as_user(compliance).get(
                "/api/v1/audit/", params={"request": request_id}
            )
            assert trail.status_code == 200, trail.text
            events = trail.json()
            assert Counter(e["action"] for e in events) == ENDED_EARLY
            wait_until(
                lambda: len(webhook_receiver.deliveries) >= verified.json()["checked"],
                timeout=RECOVERY_TIMEOUT_SECONDS,
                what="every alert to be delivered",
            )
            delivered = Counter(d.event for d in webhook_receiver.deliveries)
            # Besides the request's own: the file applied and the four people made.
            assert delivered == Counter(e["action"] for e in events) + Counter(
                {"config.applied": 1, "user.created": 4}
            )
    finally:
        product_worker.stop()
        print("--- product worker log ---")
        print(product_worker.log()[-20000:])
    print(f"test took {time.monotonic() - began:.1f} s")
