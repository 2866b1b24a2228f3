"""Requests and grants with known times, for the compliance report's tests.

Everything goes through the real services with the clock moved. On 2030-03-01 to
03-03 (UTC): Alice and Erin have four grants on two SSH targets, one of which
was revoked after a failed attempt and one still failing; Bob denies a fifth
request. Two requests fall just outside those days.
"""

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import time_machine

from approvals import services as approval_services
from breakglass import services

from .conftest import otp_code
from .flows import CA_ENV, approve, open_request


def at(day, clock_time):
    """Return 2030-03-<day> at HH:MM:SS, UTC."""
    hour, minute, second = (int(part) for part in clock_time.split(":"))
    return datetime(2030, 3, day, hour, minute, second, tzinfo=UTC)


# When the tests read the report: a day after the last request.
NOW = at(4, "12:00:00")


def _travel(moment):
    return time_machine.travel(moment, tick=False)


def _krl_state():
    return Path(os.environ[CA_ENV]).parent / "krl.json"


def break_revocation_list():
    """Make every early end fail: the revocation list's state file is garbage."""
    _krl_state().write_text("not a state file")


def mend_revocation_list():
    _krl_state().unlink()


def grant(requester, approvers, *, target, created, votes, issued, minutes):
    """Open a request, approve it at the vote times, issue it; return it fresh."""
    with _travel(created):
        access_request = open_request(
            requester, target=target, duration_minutes=minutes
        )
    for approver, moment in zip(approvers, votes, strict=True):
        with _travel(moment):
            approve(access_request, approver)
    with _travel(issued):
        services.issue_grant(access_request.grant.pk)
    access_request.refresh_from_db()
    return access_request


def end(access_request, moment):
    with _travel(moment):
        return services.end_grant(access_request.grant.pk)


def ask_end(access_request, moment):
    with _travel(moment):
        services.request_end(access_request.pk, actor=access_request.requester)


def build(alice, erin, bob, carol):
    """Build the requests described above; return them by name."""
    both = (bob, carol)
    # Expired on time: 120 s to approval, 5 s to issuance, revoked 2 s after.
    quick = grant(
        alice,
        both,
        target="bastion",
        created=at(1, "09:00:00"),
        votes=[at(1, "09:01:00"), at(1, "09:02:00")],
        issued=at(1, "09:02:05"),
        minutes=30,
    )
    assert end(quick, at(1, "09:32:07"))

    # Expired and revoked 300 s late: 600 s to approval, 30 s to issuance.
    slow = grant(
        erin,
        both,
        target="bastion",
        created=at(1, "10:00:00"),
        votes=[at(1, "10:05:00"), at(1, "10:10:00")],
        issued=at(1, "10:10:30"),
        minutes=10,
    )
    assert end(slow, at(1, "10:25:30"))

    # Ended early: the first attempt fails, the second revokes it 100 s late.
    retried = grant(
        alice,
        both,
        target="jump",
        created=at(2, "09:00:00"),
        votes=[at(2, "09:00:30"), at(2, "09:01:00")],
        issued=at(2, "09:01:01"),
        minutes=60,
    )
    ask_end(retried, at(2, "09:20:00"))
    break_revocation_list()
    assert not end(retried, at(2, "09:20:01"))
    mend_revocation_list()
    assert end(retried, at(2, "09:21:40"))

    # Ended early and still failing.
    failing = grant(
        alice,
        both,
        target="bastion",
        created=at(3, "09:00:00"),
        votes=[at(3, "09:00:40"), at(3, "09:01:30")],
        issued=at(3, "09:01:40"),
        minutes=60,
    )
    ask_end(failing, at(3, "09:30:00"))
    break_revocation_list()
    assert not end(failing, at(3, "09:30:30"))

    with _travel(at(3, "12:00:00")):
        denied = open_request(alice, target="bastion")
    with _travel(at(3, "12:01:00")):
        approval_services.deny_request(denied.pk, approver=bob, code=otp_code(bob))

    with _travel(at(1, "00:00:00") - timedelta(seconds=1)):
        before = open_request(alice, target="bastion")
    with _travel(at(4, "00:00:00")):
        after = open_request(alice, target="bastion")

    for access_request in (quick, slow, retried, failing, denied):
        access_request.refresh_from_db()
    return {
        "quick": quick,
        "slow": slow,
        "retried": retried,
        "failing": failing,
        "denied": denied,
        "before": before,
        "after": after,
    }
