"""Issuing, revealing, ending and sweeping grants (breakglass.services).

SSH grants need no outside system; revocation and issuance failures use a
PostgreSQL target whose admin DSN points at a port where nothing listens.
"""

import os
import threading
from datetime import timedelta

import psycopg
import pytest
import redis
import time_machine
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.db import connection, transaction

from breakglass import alerts, services
from breakglass.errors import (
    CredentialAlreadyRevealed,
    NotAllowed,
    WrongState,
)
from breakglass.models import AccessRequest, Alert, AuditEvent, Grant
from breakglass.providers import krl

from .conftest import make_target
from .flows import (
    actions,
    approve,
    issued_request,
    last_event,
    make_ssh_ca,
    make_ssh_target,
    open_request,
)

Status = AccessRequest.Status

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
UNREACHABLE_DSN = "postgresql://postgres@127.0.0.1:1/postgres"
DSN_ENV = "BG_TEST_ORDERS_DSN"
REDIS_URL = os.environ.get("BREAKGLASS_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
CACHE_ENV = "BG_TEST_CACHE_URL"


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def active(alice, bob, carol, bastion):
    return issued_request(alice, bob, carol)


@pytest.fixture
def orders_db(db, monkeypatch):
    monkeypatch.setenv(DSN_ENV, ADMIN_DSN)
    return make_target(
        "orders-db",
        "postgres",
        grants=["pg_read_all_data"],
        env_var=DSN_ENV,
        approvals=1,
    )


def _role_exists(name):
    with psycopg.connect(ADMIN_DSN) as conn:
        return bool(
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone()
        )


def _count(action):
    return AuditEvent.objects.filter(action=action).count()


# Issuing


def test_issue_creates_the_credential_and_schedules_its_end(
    alice, bob, carol, bastion, django_capture_on_commit_callbacks
):
    access_request = open_request(alice)
    approve(access_request, bob)
    approve(access_request, carol)
    grant = Grant.objects.get(request=access_request)

    with django_capture_on_commit_callbacks(execute=False) as queued:
        services.issue_grant(grant.pk)

    access_request.refresh_from_db()
    grant.refresh_from_db()
    assert access_request.status == Status.ACTIVE
    assert grant.issue_attempts == 1
    assert grant.expires_at - grant.issued_at == timedelta(minutes=30)
    assert grant.sealed_credential is not None
    assert b"OPENSSH" not in bytes(grant.sealed_credential)
    assert len(queued) == 1
    event = last_event("grant.issued")
    assert event.actor == "system"
    assert event.data["principal"] == grant.principal
    assert event.data["expires_at"] == grant.expires_at.isoformat()
    assert str(access_request.pk) in event.data["key_id"]
    assert "certificate" not in event.data and "private_key" not in event.data


def test_issue_twice_issues_once(active):
    grant = active.grant
    sealed = bytes(grant.sealed_credential)

    services.issue_grant(grant.pk)

    grant.refresh_from_db()
    assert grant.issue_attempts == 1
    assert bytes(grant.sealed_credential) == sealed
    assert _count("grant.issued") == 1


def test_sweep_issues_a_grant_whose_task_was_lost(alice, bob, carol, bastion):
    access_request = open_request(alice)
    approve(access_request, bob)
    approve(access_request, carol)

    assert services.sweep()["issued"] == 0
    with time_machine.travel(timedelta(seconds=31)):
        assert services.sweep()["issued"] == 1

    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE
    assert _count("grant.issued") == 1


# Revealing


def test_reveal_once_then_410(active, alice):
    credential = services.reveal_credential(active.pk, actor=alice)

    assert credential["kind"] == "ssh"
    assert credential["username"] == "root"
    assert "private_key" in credential
    certificate = serialization.load_ssh_public_identity(
        credential["certificate"].encode()
    )
    assert certificate.valid_principals == [b"root"]
    assert certificate.valid_before == int(active.grant.expires_at.timestamp())
    assert f"request {active.pk}".encode() in certificate.key_id

    grant = Grant.objects.get(pk=active.grant.pk)
    assert grant.sealed_credential is None
    assert grant.revealed_at is not None
    event = last_event("credential.revealed")
    assert event.actor == "alice"
    assert credential["private_key"] not in str(event.data)
    assert credential["certificate"] not in str(event.data)

    with pytest.raises(CredentialAlreadyRevealed) as refused:
        services.reveal_credential(active.pk, actor=alice)
    assert refused.value.status == 410
    assert _count("credential.revealed") == 1


def test_reveal_with_the_requesters_public_key_has_no_private_key(
    alice, bob, carol, bastion
):
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    public_key = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    access_request = issued_request(alice, bob, carol, public_key=public_key)

    credential = services.reveal_credential(access_request.pk, actor=alice)

    assert "private_key" not in credential
    certificate = serialization.load_ssh_public_identity(
        credential["certificate"].encode()
    )
    assert (
        certificate.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        == public_key.encode()
    )


def test_only_the_requester_may_reveal(active, bob, ada):
    for user in (bob, ada):
        with pytest.raises(NotAllowed):
            services.reveal_credential(active.pk, actor=user)

    assert Grant.objects.get(pk=active.grant.pk).sealed_credential is not None
    assert _count("credential.revealed") == 0


def test_nothing_to_reveal_before_issuance(alice, bob, carol, bastion):
    access_request = open_request(alice)

    with pytest.raises(WrongState) as refused:
        services.reveal_credential(access_request.pk, actor=alice)

    assert refused.value.status == 409
    assert _count("credential.revealed") == 0


# Ending at expiry


def test_end_before_expiry_does_nothing(active):
    grant = active.grant

    with time_machine.travel(grant.expires_at - timedelta(seconds=1)):
        assert services.end_grant(grant.pk) is False
        assert services.sweep()["ended"] == 0

    active.refresh_from_db()
    assert active.status == Status.ACTIVE
    assert _count("grant.expired") == 0


def test_sweep_expires_the_grant_and_erases_the_secret(active):
    grant = active.grant

    with time_machine.travel(grant.expires_at + timedelta(seconds=2), tick=False):
        assert services.sweep()["ended"] == 1

    active.refresh_from_db()
    grant.refresh_from_db()
    assert active.status == Status.EXPIRED
    assert grant.ended_at == grant.expires_at + timedelta(seconds=2)
    assert grant.sealed_credential is None
    event = last_event("grant.expired")
    assert event.actor == "system"
    assert event.data["principal"] == grant.principal
    assert event.data["lag_seconds"] == 2.0
    assert actions(active)[-2:] == ["grant.expired", "review.due"]


@pytest.mark.django_db(transaction=True)
def test_sweep_leaves_a_grant_being_ended_to_its_worker(alice, bob, carol, bastion):
    grant = issued_request(alice, bob, carol).grant
    locked, release = threading.Event(), threading.Event()

    def end_elsewhere():
        # A worker in the middle of ending the grant holds its row.
        try:
            with transaction.atomic():
                Grant.objects.select_for_update().get(pk=grant.pk)
                locked.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    worker = threading.Thread(target=end_elsewhere)
    worker.start()
    assert locked.wait(timeout=10)
    with time_machine.travel(grant.expires_at + timedelta(seconds=1)):
        try:
            assert services.sweep()["ended"] == 0
        finally:
            release.set()
            worker.join(timeout=30)
        # Had that worker died, its lock would be gone and the sweep ends it.
        assert services.sweep()["ended"] == 1

    assert _count("grant.expired") == 1


def test_end_grant_twice_records_one_event(active):
    grant = active.grant

    with time_machine.travel(grant.expires_at + timedelta(seconds=1)):
        assert services.end_grant(grant.pk) is True
        assert services.end_grant(grant.pk) is False
        assert services.sweep()["ended"] == 0

    active.refresh_from_db()
    assert active.status == Status.EXPIRED
    assert _count("grant.expired") == 1
    assert _count("grant.revoked") == 0


def test_no_reveal_after_the_end(active, alice):
    with time_machine.travel(active.grant.expires_at + timedelta(seconds=1)):
        services.end_grant(active.grant.pk)

    with pytest.raises(WrongState):
        services.reveal_credential(active.pk, actor=alice)
    assert _count("credential.revealed") == 0


# Ending early


@pytest.mark.parametrize("who", ["alice", "bob", "ada"])
def test_early_end_by_requester_approver_or_admin(
    request, active, who, django_capture_on_commit_callbacks
):
    actor = request.getfixturevalue(who)

    with django_capture_on_commit_callbacks(execute=False) as queued:
        services.request_end(active.pk, actor=actor, reason="  fixed  ")
    assert len(queued) == 1

    grant = Grant.objects.get(pk=active.grant.pk)
    assert grant.end_requested_by == who
    assert grant.end_reason == "fixed"

    assert services.end_grant(grant.pk) is True

    active.refresh_from_db()
    assert active.status == Status.REVOKED
    event = last_event("grant.revoked")
    assert event.actor == who
    assert event.data["reason"] == "fixed"
    # The certificate is recalled through the target's revocation list.
    serial = grant.target_snapshot["certificate_serial"]
    assert event.data["certificate_serial"] == serial
    assert krl.recalled_serials(grant.target_snapshot["revocation_list_path"]) == [
        serial
    ]
    assert _count("grant.expired") == 0


def test_early_end_refused_to_others(active, dave, oscar, cora):
    for user in (dave, oscar, cora):
        with pytest.raises(NotAllowed):
            services.request_end(active.pk, actor=user)

    grant = Grant.objects.get(pk=active.grant.pk)
    assert grant.end_requested_at is None
    active.refresh_from_db()
    assert active.status == Status.ACTIVE


def test_early_end_of_a_request_without_grant_is_refused(alice, bob, carol, bastion):
    access_request = open_request(alice)

    with pytest.raises(WrongState) as refused:
        services.request_end(access_request.pk, actor=alice)

    assert refused.value.code == "not_active"
    access_request.refresh_from_db()
    assert access_request.status == Status.PENDING


def test_sweep_ends_a_grant_whose_end_task_was_lost(active, alice):
    services.request_end(active.pk, actor=alice)

    assert services.sweep()["ended"] == 1

    active.refresh_from_db()
    assert active.status == Status.REVOKED
    with pytest.raises(WrongState):
        services.request_end(active.pk, actor=alice)
    assert _count("grant.revoked") == 1


# Failures


def test_revocation_failure_is_alerted_critical_and_retried_with_backoff(
    alice, bob, orders_db, monkeypatch, settings
):
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]
    access_request = issued_request(alice, bob, target="orders-db")
    grant = access_request.grant
    assert _role_exists(grant.principal)
    password = services.reveal_credential(access_request.pk, actor=alice)["password"]
    monkeypatch.setenv(DSN_ENV, UNREACHABLE_DSN)
    start = grant.expires_at + timedelta(seconds=1)

    with time_machine.travel(start, tick=False):
        assert services.end_grant(grant.pk) is False

    grant.refresh_from_db()
    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE
    assert grant.revoke_attempts == 1
    assert grant.retry_at == start + timedelta(seconds=2)
    event = last_event("grant.revocation_failed")
    assert event.actor == "system"
    assert event.data["principal"] == grant.principal
    assert event.data["attempt"] == 1
    assert event.data["next_attempt_at"] == grant.retry_at.isoformat()
    assert password not in str(event.data)
    assert alerts.payload(event)["severity"] == "critical"
    alert = Alert.objects.get(event=event)
    assert (alert.channel, alert.destination) == ("email", "security@example.com")

    # Before the backoff has passed the sweep leaves the grant alone.
    with time_machine.travel(start + timedelta(seconds=1), tick=False):
        assert services.sweep()["ended"] == 0
    grant.refresh_from_db()
    assert grant.revoke_attempts == 1

    # After it, the sweep tries again, and backs off further.
    with time_machine.travel(start + timedelta(seconds=3), tick=False):
        assert services.sweep()["ended"] == 0
    grant.refresh_from_db()
    assert grant.revoke_attempts == 2
    assert grant.retry_at == start + timedelta(seconds=3 + 4)
    assert _count("grant.revocation_failed") == 2

    # The target is back: the next sweep revokes.
    monkeypatch.setenv(DSN_ENV, ADMIN_DSN)
    with time_machine.travel(start + timedelta(seconds=8), tick=False):
        assert services.sweep()["ended"] == 1
    access_request.refresh_from_db()
    assert access_request.status == Status.EXPIRED
    assert not _role_exists(grant.principal)
    assert _count("grant.expired") == 1


def test_revocation_failure_of_an_early_end_keeps_the_request_active(
    alice, bob, orders_db, monkeypatch
):
    access_request = issued_request(alice, bob, target="orders-db")
    monkeypatch.setenv(DSN_ENV, UNREACHABLE_DSN)
    services.request_end(access_request.pk, actor=alice, reason="done")

    assert services.end_grant(access_request.grant.pk) is False

    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE
    assert _count("grant.revocation_failed") == 1
    assert _count("grant.revoked") == 0

    monkeypatch.setenv(DSN_ENV, ADMIN_DSN)
    with time_machine.travel(timedelta(seconds=3)):
        assert services.sweep()["ended"] == 1
    access_request.refresh_from_db()
    assert access_request.status == Status.REVOKED
    assert not _role_exists(access_request.grant.principal)
    assert last_event("grant.revoked").actor == "alice"


def test_issue_failure_is_retried_then_fails_the_request(
    alice, bob, orders_db, monkeypatch, settings
):
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]
    monkeypatch.setenv(DSN_ENV, UNREACHABLE_DSN)
    access_request = open_request(alice, target="orders-db")
    approve(access_request, bob)
    grant = Grant.objects.get(request=access_request)
    start = grant.approved_at

    with time_machine.travel(start, tick=False):
        services.issue_grant(grant.pk)
    grant.refresh_from_db()
    access_request.refresh_from_db()
    assert access_request.status == Status.APPROVED
    assert grant.issue_attempts == 1
    assert grant.retry_at == start + timedelta(seconds=2)
    assert "127.0.0.1" in grant.last_error or "connect" in grant.last_error.lower()

    with time_machine.travel(start + timedelta(seconds=1), tick=False):
        assert services.sweep()["issued"] == 0
    grant.refresh_from_db()
    assert grant.issue_attempts == 1

    with time_machine.travel(start + timedelta(seconds=3), tick=False):
        services.sweep()
    grant.refresh_from_db()
    assert grant.issue_attempts == 2
    assert _count("grant.issue_failed") == 0

    with time_machine.travel(start + timedelta(seconds=10), tick=False):
        services.sweep()
    grant.refresh_from_db()
    access_request.refresh_from_db()
    assert grant.issue_attempts == 3
    assert access_request.status == Status.FAILED
    assert grant.ended_at is not None and grant.retry_at is None
    event = last_event("grant.issue_failed")
    assert event.actor == "system"
    assert event.data["attempts"] == 3
    assert alerts.payload(event)["severity"] == "critical"
    assert Alert.objects.filter(event=event).count() == 1

    with time_machine.travel(start + timedelta(minutes=5), tick=False):
        services.sweep()
    grant.refresh_from_db()
    assert grant.issue_attempts == 3
    assert _count("grant.issue_failed") == 1


def test_issue_failure_never_puts_the_admin_password_in_the_trail(
    alice, bob, orders_db, monkeypatch
):
    # A malformed URI: the driver's message quotes the whole string.
    monkeypatch.setenv(DSN_ENV, "postgresql://postgres:s3cret-pw@[::1/postgres")
    access_request = open_request(alice, target="orders-db")
    approve(access_request, bob)
    grant = Grant.objects.get(request=access_request)

    for attempt in range(3):
        with time_machine.travel(timedelta(minutes=attempt)):
            services.issue_grant(grant.pk)

    grant.refresh_from_db()
    access_request.refresh_from_db()
    assert access_request.status == Status.FAILED
    assert grant.last_error
    assert "s3cret-pw" not in grant.last_error
    event = last_event("grant.issue_failed")
    assert "s3cret-pw" not in str(event.data)


@pytest.fixture
def cache(db, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, REDIS_URL)
    yield make_target(
        "cache", "redis", grants=["+@read", "~orders:*"], env_var=CACHE_ENV, approvals=1
    )
    # Whatever a failed test left on the shared server goes with it.
    admin = redis.Redis.from_url(REDIS_URL)
    for principal in Grant.objects.values_list("principal", flat=True):
        admin.acl_deluser(principal)


def test_unusable_admin_url_is_a_failure_to_retry_not_a_crash(
    alice, bob, cache, monkeypatch
):
    monkeypatch.setenv(CACHE_ENV, "redis://127.0.0.1:notaport/14")
    access_request = open_request(alice, target="cache")
    approve(access_request, bob)
    grant = Grant.objects.get(request=access_request)

    services.issue_grant(grant.pk)

    grant.refresh_from_db()
    assert grant.issue_attempts == 1
    assert grant.retry_at is not None
    assert grant.last_error


def test_unusable_admin_url_at_revocation_is_alerted_and_retried(
    alice, bob, cache, monkeypatch
):
    access_request = issued_request(alice, bob, target="cache")
    grant = access_request.grant
    admin = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    assert grant.principal in admin.acl_users()
    monkeypatch.setenv(CACHE_ENV, "redis://127.0.0.1:notaport/14")
    start = grant.expires_at + timedelta(seconds=1)

    with time_machine.travel(start, tick=False):
        assert services.end_grant(grant.pk) is False

    grant.refresh_from_db()
    assert grant.retry_at == start + timedelta(seconds=2)
    assert last_event("grant.revocation_failed").data["attempt"] == 1

    monkeypatch.setenv(CACHE_ENV, REDIS_URL)
    with time_machine.travel(start + timedelta(seconds=3), tick=False):
        assert services.sweep()["ended"] == 1
    access_request.refresh_from_db()
    assert access_request.status == Status.EXPIRED
    assert grant.principal not in admin.acl_users()
