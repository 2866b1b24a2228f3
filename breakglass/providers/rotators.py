"""Rotators: set a new secret for a sealed target's shared account on its system.

Each takes the target's rotator settings (a dict from the snapshot) and the new
secret, and returns only once the system accepted it; anything else raises
ProviderError with a message that never holds a secret.
"""

import hashlib
import logging
import os
import shlex
import signal
import subprocess
from urllib.parse import urlsplit

import psycopg
import redis
from django.conf import settings
from django.views.decorators.debug import sensitive_variables
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..errors import ProviderError
from . import postgres
from . import redis as redis_provider
from .base import env_value

logger = logging.getLogger(__name__)

KINDS = ("postgres", "redis", "command")
# All a rotation command gets from the worker's environment: the rest of it holds
# the sealing keys, SECRET_KEY, the database URL and other targets' admin DSNs.
COMMAND_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


class PostgresRotator:
    """Set the password of an existing login role with ALTER ROLE."""

    @sensitive_variables("secret", "verifier")
    def rotate(self, rotator, *, secret):
        dsn = env_value(rotator.get("connection_env"), "admin DSN")
        username = rotator["username"]
        try:
            with postgres._connect(dsn) as conn:
                if not conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", [username]
                ).fetchone():
                    raise ProviderError(f"PostgreSQL: role {username} does not exist")
                # A SCRAM verifier rather than the password, so that the
                # server's statement log never holds the secret.
                verifier = conn.pgconn.encrypt_password(
                    secret.encode(), username.encode(), b"scram-sha-256"
                ).decode()
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(username), sql.Literal(verifier)
                    )
                )
                # A session opened with the old secret must not outlive it.
                conn.execute(
                    "SELECT pg_terminate_backend(pid, %s) FROM pg_stat_activity "
                    "WHERE usename = %s AND pid <> pg_backend_pid()",
                    [postgres.TERMINATE_WAIT_MILLISECONDS, username],
                )
        except psycopg.Error as exc:
            raise ProviderError(postgres._describe(exc)) from None

    def connection(self, rotator):
        params = conninfo_to_dict(env_value(rotator.get("connection_env"), "DSN"))
        return {
            "host": params.get("host", "localhost"),
            "port": int(params.get("port", 5432)),
            "dbname": params.get("dbname", "postgres"),
        }

    def sessions(self, rotator):
        return postgres.PostgresProvider().sessions(
            {"connection_env": rotator.get("connection_env")},
            principal=rotator["username"],
        )


class RedisRotator:
    """Replace the passwords of an existing ACL user."""

    @sensitive_variables("secret")
    def rotate(self, rotator, *, secret):
        url = env_value(rotator.get("connection_env"), "admin URL")
        username = rotator["username"]
        # The server keeps only this hash; sending it keeps the secret itself
        # out of the command stream.
        digest = hashlib.sha256(secret.encode()).hexdigest()
        try:
            with redis_provider._client(url) as client:
                # SETUSER would create a missing user: make sure it exists.
                if client.execute_command("ACL", "GETUSER", username) is None:
                    raise ProviderError(f"Redis: user {username} does not exist")
                client.execute_command(
                    "ACL", "SETUSER", username, "resetpass", f"#{digest}"
                )
                # Connections opened with the old secret must not outlive it.
                client.execute_command("CLIENT", "KILL", "USER", username)
        except redis.ResponseError as exc:
            if "No such user" not in str(exc):
                raise ProviderError(f"Redis: {exc}") from None
        except redis.RedisError as exc:
            raise ProviderError(f"Redis: {exc}") from None

    def connection(self, rotator):
        parts = urlsplit(env_value(rotator.get("connection_env"), "URL"))
        return {"host": parts.hostname or "localhost", "port": parts.port or 6379}

    def sessions(self, rotator):
        return redis_provider.RedisProvider().sessions(
            {"connection_env": rotator.get("connection_env")},
            principal=rotator["username"],
        )


class CommandRotator:
    """Run the operator's command with the new secret on its standard input."""

    @sensitive_variables("secret")
    def rotate(self, rotator, *, secret):
        command = env_value(rotator.get("command_env"), "rotation command")
        try:
            argv = shlex.split(command)
        except ValueError:
            argv = []
        if not argv:
            raise ProviderError(
                f"environment variable {rotator['command_env']} holds no command"
            )
        timeout = settings.BREAKGLASS_ROTATOR_TIMEOUT_SECONDS
        environment = {
            name: os.environ[name] for name in COMMAND_ENV_NAMES if name in os.environ
        }
        environment["BREAKGLASS_USERNAME"] = rotator.get("username", "")
        try:
            # Its own session, so that a timeout ends whatever it started too.
            # Its output is never read: it may echo the secret, and a pipe kept
            # open by a process that left the session would block the worker.
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=environment,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProviderError(
                f"rotation command could not start: {exc.strerror}"
            ) from None
        try:
            process.communicate((secret + "\n").encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise ProviderError(
                f"rotation command did not finish within {timeout:g} s"
            ) from None
        if process.returncode != 0:
            raise ProviderError(
                f"rotation command exited with status {process.returncode}"
            )

    def connection(self, rotator):
        return {}

    def sessions(self, rotator):
        return []


def _kill_group(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


ROTATORS = {
    "postgres": PostgresRotator(),
    "redis": RedisRotator(),
    "command": CommandRotator(),
}


def rotator_for(rotator):
    try:
        return ROTATORS[rotator.get("kind")]
    except KeyError:
        raise ProviderError(f"unknown rotator kind {rotator.get('kind')!r}") from None


def sessions_of(rotator):
    """Return the sessions the system shows for the shared account."""
    return rotator_for(rotator).sessions(rotator)
