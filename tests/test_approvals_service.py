"""Votes confirmed with a one-time code, and the quorum (approvals.services)."""

import threading
from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import User
from django.db import connection
from django_otp.plugins.otp_totp.models import TOTPDevice

from approvals import services as approval_services
from approvals.models import Approval
from breakglass.errors import NotAllowed, OtpInvalid, Throttled, WrongState
from breakglass.models import AccessRequest, Alert, AuditEvent, Grant

from .conftest import make_user, otp_code
from .flows import actions, approve, make_ssh_ca, make_ssh_target, open_request

Status = AccessRequest.Status


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def pending(alice, bob, carol, bastion):
    return open_request(alice)


def _state(access_request):
    access_request.refresh_from_db()
    return (
        access_request.status,
        access_request.approvals.count(),
        AuditEvent.objects.count(),
    )


def test_two_approvals_reach_the_quorum(
    pending, bob, carol, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as queued:
        approve(pending, bob)
    pending.refresh_from_db()
    assert pending.status == Status.PENDING
    assert not Grant.objects.exists()
    assert queued == []

    with django_capture_on_commit_callbacks(execute=False) as queued:
        approve(pending, carol)

    pending.refresh_from_db()
    assert pending.status == Status.APPROVED
    assert pending.decided_at is not None
    grant = Grant.objects.get(request=pending)
    assert grant.principal.startswith("bg_alice_")
    assert grant.issued_at is None
    # Issuance is handed to the worker once the approval commits, and the
    # requester and the approvers are told.
    assert len(queued) == 2
    told = Alert.objects.get(event__action="request.approved")
    assert told.destination == "alice@example.com,bob@example.com,carol@example.com"
    assert actions(pending) == [
        "request.created",
        "approval.approved",
        "approval.approved",
        "request.approved",
    ]
    bob_event, carol_event = AuditEvent.objects.filter(action="approval.approved")
    assert (bob_event.actor, carol_event.actor) == ("bob", "carol")
    assert carol_event.data["approvals"] == 2
    assert carol_event.data["approvals_required"] == 2
    assert "phone" in carol_event.data["otp_device"]
    assert AuditEvent.objects.get(action="request.approved").actor == "carol"


def test_comment_is_kept_with_the_vote(pending, bob):
    approval_services.approve_request(
        pending.pk, approver=bob, code=otp_code(bob), comment="  seen the page  "
    )

    vote = Approval.objects.get()
    assert (vote.approver, vote.decision, vote.comment) == (
        bob,
        "approved",
        "seen the page",
    )
    assert AuditEvent.objects.get(action="approval.approved").data["comment"] == (
        "seen the page"
    )


def test_a_denial_ends_the_request(pending, bob, carol):
    approve(pending, bob)

    approval_services.deny_request(
        pending.pk, approver=carol, code=otp_code(carol), comment="not this way"
    )

    pending.refresh_from_db()
    assert pending.status == Status.DENIED
    assert not Grant.objects.exists()
    assert actions(pending)[-2:] == ["approval.denied", "request.denied"]
    assert AuditEvent.objects.get(action="request.denied").actor == "carol"


def test_wrong_code_is_refused_and_only_leaves_an_otp_failed_event(pending, bob):
    before = _state(pending)
    right = otp_code(bob)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"

    with pytest.raises(OtpInvalid) as refused:
        approval_services.approve_request(pending.pk, approver=bob, code=wrong)

    assert (refused.value.status, refused.value.code) == (403, "otp_invalid")
    status, votes, events = _state(pending)
    assert (status, votes, events) == (before[0], before[1], before[2] + 1)
    event = AuditEvent.objects.order_by("-seq").first()
    assert (event.action, event.actor, event.request_id) == (
        "otp.failed",
        "bob",
        pending.pk,
    )
    assert wrong not in str(event.data) and right not in str(event.data)


@pytest.mark.parametrize("code", ["", "abcdef", "12 34", "1" * 20])
def test_malformed_code_is_refused(pending, bob, code):
    before = _state(pending)

    with pytest.raises(OtpInvalid):
        approval_services.approve_request(pending.pk, approver=bob, code=code)

    assert _state(pending) == (before[0], before[1], before[2] + 1)
    assert actions()[-1] == "otp.failed"


def test_a_right_code_right_after_a_wrong_one_waits_for_the_throttle(pending, bob):
    with pytest.raises(OtpInvalid):
        approval_services.approve_request(pending.pk, approver=bob, code="000000x")

    with pytest.raises(Throttled) as throttled:
        approve(pending, bob)
    assert throttled.value.status == 429
    assert throttled.value.retry_after >= 1

    with time_machine.travel(timedelta(seconds=2)):
        approve(pending, bob)
    assert pending.approvals.get().approver == bob


def test_reused_code_is_refused_on_another_request(alice, bob, bastion):
    first = open_request(alice, incident="INC-1")
    second = open_request(alice, incident="INC-2")

    # Both votes fall within one 30 s step: the same code shows on the phone.
    with time_machine.travel(first.created_at + timedelta(seconds=1), tick=False):
        code = otp_code(bob)
        approval_services.approve_request(first.pk, approver=bob, code=code)
        before = _state(second)
        with pytest.raises(OtpInvalid):
            approval_services.approve_request(second.pk, approver=bob, code=code)

    assert first.approvals.count() == 1
    assert _state(second) == (before[0], before[1], before[2] + 1)
    assert actions(second) == ["request.created", "otp.failed"]


def test_code_from_another_approvers_device_is_refused(pending, bob, carol):
    with pytest.raises(OtpInvalid):
        approval_services.approve_request(
            pending.pk, approver=bob, code=otp_code(carol)
        )
    assert pending.approvals.count() == 0


def test_approver_without_a_device_cannot_vote(pending, bob):
    TOTPDevice.objects.filter(user=bob).update(confirmed=False)

    with pytest.raises(OtpInvalid):
        approve(pending, bob)
    assert pending.approvals.count() == 0


def test_self_approval_is_refused(pending, alice):
    before = _state(pending)

    with pytest.raises(NotAllowed) as refused:
        approval_services.approve_request(pending.pk, approver=alice, code="123456")

    assert refused.value.code == "self_approval"
    assert _state(pending) == before


def test_self_approval_is_refused_for_a_requester_who_also_approves(bob, bastion):
    pat = make_user(
        "pat", "requester", "approver", groups=["oncall", "sre-leads"], totp=True
    )
    access_request = open_request(pat)
    before = _state(access_request)

    for vote in (approval_services.approve_request, approval_services.deny_request):
        with pytest.raises(NotAllowed) as refused:
            vote(access_request.pk, approver=pat, code=otp_code(pat))
        assert refused.value.code == "self_approval"

    assert _state(access_request) == before


def test_approver_of_another_group_is_not_eligible(pending, dave, oscar):
    before = _state(pending)

    for user in (dave, oscar):
        with pytest.raises(NotAllowed) as refused:
            approval_services.approve_request(pending.pk, approver=user, code="123456")
        assert refused.value.code == "not_eligible"

    assert _state(pending) == before


def test_second_vote_is_refused(pending, bob):
    approve(pending, bob)
    before = _state(pending)

    with time_machine.travel(timedelta(seconds=31)):
        for vote in (approval_services.approve_request, approval_services.deny_request):
            with pytest.raises(WrongState) as refused:
                vote(pending.pk, approver=bob, code=otp_code(bob))
            assert refused.value.code == "already_voted"

    assert _state(pending) == before


def test_vote_on_a_decided_request_is_refused(pending, bob, carol, ada):
    approval_services.deny_request(pending.pk, approver=bob, code=otp_code(bob))
    before = _state(pending)

    with pytest.raises(WrongState) as refused:
        approve(pending, carol)

    assert (refused.value.status, refused.value.code) == (409, "already_decided")
    assert _state(pending) == before


def test_vote_after_the_window_times_the_request_out(pending, bob):
    with time_machine.travel(pending.approval_deadline + timedelta(seconds=1)):
        with pytest.raises(WrongState) as refused:
            approve(pending, bob)

    assert (refused.value.status, refused.value.code) == (409, "timed_out")
    pending.refresh_from_db()
    assert pending.status == Status.TIMED_OUT
    assert pending.approvals.count() == 0
    assert actions(pending) == ["request.created", "request.timed_out"]


def test_any_approver_may_vote_when_the_policy_names_no_group(alice, dave, bastion):
    bastion.policy.approver_groups.clear()
    bastion.policy.approvals_required = 1
    bastion.policy.save()
    access_request = open_request(alice)

    approve(access_request, dave)

    access_request.refresh_from_db()
    assert access_request.status == Status.APPROVED


def test_policy_change_does_not_alter_an_open_request(pending, bob, carol, bastion):
    bastion.policy.approvals_required = 1
    bastion.policy.save()

    approve(pending, bob)

    pending.refresh_from_db()
    assert pending.status == Status.PENDING
    approve(pending, carol)
    pending.refresh_from_db()
    assert pending.status == Status.APPROVED


@pytest.mark.django_db(transaction=True)
def test_one_code_sent_to_many_requests_at_once_is_accepted_once(
    alice, bob, tmp_path, monkeypatch
):
    # Without addresses no alert is queued on commit, so no broker is involved.
    User.objects.update(email="")
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target()
    requests = [open_request(alice, incident=f"INC-{n}") for n in range(8)]
    code = otp_code(bob)
    barrier = threading.Barrier(len(requests))
    outcomes = []

    def vote(access_request):
        try:
            barrier.wait()
            approval_services.approve_request(
                access_request.pk, approver=bob, code=code
            )
            outcomes.append("approved")
        except (OtpInvalid, Throttled) as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=vote, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(outcomes) == len(requests)
    assert outcomes.count("approved") == 1
    assert Approval.objects.count() == 1
    assert set(outcomes) <= {"approved", "otp_invalid", "otp_throttled"}
