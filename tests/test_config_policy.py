"""Policies in context in the targets-and-policies file, and the on-call roster.

A file with every new key is applied, then decides a request as written; a bad
value anywhere is named by its key path and changes nothing.
"""

import datetime
import textwrap
from io import StringIO

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from breakglass import configfile, services
from breakglass.models import AuditEvent, OnCallShift, Policy, Scope, Target

from .conftest import make_user
from .test_config import EXAMPLE

UTC = datetime.UTC

POLICY_FILE = textwrap.dedent(
    """\
    groups: [sre-leads, db-owners, oncall]
    targets:
      - name: orders-db
        kind: postgres
        environment: production
        connection_env: ORDERS_DB_DSN
        scopes:
          - name: read
            grants: [pg_read_all_data]
          - name: owner
            grants: [orders_owner]
            approver_groups: [db-owners]
        policy:
          approvals_required: 2
          approver_groups: [sre-leads]
          requester_groups: [oncall]
          max_duration_minutes: 60
          incident_pattern: '^INC-[0-9]+$'
          timezone: Europe/Paris
          working_hours: {days: [mon, tue, wed, thu, fri], start: 09:00, end: 18:30}
          max_active_grants: 2
          recent_window_days: 7
          rules:
            - name: outside working hours
              when: {off_hours: true}
              add_approvals: 1
            - name: not on call
              when: {on_call: false}
              add_approvals: 2
              max_duration_minutes: 30
            - name: owner in production
              when: {environment: production, scope: [owner]}
              max_duration_minutes: 15
            - name: frequent
              when: {recent_grants_at_least: 3}
              add_approvals: 1
    oncall:
      - user: alice
        start: 2026-01-12T08:00:00+01:00
        end: "2026-01-19T08:00:00+01:00"
        note: week 3
      - {user: bob, start: 2026-01-12T07:00:00Z, end: 2026-01-12T19:00:00Z}
    """
)


@pytest.fixture
def people(alice, bob, carol):
    make_user("dora", "approver", groups=["db-owners"], totp=True)
    return alice, bob, carol


def _write(tmp_path, text, name="targets.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _apply(path):
    out = StringIO()
    call_command("apply_config", str(path), stdout=out)
    return out.getvalue()


def _state():
    return (
        sorted(Target.objects.values_list("name", "kind", "environment", "is_active")),
        sorted(
            (scope.target.name, scope.name, scope.is_active)
            + tuple(sorted(g.name for g in scope.approver_groups.all()))
            for scope in Scope.objects.all()
        ),
        sorted(
            (str(row) for row in Policy.objects.values()),
        ),
        sorted(
            OnCallShift.objects.values_list(
                "user__username", "starts_at", "ends_at", "note", "source"
            )
        ),
        sorted(Group.objects.values_list("name", flat=True)),
        AuditEvent.objects.count(),
    )


def _roster():
    return sorted(
        OnCallShift.objects.values_list(
            "user__username", "starts_at", "ends_at", "source"
        )
    )


# Applied as written


def test_every_new_key_is_applied(people, tmp_path):
    _apply(_write(tmp_path, POLICY_FILE))

    policy = Policy.objects.get(target__name="orders-db")
    assert policy.timezone == "Europe/Paris"
    assert policy.working_days == ["mon", "tue", "wed", "thu", "fri"]
    # 09:00 reads as text, 18:30 as a YAML 1.1 number of minutes: both are times.
    assert policy.working_hours_start == datetime.time(9, 0)
    assert policy.working_hours_end == datetime.time(18, 30)
    assert (policy.max_active_grants, policy.recent_window_days) == (2, 7)
    assert [rule["name"] for rule in policy.rules] == [
        "outside working hours",
        "not on call",
        "owner in production",
        "frequent",
    ]
    assert policy.rules[1] == {
        "name": "not on call",
        "when": {"on_call": False},
        "add_approvals": 2,
        "max_duration_minutes": 30,
    }
    owner = Scope.objects.get(target__name="orders-db", name="owner")
    assert [g.name for g in owner.approver_groups.all()] == ["db-owners"]
    read = Scope.objects.get(target__name="orders-db", name="read")
    assert read.approver_groups.count() == 0

    assert _roster() == [
        (
            "alice",
            datetime.datetime(2026, 1, 12, 7, 0, tzinfo=UTC),
            datetime.datetime(2026, 1, 19, 7, 0, tzinfo=UTC),
            "config",
        ),
        (
            "bob",
            datetime.datetime(2026, 1, 12, 7, 0, tzinfo=UTC),
            datetime.datetime(2026, 1, 12, 19, 0, tzinfo=UTC),
            "config",
        ),
    ]
    event = AuditEvent.objects.get(action="config.applied")
    assert event.data["targets"] == ["orders-db"]
    assert event.data["oncall_entries"] == 2


@pytest.mark.parametrize(
    "start, end, expected",
    [
        ('"09:00"', '"18:30"', (datetime.time(9, 0), datetime.time(18, 30))),
        ("9:00", "18:30", (datetime.time(9, 0), datetime.time(18, 30))),
        ("'07:45'", "23:59", (datetime.time(7, 45), datetime.time(23, 59))),
    ],
)
def test_working_hours_quoted_or_not(people, tmp_path, start, end, expected):
    text = POLICY_FILE.replace(
        "start: 09:00, end: 18:30", f"start: {start}, end: {end}"
    )

    _apply(_write(tmp_path, text))

    policy = Policy.objects.get(target__name="orders-db")
    assert (policy.working_hours_start, policy.working_hours_end) == expected


@pytest.mark.parametrize(
    "moment, scope, approvals, fired, longest, approver_groups",
    [
        # Monday 08:30 in Paris: before hours; Alice is on call.
        (
            "2026-01-12T07:30",
            "owner",
            3,
            ["outside working hours", "owner in production"],
            15,
            ["db-owners"],
        ),
        # Monday 10:00 in Paris, in hours, on call, read scope: the base policy.
        ("2026-01-12T09:00", "read", 2, [], 60, ["sre-leads"]),
        # Monday 18:29 is still in hours; 18:30 is not.
        ("2026-01-12T17:29", "read", 2, [], 60, ["sre-leads"]),
        ("2026-01-12T17:30", "read", 3, ["outside working hours"], 60, ["sre-leads"]),
        # The next Monday, Alice's shift has ended.
        (
            "2026-01-19T09:00",
            "read",
            4,
            ["not on call"],
            30,
            ["sre-leads"],
        ),
    ],
)
def test_the_applied_file_decides_requests(
    people, tmp_path, moment, scope, approvals, fired, longest, approver_groups
):
    alice = people[0]
    _apply(_write(tmp_path, POLICY_FILE))

    when = datetime.datetime.fromisoformat(moment).replace(tzinfo=UTC)
    with time_machine.travel(when, tick=False):
        access_request = services.create_request(
            requester=alice,
            target="orders-db",
            scope=scope,
            duration_minutes=15,
            reason="orders stuck",
            incident="INC-7",
        )

    decision = access_request.decision
    assert access_request.approvals_required == approvals
    assert decision["fired"] == fired
    assert decision["max_duration_minutes"] == longest
    assert decision["approver_groups"] == approver_groups
    assert decision["summary"] == f"{approvals} approvals: " + ", ".join(
        ["production"] + fired
    )


def test_a_new_roster_replaces_the_files_shifts_and_keeps_the_others(people, tmp_path):
    alice, bob, carol = people
    _apply(_write(tmp_path, POLICY_FILE))
    by_api = OnCallShift.objects.create(
        user=carol,
        starts_at=datetime.datetime(2026, 2, 1, tzinfo=UTC),
        ends_at=datetime.datetime(2026, 2, 2, tzinfo=UTC),
        source=OnCallShift.Source.API,
    )
    by_admin = OnCallShift.objects.create(
        user=alice,
        starts_at=datetime.datetime(2026, 3, 1, tzinfo=UTC),
        ends_at=datetime.datetime(2026, 3, 2, tzinfo=UTC),
        source=OnCallShift.Source.ADMIN,
    )
    next_week = POLICY_FILE[: POLICY_FILE.index("oncall:")] + textwrap.dedent(
        """\
        oncall:
          - {user: carol, start: "2026-01-19T07:00:00Z", end: "2026-01-26T07:00:00Z"}
        """
    )

    _apply(_write(tmp_path, next_week, "next.yaml"))

    assert _roster() == [
        (
            "alice",
            by_admin.starts_at,
            by_admin.ends_at,
            "admin",
        ),
        (
            "carol",
            datetime.datetime(2026, 1, 19, 7, 0, tzinfo=UTC),
            datetime.datetime(2026, 1, 26, 7, 0, tzinfo=UTC),
            "config",
        ),
        ("carol", by_api.starts_at, by_api.ends_at, "api"),
    ]


def test_a_file_shift_overlapping_one_added_through_the_api_is_refused(
    people, tmp_path
):
    alice, bob, carol = people
    OnCallShift.objects.create(
        user=alice,
        starts_at=datetime.datetime(2026, 1, 15, tzinfo=UTC),
        ends_at=datetime.datetime(2026, 1, 16, tzinfo=UTC),
        source=OnCallShift.Source.API,
    )
    before = _state()
    path = _write(tmp_path, POLICY_FILE)

    with pytest.raises(CommandError) as refused:
        _apply(path)

    assert "oncall[0]: overlaps a shift of 'alice' added through the api" in str(
        refused.value
    )
    assert _state() == before


def test_a_file_without_a_roster_leaves_it_alone_and_an_empty_one_clears_it(
    people, tmp_path
):
    _apply(_write(tmp_path, POLICY_FILE))
    without = POLICY_FILE[: POLICY_FILE.index("oncall:")]

    _apply(_write(tmp_path, without, "without.yaml"))
    assert OnCallShift.objects.filter(source="config").count() == 2
    assert AuditEvent.objects.last().data["oncall_entries"] is None

    _apply(_write(tmp_path, without + "oncall: []\n", "empty.yaml"))
    assert OnCallShift.objects.filter(source="config").count() == 0
    assert AuditEvent.objects.last().data["oncall_entries"] == 0


def test_without_a_groups_list_new_groups_are_created(people, tmp_path):
    text = POLICY_FILE.replace("groups: [sre-leads, db-owners, oncall]\n", "").replace(
        "approver_groups: [db-owners]", "approver_groups: [brand-new-team]"
    )

    _apply(_write(tmp_path, text))

    owner = Scope.objects.get(target__name="orders-db", name="owner")
    assert [g.name for g in owner.approver_groups.all()] == ["brand-new-team"]


def test_a_groups_list_may_declare_new_groups(people, tmp_path):
    text = POLICY_FILE.replace("db-owners, oncall]", "db-owners, oncall, dba]").replace(
        "approver_groups: [db-owners]", "approver_groups: [dba]"
    )

    _apply(_write(tmp_path, text))

    assert Group.objects.filter(name="dba").exists()


def test_the_contract_example_still_applies_with_the_defaults(people, tmp_path):
    _apply(_write(tmp_path, POLICY_FILE))

    _apply(_write(tmp_path, EXAMPLE, "example.yaml"))

    for policy in Policy.objects.all():
        assert policy.timezone == "UTC"
        assert policy.working_days == ["mon", "tue", "wed", "thu", "fri"]
        assert (policy.working_hours_start, policy.working_hours_end) == (
            datetime.time(9, 0),
            datetime.time(18, 0),
        )
        assert policy.max_active_grants is None
        assert policy.recent_window_days == 30
        assert policy.rules == []
    assert not Scope.objects.filter(approver_groups__isnull=False).exists()
    assert Policy.objects.get(target__name="bastion").approvals_required == 1
    # The file says nothing of the roster, so the roster stays.
    assert OnCallShift.objects.filter(source="config").count() == 2


def test_load_returns_the_targets_roster_and_groups(people):
    config = configfile.load(POLICY_FILE)

    assert [target["name"] for target in config.targets] == ["orders-db"]
    assert config.groups == ["sre-leads", "db-owners", "oncall"]
    assert [entry["user"] for entry in config.oncall] == ["alice", "bob"]
    assert config.oncall[0]["start"] == datetime.datetime(2026, 1, 12, 7, tzinfo=UTC)
    example = configfile.load(EXAMPLE)
    assert (example.oncall, example.groups) == (None, None)
    assert example.targets[1]["policy"]["rules"] == []


# Bad input: named by its key path, nothing applied


def _replaced(old, new):
    assert old in POLICY_FILE, old
    return POLICY_FILE.replace(old, new, 1)


RULE_0 = "          when: {off_hours: true}\n          add_approvals: 1\n"

BAD = [
    # Rules and their conditions
    (
        "targets[0].policy.rules[0].colour",
        _replaced(RULE_0, RULE_0 + "          colour: red\n"),
    ),
    (
        "targets[0].policy.rules[0].when.weekday",
        _replaced("{off_hours: true}", "{off_hours: true, weekday: sat}"),
    ),
    (
        "targets[0].policy.rules[0].when",
        _replaced("{off_hours: true}", "{}"),
    ),
    (
        "targets[0].policy.rules[0].when",
        _replaced("{off_hours: true}", "off_hours"),
    ),
    (
        "targets[0].policy.rules[0].when.off_hours",
        _replaced("{off_hours: true}", "{off_hours: sometimes}"),
    ),
    (
        "targets[0].policy.rules[1].when.on_call",
        _replaced("{on_call: false}", "{on_call: 0}"),
    ),
    (
        "targets[0].policy.rules[2].when.environment",
        _replaced("environment: production, scope", "environment: 5, scope"),
    ),
    (
        "targets[0].policy.rules[2].when.scope",
        _replaced("scope: [owner]", "scope: [owner, 3]"),
    ),
    (
        "targets[0].policy.rules[3].when.recent_grants_at_least",
        _replaced("recent_grants_at_least: 3", "recent_grants_at_least: 0"),
    ),
    (
        "targets[0].policy.rules[3].when.recent_grants_at_least",
        _replaced("recent_grants_at_least: 3", "recent_grants_at_least: -2"),
    ),
    (
        "targets[0].policy.rules[0].add_approvals",
        _replaced(RULE_0, RULE_0.replace("add_approvals: 1", "add_approvals: one")),
    ),
    (
        "targets[0].policy.rules[0].add_approvals",
        _replaced(RULE_0, RULE_0.replace("add_approvals: 1", "add_approvals: -1")),
    ),
    (
        "targets[0].policy.rules[1].max_duration_minutes",
        _replaced("max_duration_minutes: 30", "max_duration_minutes: 0"),
    ),
    (
        "targets[0].policy.rules[2].max_duration_minutes",
        _replaced("max_duration_minutes: 15", "max_duration_minutes: 1.5"),
    ),
    (
        "targets[0].policy.rules[0]",
        _replaced(RULE_0, "          when: {off_hours: true}\n"),
    ),
    (
        "targets[0].policy.rules[0].name",
        _replaced("- name: outside working hours\n          when:", "- when:"),
    ),
    (
        "targets[0].policy.rules",
        POLICY_FILE[: POLICY_FILE.index("      rules:")]
        + "      rules: {name: x}\n"
        + POLICY_FILE[POLICY_FILE.index("oncall:") :],
    ),
    # Time zone and working hours
    (
        "targets[0].policy.timezone",
        _replaced("timezone: Europe/Paris", "timezone: Mars/Olympus_Mons"),
    ),
    ("targets[0].policy.timezone", _replaced("timezone: Europe/Paris", "timezone: 1")),
    (
        "targets[0].policy.working_hours.start",
        _replaced("start: 09:00", "start: '25:00'"),
    ),
    ("targets[0].policy.working_hours.end", _replaced("end: 18:30", "end: 24:00")),
    ("targets[0].policy.working_hours.end", _replaced("end: 18:30", "end: 08:00")),
    ("targets[0].policy.working_hours.start", _replaced("start: 09:00", "start: yes")),
    (
        "targets[0].policy.working_hours.days",
        _replaced("days: [mon, tue,", "days: [mon, funday,"),
    ),
    (
        "targets[0].policy.working_hours.lunch",
        _replaced("end: 18:30}", "end: 18:30, lunch: '12:00'}"),
    ),
    (
        "targets[0].policy.working_hours",
        _replaced("{days: [mon, tue, wed, thu, fri], start: 09:00, end: 18:30}", "9-5"),
    ),
    # Numbers
    (
        "targets[0].policy.max_active_grants",
        _replaced("max_active_grants: 2", "max_active_grants: 0"),
    ),
    (
        "targets[0].policy.max_active_grants",
        _replaced("max_active_grants: 2", "max_active_grants: -1"),
    ),
    (
        "targets[0].policy.max_active_grants",
        _replaced("max_active_grants: 2", "max_active_grants: two"),
    ),
    (
        "targets[0].policy.recent_window_days",
        _replaced("recent_window_days: 7", "recent_window_days: 0"),
    ),
    (
        "targets[0].policy.recent_window_days",
        _replaced("recent_window_days: 7", "recent_window_days: true"),
    ),
    # Groups
    (
        "targets[0].scopes[1].approver_groups",
        _replaced("approver_groups: [db-owners]", "approver_groups: [dba]"),
    ),
    (
        "targets[0].policy.approver_groups",
        _replaced("approver_groups: [sre-leads]", "approver_groups: [sre-lead]"),
    ),
    (
        "targets[0].policy.requester_groups",
        _replaced("requester_groups: [oncall]", "requester_groups: [on-call]"),
    ),
    (
        "targets[0].scopes[1].approver_groups",
        _replaced("approver_groups: [db-owners]", "approver_groups: db-owners"),
    ),
    (
        "targets[0].scopes[1].colour",
        _replaced("approver_groups: [db-owners]", "colour: blue"),
    ),
    ("groups", _replaced("groups: [sre-leads, db-owners, oncall]", "groups: sre")),
    ("groups", _replaced("db-owners, oncall]", f"db-owners, oncall, {'g' * 151}]")),
    (
        "targets[0].policy.rules[0]",
        _replaced(
            "- name: outside working hours\n" + RULE_0, "- outside working hours\n"
        ),
    ),
    (
        "targets[0].policy.rules[0].name",
        _replaced("name: outside working hours", "name: " + "r" * 101),
    ),
    # The roster
    ("oncall[1].user", _replaced("{user: bob,", "{user: mallory,")),
    (
        "oncall[1]",
        _replaced(
            "{user: bob, start: 2026-01-12T07:00:00Z, end: 2026-01-12T19:00:00Z}",
            "{user: alice, start: 2026-01-18T07:00:00Z, end: 2026-01-20T07:00:00Z}",
        ),
    ),
    (
        "oncall[0].end",
        _replaced('end: "2026-01-19T08:00:00+01:00"', 'end: "2026-01-11T08:00:00Z"'),
    ),
    (
        "oncall[0].end",
        _replaced('end: "2026-01-19T08:00:00+01:00"', "end: 2026-01-12T07:00:00Z"),
    ),
    (
        "oncall[0].start",
        _replaced("start: 2026-01-12T08:00:00+01:00", "start: 2026-01-12T08:00:00"),
    ),
    (
        "oncall[1].end",
        _replaced("end: 2026-01-12T19:00:00Z}", "end: '2026-01-12 19:00'}"),
    ),
    ("oncall[0].start", _replaced("start: 2026-01-12T08:00:00+01:00", "start: soon")),
    ("oncall[0].start", _replaced("    start: 2026-01-12T08:00:00+01:00\n", "")),
    (
        "oncall[0].start",
        _replaced(
            "start: 2026-01-12T08:00:00+01:00", 'start: "0001-01-01T00:30:00+01:00"'
        ),
    ),
    (
        "targets[0].policy.working_hours.start",
        _replaced("start: 09:00, end: 18:30", 'start: "09:00+01:00", end: 18:30'),
    ),
    ("oncall[0].shift", _replaced("note: week 3", "shift: week 3")),
    ("oncall[0].note", _replaced("note: week 3", "note: " + "n" * 201)),
    ("oncall[1]", _replaced("  - {user: bob,", "  - bob\n  - {user: bob,")),
    ("oncall", POLICY_FILE[: POLICY_FILE.index("oncall:")] + "oncall: {alice: now}\n"),
]


@pytest.mark.parametrize(
    "key_path, text",
    [pytest.param(k, t, id=f"{n}-{k}") for n, (k, t) in enumerate(BAD)],
)
def test_a_bad_value_is_named_by_its_key_path_and_nothing_is_applied(
    people, tmp_path, key_path, text
):
    _apply(_write(tmp_path, POLICY_FILE, "good.yaml"))
    OnCallShift.objects.create(
        user=people[2],
        starts_at=datetime.datetime(2026, 2, 1, tzinfo=UTC),
        ends_at=datetime.datetime(2026, 2, 2, tzinfo=UTC),
        source=OnCallShift.Source.API,
    )
    before = _state()
    path = _write(tmp_path, text)

    with pytest.raises(CommandError) as refused:
        _apply(path)

    message = str(refused.value)
    assert message.startswith(f"{path}: {key_path}: "), message
    assert _state() == before
