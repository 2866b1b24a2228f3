"""The compliance report's figures, over grants made through the real services."""

from datetime import date, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from breakglass import report, roles, services
from breakglass.errors import InvalidInput
from breakglass.models import Review

from . import report_data
from .conftest import make_user
from .flows import make_ssh_ca, make_ssh_target
from .report_data import NOW, at

MARCH_1, MARCH_2, MARCH_3 = date(2030, 3, 1), date(2030, 3, 2), date(2030, 3, 3)


@pytest.fixture
def erin(db):
    return make_user("erin", roles.REQUESTER, groups=["oncall"])


@pytest.fixture
def made(db, tmp_path, monkeypatch, alice, erin, bob, carol):
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target("bastion")
    make_ssh_target("jump")
    return report_data.build(alice, erin, bob, carol)


def test_counts_grants_per_target_requester_and_day(made):
    figures = report.compliance_report(MARCH_1, MARCH_3, now=NOW)

    assert figures["since"] == MARCH_1 and figures["until"] == MARCH_3
    assert figures["generated_at"] == NOW
    assert figures["grants_issued"] == 4
    assert figures["grants_by_target"] == [
        {"target": "bastion", "count": 3},
        {"target": "jump", "count": 1},
    ]
    assert figures["grants_by_requester"] == [
        {"requester": "alice", "count": 3},
        {"requester": "erin", "count": 1},
    ]
    assert figures["grants_by_day"] == [
        {"day": MARCH_1, "count": 2},
        {"day": MARCH_2, "count": 1},
        {"day": MARCH_3, "count": 1},
    ]


def test_counts_requests_by_outcome(made):
    figures = report.compliance_report(MARCH_1, MARCH_3, now=NOW)

    counts = {row["status"]: row["count"] for row in figures["requests_by_status"]}
    assert counts == {
        "pending": 0,
        "approved": 0,
        "active": 1,
        "expired": 2,
        "revoked": 1,
        "denied": 1,
        "cancelled": 0,
        "timed_out": 0,
        "failed": 0,
    }
    assert figures["requests_total"] == 5


def test_times_have_median_p95_and_worst_with_its_request(made):
    figures = report.compliance_report(MARCH_1, MARCH_3, now=NOW)
    slow = made["slow"].pk

    # Quorum after 120, 600, 60 and 90 s.
    assert figures["time_to_approval"] == {
        "count": 4,
        "median_seconds": 105.0,
        "p95_seconds": 600.0,
        "worst_seconds": 600.0,
        "worst_request": slow,
    }
    # Issued 5, 30, 1 and 10 s after the quorum.
    assert figures["time_to_issuance"] == {
        "count": 4,
        "median_seconds": 7.5,
        "p95_seconds": 30.0,
        "worst_seconds": 30.0,
        "worst_request": slow,
    }
    # Revoked 2 and 300 s after expiry, 100 s after an early end was asked;
    # the grant still failing has no revocation time yet.
    assert figures["time_to_revocation"] == {
        "count": 3,
        "median_seconds": 100.0,
        "p95_seconds": 300.0,
        "worst_seconds": 300.0,
        "worst_request": slow,
    }


def test_lists_grants_revoked_late_and_one_not_revoked_yet(made):
    figures = report.compliance_report(MARCH_1, MARCH_3, now=NOW)

    assert figures["late_after_seconds"] == 60
    slow, retried, failing = made["slow"], made["retried"], made["failing"]
    assert figures["revoked_late"] == [
        {
            "request": slow.pk,
            "target": "bastion",
            "scope": "read",
            "requester": "erin",
            "incident": "INC-42",
            "principal": slow.grant.principal,
            "due_at": at(1, "10:20:30"),
            "ended_at": at(1, "10:25:30"),
            "late_seconds": 300.0,
        },
        {
            "request": retried.pk,
            "target": "jump",
            "scope": "read",
            "requester": "alice",
            "incident": "INC-42",
            "principal": retried.grant.principal,
            "due_at": at(2, "09:20:00"),
            "ended_at": at(2, "09:21:40"),
            "late_seconds": 100.0,
        },
        {
            "request": failing.pk,
            "target": "bastion",
            "scope": "read",
            "requester": "alice",
            "incident": "INC-42",
            "principal": failing.grant.principal,
            "due_at": at(3, "09:30:00"),
            "ended_at": None,
            "late_seconds": (NOW - at(3, "09:30:00")).total_seconds(),
        },
    ]


def test_a_revocation_just_within_the_threshold_is_not_late(made):
    quick = made["quick"]

    figures = report.compliance_report(MARCH_1, MARCH_1, now=NOW)

    assert quick.grant.ended_at - quick.grant.expires_at == timedelta(seconds=2)
    assert quick.pk not in [row["request"] for row in figures["revoked_late"]]


def test_lists_failed_revocations_in_range_and_still_failing(made):
    retried, failing = made["retried"], made["failing"]

    figures = report.compliance_report(MARCH_1, MARCH_3, now=NOW)

    assert figures["failed_revocations"] == [
        {
            "request": retried.pk,
            "target": "jump",
            "scope": "read",
            "requester": "alice",
            "incident": "INC-42",
            "principal": retried.grant.principal,
            "failures": 1,
            "last_failed_at": at(2, "09:20:01"),
            "still_failing": False,
            "ended_at": at(2, "09:21:40"),
        },
        {
            "request": failing.pk,
            "target": "bastion",
            "scope": "read",
            "requester": "alice",
            "incident": "INC-42",
            "principal": failing.grant.principal,
            "failures": 1,
            "last_failed_at": at(3, "09:30:30"),
            "still_failing": True,
            "ended_at": None,
        },
    ]


def test_a_revocation_still_failing_is_listed_whatever_the_range(made):
    figures = report.compliance_report(MARCH_1, MARCH_1, now=NOW)

    assert [
        (row["request"], row["failures"], row["last_failed_at"], row["still_failing"])
        for row in figures["failed_revocations"]
    ] == [(made["failing"].pk, 0, None, True)]
    # Its request was made on another day: it is late there, not here.
    assert made["failing"].pk not in [r["request"] for r in figures["revoked_late"]]


def test_both_days_of_the_range_are_included_in_utc(made):
    def requests(since, until):
        return report.compliance_report(since, until, now=NOW)["requests_total"]

    # The day before starts with one request at 23:59:59, the day after with
    # one at 00:00:00.
    assert requests(date(2030, 2, 28), date(2030, 2, 28)) == 1
    assert requests(date(2030, 3, 4), date(2030, 3, 4)) == 1
    assert requests(MARCH_1, MARCH_3) == 5
    assert requests(date(2030, 2, 28), date(2030, 3, 4)) == 7

    only_march_2 = report.compliance_report(MARCH_2, MARCH_2, now=NOW)
    assert only_march_2["grants_by_target"] == [{"target": "jump", "count": 1}]
    assert only_march_2["time_to_revocation"]["worst_request"] == made["retried"].pk


def test_an_empty_range_has_no_times(db):
    figures = report.compliance_report(MARCH_1, MARCH_2, now=NOW)

    assert figures["requests_total"] == 0
    assert figures["grants_by_day"] == [
        {"day": MARCH_1, "count": 0},
        {"day": MARCH_2, "count": 0},
    ]
    assert figures["time_to_approval"] == {
        "count": 0,
        "median_seconds": None,
        "p95_seconds": None,
        "worst_seconds": None,
        "worst_request": None,
    }
    assert figures["revoked_late"] == figures["failed_revocations"] == []


def test_the_last_day_there_is_can_be_reported(db):
    last = date.max
    since, until = report.report_range(last - timedelta(days=1), last)

    figures = report.compliance_report(since, until)

    assert [row["day"] for row in figures["grants_by_day"]] == [since, last]


def test_range_defaults_to_the_last_30_days():
    today = date(2030, 3, 4)
    assert report.report_range(today=today) == (date(2030, 2, 3), today)
    assert report.report_range(until=MARCH_1) == (date(2030, 1, 31), MARCH_1)
    assert report.report_range(since=MARCH_1, today=today) == (MARCH_1, today)
    assert report.report_range(until=date.min) == (date.min, date.min)


def test_range_refuses_backwards_and_over_366_days():
    with pytest.raises(InvalidInput) as backwards:
        report.report_range(MARCH_2, MARCH_1)
    assert backwards.value.fields == {"until": ["Must not be before the first day."]}

    assert report.report_range(MARCH_1, MARCH_1 + timedelta(days=365))
    with pytest.raises(InvalidInput) as too_long:
        report.report_range(MARCH_1, MARCH_1 + timedelta(days=366))
    assert too_long.value.fields == {"until": ["A report covers at most 366 days."]}


@pytest.fixture
def fast(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target("fast", approvals=1)


def _retried_grants(count, first, alice, bob):
    """Add grants ended early after one failed attempt, two minutes apart."""
    for n in range(first, first + count):
        start = at(1, "08:00:00") + timedelta(minutes=2 * n)
        access_request = report_data.grant(
            alice,
            [bob],
            target="fast",
            created=start,
            votes=[start + timedelta(seconds=30)],
            issued=start + timedelta(seconds=40),
            minutes=5,
        )
        report_data.ask_end(access_request, start + timedelta(seconds=50))
        report_data.break_revocation_list()
        report_data.end(access_request, start + timedelta(seconds=55))
        report_data.mend_revocation_list()
        report_data.end(access_request, start + timedelta(seconds=60))


def _queries_of_a_report():
    with CaptureQueriesContext(connection) as queries:
        figures = report.compliance_report(MARCH_1, MARCH_1, now=NOW)
    return figures, len(queries)


def test_queries_do_not_grow_with_the_number_of_grants(fast, alice, bob):
    _retried_grants(3, 0, alice, bob)
    few, few_queries = _queries_of_a_report()

    _retried_grants(27, 3, alice, bob)
    many, many_queries = _queries_of_a_report()

    assert (few["grants_issued"], many["grants_issued"]) == (3, 30)
    assert len(many["failed_revocations"]) == 30
    assert many["time_to_revocation"]["worst_seconds"] == 10.0
    assert many_queries == few_queries <= 6


def test_lists_the_reviews_still_overdue(made):
    later = NOW + timedelta(days=10)
    ended = list(Review.objects.order_by("due_at", "pk"))
    assert len(ended) >= 2, "the scenario ends grants, which opens their reviews"
    assert all(review.due_at > NOW - timedelta(days=3) for review in ended)

    overdue = report.compliance_report(MARCH_1, MARCH_3, now=later)["reviews_overdue"]

    assert [row["request"] for row in overdue] == [r.request_id for r in ended]
    assert {row["status"] for row in overdue} == {"due"}
    assert overdue[0]["overdue_seconds"] == (later - ended[0].due_at).total_seconds()

    done = ended[0].request
    services.submit_review(done.pk, actor=done.requester, summary="Restarted a job.")
    overdue = report.compliance_report(MARCH_1, MARCH_3, now=later)["reviews_overdue"]
    assert [row["request"] for row in overdue] == [r.request_id for r in ended[1:]]
