"""The Redis provider against the local Redis server."""

import os
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from breakglass.errors import ProviderError
from breakglass.providers import provider_for

from .conftest import wrong_password

ENV = "BG_TEST_REDIS_TARGET_URL"
RULES = ["~cache:*", "+get", "+set", "+ping", "+select"]
provider = provider_for("redis")


def _snapshot(*rules):
    return {
        "kind": "redis",
        "name": "cache",
        "connection_env": ENV,
        "grants": list(rules or RULES),
    }


REDIS_URL = urlsplit(
    os.environ.get("BREAKGLASS_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
)


@pytest.fixture
def admin_url(monkeypatch):
    monkeypatch.setenv(ENV, REDIS_URL.geturl())
    return REDIS_URL.geturl()


@pytest.fixture
def admin(admin_url):
    client = redis.Redis.from_url(admin_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def principal(admin):
    name = f"bg_test_{secrets.token_hex(4)}"
    yield name
    admin.execute_command("ACL", "DELUSER", name)


def _issue(principal, *rules):
    return provider.issue(
        _snapshot(*rules),
        principal=principal,
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
        key_id="request 1",
    )


def _login(credential, password=None):
    client = redis.Redis(
        host=credential["host"],
        port=credential["port"],
        db=int(REDIS_URL.path.strip("/") or 0),
        username=credential["username"],
        password=password or credential["password"],
        socket_timeout=5,
        # Fail at once: a refused login is what these tests look for.
        retry=Retry(NoBackoff(), 0),
    )
    client.ping()
    return client


def _clients_of(admin, principal):
    return [c for c in admin.client_list() if c.get("user") == principal]


def test_issue_creates_an_acl_user_with_the_scope_rules(admin, principal):
    credential = _issue(principal)

    assert credential["username"] == principal
    assert principal.startswith("bg_")
    assert len(credential["password"]) >= 24
    assert (credential["host"], credential["port"]) == (
        REDIS_URL.hostname,
        REDIS_URL.port,
    )
    client = _login(credential)
    client.set("cache:greeting", "hello")
    assert client.get("cache:greeting") == b"hello"
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.get("sessions:alice")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushdb()
    client.close()


def test_a_wrong_password_does_not_log_in(principal):
    credential = _issue(principal)

    with pytest.raises(redis.AuthenticationError):
        _login(credential, password=wrong_password(credential["password"]))


def test_revoke_deletes_the_user_and_kills_its_connections(admin, principal):
    credential = _issue(principal)
    client = _login(credential)
    assert len(_clients_of(admin, principal)) == 1

    provider.revoke(_snapshot(), principal=principal)

    assert admin.acl_getuser(principal) is None
    assert _clients_of(admin, principal) == []
    # A reconnection would have to log in again, which fails too.
    with pytest.raises(redis.ConnectionError):
        client.get("cache:greeting")
    with pytest.raises(redis.AuthenticationError):
        _login(credential)


def test_revoke_twice_and_revoke_of_a_missing_user_succeed(admin, principal):
    _issue(principal)

    provider.revoke(_snapshot(), principal=principal)
    provider.revoke(_snapshot(), principal=principal)
    provider.revoke(_snapshot(), principal=f"{principal}_never")

    assert admin.acl_getuser(principal) is None


def test_issuing_again_resets_the_user(admin, principal):
    first = _issue(principal, "~cache:*", "+@all")
    second = _issue(principal, "~cache:*", "+get", "+select", "+ping")

    with pytest.raises(redis.AuthenticationError):
        _login(first)
    client = _login(second, password=second["password"])
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("cache:greeting", "hello")
    client.close()


def test_a_bad_rule_is_a_provider_error(admin, principal):
    with pytest.raises(ProviderError, match="Redis"):
        _issue(principal, "+nosuchcommand")


def test_a_missing_admin_url_is_a_provider_error(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)

    with pytest.raises(ProviderError, match=ENV):
        _issue("bg_test_nobody")
    with pytest.raises(ProviderError, match=ENV):
        provider.revoke(_snapshot(), principal="bg_test_nobody")
