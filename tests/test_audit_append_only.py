"""The trail is append-only inside PostgreSQL, whatever the client does."""

import secrets
from pathlib import Path

import psycopg
import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError

from breakglass import audit
from breakglass.models import AuditEvent

ROLES_SQL = Path(__file__).resolve().parent.parent / "deploy" / "postgres-roles.sql"


@pytest.fixture
def trail(db):
    for n in range(3):
        audit.record_event("config.applied", actor="ada", data={"n": n})
    return list(AuditEvent.objects.order_by("seq"))


def _refused(statement, params=()):
    """Run a statement in a savepoint; return the database's refusal."""
    with pytest.raises(DatabaseError) as refusal, transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
    return str(refusal.value)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE breakglass_auditevent SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM breakglass_auditevent WHERE seq = 3",
        "TRUNCATE breakglass_auditevent CASCADE",
    ],
)
@pytest.mark.parametrize("replication_role", ["origin", "replica"])
def test_changing_the_trail_is_refused_even_to_a_superuser(
    trail, statement, replication_role
):
    # Replica mode silences ordinary triggers: these are ENABLE ALWAYS.
    with connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL session_replication_role = {replication_role}")

    refusal = _refused(statement)

    assert "the audit trail is append-only" in refusal
    assert [(e.seq, e.actor, e.hash) for e in AuditEvent.objects.order_by("seq")] == [
        (e.seq, e.actor, e.hash) for e in trail
    ]


def test_the_orm_cannot_change_the_trail_either(trail):
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(seq=1).update(actor="mallory")
    with pytest.raises(DatabaseError), transaction.atomic():
        trail[0].delete()

    assert AuditEvent.objects.get(seq=1).actor == "ada"
    assert audit.verify_chain() == (3, None)


@pytest.fixture
def app_role(transactional_db, settings):
    """A login role with exactly the grants the README gives the application."""
    name = f"bg_test_app_{secrets.token_hex(4)}"
    sql = ROLES_SQL.read_text().replace("breakglass_app", name)
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE ROLE "{name}" LOGIN')
        cursor.execute(sql)
    params = connection.get_connection_params()
    conninfo = {k: params[k] for k in ("host", "port", "dbname") if k in params}
    yield psycopg.connect(**conninfo, user=name, autocommit=True)
    with connection.cursor() as cursor:
        cursor.execute(f'DROP OWNED BY "{name}"')
        cursor.execute(f'DROP ROLE "{name}"')


def test_the_application_role_can_append_but_not_change_or_unprotect(app_role):
    audit.record_event("config.applied", actor="ada", data={"n": 1})
    refused = [
        "UPDATE breakglass_auditevent SET actor = 'mallory'",
        "DELETE FROM breakglass_auditevent",
        "TRUNCATE breakglass_auditevent",
        "ALTER TABLE breakglass_auditevent DISABLE TRIGGER ALL",
        "DROP TRIGGER breakglass_audit_no_update_or_delete ON breakglass_auditevent",
        "DROP TABLE breakglass_auditevent CASCADE",
        "SET session_replication_role = replica",
    ]
    with app_role.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM breakglass_auditevent")
        assert cursor.fetchone() == (1,)
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                cursor.execute(statement)
        # Appending is what the application does: allowed.
        cursor.execute(
            "INSERT INTO breakglass_auditevent (seq, at, actor, action, incident,"
            " target, scope, requester, data, prev_hash, hash)"
            " SELECT 2, now(), 'x', 'x', '', '', '', '', '{}', hash, 'h'"
            " FROM breakglass_auditevent WHERE seq = 1"
        )

    assert AuditEvent.objects.count() == 2
    assert AuditEvent.objects.get(seq=1).actor == "ada"
