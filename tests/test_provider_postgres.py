"""The PostgreSQL provider against a real cluster that checks passwords."""

import secrets
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from breakglass.errors import ProviderError
from breakglass.providers import postgres, provider_for
from breakglass.providers.postgres import CONNECTION_LIMIT

from .conftest import wrong_password

ENV = "BG_TEST_PG_TARGET_DSN"
provider = provider_for("postgres")


def _snapshot(*grants):
    return {
        "kind": "postgres",
        "name": "orders-db",
        "connection_env": ENV,
        "grants": list(grants),
    }


def _expiry(minutes=30):
    return datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=minutes)


@pytest.fixture
def target(pg_target, monkeypatch):
    monkeypatch.setenv(ENV, pg_target.admin_dsn)
    return pg_target


@pytest.fixture
def principal(target):
    name = f"bg_test_{secrets.token_hex(4)}"
    yield name
    target.drop_role(name)


def _issue(principal, *grants, expires_at=None):
    return provider.issue(
        _snapshot(*grants),
        principal=principal,
        expires_at=expires_at or _expiry(),
        key_id="request 1",
    )


def _login(target, credential, dbname="orders", password=None):
    return target.connect(
        dbname,
        user=credential["username"],
        password=password or credential["password"],
    )


def test_issue_creates_a_login_role_limited_in_time_and_connections(target, principal):
    expires_at = _expiry(minutes=45)

    credential = _issue(principal, "orders_read", expires_at=expires_at)

    assert credential["username"] == principal
    assert len(credential["password"]) >= 24
    assert (credential["host"], credential["port"], credential["dbname"]) == (
        "127.0.0.1",
        target.port,
        "orders",
    )
    name, can_login, valid_until, connection_limit = target.role(principal)
    assert can_login
    assert valid_until == expires_at
    assert connection_limit == CONNECTION_LIMIT
    with _login(target, credential) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM orders")
        memberships = conn.execute(
            "SELECT r.rolname FROM pg_auth_members m "
            "JOIN pg_roles r ON r.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s",
            [principal],
        ).fetchall()
    assert memberships == [("orders_read",)]


def test_a_wrong_password_does_not_log_in(target, principal):
    credential = _issue(principal, "orders_read")

    with pytest.raises(psycopg.OperationalError, match="password authentication"):
        _login(target, credential, password=wrong_password(credential["password"]))


def test_the_connection_limit_is_enforced(target, principal):
    credential = _issue(principal, "orders_read")
    sessions = [_login(target, credential) for _ in range(CONNECTION_LIMIT)]
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections"):
            _login(target, credential)
    finally:
        for session in sessions:
            session.close()


def test_a_passed_valid_until_refuses_the_login(target, principal):
    credential = _issue(principal, "orders_read", expires_at=_expiry(minutes=-1))

    with pytest.raises(psycopg.OperationalError, match="password authentication"):
        _login(target, credential)


def test_revoke_cuts_sessions_and_drops_the_role(target, principal):
    credential = _issue(principal, "orders_read")
    session = _login(target, credential)

    provider.revoke(_snapshot("orders_read"), principal=principal)

    assert target.role(principal) is None
    assert target.sessions(principal) == 0
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    with pytest.raises(psycopg.OperationalError):
        _login(target, credential)


def test_revoke_twice_and_revoke_of_a_missing_role_succeed(target, principal):
    _issue(principal, "orders_read")

    provider.revoke(_snapshot("orders_read"), principal=principal)
    provider.revoke(_snapshot("orders_read"), principal=principal)
    provider.revoke(_snapshot("orders_read"), principal=f"{principal}_never")

    assert target.role(principal) is None


def test_issue_after_a_partial_attempt_starts_again(target, principal):
    # What a crash between CREATE ROLE and the grants would leave: a role with a
    # password nobody kept, no memberships, and a session.
    with target.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'left-behind-password-1234'").format(
                sql.Identifier(principal)
            )
        )
    leftover = _login(
        target, {"username": principal}, password="left-behind-password-1234"
    )

    credential = _issue(principal, "orders_read")

    with pytest.raises(psycopg.OperationalError):
        leftover.execute("SELECT 1")
    leftover.close()
    with pytest.raises(psycopg.OperationalError, match="password authentication"):
        _login(target, {"username": principal}, password="left-behind-password-1234")
    with _login(target, credential) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)


def test_issuing_twice_keeps_only_the_second_password(target, principal):
    first = _issue(principal, "orders_read")
    second = _issue(principal, "orders_read")

    assert first["password"] != second["password"]
    with pytest.raises(psycopg.OperationalError, match="password authentication"):
        _login(target, first)
    with _login(target, second) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_awkward_role_names_are_quoted(target):
    scope_role = 'Read "All"'
    principal = f'bg_Odd "name"; {secrets.token_hex(3)}'
    with target.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(scope_role))
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON orders TO {}").format(sql.Identifier(scope_role))
        )
        conn.execute(
            sql.SQL("GRANT orders_read TO {}").format(sql.Identifier(scope_role))
        )
    try:
        credential = _issue(principal, scope_role)
        with _login(target, credential) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)

        provider.revoke(_snapshot(scope_role), principal=principal)

        assert target.role(principal) is None
        assert target.role(scope_role) is not None
    finally:
        target.drop_role(principal)
        target.drop_role(scope_role)


def test_a_grant_that_is_not_a_role_fails_and_leaves_nothing(target, principal):
    with pytest.raises(ProviderError, match="does not exist") as failure:
        _issue(principal, "orders_read", "orders_read; DROP TABLE orders")

    assert target.role(principal) is None
    with target.connect() as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    assert target.password not in str(failure.value)


def test_revoke_drops_what_the_role_owns_in_every_database(target, principal):
    credential = _issue(principal, "builder")
    with _login(target, credential, "scratch") as conn:
        conn.execute(f"CREATE TABLE notes_{principal} (line text)")
    with _login(target, credential, "orders") as conn:
        conn.execute(f"CREATE TABLE copy_{principal} (id integer)")
    open_elsewhere = _login(target, credential, "scratch")

    provider.revoke(_snapshot("builder"), principal=principal)

    assert target.role(principal) is None
    with pytest.raises(psycopg.OperationalError):
        open_elsewhere.execute("SELECT 1")
    open_elsewhere.close()
    for dbname, table in (("scratch", "notes"), ("orders", "copy")):
        with target.connect(dbname) as conn:
            assert not conn.execute(
                "SELECT 1 FROM pg_tables WHERE tablename = %s",
                [f"{table}_{principal}"],
            ).fetchone()


def test_errors_name_the_problem_and_never_the_admin_password(pg_target, monkeypatch):
    wrong = "not-the-password-" + secrets.token_hex(4)
    monkeypatch.setenv(ENV, pg_target.dsn(password=wrong))

    with pytest.raises(ProviderError, match="password authentication") as failure:
        _issue("bg_test_nobody", "orders_read")

    assert wrong not in str(failure.value)
    assert pg_target.password not in str(failure.value)


def test_a_missing_admin_dsn_is_a_provider_error(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)

    with pytest.raises(ProviderError, match=ENV):
        _issue("bg_test_nobody", "orders_read")
    with pytest.raises(ProviderError, match=ENV):
        provider.revoke(_snapshot("orders_read"), principal="bg_test_nobody")


def test_what_a_grant_created_cannot_run_with_the_admins_rights(target, principal):
    credential = _issue(principal, "builder")
    with _login(target, credential) as conn:
        conn.execute(
            "CREATE FUNCTION public.escalate() RETURNS void LANGUAGE sql "
            "SECURITY DEFINER AS 'ALTER ROLE orders_read SUPERUSER'"
        )

    provider.revoke(_snapshot("builder"), principal=principal)

    later = f"bg_test_later_{secrets.token_hex(4)}"
    try:
        with _login(target, _issue(later, "orders_read")) as conn:
            with pytest.raises(psycopg.Error):
                conn.execute("SELECT public.escalate()")
    finally:
        target.drop_role(later)
    assert target.role("orders_read") is not None
    with target.connect() as conn:
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'orders_read'"
        ).fetchone() == (False,)


def test_a_revocation_held_up_by_a_lock_fails_in_time_then_succeeds(
    target, principal, monkeypatch
):
    monkeypatch.setattr(postgres, "LOCK_TIMEOUT", "1s")
    credential = _issue(principal, "builder")
    with _login(target, credential) as conn:
        conn.execute(f"CREATE TABLE held_{principal} (id integer)")
    # Someone on the target reads the grant's table in a transaction left open:
    # dropping the table has to wait for it.
    holder = target.connect()
    holder.execute("BEGIN")
    holder.execute(f"SELECT * FROM held_{principal}")

    started = time.monotonic()
    with pytest.raises(ProviderError, match="lock timeout"):
        provider.revoke(_snapshot("builder"), principal=principal)
    assert time.monotonic() - started < 10
    assert target.role(principal) is not None
    with pytest.raises(psycopg.OperationalError):
        _login(target, credential)

    holder.close()
    provider.revoke(_snapshot("builder"), principal=principal)
    assert target.role(principal) is None


def test_a_session_that_outlives_the_wait_fails_the_revocation(
    target, principal, monkeypatch
):
    credential = _issue(principal, "orders_read")
    session = _login(target, credential)
    # As if the session had not gone within the wait: the revocation must not
    # report the grant's end while it is still there.
    terminate = postgres._terminate_sessions
    monkeypatch.setattr(postgres, "_terminate_sessions", _count_only(terminate))

    with pytest.raises(ProviderError, match="1 session"):
        provider.revoke(_snapshot("orders_read"), principal=principal)
    assert target.role(principal) is not None

    monkeypatch.setattr(postgres, "_terminate_sessions", terminate)
    provider.revoke(_snapshot("orders_read"), principal=principal)
    assert target.role(principal) is None
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()


def _count_only(terminate):
    """Return a terminate step that asks nothing to exit, only counts what is left."""

    def count(conn, principal):
        class Unterminating:
            def execute(self, query, params=()):
                if "pg_terminate_backend" in query:
                    return None
                return conn.execute(query, params)

        return terminate(Unterminating(), principal)

    return count
