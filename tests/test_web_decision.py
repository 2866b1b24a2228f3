"""The policy decision in plain words, on a request's page and the new request form."""

import re
from datetime import UTC, datetime
from html import unescape

import pytest
import time_machine
from django.contrib.auth.models import Group

from breakglass import oncall
from breakglass.models import AccessRequest, OnCallShift, Policy, Scope

from .conftest import make_target
from .web_helpers import login, make_ssh_target, open_request

RULES = [
    {
        "name": "outside working hours",
        "when": {"environment": "production", "off_hours": True},
        "add_approvals": 1,
    },
    {"name": "requester not on call", "when": {"on_call": False}, "add_approvals": 2},
    {
        "name": "frequent use",
        "when": {"recent_grants_at_least": 3},
        "max_duration_minutes": 15,
    },
]
# Paris is UTC+1 in December; its working day ends at 18:00, 17:00 UTC.
EVENING = datetime(2026, 12, 7, 18, 30, tzinfo=UTC)  # Monday 19:30 in Paris
LAST_MINUTE = datetime(2026, 12, 7, 16, 59, tzinfo=UTC)  # Monday 17:59 in Paris


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    target = make_ssh_target(tmp_path, monkeypatch)
    Policy.objects.filter(target=target).update(
        timezone="Europe/Paris", max_active_grants=2, rules=RULES
    )
    return target


def text_of(page):
    """Return the page's words without markup, as a reader sees them."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", page.text)))


def test_the_request_page_says_why_it_needs_its_approvals(bastion, alice, bob, cora):
    with time_machine.travel(EVENING, tick=False):
        access_request = open_request(alice)

    for user in [alice, bob, cora]:
        page = login(user).get(f"/requests/{access_request.pk}/")
        assert page.status_code == 200
        text = text_of(page)
        summary = (
            "5 approvals: production, outside working hours, requester not on call"
        )
        assert f"Policy decision {summary}" in text
        assert "Why it needs 5 approvals" in text
        assert "Approver groups sre-leads" in text
        assert "Longest duration 60 minutes" in text
        assert (
            "Local time when asked Monday 2026-12-07 19:30 Europe/Paris (UTC+01:00)"
        ) in text
        assert "Outside working hours yes" in text
        assert "Requester on call no" in text
        assert "Grants in the last 30 days 0" in text
        assert "Requests and grants already open 0" in text
        assert "Rules that applied outside working hours; requester not on call" in text


def test_a_minute_before_the_end_of_the_day_on_call_needs_the_base(
    bastion, alice, ada, bob
):
    oncall.add_oncall_shift(
        user=alice,
        starts_at=datetime(2026, 12, 7, 8, tzinfo=UTC),
        ends_at=datetime(2026, 12, 7, 17, tzinfo=UTC),
        actor=ada,
        source=OnCallShift.Source.ADMIN,
    )
    with time_machine.travel(LAST_MINUTE, tick=False):
        access_request = open_request(alice)

    text = text_of(login(bob).get(f"/requests/{access_request.pk}/"))

    assert "Policy decision 2 approvals: production " in text
    assert "Why it needs 2 approvals" in text
    assert "Monday 2026-12-07 17:59 Europe/Paris" in text
    assert "Outside working hours no" in text
    assert "Requester on call yes" in text
    assert "Rules that applied none: the policy's base" in text


def test_a_scope_with_its_own_approvers_and_a_shorter_limit_is_shown(
    bastion, alice, bob
):
    dba = Group.objects.create(name="dba-leads")
    owner = Scope.objects.create(target=bastion, name="owner", grants=["root"])
    owner.approver_groups.set([dba])
    policy = Policy.objects.get(target=bastion)
    policy.rules = RULES + [
        {"name": "owner scope", "when": {"scope": "owner"}, "max_duration_minutes": 15}
    ]
    policy.save()
    with time_machine.travel(EVENING, tick=False):
        access_request = open_request(alice, scope="owner", duration_minutes=10)

    page = login(alice).get(f"/requests/{access_request.pk}/")
    text = text_of(page)

    assert "Approver groups dba-leads" in text
    assert "Longest duration 15 minutes" in text
    assert "requester not on call; owner scope" in text
    # Bob approves for sre-leads, not for this scope: he does not see it.
    assert login(bob).get(f"/requests/{access_request.pk}/").status_code == 404


def test_a_request_without_a_recorded_decision_shows_its_rule(bastion, alice):
    with time_machine.travel(EVENING, tick=False):
        access_request = open_request(alice)
    AccessRequest.objects.filter(pk=access_request.pk).update(
        decision={}, policy_rule="2 approvals from sre-leads"
    )

    text = text_of(login(alice).get(f"/requests/{access_request.pk}/"))

    assert "Policy decision 2 approvals from sre-leads" in text
    assert "Why it needs" not in text


def test_the_new_request_form_explains_each_policy_and_its_rules(bastion, alice):
    make_target("orders-db", "postgres", grants=["pg_read_all_data"], env_var="X")
    dba = Group.objects.create(name="dba-leads")
    owner = Scope.objects.create(target=bastion, name="owner", grants=["root"])
    owner.approver_groups.set([dba])

    with time_machine.travel(EVENING, tick=False):
        page = login(alice).get("/requests/new/")

    assert page.status_code == 200
    text = text_of(page)
    assert "For you now, by scope: owner : 5 approvals: production, outside" in text
    assert "(from dba-leads; at most 60 minutes)" in text
    assert (
        "Base: 2 approvals from sre-leads, for at most 60 minutes; approvals must "
        "arrive within 30 minutes."
    ) in text
    assert "Working hours: Monday to Friday, 09:00 to 18:00 (Europe/Paris)." in text
    assert "A requester may hold at most 2 open requests and grants at a time." in text
    assert "owner (root; approved by dba-leads); read (root)" in text
    assert (
        "outside working hours: if the environment is production and it is outside "
        "working hours, 1 more approval."
    ) in text
    assert (
        "requester not on call: if the requester is not on call, 2 more approvals."
    ) in text
    assert (
        "frequent use: if the requester had 3 or more grants in the last 30 days, "
        "at most 15 minutes."
    ) in text
    # A target without rules says so; it is in UTC with the default hours.
    assert "For you now: 2 approvals: production (from sre-leads; at most 60" in text
    assert "No rules: the base applies at any time." in text
    assert "Working hours: Monday to Friday, 09:00 to 18:00 (UTC)." in text


def test_the_form_shows_a_target_the_requester_holds_too_much_of(bastion, alice):
    Policy.objects.filter(target=bastion).update(max_active_grants=1)
    with time_machine.travel(EVENING, tick=False):
        open_request(alice)
        page = login(alice).get("/requests/new/")

    assert page.status_code == 200
    text = text_of(page)
    assert "Not open to you" in text
    assert "bastion : You already hold 1 open requests or grants" in text
    assert 'value="bastion"' not in page.text
