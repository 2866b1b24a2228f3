"""Redis: a per-grant ACL user, deleted with its connections at the end."""

import secrets
from datetime import timedelta
from urllib.parse import urlsplit

import redis

from .. import clock
from ..errors import ProviderError
from .base import PRINCIPAL_PREFIX, Provider, Session, env_value

TIMEOUT_SECONDS = 5


class RedisProvider(Provider):
    kind = "redis"

    def issue(self, snapshot, *, principal, expires_at, key_id, public_key=""):
        url = env_value(snapshot.get("connection_env"), "admin URL")
        password = secrets.token_urlsafe(24)
        try:
            with _client(url) as client:
                # `reset` first: a retry after a crash starts from a user with
                # nothing.
                client.execute_command(
                    "ACL",
                    "SETUSER",
                    principal,
                    "reset",
                    "on",
                    f">{password}",
                    *snapshot["grants"],
                )
        except redis.RedisError as exc:
            raise ProviderError(f"Redis: {exc}") from None
        parts = urlsplit(url)
        return {
            "kind": self.kind,
            "username": principal,
            "password": password,
            "host": parts.hostname or "localhost",
            "port": parts.port or 6379,
            "expires_at": expires_at.isoformat(),
        }

    def revoke(self, snapshot, *, principal):
        url = env_value(snapshot.get("connection_env"), "admin URL")
        try:
            with _client(url) as client:
                client.execute_command("ACL", "DELUSER", principal)
                client.execute_command("CLIENT", "KILL", "USER", principal)
        except redis.ResponseError as exc:
            # CLIENT KILL answers an error when no connection matched.
            if "No such user" not in str(exc):
                raise ProviderError(f"Redis: {exc}") from None
        except redis.RedisError as exc:
            raise ProviderError(f"Redis: {exc}") from None

    def principals(self, snapshot):
        url = env_value(snapshot.get("connection_env"), "admin URL")
        try:
            with _client(url) as client:
                users = client.execute_command("ACL", "USERS")
        except redis.RedisError as exc:
            raise ProviderError(f"Redis: {exc}") from None
        names = (u.decode() if isinstance(u, bytes) else u for u in users)
        return sorted(n for n in names if n.startswith(PRINCIPAL_PREFIX))

    def sessions(self, snapshot, *, principal):
        return self.sessions_of({principal: snapshot})[principal]

    def sessions_of(self, snapshots):
        if not snapshots:
            return {}
        snapshot = next(iter(snapshots.values()))
        url = env_value(snapshot.get("connection_env"), "admin URL")
        try:
            with _client(url) as client:
                # Client ids start again from 1 when the server restarts; its run
                # id tells one server run from the next.
                run_id = client.info("server")["run_id"]
                connections = client.client_list()
                now = clock.now()
        except redis.RedisError as exc:
            raise ProviderError(f"Redis: {exc}") from None
        found = {principal: [] for principal in snapshots}
        for c in connections:
            if c.get("user") in found:
                found[c["user"]].append(
                    Session(
                        key=f"client {c['id']} of run {run_id}",
                        source_address=c.get("addr", ""),
                        used_at=now - timedelta(seconds=int(c.get("age", 0))),
                        details={"client_id": int(c["id"]), "db": int(c.get("db", 0))},
                    )
                )
        return found


def _client(url):
    return redis.Redis.from_url(
        url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
    )
