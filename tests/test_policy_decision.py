"""The policy decision at request time: each condition on both sides of its edge.

Alice asks for the bastion, whose policy needs two approvals from the SRE leads
and at most 60 minutes; rules add approvals or shorten the longest duration in
context. The clock is set with time_machine; no test waits.
"""

import datetime
from datetime import timedelta

import pytest
import time_machine

from breakglass import roles, services
from breakglass.errors import InvalidInput, Throttled
from breakglass.models import AccessRequest, Alert, AuditEvent, Grant, OnCallShift

from .conftest import make_user
from .flows import issued_request, make_ssh_ca, make_ssh_target, open_request

Status = AccessRequest.Status

OFF_HOURS = {
    "name": "outside working hours",
    "when": {"off_hours": True},
    "add_approvals": 1,
}
NOT_ON_CALL = {"name": "not on call", "when": {"on_call": False}, "add_approvals": 2}
EVERY_DAY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


def _set_policy(target, **fields):
    policy = target.policy
    for name, value in fields.items():
        setattr(policy, name, value)
    policy.save()
    return policy


def _at(moment):
    """Stop the clock at an ISO 8601 moment (UTC unless it says otherwise)."""
    when = datetime.datetime.fromisoformat(moment)
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return time_machine.travel(when, tick=False)


def _assert_decided(access_request, *, approvals, fired, summary, longest=60):
    access_request.refresh_from_db()
    decision = access_request.decision
    assert access_request.status == Status.PENDING
    assert access_request.approvals_required == approvals
    assert decision["approvals_required"] == approvals
    assert decision["fired"] == fired
    assert decision["summary"] == summary
    assert decision["max_duration_minutes"] == longest
    assert decision["approver_groups"] == ["sre-leads"]
    assert access_request.policy_rule == (
        f"{summary} (from sre-leads; at most {longest} minutes)"
    )
    # The trail keeps the same decision as the request.
    created = AuditEvent.objects.get(action="request.created", request=access_request)
    assert created.data["decision"] == decision
    assert created.data["approvals_required"] == approvals
    return decision


# Working hours, in the policy's time zone


@pytest.mark.parametrize(
    "moment, local_time, off_hours",
    [
        # A winter Wednesday in Paris (UTC+1).
        ("2026-01-14T07:59", "2026-01-14T08:59+01:00", True),
        ("2026-01-14T08:00", "2026-01-14T09:00+01:00", False),
        ("2026-01-14T08:01", "2026-01-14T09:01+01:00", False),
        ("2026-01-14T16:59", "2026-01-14T17:59+01:00", False),
        ("2026-01-14T17:00", "2026-01-14T18:00+01:00", True),
        ("2026-01-14T17:01", "2026-01-14T18:01+01:00", True),
        # A summer Wednesday (UTC+2): 09:00 comes an hour earlier in UTC.
        ("2026-07-15T06:59", "2026-07-15T08:59+02:00", True),
        ("2026-07-15T07:00", "2026-07-15T09:00+02:00", False),
        ("2026-07-15T15:59", "2026-07-15T17:59+02:00", False),
        ("2026-07-15T16:00", "2026-07-15T18:00+02:00", True),
    ],
)
def test_working_hours_edges_in_the_policy_time_zone(
    alice, bob, carol, bastion, moment, local_time, off_hours
):
    _set_policy(bastion, timezone="Europe/Paris", rules=[OFF_HOURS])

    with _at(moment):
        access_request = open_request(alice)

    if off_hours:
        decision = _assert_decided(
            access_request,
            approvals=3,
            fired=["outside working hours"],
            summary="3 approvals: production, outside working hours",
        )
    else:
        decision = _assert_decided(
            access_request, approvals=2, fired=[], summary="2 approvals: production"
        )
    assert decision["evaluated"]["off_hours"] is off_hours
    assert decision["evaluated"]["local_time"] == local_time
    assert decision["evaluated"]["timezone"] == "Europe/Paris"


@pytest.mark.parametrize(
    "moment, local_time, off_hours",
    [
        # The day before clocks go forward: still UTC+1.
        ("2026-03-28T07:59", "2026-03-28T08:59+01:00", True),
        ("2026-03-28T08:00", "2026-03-28T09:00+01:00", False),
        # The last Sunday of March: 02:00 became 03:00, so 09:00 is 07:00 UTC.
        ("2026-03-29T06:59", "2026-03-29T08:59+02:00", True),
        ("2026-03-29T07:00", "2026-03-29T09:00+02:00", False),
        ("2026-03-29T07:59", "2026-03-29T09:59+02:00", False),
        # The last Sunday of October: 03:00 became 02:00, so 09:00 is 08:00 UTC.
        ("2026-10-25T07:00", "2026-10-25T08:00+01:00", True),
        ("2026-10-25T07:59", "2026-10-25T08:59+01:00", True),
        ("2026-10-25T08:00", "2026-10-25T09:00+01:00", False),
        ("2026-10-25T16:59", "2026-10-25T17:59+01:00", False),
        ("2026-10-25T17:00", "2026-10-25T18:00+01:00", True),
    ],
)
def test_working_hours_across_a_daylight_saving_change(
    alice, bob, carol, bastion, moment, local_time, off_hours
):
    # Every day is a working day here, so that only the hour decides.
    _set_policy(
        bastion, timezone="Europe/Paris", working_days=EVERY_DAY, rules=[OFF_HOURS]
    )

    with _at(moment):
        access_request = open_request(alice)

    access_request.refresh_from_db()
    evaluated = access_request.decision["evaluated"]
    assert evaluated["local_time"] == local_time
    assert evaluated["off_hours"] is off_hours
    assert access_request.approvals_required == (3 if off_hours else 2)


@pytest.mark.parametrize(
    "moment, off_hours",
    [
        ("2026-01-16T11:00", False),  # Friday noon in Paris
        ("2026-01-16T22:59", True),  # Friday 23:59
        ("2026-01-17T11:00", True),  # Saturday noon
        ("2026-01-18T11:00", True),  # Sunday noon
        ("2026-01-19T11:00", False),  # Monday noon
    ],
)
def test_weekend_is_outside_working_hours(
    alice, bob, carol, bastion, moment, off_hours
):
    _set_policy(bastion, timezone="Europe/Paris", rules=[OFF_HOURS])

    with _at(moment):
        access_request = open_request(alice)

    access_request.refresh_from_db()
    assert access_request.decision["evaluated"]["off_hours"] is off_hours
    assert access_request.decision["fired"] == (
        ["outside working hours"] if off_hours else []
    )
    assert access_request.approvals_required == (3 if off_hours else 2)


def test_working_days_and_hours_are_the_policys_own(alice, bob, carol, bastion):
    _set_policy(
        bastion,
        timezone="America/New_York",
        working_days=["sat", "sun"],
        working_hours_start=datetime.time(6, 30),
        working_hours_end=datetime.time(7, 30),
        rules=[OFF_HOURS],
    )

    # Saturday 06:30 in New York (UTC-5) is inside; 07:30 is outside.
    with _at("2026-01-17T11:30"):
        inside = open_request(alice, incident="INC-1")
    with _at("2026-01-17T12:30"):
        outside = open_request(alice, incident="INC-2")

    inside.refresh_from_db()
    outside.refresh_from_db()
    assert inside.decision["evaluated"]["local_time"] == "2026-01-17T06:30-05:00"
    assert (inside.approvals_required, inside.decision["fired"]) == (2, [])
    assert (outside.approvals_required, outside.decision["fired"]) == (
        3,
        ["outside working hours"],
    )


# On call


@pytest.mark.parametrize(
    "moment, on_call",
    [
        ("2026-01-14T07:59", False),
        ("2026-01-14T08:00", True),  # the shift's start is inside it
        ("2026-01-14T15:59", True),
        ("2026-01-14T16:00", False),  # its end is not
    ],
)
def test_on_call_shift_start_is_inclusive_and_end_exclusive(
    alice, bob, carol, bastion, moment, on_call
):
    _set_policy(bastion, rules=[NOT_ON_CALL])
    OnCallShift.objects.create(
        user=alice,
        starts_at=datetime.datetime(2026, 1, 14, 8, 0, tzinfo=datetime.UTC),
        ends_at=datetime.datetime(2026, 1, 14, 16, 0, tzinfo=datetime.UTC),
        source=OnCallShift.Source.API,
    )

    with _at(moment):
        access_request = open_request(alice)

    if on_call:
        decision = _assert_decided(
            access_request, approvals=2, fired=[], summary="2 approvals: production"
        )
    else:
        decision = _assert_decided(
            access_request,
            approvals=4,
            fired=["not on call"],
            summary="4 approvals: production, not on call",
        )
    assert decision["evaluated"]["on_call"] is on_call


def test_someone_elses_shift_does_not_put_the_requester_on_call(
    alice, bob, carol, bastion
):
    _set_policy(bastion, rules=[NOT_ON_CALL])
    OnCallShift.objects.create(
        user=bob,
        starts_at=datetime.datetime(2026, 1, 14, 8, 0, tzinfo=datetime.UTC),
        ends_at=datetime.datetime(2026, 1, 14, 16, 0, tzinfo=datetime.UTC),
        source=OnCallShift.Source.CONFIG,
    )

    with _at("2026-01-14T12:00"):
        access_request = open_request(alice)

    access_request.refresh_from_db()
    assert access_request.decision["evaluated"]["on_call"] is False
    assert access_request.approvals_required == 4


# Recent grants


def _past_grant(requester, target, issued_at, *, issued=True):
    """Record a grant the requester had before, as the flow would have left it."""
    past = AccessRequest.objects.create(
        requester=requester,
        target=target,
        scope=target.scopes.get(name="read"),
        duration_minutes=30,
        reason="an earlier incident",
        incident="INC-1",
        status=Status.EXPIRED if issued else Status.FAILED,
        approvals_required=2,
        policy_rule="2 approvals: production",
        created_at=issued_at - timedelta(minutes=10),
        approval_deadline=issued_at + timedelta(minutes=20),
    )
    Grant.objects.create(
        request=past,
        principal=f"bg_past_{past.pk}",
        approved_at=issued_at - timedelta(minutes=1),
        issued_at=issued_at if issued else None,
        expires_at=issued_at + timedelta(minutes=30) if issued else None,
        ended_at=issued_at + timedelta(minutes=30),
    )


NOW = datetime.datetime(2026, 1, 14, 12, 0, tzinfo=datetime.UTC)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    "ago, counted",
    [
        ([DAY], 1),  # N-1
        ([DAY, 6 * DAY], 2),  # N
        ([DAY, 7 * DAY], 2),  # the window's first instant counts
        ([DAY, 7 * DAY + timedelta(minutes=1)], 1),  # just outside the window
        ([DAY, 2 * DAY, 30 * DAY], 2),
    ],
)
def test_recent_grants_are_counted_within_the_window(
    alice, bob, carol, bastion, ago, counted
):
    _set_policy(
        bastion,
        recent_window_days=7,
        rules=[
            {
                "name": "frequent break-glass",
                "when": {"recent_grants_at_least": 2},
                "add_approvals": 1,
            }
        ],
    )
    for delta in ago:
        _past_grant(alice, bastion, NOW - delta)
    # Neither a grant that was never issued nor someone else's grant counts.
    _past_grant(alice, bastion, NOW - DAY, issued=False)
    _past_grant(make_user("pat"), bastion, NOW - DAY)

    with time_machine.travel(NOW, tick=False):
        access_request = open_request(alice)

    access_request.refresh_from_db()
    decision = access_request.decision
    assert decision["evaluated"]["recent_grants"] == counted
    assert decision["evaluated"]["recent_window_days"] == 7
    if counted >= 2:
        assert decision["fired"] == ["frequent break-glass"]
        assert decision["summary"] == "3 approvals: production, frequent break-glass"
    else:
        assert decision["fired"] == []
        assert access_request.approvals_required == 2


# Environment and scope


@pytest.fixture
def owner_scope(bastion):
    return bastion.scopes.create(name="owner", grants=["root"])


ENVIRONMENT_AND_SCOPE_RULES = [
    {
        "name": "live system",
        "when": {"environment": ["production", "dr"]},
        "add_approvals": 1,
    },
    {
        "name": "owner access",
        "when": {"scope": "owner"},
        "add_approvals": 1,
        "max_duration_minutes": 15,
    },
]


@pytest.mark.parametrize(
    "environment, scope, approvals, fired, longest",
    [
        ("production", "read", 3, ["live system"], 60),
        ("dr", "read", 3, ["live system"], 60),
        ("staging", "read", 2, [], 60),
        ("staging", "owner", 3, ["owner access"], 15),
        ("production", "owner", 4, ["live system", "owner access"], 15),
    ],
)
def test_environment_and_scope_conditions(
    alice,
    bob,
    carol,
    bastion,
    owner_scope,
    environment,
    scope,
    approvals,
    fired,
    longest,
):
    bastion.environment = environment
    bastion.save()
    _set_policy(bastion, rules=ENVIRONMENT_AND_SCOPE_RULES)

    access_request = open_request(alice, scope=scope, duration_minutes=15)

    access_request.refresh_from_db()
    decision = access_request.decision
    assert access_request.approvals_required == approvals
    assert decision["fired"] == fired
    assert decision["max_duration_minutes"] == longest
    assert decision["summary"] == (
        f"{approvals} approvals: {', '.join([environment] + fired)}"
    )
    assert decision["evaluated"]["environment"] == environment
    assert decision["evaluated"]["scope"] == scope


def test_a_shortened_duration_refuses_longer_requests(
    alice, bob, carol, bastion, owner_scope
):
    _set_policy(bastion, rules=ENVIRONMENT_AND_SCOPE_RULES)

    with pytest.raises(InvalidInput) as refused:
        open_request(alice, scope="owner", duration_minutes=16)

    assert refused.value.fields["duration_minutes"] == [
        "Must be between 1 and 15 minutes for bastion now."
    ]
    assert not AccessRequest.objects.exists()
    assert not AuditEvent.objects.exists()
    # The same length is fine where the rule does not apply.
    assert open_request(alice, scope="read", duration_minutes=16).pk


# Rules together


def test_approvals_add_up_and_the_shortest_duration_wins(alice, bob, carol, bastion):
    _set_policy(
        bastion,
        timezone="Europe/Paris",
        rules=[
            {**OFF_HOURS, "max_duration_minutes": 45},
            {**NOT_ON_CALL, "max_duration_minutes": 20},
            # A rule cannot lengthen what the policy allows.
            {
                "name": "weekend",
                "when": {"off_hours": True},
                "max_duration_minutes": 90,
            },
        ],
    )

    with _at("2026-01-17T11:00"):
        access_request = open_request(alice, duration_minutes=20)

    decision = _assert_decided(
        access_request,
        approvals=5,
        fired=["outside working hours", "not on call", "weekend"],
        summary=(
            "5 approvals: production, outside working hours, not on call, weekend"
        ),
        longest=20,
    )
    assert decision["evaluated"] == {
        "environment": "production",
        "scope": "read",
        "timezone": "Europe/Paris",
        "local_time": "2026-01-17T12:00+01:00",
        "off_hours": True,
        "on_call": False,
        "recent_grants": 0,
        "recent_window_days": 30,
        "open_requests": 0,
    }

    with _at("2026-01-17T11:00"), pytest.raises(InvalidInput) as refused:
        open_request(alice, duration_minutes=21)
    assert "duration_minutes" in refused.value.fields


def test_plain_words_for_one_approval(alice, bob, bastion):
    _set_policy(bastion, approvals_required=1)

    access_request = open_request(alice)

    access_request.refresh_from_db()
    assert access_request.decision["summary"] == "1 approval: production"


def test_the_decision_is_shown_on_the_api(api, alice, bob, carol, bastion):
    _set_policy(bastion, timezone="Europe/Paris", rules=[OFF_HOURS])

    with _at("2026-01-14T07:59"):
        response = api(alice).post(
            "/api/v1/requests/",
            {
                "target": "bastion",
                "scope": "read",
                "duration_minutes": 30,
                "reason": "disk full",
                "incident": "INC-7",
            },
            format="json",
        )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["approvals_required"] == 3
    assert body["policy_rule"].startswith(
        "3 approvals: production, outside working hours"
    )


# Open requests and grants


def _ask(api, user, incident):
    return api(user).post(
        "/api/v1/requests/",
        {
            "target": "bastion",
            "scope": "read",
            "duration_minutes": 30,
            "reason": "disk full",
            "incident": incident,
        },
        format="json",
    )


def test_one_request_too_many_is_429_and_creates_nothing(api, alice, bob, bastion):
    _set_policy(bastion, max_active_grants=2)
    assert _ask(api, alice, "INC-1").status_code == 201
    assert _ask(api, alice, "INC-2").status_code == 201
    before = (AccessRequest.objects.count(), AuditEvent.objects.count())
    alerts_before = Alert.objects.count()

    response = _ask(api, alice, "INC-3")

    assert response.status_code == 429, response.content
    body = response.json()
    assert body["code"] == "too_many_grants"
    assert "the policy allows 2" in body["detail"]
    # Only pending requests: no grant end to wait for, so the default pause.
    assert response["Retry-After"] == "60"
    assert (AccessRequest.objects.count(), AuditEvent.objects.count()) == before
    assert Alert.objects.count() == alerts_before

    # A cancelled request no longer counts.
    first = AccessRequest.objects.get(incident="INC-1")
    services.cancel_request(first.pk, actor=alice)
    assert _ask(api, alice, "INC-3").status_code == 201


def test_retry_after_is_when_the_soonest_grant_ends(api, alice, bob, carol, bastion):
    _set_policy(bastion, max_active_grants=2)
    with time_machine.travel(NOW, tick=False):
        active = issued_request(alice, bob, carol, duration_minutes=30)
    assert active.status == Status.ACTIVE

    with time_machine.travel(NOW + timedelta(minutes=10), tick=False):
        assert _ask(api, alice, "INC-2").status_code == 201
        response = _ask(api, alice, "INC-3")

    assert response.status_code == 429
    assert response.json()["code"] == "too_many_grants"
    assert response["Retry-After"] == str(20 * 60)
    assert AccessRequest.objects.count() == 2


def test_the_limit_is_per_requester_and_at_the_service_too(alice, bob, bastion):
    _set_policy(bastion, max_active_grants=1)
    pat = make_user("pat", roles.REQUESTER)
    open_request(alice)

    with pytest.raises(Throttled) as throttled:
        open_request(alice, incident="INC-2")

    assert (throttled.value.status, throttled.value.code) == (429, "too_many_grants")
    assert open_request(pat).requester == pat
    assert AccessRequest.objects.filter(requester=alice).count() == 1
