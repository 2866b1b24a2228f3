"""The targets-and-policies file and `manage.py apply_config` (CONTRACT.md, 2-3)."""

import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from breakglass.models import AuditEvent, Policy, Scope, Target

# CONTRACT.md, section 3.
EXAMPLE = textwrap.dedent(
    """\
    targets:
      - name: orders-db                  # unique slug
        kind: postgres                   # postgres | redis | ssh
        environment: production          # free text, usable in policy conditions
        connection_env: ORDERS_DB_DSN    # env var holding the admin DSN / URL
        scopes:
          - name: read
            grants: [pg_read_all_data]
          - name: owner
            grants: [orders_owner]
        policy:
          approvals_required: 2
          approver_groups: [sre-leads]
          requester_groups: [oncall]
          max_duration_minutes: 60
          approval_window_minutes: 30
          incident_pattern: '^INC-[0-9]+$'
      - name: bastion
        kind: ssh
        environment: production
        ca_key_env: BASTION_CA_KEY_FILE
        scopes:
          - name: root
            grants: [root]
        policy: {approvals_required: 1, approver_groups: [sre-leads], max_duration_minutes: 30}
    """  # noqa: E501 (the contract's example, verbatim)
)


def _write(tmp_path, text, name="targets.yaml"):
    path = tmp_path / name
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return path


def _state():
    return (
        sorted(Target.objects.values_list("name", "kind", "environment", "is_active")),
        sorted(
            Scope.objects.values_list("target__name", "name", "grants", "is_active")
        ),
        sorted(
            Policy.objects.values_list(
                "target__name",
                "approvals_required",
                "max_duration_minutes",
                "approval_window_minutes",
                "incident_pattern",
            )
        ),
        sorted(Group.objects.values_list("name", flat=True)),
        AuditEvent.objects.count(),
    )


def _apply(path):
    call_command("apply_config", str(path), stdout=StringIO())


def test_example_file_creates_targets_scopes_policies_and_groups(db, tmp_path):
    path = _write(tmp_path, EXAMPLE)

    _apply(path)

    orders = Target.objects.get(name="orders-db")
    assert (orders.kind, orders.environment, orders.connection_env) == (
        "postgres",
        "production",
        "ORDERS_DB_DSN",
    )
    assert dict(orders.scopes.values_list("name", "grants")) == {
        "read": ["pg_read_all_data"],
        "owner": ["orders_owner"],
    }
    policy = orders.policy
    assert policy.approvals_required == 2
    assert [g.name for g in policy.approver_groups.all()] == ["sre-leads"]
    assert [g.name for g in policy.requester_groups.all()] == ["oncall"]
    assert (policy.max_duration_minutes, policy.approval_window_minutes) == (60, 30)
    assert policy.incident_pattern == "^INC-[0-9]+$"

    bastion = Target.objects.get(name="bastion")
    assert (bastion.kind, bastion.ca_key_env) == ("ssh", "BASTION_CA_KEY_FILE")
    assert bastion.policy.approvals_required == 1
    assert bastion.policy.max_duration_minutes == 30
    # Unset rules take their defaults.
    assert bastion.policy.approval_window_minutes == 30
    assert bastion.policy.requester_groups.count() == 0

    event = AuditEvent.objects.get()
    assert event.action == "config.applied"
    assert event.actor == "system"
    assert event.data["source"] == str(path)
    assert event.data["targets"] == ["orders-db", "bastion"]
    assert len(event.data["sha256"]) == 64


def test_applying_twice_changes_nothing_more(db, tmp_path):
    path = _write(tmp_path, EXAMPLE)
    _apply(path)
    first = _state()
    ids = sorted(Scope.objects.values_list("pk", flat=True))

    _apply(path)

    second = _state()
    assert second[:4] == first[:4]
    assert sorted(Scope.objects.values_list("pk", flat=True)) == ids
    assert second[4] == first[4] + 1
    assert AuditEvent.objects.filter(action="config.applied").count() == 2


def test_a_changed_file_updates_and_deactivates_without_deleting(db, tmp_path):
    _apply(_write(tmp_path, EXAMPLE))
    changed = EXAMPLE.replace(
        "      - name: owner\n        grants: [orders_owner]\n", ""
    ).replace("approvals_required: 2", "approvals_required: 3")

    _apply(_write(tmp_path, changed, "changed.yaml"))

    orders = Target.objects.get(name="orders-db")
    assert orders.policy.approvals_required == 3
    owner = Scope.objects.get(target=orders, name="owner")
    assert owner.is_active is False
    assert Scope.objects.get(target=orders, name="read").is_active is True


def _bad(path_of_key, replace=None, text=None):
    return pytest.param(
        text if text is not None else EXAMPLE.replace(*replace), path_of_key
    )


BAD_FILES = [
    _bad(
        "targets[1].policy.approvals_required",
        ("approvals_required: 1", "approvals_required: 0"),
    ),
    _bad(
        "targets[0].policy.approvals_required",
        ("approvals_required: 2", "approvals_required: two"),
    ),
    _bad(
        "targets[0].policy.approvals_required",
        ("approvals_required: 2", "approvals_required: true"),
    ),
    _bad(
        "targets[0].policy.max_duration_minutes",
        ("max_duration_minutes: 60", "max_duration_minutes: 60.5"),
    ),
    _bad(
        "targets[0].policy.approvers",
        ("approver_groups: [sre-leads]\n", "approvers: [x]\n"),
    ),
    _bad("targets[1].colour", ("kind: ssh", "kind: ssh\n    colour: red")),
    _bad("targets[0].scopes[0].roles", ("grants: [pg_read_all_data]", "roles: [x]")),
    _bad("targets[0].kind", ("kind: postgres", "kind: mysql")),
    _bad(
        "targets[0].policy.incident_pattern",
        ("'^INC-[0-9]+$'", "'^INC-[0-9+$'"),
    ),
    _bad("targets[1].name", ("name: bastion", "name: orders-db")),
    _bad("targets[0].scopes[1].name", ("name: owner", "name: read")),
    _bad("targets[0].connection_env", ("connection_env: ORDERS_DB_DSN", "")),
    _bad("targets[1].ca_key_env", ("ca_key_env: BASTION_CA_KEY_FILE", "")),
    _bad("targets[0].connection_env", ("ORDERS_DB_DSN", "'postgres://x@y/z'")),
    _bad("targets[0].name", ("name: orders-db", "name: orders db")),
    _bad("targets[0].scopes[0].grants", ("[pg_read_all_data]", "pg_read_all_data")),
    _bad("targets[0].scopes[1].grants", ("[orders_owner]", "[]")),
    _bad("targets[0].policy.approver_groups", ("[sre-leads]", "sre-leads")),
    _bad(
        "targets[0].scopes",
        text="targets:\n  - name: x\n    kind: ssh\n    ca_key_env: K\n",
    ),
    _bad("targets", text="targets: {name: x}\n"),
    _bad("targets[0]", text="targets: [just-a-name]\n"),
    _bad("hosts", text="targets: []\nhosts: []\n"),
    _bad("targets[1].name", ("name: bastion", "name: " + "b" * 101)),
    _bad("targets[1].scopes[0].name", ("name: root", "name: " + "r" * 101)),
    _bad("targets[0].environment", ("production", "p" * 101)),
    _bad("targets[1].ca_key_env", ("BASTION_CA_KEY_FILE", "K" * 201)),
    _bad("targets[0].policy.incident_pattern", ("[0-9]+$", "[0-9]+" + "x" * 200)),
    _bad("targets[0].policy.requester_groups", ("[oncall]", f"[{'g' * 151}]")),
]


@pytest.mark.parametrize("text, key_path", BAD_FILES)
def test_invalid_file_names_the_file_and_key_and_changes_nothing(
    db, tmp_path, text, key_path
):
    _apply(_write(tmp_path, EXAMPLE, "good.yaml"))
    before = _state()
    path = _write(tmp_path, text)

    with pytest.raises(CommandError) as refused:
        _apply(path)

    message = str(refused.value)
    assert str(path) in message
    assert f"{key_path}:" in message
    assert _state() == before


@pytest.mark.parametrize(
    "text",
    [
        "targets: [\n  - name: x\n   kind: : ssh",
        "\tthis: is: not: yaml",
        b"\x00\x01\x02\xff binary",
        "",
        "just a sentence",
        "- a\n- list\n",
    ],
)
def test_not_a_targets_file_at_all(db, tmp_path, text):
    before = _state()
    path = _write(tmp_path, text)

    with pytest.raises(CommandError) as refused:
        _apply(path)

    assert str(path) in str(refused.value)
    assert _state() == before


def test_missing_file(db, tmp_path):
    with pytest.raises(CommandError) as refused:
        _apply(tmp_path / "absent.yaml")

    assert "absent.yaml" in str(refused.value)
    assert AuditEvent.objects.count() == 0


def test_the_command_exits_non_zero_on_stderr(tmp_path):
    path = _write(
        tmp_path, EXAMPLE.replace("approvals_required: 1", "approvals_required: 11")
    )
    root = Path(settings.BASE_DIR)

    done = subprocess.run(
        [sys.executable, str(root / "manage.py"), "apply_config", str(path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode != 0
    assert str(path) in done.stderr
    assert "targets[1].policy.approvals_required" in done.stderr
    assert "Traceback" not in done.stderr
