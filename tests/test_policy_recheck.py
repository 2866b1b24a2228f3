"""The policy taken again at issuance, and votes bound to the exact request.

Alice's request for the bastion is approved by Bob and Carol; before the worker
issues it, something changes. Issuance runs here in the test's process on an SSH
target whose CA key is in the test's temporary directory.
"""

import datetime
from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import Group

from breakglass import roles, services
from breakglass.models import AccessRequest, Alert, AuditEvent, OnCallShift, Target

from .conftest import make_user
from .flows import actions, approve, make_ssh_ca, make_ssh_target, open_request

Status = AccessRequest.Status


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target(requester_groups=["oncall"])


@pytest.fixture
def erin(db):
    return make_user("erin", roles.APPROVER, groups=["sre-leads"], totp=True)


@pytest.fixture
def approved(alice, bob, carol, bastion):
    access_request = open_request(alice)
    approve(access_request, bob)
    approve(access_request, carol)
    access_request.refresh_from_db()
    assert access_request.status == Status.APPROVED
    return access_request


def _issue(access_request):
    services.issue_grant(access_request.grant.pk)
    access_request.refresh_from_db()
    access_request.grant.refresh_from_db()
    return access_request


def _assert_refused(access_request, why):
    grant = access_request.grant
    assert access_request.status == Status.FAILED
    assert grant.last_error == f"not issued: {why}"
    # The provider was never asked: nothing exists on the target.
    assert grant.issue_attempts == 0
    assert (grant.issued_at, grant.expires_at, grant.sealed_credential) == (
        None,
        None,
        None,
    )
    assert grant.ended_at is not None
    assert actions(access_request)[-1] == "grant.issue_failed"
    assert "grant.issued" not in actions(access_request)
    event = AuditEvent.objects.get(action="grant.issue_failed")
    assert event.actor == "system"
    assert event.data == {
        "reason": "policy",
        "error": f"not issued: {why}",
        "attempts": 0,
    }
    # The requester hears why; so do the approvers still eligible.
    told = Alert.objects.get(event=event)
    assert "alice@example.com" in told.destination.split(",")


def _assert_issued(access_request):
    grant = access_request.grant
    assert access_request.status == Status.ACTIVE
    assert grant.issued_at is not None
    assert grant.sealed_credential is not None
    assert grant.last_error == ""
    assert actions(access_request)[-1] == "grant.issued"


# What changed before issuance


def _leave_group(user, name):
    user.groups.remove(Group.objects.get(name=name))


def _requester_is_no_longer_a_requester(approved, **people):
    _leave_group(approved.requester, roles.REQUESTER)


def _requester_left_the_requester_group(approved, **people):
    _leave_group(approved.requester, "oncall")


def _requester_was_deactivated(approved, **people):
    approved.requester.is_active = False
    approved.requester.save()


def _approver_left_the_approver_group(approved, bob, **people):
    _leave_group(bob, "sre-leads")


def _approver_lost_the_approver_role(approved, bob, **people):
    _leave_group(bob, roles.APPROVER)


def _approvals_raised(approved, **people):
    approved.target.policy.approvals_required = 3
    approved.target.policy.save()


def _rule_adds_an_approval(approved, **people):
    approved.target.policy.rules = [
        {
            "name": "change freeze",
            "when": {"environment": "production"},
            "add_approvals": 1,
        }
    ]
    approved.target.policy.save()


def _longest_duration_lowered(approved, **people):
    approved.target.policy.max_duration_minutes = 20
    approved.target.policy.save()


def _rule_shortens_the_duration(approved, **people):
    approved.target.policy.rules = [
        {"name": "short", "when": {"scope": "read"}, "max_duration_minutes": 29}
    ]
    approved.target.policy.save()


def _policy_names_other_approvers(approved, **people):
    approved.target.policy.approver_groups.set(
        [Group.objects.get_or_create(name="payments-leads")[0]]
    )


def _scope_names_other_approvers(approved, **people):
    approved.scope.approver_groups.set(
        [Group.objects.get_or_create(name="payments-leads")[0]]
    )


def _incident_pattern_tightened(approved, **people):
    approved.target.policy.incident_pattern = r"^SEV1-[0-9]+$"
    approved.target.policy.save()


def _scope_was_withdrawn(approved, **people):
    approved.scope.is_active = False
    approved.scope.save()


def _scope_grants_more(approved, **people):
    approved.scope.grants = ["root", "admin"]
    approved.scope.save()


@pytest.mark.parametrize(
    "change, why",
    [
        (_scope_was_withdrawn, "bastion/read is no longer offered"),
        (
            _incident_pattern_tightened,
            "the request no longer meets the policy: Must match the pattern "
            "^SEV1-[0-9]+$ for bastion.",
        ),
        (
            _scope_grants_more,
            "the policy now needs 2 approvals (2 approvals: production) and 0 still "
            "count",
        ),
        (
            _requester_is_no_longer_a_requester,
            "the requester is no longer allowed: You do not hold the requester role.",
        ),
        (
            _requester_left_the_requester_group,
            "the requester is no longer allowed: Only members of oncall may request "
            "access to bastion.",
        ),
        (
            _requester_was_deactivated,
            "the requester is no longer allowed: You do not hold the requester role.",
        ),
        (
            _approver_left_the_approver_group,
            "the policy now needs 2 approvals (2 approvals: production) and 1 still "
            "count; no longer eligible: bob",
        ),
        (
            _approver_lost_the_approver_role,
            "the policy now needs 2 approvals (2 approvals: production) and 1 still "
            "count; no longer eligible: bob",
        ),
        (
            _approvals_raised,
            "the policy now needs 3 approvals (3 approvals: production) and 2 still "
            "count",
        ),
        (
            _rule_adds_an_approval,
            "the policy now needs 3 approvals (3 approvals: production, change "
            "freeze) and 2 still count",
        ),
        (
            _longest_duration_lowered,
            "the policy now allows at most 20 minutes, not 30",
        ),
        (
            _rule_shortens_the_duration,
            "the policy now allows at most 29 minutes, not 30",
        ),
        (
            _policy_names_other_approvers,
            "the policy now needs 2 approvals (2 approvals: production) and 0 still "
            "count; no longer eligible: bob, carol",
        ),
        (
            _scope_names_other_approvers,
            "the policy now needs 2 approvals (2 approvals: production) and 0 still "
            "count; no longer eligible: bob, carol",
        ),
    ],
)
def test_a_change_before_issuance_fails_the_request_and_says_why(
    approved, bob, carol, change, why
):
    change(approved, bob=bob, carol=carol)

    _assert_refused(_issue(approved), why)


def test_a_refused_request_is_not_tried_again(approved, bob):
    _approver_left_the_approver_group(approved, bob)
    _issue(approved)
    _leave_group(approved.requester, "oncall")

    _issue(approved)

    assert services.sweep()["issued"] == 0
    assert AuditEvent.objects.filter(action="grant.issue_failed").count() == 1
    assert actions(approved)[-1] == "grant.issue_failed"


def test_it_still_issues_when_nothing_changed(approved):
    _assert_issued(_issue(approved))


def test_it_still_issues_when_the_policy_loosened_or_others_left(
    approved, bastion, erin
):
    bastion.policy.approvals_required = 1
    bastion.policy.max_duration_minutes = 120
    bastion.policy.save()
    # Erin never voted; her leaving changes nothing for this request.
    _leave_group(erin, "sre-leads")

    _assert_issued(_issue(approved))


def test_the_context_is_the_one_known_when_the_request_was_made(
    alice, bob, carol, bastion
):
    # In hours at Paris when asked, out of hours by the time it is issued; and the
    # requester's shift ended in between. Neither tightens the policy.
    policy = bastion.policy
    policy.timezone = "Europe/Paris"
    policy.rules = [
        {
            "name": "outside working hours",
            "when": {"off_hours": True},
            "add_approvals": 1,
        },
        {"name": "not on call", "when": {"on_call": False}, "add_approvals": 2},
    ]
    policy.save()
    asked = datetime.datetime(2026, 1, 14, 16, 50, tzinfo=datetime.UTC)
    OnCallShift.objects.create(
        user=alice,
        starts_at=asked - timedelta(hours=8),
        ends_at=asked + timedelta(minutes=5),
        source=OnCallShift.Source.API,
    )
    with time_machine.travel(asked, tick=False):
        access_request = open_request(alice)
    assert access_request.approvals_required == 2

    with time_machine.travel(asked + timedelta(minutes=15), tick=False):
        approve(access_request, bob)
        approve(access_request, carol)
        access_request.refresh_from_db()
        assert access_request.status == Status.APPROVED
        _assert_issued(_issue(access_request))


def test_a_grant_issued_after_the_request_was_made_does_not_count(
    alice, bob, carol, bastion
):
    bastion.policy.rules = [
        {"name": "again", "when": {"recent_grants_at_least": 1}, "add_approvals": 1}
    ]
    bastion.policy.save()
    asked = datetime.datetime(2026, 1, 14, 12, 0, tzinfo=datetime.UTC)
    with time_machine.travel(asked, tick=False) as clock:
        first = open_request(alice, incident="INC-1")
        second = open_request(alice, incident="INC-2")
        clock.shift(timedelta(minutes=1))
        approve(second, bob)
        approve(second, carol)
        _assert_issued(_issue(second))
        # The next codes come from the next 30-second step.
        clock.shift(timedelta(seconds=30))
        approve(first, bob)
        approve(first, carol)

        _assert_issued(_issue(first))

    first.refresh_from_db()
    assert first.decision["evaluated"]["recent_grants"] == 0


# Votes are bound to the request as it was voted on


@pytest.fixture
def bastion_two(bastion):
    return make_ssh_target(name="bastion-two")


def _change_reason(access_request):
    return {"reason": "something else entirely"}


def _change_duration(access_request):
    return {"duration_minutes": 60}


def _change_incident(access_request):
    return {"incident": "INC-99"}


def _change_scope(access_request):
    owner = access_request.target.scopes.create(name="owner", grants=["root"])
    return {"scope": owner}


def _change_target(access_request):
    other = Target.objects.get(name="bastion-two")
    return {"target": other, "scope": other.scopes.get(name="read")}


CHANGES = [
    _change_reason,
    _change_duration,
    _change_incident,
    _change_scope,
    _change_target,
]


@pytest.mark.parametrize("change", CHANGES)
def test_a_change_after_the_first_vote_voids_it(
    alice, bob, carol, erin, bastion, bastion_two, change
):
    access_request = open_request(alice)
    approve(access_request, bob)
    AccessRequest.objects.filter(pk=access_request.pk).update(**change(access_request))

    approve(access_request, carol)

    access_request.refresh_from_db()
    assert access_request.status == Status.PENDING
    assert not hasattr(access_request, "grant")
    carols = AuditEvent.objects.filter(action="approval.approved").last()
    assert carols.actor == "carol"
    assert (carols.data["approvals"], carols.data["approvals_required"]) == (1, 2)

    # Two votes on the request as it now is approve it.
    approve(access_request, erin)
    access_request.refresh_from_db()
    assert access_request.status == Status.APPROVED
    assert AuditEvent.objects.get(action="request.approved").actor == "erin"


@pytest.mark.parametrize("change", CHANGES)
def test_a_change_after_approval_is_refused_at_issuance(approved, bastion_two, change):
    AccessRequest.objects.filter(pk=approved.pk).update(**change(approved))
    approved.refresh_from_db()

    _assert_refused(
        _issue(approved),
        "the policy now needs 2 approvals (2 approvals: production) and 0 still count",
    )
