"""Sealed shared credentials (breakglass.rotation) on real PostgreSQL and Redis.

An operator seals the emergency account's secret, which is rotated at once;
Alice checks it out under Bob's and Carol's approval, logs in with it, and at
the end of her grant the product replaces it on the system. A rotator that
fails leaves the old secret sealed and working, and the credential compromised.
"""

import io
import os
import pty
import secrets
import select
import sys
import termios
import threading
from datetime import timedelta

import psycopg
import pytest
import redis
import time_machine
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection
from psycopg import sql

from breakglass import alerts, roles, rotation, services, vault
from breakglass.errors import WrongState
from breakglass.models import AccessRequest, Alert, AuditEvent, SealedCredential

from .conftest import make_user
from .fixtures.waiting import wait_until
from .flows import actions, approve, last_event, open_request
from .sealed_helpers import (
    COMMAND_ENV,
    current_secret,
    make_appliance,
    make_sealed_target,
    seal,
)

Status = AccessRequest.Status
DSN_ENV = "BG_TEST_SEALED_DSN"
REDIS_ENV = "BG_TEST_SEALED_REDIS"


@pytest.fixture
def erin(db):
    """A second engineer on call, who wants the same account as Alice."""
    return make_user("erin", roles.REQUESTER, groups=["oncall"])


def checked_out(requester, *approvers, target, minutes=30):
    access_request = open_request(
        requester, target=target, scope="read", duration_minutes=minutes
    )
    for approver in approvers:
        approve(access_request, approver)
    access_request.refresh_from_db()
    services.issue_grant(access_request.grant.pk)
    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE
    return access_request


def expire(access_request):
    """Move the clock past the grant's end and let the sweep do what is due."""
    with time_machine.travel(
        access_request.grant.expires_at + timedelta(seconds=1), tick=False
    ):
        return services.sweep()


# PostgreSQL


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
    yield name, typed
    pg_target.drop_role(name)


@pytest.fixture
def legacy_db(db, pg_target, emergency_role, monkeypatch):
    monkeypatch.setenv(DSN_ENV, pg_target.admin_dsn)
    return make_sealed_target(
        "legacy-db",
        {"kind": "postgres", "connection_env": DSN_ENV, "username": emergency_role[0]},
    )


def can_log_in(pg_target, role, password):
    try:
        with pg_target.connect(user=role, password=password) as conn:
            return conn.execute("SELECT current_user").fetchone()[0] == role
    except psycopg.OperationalError:
        return False


def test_sealing_rotates_the_typed_secret_away(legacy_db, pg_target, emergency_role):
    role, typed = emergency_role

    seal("legacy-db", typed)
    assert actions()[-1:] == ["credential.sealed"]
    assert rotation.rotate_due() == 1

    assert not can_log_in(pg_target, role, typed)
    assert can_log_in(pg_target, role, current_secret(legacy_db))
    credential = SealedCredential.objects.get(target=legacy_db)
    assert credential.rotated_at is not None
    assert credential.exposed is False
    assert credential.pending_secret is None
    assert last_event("credential.rotated").data["username"] == role


def test_checkout_reveal_login_expiry_then_the_old_secret_is_refused(
    legacy_db, pg_target, emergency_role, alice, bob, carol
):
    role, typed = emergency_role
    seal("legacy-db", typed)
    rotation.rotate_due()
    access_request = checked_out(alice, bob, carol, target="legacy-db")

    credential = services.reveal_credential(access_request.pk, actor=alice)
    assert credential["kind"] == "sealed"
    assert credential["username"] == role
    assert credential["port"] == pg_target.port
    revealed = credential["password"]
    assert can_log_in(pg_target, role, revealed)
    session = pg_target.connect(user=role, password=revealed)

    try:
        counts = expire(access_request)
    finally:
        session.close()

    assert counts["ended"] == 1
    assert counts["rotated"] == 1
    access_request.refresh_from_db()
    assert access_request.status == Status.EXPIRED
    assert not can_log_in(pg_target, role, revealed)
    assert can_log_in(pg_target, role, current_secret(legacy_db))
    trail = actions(access_request)
    assert trail.index("credential.used") < trail.index("grant.expired")
    assert trail.index("grant.expired") < trail.index("credential.rotated")


def test_a_second_request_is_refused_while_the_first_holds_the_secret(
    legacy_db, emergency_role, alice, erin
):
    seal("legacy-db", emergency_role[1])
    rotation.rotate_due()
    first = open_request(alice, target="legacy-db")

    with pytest.raises(WrongState) as refused:
        open_request(erin, target="legacy-db")

    assert refused.value.code == "checked_out"
    assert refused.value.status == 409
    assert f"request {first.pk}" in refused.value.detail
    assert AccessRequest.objects.filter(target=legacy_db).count() == 1


def test_a_request_waits_for_the_rotation_after_the_last_checkout(
    legacy_db, emergency_role, alice, bob, carol
):
    seal("legacy-db", emergency_role[1])

    with pytest.raises(WrongState) as refused:
        open_request(alice, target="legacy-db")

    assert refused.value.code == "rotation_pending"
    rotation.rotate_due()
    assert open_request(alice, target="legacy-db").status == Status.PENDING


def test_a_target_never_sealed_refuses_requests(legacy_db, alice):
    with pytest.raises(WrongState) as refused:
        open_request(alice, target="legacy-db")

    assert refused.value.code == "not_sealed"


def test_a_target_that_refuses_the_new_password_keeps_the_old_one(
    legacy_db, pg_target, emergency_role, alice, bob, carol, settings
):
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]
    role, typed = emergency_role
    seal("legacy-db", typed)
    rotation.rotate_due()
    sealed = current_secret(legacy_db)
    access_request = checked_out(alice, bob, carol, target="legacy-db")
    services.reveal_credential(access_request.pk, actor=alice)
    renamed = f"{role}_away"
    with pg_target.connect() as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} RENAME TO {}").format(
                sql.Identifier(role), sql.Identifier(renamed)
            )
        )
    try:
        expire(access_request)
    finally:
        with pg_target.connect() as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} RENAME TO {}").format(
                    sql.Identifier(renamed), sql.Identifier(role)
                )
            )

    credential = SealedCredential.objects.get(target=legacy_db)
    assert credential.is_compromised
    assert current_secret(legacy_db) == sealed
    assert can_log_in(pg_target, role, sealed)
    failed = last_event("credential.rotation_failed")
    assert failed.request_id == access_request.pk
    assert "does not exist" in failed.data["error"]
    assert failed.data["compromised"] is True
    assert alerts.severity(failed.action) == "critical"
    assert Alert.objects.filter(event=failed).exists()


@pytest.mark.django_db(transaction=True)
def test_two_requests_at_the_same_moment_cannot_both_check_out(
    pg_target, emergency_role, monkeypatch, alice, erin
):
    monkeypatch.setenv(DSN_ENV, pg_target.admin_dsn)
    make_sealed_target(
        "legacy-db",
        {"kind": "postgres", "connection_env": DSN_ENV, "username": emergency_role[0]},
    )
    seal("legacy-db", emergency_role[1])
    rotation.rotate_due()
    start = threading.Barrier(2)
    outcomes = []

    def ask(requester):
        try:
            start.wait()
            open_request(requester, target="legacy-db")
            outcomes.append("created")
        except WrongState as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=ask, args=(user,)) for user in (alice, erin)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcomes) == ["checked_out", "created"]
    assert AccessRequest.objects.count() == 1


# Redis


@pytest.fixture
def cache(db, redis_target, monkeypatch):
    name = f"emergency_{secrets.token_hex(3)}"
    typed = secrets.token_urlsafe(16)
    with redis_target.admin() as client:
        client.execute_command("ACL", "SETUSER", name, "on", f">{typed}", "~*", "+@all")
    monkeypatch.setenv(REDIS_ENV, redis_target.admin_url)
    target = make_sealed_target(
        "cache", {"kind": "redis", "connection_env": REDIS_ENV, "username": name}
    )
    yield target, name, typed
    with redis_target.admin() as client:
        client.execute_command("ACL", "DELUSER", name)


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


def test_redis_early_end_rotates_and_cuts_the_connection(
    cache, redis_target, alice, bob, carol
):
    target, name, typed = cache
    seal("cache", typed)
    rotation.rotate_due()
    assert not redis_login(redis_target, name, typed)
    access_request = checked_out(alice, bob, carol, target="cache")
    revealed = services.reveal_credential(access_request.pk, actor=alice)["password"]
    assert redis_login(redis_target, name, revealed)
    held = redis.Redis(
        host=redis_target.host, port=redis_target.port, username=name, password=revealed
    )
    held.ping()

    services.request_end(access_request.pk, actor=bob, reason="fixed")
    services.end_grant(access_request.grant.pk)
    assert rotation.rotate_due() == 1

    access_request.refresh_from_db()
    assert access_request.status == Status.REVOKED
    assert not redis_login(redis_target, name, revealed)
    assert redis_login(redis_target, name, current_secret(target))
    assert redis_target.connections(name) == []
    held.close()


# The command rotator


@pytest.fixture
def appliance(db, tmp_path, monkeypatch):
    return make_appliance(tmp_path, monkeypatch, approvals=1)


def test_a_command_rotator_gets_the_new_secret_on_its_input(appliance):
    target, stored = appliance
    seal("appliance", secrets.token_urlsafe(16))

    assert rotation.rotate_due() == 1

    assert stored.read_text() == current_secret(target)


def test_a_command_rotator_sees_none_of_the_workers_secrets(
    appliance, tmp_path, monkeypatch, settings
):
    target, stored = appliance
    seen = tmp_path / "environment"
    script = tmp_path / "show-environment"
    script.write_text(f"#!/bin/sh\nread -r secret\nenv > {seen}\n")
    script.chmod(0o700)
    sealing_key = Fernet.generate_key().decode()
    settings.BREAKGLASS_SEALING_KEYS = [sealing_key]
    monkeypatch.setenv("BREAKGLASS_SEALING_KEYS", sealing_key)
    monkeypatch.setenv("BG_TEST_OTHER_TARGET_DSN", "postgres://admin:hunter2@db/x")
    seal("appliance", secrets.token_urlsafe(16))
    monkeypatch.setenv(COMMAND_ENV, str(script))

    assert rotation.rotate_due() == 1

    environment = dict(
        line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line
    )
    assert environment["BREAKGLASS_USERNAME"] == "admin"
    assert "PATH" in environment
    for name in (
        "BREAKGLASS_SEALING_KEYS",
        "BG_TEST_OTHER_TARGET_DSN",
        "SECRET_KEY",
        "DATABASE_URL",
        COMMAND_ENV,
    ):
        assert name not in environment
    assert sealing_key not in seen.read_text()


def test_a_command_that_leaves_a_process_behind_still_rotates(
    appliance, tmp_path, monkeypatch, settings
):
    settings.BREAKGLASS_ROTATOR_TIMEOUT_SECONDS = 2
    target, stored = appliance
    # A helper left running in a session of its own, holding the command's
    # output open: the rotation must not wait for it.
    script = tmp_path / "set-secret-and-leave"
    script.write_text(
        f'#!/bin/sh\nread -r secret\nprintf %s "$secret" > {stored}\nsetsid sleep 8 &\n'
    )
    script.chmod(0o700)
    seal("appliance", secrets.token_urlsafe(16))
    monkeypatch.setenv(COMMAND_ENV, str(script))

    assert rotation.rotate_due() == 1

    credential = SealedCredential.objects.get(target=target)
    assert not credential.is_compromised
    assert stored.read_text() == current_secret(target)


@pytest.mark.parametrize(
    "command, error",
    [
        ("sh -c 'cat; cat >&2; exit 3'", "exited with status 3"),
        ("sleep 30", "did not finish within 0.5 s"),
        ("/nonexistent/rotate", "could not start"),
    ],
)
def test_a_failing_command_keeps_the_old_secret_and_is_retried(
    appliance, monkeypatch, settings, alice, bob, command, error
):
    settings.BREAKGLASS_ROTATOR_TIMEOUT_SECONDS = 0.5
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]
    target, stored = appliance
    seal("appliance", secrets.token_urlsafe(16))
    rotation.rotate_due()
    sealed = current_secret(target)
    access_request = checked_out(alice, bob, target="appliance")
    services.reveal_credential(access_request.pk, actor=alice)
    working = str(stored.parent / "set-secret")
    monkeypatch.setenv(COMMAND_ENV, command)

    expire(access_request)

    credential = SealedCredential.objects.get(target=target)
    assert current_secret(target) == sealed
    assert credential.is_compromised
    assert error in credential.last_error
    assert error in last_event("credential.rotation_failed").data["error"]
    with pytest.raises(WrongState) as refused:
        open_request(alice, target="appliance")
    assert refused.value.code == "rotation_pending"

    # Fixed by the operator: the sweep's next try after the backoff succeeds.
    monkeypatch.setenv(COMMAND_ENV, working)
    with time_machine.travel(credential.retry_at + timedelta(seconds=1), tick=False):
        assert services.sweep()["rotated"] == 1

    credential.refresh_from_db()
    assert not credential.is_compromised
    assert stored.read_text() == current_secret(target) != sealed
    assert last_event("credential.rotated").data["was_compromised"] is True


def test_a_rotator_changed_during_a_checkout_does_not_rotate_another_account(
    appliance, alice, bob, settings
):
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]
    target, stored = appliance
    seal("appliance", secrets.token_urlsafe(16))
    rotation.rotate_due()
    access_request = checked_out(alice, bob, target="appliance")
    revealed = services.reveal_credential(access_request.pk, actor=alice)["password"]
    target.rotator = {**target.rotator, "username": "operator"}
    target.save(update_fields=["rotator"])

    expire(access_request)

    credential = SealedCredential.objects.get(target=target)
    assert credential.is_compromised
    assert stored.read_text() == current_secret(target) == revealed
    failed = last_event("credential.rotation_failed")
    assert failed.request_id == access_request.pk
    assert "rotator was changed" in failed.data["error"]
    assert Alert.objects.filter(event=failed).exists()
    assert not AuditEvent.objects.filter(
        action="credential.rotated", request=access_request
    ).exists()


def test_a_secret_typed_at_a_terminal_is_not_echoed(appliance, monkeypatch):
    target, _ = appliance
    typed = secrets.token_urlsafe(16)
    terminal, line = pty.openpty()
    err = io.StringIO()

    def type_at_the_prompt():
        try:
            wait_until(lambda: "not shown" in err.getvalue(), timeout=5, what="prompt")
        finally:
            # Typed anyway without a prompt, so that the command is not left waiting.
            os.write(terminal, f"{typed}\n".encode())

    typist = threading.Thread(target=type_at_the_prompt)
    typist.start()
    with open(line, closefd=True) as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        call_command("seal_credential", "appliance", stdout=io.StringIO(), stderr=err)
        typist.join()
        echo_restored = bool(termios.tcgetattr(stdin.fileno())[3] & termios.ECHO)
        shown = b""
        while select.select([terminal], [], [], 0.2)[0]:
            shown += os.read(terminal, 1024)
    os.close(terminal)

    assert current_secret(target) == typed
    assert typed.encode() not in shown
    assert echo_restored


def test_a_failed_rotation_is_not_tried_again_before_its_backoff(
    appliance, monkeypatch
):
    target, _ = appliance
    seal("appliance", secrets.token_urlsafe(16))
    monkeypatch.setenv(COMMAND_ENV, "false")
    rotation.rotate_due()

    assert rotation.rotate_due() == 0
    assert AuditEvent.objects.filter(action="credential.rotation_failed").count() == 1
    pending = SealedCredential.objects.get(target=target).pending_secret
    assert pending is not None


def test_a_crash_after_the_system_took_the_secret_loses_nothing(appliance, monkeypatch):
    target, stored = appliance
    seal("appliance", secrets.token_urlsafe(16))

    def crash(*args, **kwargs):
        raise RuntimeError("worker killed")

    monkeypatch.setattr(rotation, "_promote", crash)
    with pytest.raises(RuntimeError):
        rotation.rotate_due()
    monkeypatch.undo()

    # The system holds the new secret, which was sealed before it was sent.
    pending = SealedCredential.objects.get(target=target).pending_secret
    assert stored.read_text() == vault.unseal(pending)
    monkeypatch.setenv(COMMAND_ENV, "false")
    rotation.rotate_due()
    assert (
        vault.unseal(SealedCredential.objects.get(target=target).pending_secret)
        == stored.read_text()
    )


# Keys


def test_reseal_encrypts_every_secret_with_the_newest_key(appliance, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.BREAKGLASS_SEALING_KEYS = [old]
    target, _ = appliance
    seal("appliance", secrets.token_urlsafe(16))
    other = make_sealed_target(
        "appliance-2", {"kind": "command", "command_env": COMMAND_ENV}
    )
    seal("appliance-2", secrets.token_urlsafe(16))
    rotation.rotate_due()
    before = {t.name: current_secret(t) for t in (target, other)}

    settings.BREAKGLASS_SEALING_KEYS = [new, old]
    assert not any(
        vault.uses_newest_key(c.secret) for c in SealedCredential.objects.all()
    )
    out = io.StringIO()
    call_command("reseal", stdout=out)

    assert "resealed 2" in out.getvalue()
    settings.BREAKGLASS_SEALING_KEYS = [new]
    assert all(vault.uses_newest_key(c.secret) for c in SealedCredential.objects.all())
    assert {t.name: current_secret(t) for t in (target, other)} == before
    assert last_event("credential.resealed").data == {"credentials": 2}
