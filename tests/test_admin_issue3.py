"""The admin: the roster and policies go through the same rules; nothing approves."""

import json
from datetime import UTC, datetime

import pytest
import time_machine
from django.contrib.auth.models import Group, Permission

from approvals.models import Approval
from breakglass import services
from breakglass.models import AccessRequest, AuditEvent, Grant, OnCallShift, Policy

from .conftest import make_user
from .web_helpers import approve, issue, login, make_ssh_target, open_request

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
SHIFTS = "/admin/breakglass/oncallshift/"
Status = AccessRequest.Status


@pytest.fixture(autouse=True)
def _clock():
    with time_machine.travel(NOW, tick=False):
        yield


def shift_form(person, start="08:00:00", end="16:00:00", day="2026-12-07", **extra):
    data = {
        "user": str(person.pk),
        "starts_at_0": day,
        "starts_at_1": start,
        "ends_at_0": day,
        "ends_at_1": end,
        "note": "week 50",
    }
    data.update(extra)
    return data


def roster_events():
    return list(
        AuditEvent.objects.filter(action__startswith="oncall.")
        .order_by("seq")
        .values_list("action", "actor", "data")
    )


# The roster


def test_adding_a_shift_in_the_admin_goes_through_the_roster_service(ada, alice):
    assert login(ada).get(f"{SHIFTS}add/").status_code == 200
    response = login(ada).post(f"{SHIFTS}add/", shift_form(alice))

    assert response.status_code == 302
    shift = OnCallShift.objects.get()
    assert (shift.user, shift.source, shift.note) == (alice, "admin", "week 50")
    assert shift.starts_at == datetime(2026, 12, 7, 8, tzinfo=UTC)
    assert roster_events() == [
        (
            "oncall.added",
            "ada",
            {
                "shift": shift.pk,
                "user": "alice",
                "starts_at": "2026-12-07T08:00:00Z",
                "ends_at": "2026-12-07T16:00:00Z",
                "note": "week 50",
                "source": "admin",
            },
        )
    ]

    page = login(ada).get(SHIFTS)
    assert page.status_code == 200
    assert "week 50" in page.text
    assert login(ada).get(SHIFTS, {"q": "ali"}).text.count("week 50") == 1
    assert "week 50" not in login(ada).get(SHIFTS, {"q": "bob"}).text


def test_changing_a_shift_in_the_admin_is_recorded_with_what_it_was(ada, alice, bob):
    client = login(ada)
    client.post(f"{SHIFTS}add/", shift_form(alice))
    shift = OnCallShift.objects.get()

    response = client.post(
        f"{SHIFTS}{shift.pk}/change/", shift_form(bob, end="18:00:00", note="swap")
    )

    assert response.status_code == 302
    shift.refresh_from_db()
    assert (shift.user, shift.note, shift.source) == (bob, "swap", "admin")
    action, actor, data = roster_events()[-1]
    assert (action, actor) == ("oncall.changed", "ada")
    assert data["user"] == "bob"
    assert data["ends_at"] == "2026-12-07T18:00:00Z"
    assert data["previous"] == {
        "user": "alice",
        "starts_at": "2026-12-07T08:00:00Z",
        "ends_at": "2026-12-07T16:00:00Z",
        "note": "week 50",
        "source": "admin",
    }


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"ends_at_1": "08:00:00"}, "Must be after the start."),
        ({"ends_at_1": "07:00:00"}, "Must be after the start."),
        ({"starts_at_1": "15:00:00", "ends_at_1": "20:00:00"}, "Overlaps shift"),
        ({"note": "x" * 201}, "at most 200 characters"),
        ({"user": "999999"}, "Select a valid choice."),
    ],
)
def test_the_admin_shows_why_a_shift_is_refused(ada, alice, changes, problem):
    client = login(ada)
    client.post(f"{SHIFTS}add/", shift_form(alice))
    before = (list(OnCallShift.objects.values_list("pk", "ends_at")), roster_events())

    response = client.post(
        f"{SHIFTS}add/", shift_form(alice, day="2026-12-07", **changes)
    )

    assert response.status_code == 200
    assert problem in response.text
    after = (list(OnCallShift.objects.values_list("pk", "ends_at")), roster_events())
    assert after == before


def test_changing_a_shift_onto_another_one_is_refused(ada, alice):
    client = login(ada)
    client.post(f"{SHIFTS}add/", shift_form(alice))
    client.post(f"{SHIFTS}add/", shift_form(alice, start="18:00:00", end="22:00:00"))
    late = OnCallShift.objects.get(starts_at__hour=18)

    response = client.post(
        f"{SHIFTS}{late.pk}/change/",
        shift_form(alice, start="12:00:00", end="22:00:00"),
    )

    assert response.status_code == 200
    assert "Overlaps shift" in response.text
    late.refresh_from_db()
    assert late.starts_at.hour == 18
    assert [a for a, _, _ in roster_events()] == ["oncall.added", "oncall.added"]


def test_removing_shifts_in_the_admin_is_recorded(ada, alice, bob):
    client = login(ada)
    client.post(f"{SHIFTS}add/", shift_form(alice))
    client.post(f"{SHIFTS}add/", shift_form(bob))
    client.post(f"{SHIFTS}add/", shift_form(alice, day="2026-12-08"))
    first, second, third = OnCallShift.objects.order_by("pk")

    response = client.post(f"{SHIFTS}{first.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    response = client.post(
        SHIFTS,
        {
            "action": "delete_selected",
            "_selected_action": [second.pk, third.pk],
            "post": "yes",
            "index": "0",
        },
    )
    assert response.status_code == 302

    assert not OnCallShift.objects.exists()
    removed = [
        (d["shift"], d["user"]) for a, _, d in roster_events() if a.endswith("d")
    ]
    assert removed[-3:] == [
        (first.pk, "alice"),
        (second.pk, "bob"),
        (third.pk, "alice"),
    ]
    assert [a for a, _, _ in roster_events()][-3:] == ["oncall.removed"] * 3


def test_staff_who_are_not_admins_cannot_change_the_roster(ada, alice):
    login(ada).post(f"{SHIFTS}add/", shift_form(alice))
    shift = OnCallShift.objects.get()
    clerk = make_user("clerk", totp=True)
    clerk.is_staff = True
    clerk.save()
    clerk.user_permissions.set(
        Permission.objects.filter(content_type__model="oncallshift")
    )
    client = login(clerk)

    assert client.get(SHIFTS).status_code == 200
    assert (
        client.post(f"{SHIFTS}add/", shift_form(alice, day="2026-12-09")).status_code
        == 403
    )
    response = client.post(f"{SHIFTS}{shift.pk}/change/", shift_form(alice, note="x"))
    assert response.status_code == 403
    assert (
        client.post(f"{SHIFTS}{shift.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    assert list(OnCallShift.objects.values_list("pk", "note")) == [
        (shift.pk, "week 50")
    ]
    assert len(roster_events()) == 1


# Policies


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    return make_ssh_target(tmp_path, monkeypatch)


def policy_form(target, **changes):
    """Return the target's change form as the admin page would post it."""
    scope = target.scopes.get()
    policy = target.policy
    data = {
        "name": target.name,
        "kind": target.kind,
        "environment": target.environment,
        "connection_env": target.connection_env,
        "ca_key_env": target.ca_key_env,
        "is_active": "on",
        "scopes-TOTAL_FORMS": "1",
        "scopes-INITIAL_FORMS": "1",
        "scopes-MIN_NUM_FORMS": "1",
        "scopes-MAX_NUM_FORMS": "1000",
        "scopes-0-id": str(scope.pk),
        "scopes-0-target": str(target.pk),
        "scopes-0-name": scope.name,
        "scopes-0-grants": json.dumps(scope.grants),
        "scopes-0-is_active": "on",
        "policy-TOTAL_FORMS": "1",
        "policy-INITIAL_FORMS": "1",
        "policy-MIN_NUM_FORMS": "1",
        "policy-MAX_NUM_FORMS": "1",
        "policy-0-id": str(policy.pk),
        "policy-0-target": str(target.pk),
        "policy-0-approvals_required": str(policy.approvals_required),
        "policy-0-approver_groups": [str(g.pk) for g in policy.approver_groups.all()],
        "policy-0-max_duration_minutes": str(policy.max_duration_minutes),
        "policy-0-approval_window_minutes": str(policy.approval_window_minutes),
        "policy-0-incident_pattern": policy.incident_pattern,
        "policy-0-timezone": policy.timezone,
        "policy-0-working_days": policy.working_days,
        "policy-0-working_hours_start": "09:00",
        "policy-0-working_hours_end": "18:00",
        "policy-0-max_active_grants": "",
        "policy-0-recent_window_days": str(policy.recent_window_days),
        "policy-0-rules": json.dumps(policy.rules),
    }
    data.update(changes)
    return data


def change_url(target):
    return f"/admin/breakglass/target/{target.pk}/change/"


def test_the_admin_edits_the_policy_in_context(bastion, ada, alice, bob, carol):
    page = login(ada).get(change_url(bastion))
    assert page.status_code == 200
    assert 'name="policy-0-working_days" value="sat"' in page.text
    assert 'name="scopes-0-approver_groups"' in page.text
    dba = Group.objects.create(name="dba-leads")
    rules = [
        {
            "name": "outside working hours",
            "when": {"off_hours": True},
            "add_approvals": 1,
        },
        {"name": "not on call", "when": {"on_call": False}, "max_duration_minutes": 20},
    ]
    response = login(ada).post(
        change_url(bastion),
        policy_form(
            bastion,
            **{
                "policy-0-timezone": "Asia/Tokyo",
                "policy-0-working_days": ["wed", "mon"],
                "policy-0-working_hours_start": "08:30",
                "policy-0-working_hours_end": "17:00",
                "policy-0-max_active_grants": "2",
                "policy-0-recent_window_days": "7",
                "policy-0-rules": json.dumps(rules),
                "scopes-0-approver_groups": [str(dba.pk)],
            },
        ),
    )

    assert response.status_code == 302, response.text
    policy = Policy.objects.get(target=bastion)
    assert (policy.timezone, policy.working_days) == ("Asia/Tokyo", ["mon", "wed"])
    assert (policy.max_active_grants, policy.recent_window_days) == (2, 7)
    assert policy.rules == rules
    assert list(bastion.scopes.get().approver_groups.all()) == [dba]
    event = AuditEvent.objects.get(action="config.applied")
    assert (event.actor, event.data["targets"]) == ("ada", ["bastion"])

    # 19:00 in Tokyo on a Monday: off hours there, and alice is not on call.
    created = open_request(alice, duration_minutes=20)
    assert created.decision["summary"] == (
        "3 approvals: production, outside working hours, not on call"
    )
    assert created.decision["approver_groups"] == ["dba-leads"]
    assert created.decision["max_duration_minutes"] == 20


@pytest.mark.parametrize(
    "changes, problem",
    [
        (
            {
                "policy-0-rules": '[{"name": "x", "when": {"off_hours": "yes"}, '
                '"add_approvals": 1}]'
            },
            "rules[0].when.off_hours: must be true or false",
        ),
        (
            {
                "policy-0-rules": '[{"name": "x", "when": {"moon": "full"}, '
                '"add_approvals": 1}]'
            },
            "rules[0].when.moon: unknown key",
        ),
        (
            {"policy-0-rules": '[{"name": "x", "when": {"on_call": false}}]'},
            "rules[0]: must set add_approvals or max_duration_minutes",
        ),
        ({"policy-0-rules": '{"name": "x"}'}, "rules: must be a list"),
        ({"policy-0-rules": "[{not json"}, "Enter a valid JSON."),
        ({"policy-0-timezone": "Mars/Olympus"}, "Unknown time zone"),
        ({"policy-0-working_days": ["mon", "someday"]}, "Select a valid choice."),
        ({"policy-0-working_hours_end": "08:00"}, "Must be after the start."),
        ({"policy-0-max_active_grants": "0"}, "greater than or equal to 1"),
        ({"policy-0-recent_window_days": "0"}, "greater than or equal to 1"),
    ],
)
def test_a_bad_policy_shows_the_error_and_saves_nothing(bastion, ada, changes, problem):
    before = Policy.objects.filter(target=bastion).values().get()

    response = login(ada).post(change_url(bastion), policy_form(bastion, **changes))

    assert response.status_code == 200
    assert problem in response.text
    assert Policy.objects.filter(target=bastion).values().get() == before
    assert not AuditEvent.objects.filter(action="config.applied").exists()


# Requests: ending a grant, and no way to approve


@pytest.fixture
def active(bastion, alice, bob, carol):
    access_request = open_request(alice)
    approve(access_request, bob, carol)
    issue(access_request)
    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE
    return access_request


def test_end_the_grant_now_goes_through_the_service(active, ada, alice):
    # Another person's pending request, to show a refusal next to the success.
    pending = open_request(make_user("erin", "requester", groups=["oncall"]))
    client = login(ada)

    response = client.post(
        "/admin/breakglass/accessrequest/",
        {
            "action": "end_grant_now",
            "_selected_action": [active.pk, pending.pk],
            "index": "0",
        },
        follow=True,
    )

    assert response.status_code == 200
    text = response.text
    assert "1 grant(s) are being revoked" in text
    assert f"Request {pending.pk}: The request is pending" in text
    grant = Grant.objects.get(request=active)
    assert (grant.end_requested_by, grant.end_reason) == (
        "ada",
        "Ended from the admin.",
    )

    assert services.end_grant(grant.pk) is True
    active.refresh_from_db()
    pending.refresh_from_db()
    assert (active.status, pending.status) == (Status.REVOKED, Status.PENDING)
    event = AuditEvent.objects.get(action="grant.revoked")
    assert (event.actor, event.request_id) == ("ada", active.pk)
    assert event.data["reason"] == "Ended from the admin."


def test_the_admin_has_no_way_to_approve(bastion, ada, alice, bob):
    pending = open_request(alice)
    approve(pending, bob)
    client = login(ada)
    before = (
        list(AccessRequest.objects.values_list("pk", "status", "approvals_required")),
        list(Approval.objects.values_list("pk", "decision")),
        AuditEvent.objects.count(),
    )

    page = client.get("/admin/breakglass/accessrequest/")
    actions = set(page.context["action_form"].fields["action"].choices)
    assert {name for name, _ in actions} == {"", "end_grant_now"}
    change = client.get(f"/admin/breakglass/accessrequest/{pending.pk}/change/")
    assert change.status_code == 200
    assert 'name="_save"' not in change.text

    posts = [
        (
            f"/admin/breakglass/accessrequest/{pending.pk}/change/",
            {"status": "approved", "approvals_required": "1"},
        ),
        ("/admin/breakglass/accessrequest/add/", {"status": "approved"}),
        ("/admin/approvals/approval/add/", {"request": pending.pk, "approver": ada.pk}),
        (
            f"/admin/approvals/approval/{Approval.objects.get().pk}/change/",
            {"decision": "approved"},
        ),
        (f"/admin/breakglass/accessrequest/{pending.pk}/delete/", {"post": "yes"}),
    ]
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url
    for action in ["delete_selected", "approve", "approve_request"]:
        client.post(
            "/admin/breakglass/accessrequest/",
            {"action": action, "_selected_action": [pending.pk], "index": "0"},
        )
    policy = Policy.objects.get(target=bastion)
    client.post(
        change_url(bastion),
        policy_form(bastion, **{"policy-0-approvals_required": "1"}),
    )

    after = (
        list(AccessRequest.objects.values_list("pk", "status", "approvals_required")),
        list(Approval.objects.values_list("pk", "decision")),
    )
    assert after == before[:2]
    assert not Grant.objects.exists()
    assert not AuditEvent.objects.filter(action="request.approved").exists()
    # Lowering the policy later does not approve a request that was decided.
    policy.refresh_from_db()
    assert policy.approvals_required == 1
    pending.refresh_from_db()
    assert (pending.status, pending.approvals_required) == (Status.PENDING, 2)
