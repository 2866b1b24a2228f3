"""Use detection: every session or login with a credential raises `credential.used`.

Alice holds grants on a PostgreSQL target that checks passwords, on the local Redis
server and on an SSH bastion; Bob and Carol approve them. Detection asks each
target once for the sessions of all its grants' principals and records each new
one once.
"""

import logging
import os
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
import time_machine
from django.db import connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from breakglass import detection, services
from breakglass.audit import verify_chain
from breakglass.models import AccessRequest, Alert, AuditEvent, CredentialUse

from .conftest import make_target, wrong_password
from .fixtures.e2e import (
    assert_no_secret,
    assert_one_signed_webhook_per_event,
    assert_trail_intact,
    event_texts,
    trail,
)
from .fixtures.waiting import wait_until
from .flows import (
    actions,
    approve,
    issued_request,
    make_ssh_ca,
    make_ssh_target,
    open_request,
)

Status = AccessRequest.Status

PG_ENV = "BG_TEST_DETECT_PG_DSN"
LEDGER_ENV = "BG_TEST_DETECT_LEDGER_DSN"
REDIS_ENV = "BG_TEST_DETECT_REDIS_URL"
SSH_CA_ENV = "BG_TEST_DETECT_SSH_CA_KEY"
REDIS_URL = os.environ.get("BREAKGLASS_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
REDIS_DB = int(REDIS_URL.rsplit("/", 1)[1])
RULES = ["~cache:*", "+get", "+set", "+ping", "+select", "+client|info"]
SECURITY = "security@example.com"
# What the worker must do at worst: one detection interval (2 s), the task's run,
# then the alert's delivery. Generous, as the machine is shared.
ALERT_BOUND_SECONDS = 15


@pytest.fixture(autouse=True)
def _alerts_by_email(settings):
    settings.BREAKGLASS_ALERT_EMAILS = [SECURITY]


@pytest.fixture
def orders_db(db, pg_target, monkeypatch):
    monkeypatch.setenv(PG_ENV, pg_target.admin_dsn)
    target = make_target(
        "orders-db", "postgres", grants=["orders_read"], env_var=PG_ENV, approvals=1
    )
    yield target
    _drop_principals(pg_target, "orders-db")


@pytest.fixture
def cache(db, monkeypatch):
    monkeypatch.setenv(REDIS_ENV, REDIS_URL)
    yield make_target("cache", "redis", grants=RULES, env_var=REDIS_ENV, approvals=1)
    admin = redis.Redis.from_url(REDIS_URL)
    for principal in _principals("cache"):
        admin.execute_command("ACL", "DELUSER", principal)
    admin.close()


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    target = make_ssh_target(approvals=1)
    target.auth_log_path = str(tmp_path / "auth.log")
    target.save()
    return target


def _principals(target_name):
    return list(
        AccessRequest.objects.filter(
            target__name=target_name, grant__isnull=False
        ).values_list("grant__principal", flat=True)
    )


def _drop_principals(pg_target, target_name):
    for principal in _principals(target_name):
        pg_target.drop_role(principal)


def _active(requester, approver, target, *, later=0):
    """Issue a grant and reveal its credential; `later` steps past a used code."""
    with time_machine.travel(timedelta(seconds=31 * later)):
        access_request = issued_request(requester, approver, target=target)
    assert access_request.status == Status.ACTIVE
    credential = services.reveal_credential(access_request.pk, actor=requester)
    return access_request, credential


def _pg_login(credential, password=None):
    return psycopg.connect(
        host=credential["host"],
        port=credential["port"],
        dbname=credential["dbname"],
        user=credential["username"],
        password=password or credential["password"],
        connect_timeout=5,
        autocommit=True,
    )


def _pg_source(session):
    host, port = session.execute(
        "SELECT host(inet_client_addr()), inet_client_port()"
    ).fetchone()
    return f"{host}:{port}"


def _redis_login(credential):
    client = redis.Redis(
        host=credential["host"],
        port=credential["port"],
        db=REDIS_DB,
        username=credential["username"],
        password=credential["password"],
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
    )
    client.ping()
    return client


def _uses(access_request):
    return list(
        AuditEvent.objects.filter(
            request=access_request, action="credential.used"
        ).order_by("seq")
    )


def _assert_alerted(event):
    alert = Alert.objects.get(event=event)
    assert (alert.channel, alert.destination) == (Alert.Channel.EMAIL, SECURITY)


@pytest.mark.django_db(transaction=True)
def test_a_run_that_starts_while_another_is_going_is_skipped(
    alice, bob, orders_db, pg_target
):
    access_request, credential = _active(alice, bob, "orders-db")
    session = _pg_login(credential)
    db = connection.settings_dict
    other_run = psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"],
        dbname=db["NAME"],
        autocommit=True,
    )
    other_run.execute("SELECT pg_advisory_lock(%s)", [detection._RUN_LOCK_KEY])

    assert detection.detect_uses() == 0
    assert _uses(access_request) == []

    other_run.close()
    assert detection.detect_uses() == 1
    assert len(_uses(access_request)) == 1
    session.close()


# PostgreSQL


def test_a_postgres_login_is_one_use_with_its_source_address(
    alice, bob, orders_db, pg_target
):
    access_request, credential = _active(alice, bob, "orders-db")
    before = datetime.now(UTC)
    session = _pg_login(credential)
    source = _pg_source(session)

    assert detection.detect_uses() == 1

    [event] = _uses(access_request)
    assert event.actor == "system"
    assert (event.target, event.incident, event.requester) == (
        "orders-db",
        "INC-42",
        "alice",
    )
    assert event.data["principal"] == credential["username"]
    assert event.data["source_address"] == source
    assert event.data["database"] == "orders"
    used_at = datetime.fromisoformat(event.data["used_at"])
    assert before - timedelta(seconds=1) <= used_at <= event.at
    _assert_alerted(event)
    use = CredentialUse.objects.get()
    assert (use.grant, use.source_address, use.used_at) == (
        access_request.grant,
        source,
        used_at,
    )
    assert_no_secret([credential["password"], pg_target.password], str(event.data))

    # Seen again on every later run, but it is the same session.
    assert detection.detect_uses() == 0
    assert detection.detect_uses() == 0
    assert len(_uses(access_request)) == 1
    assert verify_chain() == (len(actions()), None)
    session.close()


def test_two_postgres_sessions_are_two_uses(alice, bob, orders_db):
    access_request, credential = _active(alice, bob, "orders-db")
    first = _pg_login(credential)
    assert detection.detect_uses() == 1
    second = _pg_login(credential)

    assert detection.detect_uses() == 1

    sources = [event.data["source_address"] for event in _uses(access_request)]
    assert sources == [_pg_source(first), _pg_source(second)]
    assert CredentialUse.objects.count() == 2
    assert Alert.objects.filter(event__action="credential.used").count() == 2
    first.close()
    second.close()


def test_a_session_that_switched_to_a_granted_role_is_seen(alice, bob, orders_db):
    access_request, credential = _active(alice, bob, "orders-db")
    session = _pg_login(credential)
    session.execute("SET ROLE orders_read")
    assert session.execute("SELECT current_user").fetchone() == ("orders_read",)

    assert detection.detect_uses() == 1

    [event] = _uses(access_request)
    assert event.data["principal"] == credential["username"]
    session.close()


def test_a_wrong_password_is_not_a_use(alice, bob, orders_db):
    access_request, credential = _active(alice, bob, "orders-db")
    with pytest.raises(psycopg.OperationalError, match="password authentication"):
        _pg_login(credential, password=wrong_password(credential["password"]))

    assert detection.detect_uses() == 0

    assert _uses(access_request) == []


def test_a_session_opened_just_before_the_end_is_recorded_by_the_end(
    alice, bob, orders_db, pg_target
):
    access_request, credential = _active(alice, bob, "orders-db")
    session = _pg_login(credential)
    source = _pg_source(session)

    # No detection run between the login and the end.
    services.request_end(access_request.pk, actor=bob, reason="done")
    assert services.end_grant(access_request.grant.pk)

    access_request.refresh_from_db()
    assert access_request.status == Status.REVOKED
    assert actions(access_request)[-3:] == [
        "credential.used",
        "grant.revoked",
        "review.due",
    ]
    [event] = _uses(access_request)
    assert event.data["source_address"] == source
    _assert_alerted(event)
    assert pg_target.sessions(credential["username"]) == 0
    assert detection.detect_uses() == 0
    assert detection.detect_grant_uses(access_request.grant.pk) == 0
    assert len(_uses(access_request)) == 1


# Redis


def test_a_redis_connection_is_one_use_with_its_source_address(alice, bob, cache):
    access_request, credential = _active(alice, bob, "cache")
    client = _redis_login(credential)
    info = client.client_info()

    assert detection.detect_uses() == 1

    [event] = _uses(access_request)
    assert event.data["principal"] == credential["username"]
    assert event.data["source_address"] == info["addr"]
    assert event.data["client_id"] == int(info["id"])
    _assert_alerted(event)
    assert credential["password"] not in str(event.data)
    assert detection.detect_uses() == 0
    assert len(_uses(access_request)) == 1
    client.close()


def test_two_redis_connections_are_two_uses(alice, bob, cache):
    access_request, credential = _active(alice, bob, "cache")
    first = _redis_login(credential)
    second = _redis_login(credential)

    assert detection.detect_uses() == 2
    assert detection.detect_uses() == 0

    sources = {event.data["source_address"] for event in _uses(access_request)}
    assert sources == {first.client_info()["addr"], second.client_info()["addr"]}
    first.close()
    second.close()


def test_the_end_cuts_redis_connections_and_detection_stops(alice, bob, cache):
    access_request, credential = _active(alice, bob, "cache")
    client = _redis_login(credential)
    assert detection.detect_uses() == 1

    services.request_end(access_request.pk, actor=alice)
    assert services.end_grant(access_request.grant.pk)

    with pytest.raises(redis.ConnectionError):
        client.ping()
    with pytest.raises(redis.AuthenticationError):
        _redis_login(credential)
    assert detection.detect_uses() == 0
    assert actions(access_request)[-3:] == [
        "credential.used",
        "grant.revoked",
        "review.due",
    ]


# Failures and races


def test_each_target_is_asked_once_for_all_its_grants(
    alice, bob, orders_db, cache, monkeypatch
):
    from breakglass.providers import postgres as pg_provider
    from breakglass.providers import redis as redis_provider

    on_pg = [_active(alice, bob, "orders-db", later=n) for n in range(3)]
    on_redis = [_active(alice, bob, "cache", later=n) for n in range(3, 5)]
    pg_sessions = [_pg_login(credential) for _, credential in on_pg[:2]]
    redis_sessions = [_redis_login(credential) for _, credential in on_redis]
    looks = []
    for module, name in ((pg_provider, "_connect"), (redis_provider, "_client")):
        real = getattr(module, name)
        monkeypatch.setattr(
            module,
            name,
            lambda *a, _real=real, _name=name: looks.append(_name) or _real(*a),
        )

    assert detection.detect_uses() == 4

    assert sorted(looks) == ["_client", "_connect"]
    assert [len(_uses(r)) for r, _ in on_pg] == [1, 1, 0]
    assert [len(_uses(r)) for r, _ in on_redis] == [1, 1]
    for access_request, _ in on_pg + on_redis:
        principal = access_request.grant.principal
        assert all(e.data["principal"] == principal for e in _uses(access_request))
    for session in pg_sessions + redis_sessions:
        session.close()


def test_a_target_that_is_down_is_logged_and_skipped(
    alice, bob, carol, orders_db, cache, pg_target, monkeypatch, caplog
):
    make_target(
        "ledger-db", "postgres", grants=["orders_read"], env_var=LEDGER_ENV, approvals=1
    )
    monkeypatch.setenv(LEDGER_ENV, pg_target.admin_dsn)
    healthy, credential = _active(alice, bob, "orders-db")
    ledger, _ = _active(alice, carol, "ledger-db")
    cached, _ = _active(alice, bob, "cache", later=1)
    session = _pg_login(credential)
    # Both targets go away; their admin secrets must not reach the log.
    monkeypatch.setenv(
        LEDGER_ENV, "postgresql://postgres:pg-admin-secret@127.0.0.1:1/x"
    )
    monkeypatch.setenv(REDIS_ENV, "redis://:redis-admin-secret@127.0.0.1:1/0")

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="breakglass.detection"):
        assert detection.detect_uses() == 1

    assert len(_uses(healthy)) == 1
    assert _uses(ledger) == [] and _uses(cached) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any(ledger.grant.principal in w and "ledger-db" in w for w in warnings)
    assert any(cached.grant.principal in w and "cache" in w for w in warnings)
    assert_no_secret(["pg-admin-secret", "redis-admin-secret"], caplog.text)
    session.close()
    _drop_principals(pg_target, "ledger-db")


@pytest.mark.django_db(transaction=True)
def test_two_detectors_at_once_record_each_session_once(alice, bob, orders_db):
    access_request, credential = _active(alice, bob, "orders-db")
    sessions = [_pg_login(credential) for _ in range(3)]
    start = threading.Barrier(4)
    found = []
    errors = []

    def detect():
        try:
            start.wait(timeout=10)
            found.append(detection.detect_uses())
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=detect) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert sorted(found) == [0, 0, 0, 3]
    assert len(_uses(access_request)) == 3
    assert CredentialUse.objects.count() == 3
    assert Alert.objects.filter(event__action="credential.used").count() == 3
    assert verify_chain() == (AuditEvent.objects.count(), None)
    for session in sessions:
        session.close()


# SSH, from the sshd log


def _issued_certificate(access_request):
    issued = AuditEvent.objects.get(request=access_request, action="grant.issued")
    return issued.data["key_id"], issued.data["certificate_serial"]


def _accepted(access_request, *, host="192.0.2.7", port=50022, prefix=""):
    key_id, serial = _issued_certificate(access_request)
    return (
        f"{prefix}Accepted publickey for root from {host} port {port} ssh2: "
        f"ED25519-CERT SHA256:q5Yy9J0pEbS5x4 ID {key_id} (serial {serial}) "
        "CA ED25519 SHA256:3fFz0bZ0Zq1oN1\n"
    )


def _append(bastion, *lines):
    with open(bastion.auth_log_path, "a") as log:
        log.writelines(lines)


def test_accepted_ssh_logins_of_the_grant_are_uses(alice, bob, carol, bastion):
    mine, _ = _active(alice, bob, "bastion")
    other, _ = _active(alice, carol, "bastion")
    key_id, serial = _issued_certificate(mine)
    _append(
        bastion,
        "Server listening on 127.0.0.1 port 2222.\n",
        _accepted(mine),
        _accepted(other, port=50100),
        # A user name is not a login: it cannot pass for one.
        f"Invalid user {_accepted(mine).strip()} from 192.0.2.9 port 1\n",
        "2024-05-01T10:00:03.250000+00:00 bastion sshd[812]: "
        + _accepted(mine, host="2001:db8::5", port=50444),
    )

    assert detection.detect_uses() == 3

    events = _uses(mine)
    assert [e.data["source_address"] for e in events] == [
        "192.0.2.7:50022",
        "[2001:db8::5]:50444",
    ]
    assert all(e.data["serial"] == serial for e in events)
    assert all(e.data["user"] == "root" for e in events)
    assert events[1].data["used_at"] == "2024-05-01T10:00:03.250000+00:00"
    assert [e.data["source_address"] for e in _uses(other)] == ["192.0.2.7:50100"]
    assert detection.detect_uses() == 0

    # The same client port again later is another login.
    _append(bastion, _accepted(mine))
    assert detection.detect_uses() == 1
    assert len(_uses(mine)) == 3


def test_ssh_logins_after_the_end_are_not_new_uses(alice, bob, bastion):
    access_request, _ = _active(alice, bob, "bastion")
    _append(bastion, _accepted(access_request))
    with time_machine.travel(access_request.grant.expires_at + timedelta(seconds=1)):
        assert services.end_grant(access_request.grant.pk)
    access_request.refresh_from_db()
    assert access_request.status == Status.EXPIRED
    # The login before the end was recorded by the end itself.
    assert actions(access_request)[-3:] == [
        "credential.used",
        "grant.expired",
        "review.due",
    ]

    _append(bastion, _accepted(access_request, port=50023))

    assert detection.detect_uses() == 0
    assert detection.detect_grant_uses(access_request.grant.pk) == 0
    assert len(_uses(access_request)) == 1


def test_a_missing_sshd_log_is_logged_and_skipped(alice, bob, bastion, caplog):
    access_request, _ = _active(alice, bob, "bastion")

    with caplog.at_level(logging.WARNING, logger="breakglass.detection"):
        assert detection.detect_uses() == 0

    assert "cannot read the sshd log" in caplog.text
    assert access_request.grant.principal in caplog.text


def test_logins_on_a_real_sshd_are_uses(alice, bob, carol, sshd, monkeypatch, tmp_path):
    monkeypatch.setenv(SSH_CA_ENV, str(sshd.ca_key))
    target = make_target(
        "jump-host", "ssh", grants=[sshd.user], ca_env=SSH_CA_ENV, approvals=1
    )
    target.auth_log_path = str(sshd.log_path)
    target.save()
    access_request, credential = _active(alice, bob, "jump-host")
    other, _ = _active(alice, carol, "jump-host")
    key = tmp_path / "id_ed25519"
    key.write_text(credential["private_key"])
    certificate = tmp_path / "id_ed25519-cert.pub"
    certificate.write_text(credential["certificate"])
    _, serial = _issued_certificate(access_request)

    assert sshd.login(key, certificate)
    assert detection.detect_uses() == 1
    assert sshd.login(key, certificate)
    assert detection.detect_uses() == 1
    assert detection.detect_uses() == 0

    logins = [login for login in sshd.accepted_logins() if login.serial == serial]
    assert len(logins) == 2
    events = _uses(access_request)
    assert [e.data["source_address"] for e in events] == [
        f"{login.address}:{login.port}" for login in logins
    ]
    assert all(e.data["user"] == sshd.user for e in events)
    assert all(e.data["serial"] == serial for e in events)
    for event in events:
        _assert_alerted(event)
    assert _uses(other) == []
    assert_no_secret([credential["private_key"]], str([e.data for e in events]))


# End to end, with the real worker


@pytest.fixture
def worker_env(pg_target):
    return {PG_ENV: pg_target.admin_dsn}


def _detection_runs(worker):
    return len(re.findall(r"detect_uses\[[^\]]+\] succeeded", worker.log()))


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_the_worker_alerts_a_login_within_seconds(
    api, alice, bob, cora, orders_db, worker, webhook_receiver, pg_target
):
    access_request = open_request(alice, target="orders-db")
    approve(access_request, bob)
    wait_until(
        lambda: AccessRequest.objects.get(pk=access_request.pk).status == Status.ACTIVE,
        timeout=30,
        what="the worker to issue the grant",
    )
    credential = services.reveal_credential(access_request.pk, actor=alice)

    logged_in_at = time.monotonic()
    session = _pg_login(credential)
    source = _pg_source(session)
    delivery = wait_until(
        lambda: next(
            (d for d in webhook_receiver.deliveries if d.event == "credential.used"),
            None,
        ),
        timeout=ALERT_BOUND_SECONDS * 2,
        what="the credential.used alert",
        interval=0.05,
    )
    alert_delay = time.monotonic() - logged_in_at
    [event] = _uses(access_request)
    detection_delay = event.data["delay_seconds"]
    print(
        f"use to credential.used event: {detection_delay:.2f} s, "
        f"use to webhook alert: {alert_delay:.2f} s"
    )

    assert alert_delay < ALERT_BOUND_SECONDS
    assert delivery.json()["data"]["source_address"] == source
    # Later detection runs see the same session and raise nothing new.
    runs = _detection_runs(worker)
    wait_until(
        lambda: _detection_runs(worker) >= runs + 2,
        timeout=15,
        what="two more detection runs",
    )
    assert len(_uses(access_request)) == 1
    session.close()

    events = trail(api(cora), access_request.pk)
    assert [e["action"] for e in events][-2:] == [
        "credential.revealed",
        "credential.used",
    ]
    assert_trail_intact(api(cora), events)
    deliveries = assert_one_signed_webhook_per_event(webhook_receiver, events)
    assert_no_secret(
        [credential["password"], pg_target.password],
        *event_texts(events, deliveries, worker),
    )
