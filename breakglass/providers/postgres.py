"""PostgreSQL: a fresh login role per grant, dropped with its sessions at the end."""

import logging
import secrets

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import ProviderError
from .base import PRINCIPAL_PREFIX, Provider, Session, env_value

logger = logging.getLogger(__name__)

CONNECTION_LIMIT = 5
CONNECT_TIMEOUT_SECONDS = 5
# A revocation holds its grant's row lock while it talks to the target: a lock
# or a statement there that never ends must not hold every later try up with it.
LOCK_TIMEOUT = "10s"
STATEMENT_TIMEOUT = "60s"
# How long each of the role's sessions is given to exit once told to.
TERMINATE_WAIT_MILLISECONDS = 5000


class PostgresProvider(Provider):
    kind = "postgres"

    def issue(self, snapshot, *, principal, expires_at, key_id, public_key=""):
        dsn = _admin_dsn(snapshot)
        password = secrets.token_urlsafe(24)
        role = sql.Identifier(principal)
        try:
            with _connect(dsn) as conn:
                # Send a SCRAM verifier, never the password, so that it cannot show
                # up in the server's statement log.
                verifier = conn.pgconn.encrypt_password(
                    password.encode(), principal.encode(), b"scram-sha-256"
                ).decode()
                with conn.transaction():
                    # A retry after a crash finds the role of the first attempt,
                    # whose password was never kept: start again from nothing.
                    _drop_role(conn, principal)
                    conn.execute(
                        sql.SQL(
                            "CREATE ROLE {} LOGIN NOINHERIT PASSWORD {} "
                            "VALID UNTIL {} CONNECTION LIMIT {}"
                        ).format(
                            role,
                            sql.Literal(verifier),
                            sql.Literal(expires_at.isoformat()),
                            sql.Literal(CONNECTION_LIMIT),
                        )
                    )
                    # INHERIT so that the scope's privileges apply without SET ROLE.
                    conn.execute(sql.SQL("ALTER ROLE {} INHERIT").format(role))
                    for granted in snapshot["grants"]:
                        conn.execute(
                            sql.SQL("GRANT {} TO {}").format(
                                sql.Identifier(granted), role
                            )
                        )
        except psycopg.Error as exc:
            raise ProviderError(_describe(exc)) from None

        params = conninfo_to_dict(dsn)
        return {
            "kind": self.kind,
            "username": principal,
            "password": password,
            "host": params.get("host", "localhost"),
            "port": int(params.get("port", 5432)),
            "dbname": params.get("dbname", "postgres"),
            "expires_at": expires_at.isoformat(),
        }

    def revoke(self, snapshot, *, principal):
        dsn = _admin_dsn(snapshot)
        try:
            with _connect(dsn) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", [principal]
                ).fetchone()
                if not exists:
                    return
                conn.execute(
                    sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(principal))
                )
                _terminate_sessions(conn, principal)
                databases = conn.execute(
                    "SELECT DISTINCT d.datname FROM pg_shdepend s "
                    "JOIN pg_database d ON d.oid = s.dbid "
                    "JOIN pg_roles r ON r.oid = s.refobjid "
                    "WHERE r.rolname = %s AND d.datallowconn",
                    [principal],
                ).fetchall()
                current = conn.info.dbname
                for (dbname,) in databases:
                    if dbname == current:
                        _disown(conn, principal)
                    else:
                        other = make_conninfo(dsn, dbname=dbname)
                        with _connect(other) as db_conn:
                            _disown(db_conn, principal)
                _disown(conn, principal)
                with conn.transaction():
                    _drop_role(conn, principal)
        except psycopg.Error as exc:
            raise ProviderError(_describe(exc)) from None

    def principals(self, snapshot):
        dsn = _admin_dsn(snapshot)
        pattern = PRINCIPAL_PREFIX.replace("_", "\\_") + "%"
        try:
            with _connect(dsn) as conn:
                rows = conn.execute(
                    "SELECT rolname FROM pg_roles WHERE rolname LIKE %s ESCAPE '\\' "
                    "ORDER BY rolname",
                    [pattern],
                ).fetchall()
        except psycopg.Error as exc:
            raise ProviderError(_describe(exc)) from None
        return [name for (name,) in rows]

    def sessions(self, snapshot, *, principal):
        return self.sessions_of({principal: snapshot})[principal]

    def sessions_of(self, snapshots):
        if not snapshots:
            return {}
        dsn = _admin_dsn(next(iter(snapshots.values())))
        try:
            with _connect(dsn) as conn:
                # A session that switched to a granted role with SET ROLE keeps
                # its login role here.
                rows = conn.execute(
                    "SELECT usename, pid, backend_start, host(client_addr), "
                    "client_port, datname FROM pg_stat_activity "
                    "WHERE usename = ANY(%s) AND backend_type = 'client backend'",
                    [list(snapshots)],
                ).fetchall()
        except psycopg.Error as exc:
            raise ProviderError(_describe(exc)) from None
        if any(started is None for _, _, started, *_ in rows):
            # Only superusers and members of pg_read_all_stats see when and from
            # where other roles' sessions started.
            raise ProviderError(
                "PostgreSQL: the admin role cannot see the sessions' details; "
                "grant it pg_read_all_stats"
            )
        found = {principal: [] for principal in snapshots}
        for principal, pid, started, host, port, dbname in rows:
            found[principal].append(
                Session(
                    # A pid is reused once its backend exits; with the start time
                    # it names one session.
                    key=f"pid {pid} at {started.isoformat()}",
                    source_address=_address(host, port),
                    used_at=started,
                    details={"database": dbname, "pid": pid},
                )
            )
        return found


def _address(host, port):
    if not host:
        return "local socket"
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _admin_dsn(snapshot):
    return env_value(snapshot.get("connection_env"), "admin DSN")


def _connect(dsn):
    conn = psycopg.connect(
        dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    )
    try:
        conn.execute(
            "SELECT set_config('lock_timeout', %s, false), "
            "set_config('statement_timeout', %s, false)",
            [LOCK_TIMEOUT, STATEMENT_TIMEOUT],
        )
    except BaseException:
        conn.close()
        raise
    return conn


def _terminate_sessions(conn, principal):
    """End every session of the role; raise if one is still there afterwards."""
    # Each session is waited for, so the role's end is real when revocation
    # reports it done; one that does not exit in time fails the revocation,
    # which is then retried, instead of outliving a grant shown as ended.
    conn.execute(
        "SELECT pg_terminate_backend(pid, %s) FROM pg_stat_activity "
        "WHERE usename = %s AND pid <> pg_backend_pid()",
        [TERMINATE_WAIT_MILLISECONDS, principal],
    )
    # Counted again rather than trusting each answer: a session that exited by
    # itself meanwhile answers false too. Inside a transaction the statistics
    # are a snapshot taken at the first look: take a fresh one.
    conn.execute("SELECT pg_stat_clear_snapshot()")
    survivors = conn.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE usename = %s AND pid <> pg_backend_pid()",
        [principal],
    ).fetchone()[0]
    if survivors:
        raise ProviderError(
            f"PostgreSQL: {survivors} session(s) of {principal} did not end "
            f"within {TERMINATE_WAIT_MILLISECONDS // 1000} s"
        )


def _disown(conn, principal):
    """Drop what the role owns and the privileges it holds in one database."""
    # Never reassigned to the admin: a function, view or index expression left
    # by the grant would then run with the admin's rights after the grant ends.
    with conn.transaction():
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(principal)))


def _drop_role(conn, principal):
    exists = conn.execute(
        "SELECT 1 FROM pg_roles WHERE rolname = %s", [principal]
    ).fetchone()
    if not exists:
        return
    _terminate_sessions(conn, principal)
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(principal)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(principal)))


# What a failure to connect may be reported as. The client library's own messages
# can quote the connection string, password included, so only these known
# phrases are ever repeated.
_CONNECT_FAILURES = (
    "connection refused",
    "timeout expired",
    "could not translate host name",
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "too many connections",
    "the database system is starting up",
    "the database system is shutting down",
    "server closed the connection unexpectedly",
)


def _describe(exc):
    """Return what may be said of a failure: never the DSN or a password."""
    diag = getattr(exc, "diag", None)
    if diag is not None and diag.sqlstate and diag.message_primary:
        # Reported by the server: it names roles and objects, never the
        # password, since the statement that carried it is not part of it.
        return f"PostgreSQL: {diag.message_primary}"
    text = str(exc).lower()
    for phrase in _CONNECT_FAILURES:
        if phrase in text:
            return f"PostgreSQL: could not connect to the target ({phrase})"
    if isinstance(exc, psycopg.ProgrammingError):
        return "PostgreSQL: the admin DSN is malformed"
    return f"PostgreSQL: {type(exc).__name__} while talking to the target"
