"""Sealed targets in the targets-and-policies file: `kind: sealed` with a rotator."""

import textwrap

import pytest
from django.core.management import CommandError, call_command

from breakglass.models import Target

SEALED = textwrap.dedent(
    """\
    targets:
      - name: legacy-db
        kind: sealed
        environment: production
        rotator:
          kind: postgres
          connection_env: LEGACY_DB_ADMIN_DSN
          username: emergency_admin
        scopes:
          - name: superuser
        policy: {approvals_required: 2, approver_groups: [sre-leads]}
      - name: san-console
        kind: sealed
        rotator: {kind: command, command_env: SAN_ROTATE_COMMAND, username: admin}
        scopes:
          - name: admin
            grants: []
    """
)


def _apply(tmp_path, text):
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    call_command("apply_config", str(path))
    return path


def test_a_sealed_target_keeps_its_rotator(db, tmp_path):
    _apply(tmp_path, SEALED)

    legacy = Target.objects.get(name="legacy-db")
    assert legacy.kind == "sealed"
    assert legacy.connection_env == ""
    assert legacy.rotator == {
        "kind": "postgres",
        "username": "emergency_admin",
        "connection_env": "LEGACY_DB_ADMIN_DSN",
        "command_env": "",
    }
    assert Target.objects.get(name="san-console").rotator["kind"] == "command"
    assert list(legacy.scopes.values_list("name", "grants")) == [("superuser", [])]


@pytest.mark.parametrize(
    "replace, key_path",
    [
        (
            (
                "    rotator:\n      kind: postgres\n"
                "      connection_env: LEGACY_DB_ADMIN_DSN\n"
                "      username: emergency_admin\n",
                "",
            ),
            "targets[0].rotator",
        ),
        (("kind: postgres", "kind: mysql"), "targets[0].rotator.kind"),
        (("      username: emergency_admin\n", ""), "targets[0].rotator.username"),
        (
            ("      connection_env: LEGACY_DB_ADMIN_DSN\n", ""),
            "targets[0].rotator.connection_env",
        ),
        (
            ("command_env: SAN_ROTATE_COMMAND", "command_env: 'rm -rf /'"),
            "targets[1].rotator.command_env",
        ),
        (
            ("command_env: SAN", "connection_env: X, command_env: SAN"),
            "targets[1].rotator.connection_env",
        ),
        (("username: admin}", "username: admin, port: 5}"), "targets[1].rotator.port"),
        (
            ("environment: production", "connection_env: DSN"),
            "targets[0].connection_env",
        ),
    ],
)
def test_a_bad_rotator_is_named_by_key_path(db, tmp_path, replace, key_path):
    with pytest.raises(CommandError) as refused:
        _apply(tmp_path, SEALED.replace(*replace))

    assert f"{key_path}:" in str(refused.value)
    assert not Target.objects.exists()


def test_a_rotator_is_only_for_sealed_targets(db, tmp_path):
    text = textwrap.dedent(
        """\
        targets:
          - name: cache
            kind: redis
            connection_env: CACHE_URL
            rotator: {kind: redis, connection_env: CACHE_URL, username: x}
            scopes: [{name: read, grants: ['+get']}]
        """
    )

    with pytest.raises(CommandError) as refused:
        _apply(tmp_path, text)

    assert "targets[0].rotator: is only for a sealed target" in str(refused.value)
