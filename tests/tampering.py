"""What an attacker with the database's superuser could do to the trail.

The trail's triggers refuse every UPDATE, DELETE and TRUNCATE; a superuser (or
the table's owner) can still switch them off. Tests that check that tampering is
found do exactly that, inside their own transaction.
"""

from contextlib import contextmanager

from django.db import connection

TABLE = "breakglass_auditevent"
TRIGGERS = ("breakglass_audit_no_update_or_delete", "breakglass_audit_no_truncate")


@contextmanager
def triggers_disabled(using=connection):
    with using.cursor() as cursor:
        for trigger in TRIGGERS:
            cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER {trigger}")
    try:
        yield
    finally:
        with using.cursor() as cursor:
            # Deferred foreign key checks must run before the table is altered.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for trigger in TRIGGERS:
                cursor.execute(f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {trigger}")


def tamper(statement, params=()):
    """Run one statement on the trail as a superuser who set the triggers aside."""
    with triggers_disabled(), connection.cursor() as cursor:
        cursor.execute(statement, params)
