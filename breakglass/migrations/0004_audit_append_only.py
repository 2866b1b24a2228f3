"""Make the audit trail append-only inside PostgreSQL itself.

Triggers refuse UPDATE, DELETE and TRUNCATE on the trail whatever the client
does. They are ENABLE ALWAYS so that they fire under
session_replication_role = replica too, which otherwise silences triggers.
Only the table's owner or a superuser can drop or disable them: the README
says which grants keep the application's role from doing so.
"""

from django.db import migrations

TABLE = "breakglass_auditevent"

FORWARD = f"""
CREATE FUNCTION breakglass_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % on % is refused',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER breakglass_audit_no_update_or_delete
    BEFORE UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION breakglass_audit_append_only();
CREATE TRIGGER breakglass_audit_no_truncate
    BEFORE TRUNCATE ON {TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION breakglass_audit_append_only();

ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER breakglass_audit_no_update_or_delete;
ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER breakglass_audit_no_truncate;
"""

BACKWARD = f"""
DROP TRIGGER IF EXISTS breakglass_audit_no_truncate ON {TABLE};
DROP TRIGGER IF EXISTS breakglass_audit_no_update_or_delete ON {TABLE};
DROP FUNCTION IF EXISTS breakglass_audit_append_only();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("breakglass", "0003_credential_use_and_ssh_revocation")]

    operations = [migrations.RunPython(forward, backward)]
