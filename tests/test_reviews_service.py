"""Post-incident reviews: due at a grant's end, submitted, decided and reminded.

Alice's grants end by expiry or early; she records what she did; Cora (compliance)
signs the review off or sends it back; the scheduler reminds Alice when it is late.
"""

import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import connection

from breakglass import roles, selectors, services, tasks
from breakglass.celery import app
from breakglass.errors import InvalidInput, NotAllowed, NotVisible, WrongState
from breakglass.models import AccessRequest, Alert, AuditEvent, Review

from .conftest import make_user
from .flows import (
    actions,
    approve,
    issued_request,
    last_event,
    make_ssh_ca,
    make_ssh_target,
    open_request,
)

Status = AccessRequest.Status
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def active(alice, bob, carol, cora, bastion):
    return issued_request(alice, bob, carol)


@pytest.fixture
def expired(active):
    with time_machine.travel(active.grant.expires_at + SECOND, tick=False):
        assert services.end_grant(active.grant.pk) is True
    active.refresh_from_db()
    return active


@pytest.fixture
def submitted(expired, alice):
    services.submit_review(expired.pk, actor=alice, summary="Freed disk space.")
    return expired


def _next_codes():
    """Move to the next TOTP step, as approvers voting again a little later would."""
    return time_machine.travel(timedelta(seconds=31))


def _ended_early(requester, *approvers, incident):
    with _next_codes():
        access_request = issued_request(requester, *approvers, incident=incident)
        services.request_end(access_request.pk, actor=requester)
        services.end_grant(access_request.grant.pk)
    return access_request


def _review(access_request):
    return Review.objects.get(request=access_request)


def _alerted(event):
    return sorted(
        Alert.objects.filter(event=event).values_list("destination", flat=True)
    )


# Due when the grant ends


def test_expiry_makes_the_review_due_and_tells_the_requester(active, settings):
    settings.BREAKGLASS_REVIEW_DUE_HOURS = 48
    assert not Review.objects.exists()
    ended_at = active.grant.expires_at + SECOND

    with time_machine.travel(ended_at, tick=False):
        services.sweep()

    review = _review(active)
    assert review.status == Review.Status.DUE
    assert review.due_at == ended_at + timedelta(hours=48)
    assert review.created_at == ended_at
    assert actions(active)[-2:] == ["grant.expired", "review.due"]
    event = last_event("review.due")
    assert event.actor == "system"
    assert event.requester == "alice"
    assert event.data == {
        "due_at": review.due_at.isoformat(),
        "grant_status": "expired",
    }
    assert _alerted(event) == ["alice@example.com"]


def test_an_early_end_makes_the_review_due(active, alice):
    services.request_end(active.pk, actor=alice, reason="fixed")
    assert not Review.objects.exists()

    assert services.end_grant(active.grant.pk) is True

    active.refresh_from_db()
    assert active.status == Status.REVOKED
    assert _review(active).status == Review.Status.DUE
    assert actions(active)[-2:] == ["grant.revoked", "review.due"]
    assert last_event("review.due").data["grant_status"] == "revoked"


def test_an_end_delivered_twice_opens_one_review(expired):
    with time_machine.travel(expired.grant.expires_at + HOUR):
        assert services.end_grant(expired.grant.pk) is False

    assert Review.objects.count() == 1
    assert AuditEvent.objects.filter(action="review.due").count() == 1


def test_a_grant_not_ended_has_no_review(active, alice, bob, carol):
    with _next_codes():
        failed = open_request(alice, incident="INC-43")
        approve(failed, bob)
        approve(failed, carol)
    failed.refresh_from_db()
    # The target was withdrawn: the issuance fails and nothing was used.
    failed.target.is_active = False
    failed.target.save()
    services.issue_grant(failed.grant.pk)
    failed.refresh_from_db()

    assert failed.status == Status.FAILED
    assert not Review.objects.exists()
    assert "review.due" not in actions()
    with pytest.raises(WrongState) as refused:
        services.submit_review(active.pk, actor=alice, summary="early")
    assert refused.value.code == "review_not_due"


# Submitting


def test_the_requester_submits_and_compliance_is_told(expired, alice, cora):
    services.submit_review(expired.pk, actor=alice, summary="  Freed disk space.  ")

    review = _review(expired)
    assert review.status == Review.Status.SUBMITTED
    assert review.summary == "Freed disk space."
    assert review.submitted_at is not None
    event = last_event("review.submitted")
    assert event.actor == "alice"
    assert event.data["summary"] == "Freed disk space."
    assert _alerted(event) == ["cora@example.com"]


@pytest.mark.parametrize("summary", ["", "   \n", None])
def test_a_blank_summary_is_refused(expired, alice, summary):
    with pytest.raises(InvalidInput) as refused:
        services.submit_review(expired.pk, actor=alice, summary=summary)

    assert refused.value.fields == {"summary": ["Required."]}
    assert _review(expired).status == Review.Status.DUE
    assert "review.submitted" not in actions()


def test_a_summary_too_long_is_refused(expired, alice):
    with pytest.raises(InvalidInput) as refused:
        services.submit_review(
            expired.pk, actor=alice, summary="x" * (Review.SUMMARY_MAX_LENGTH + 1)
        )

    assert "summary" in refused.value.fields


@pytest.mark.parametrize("who", ["bob", "cora", "ada", "oscar"])
def test_only_the_requester_submits(expired, who, request):
    actor = request.getfixturevalue(who)

    with pytest.raises(NotAllowed):
        services.submit_review(expired.pk, actor=actor, summary="not mine")

    assert _review(expired).status == Review.Status.DUE


def test_a_submitted_review_is_not_submitted_again(submitted, alice):
    with pytest.raises(WrongState) as refused:
        services.submit_review(submitted.pk, actor=alice, summary="again")

    assert refused.value.status == 409
    assert refused.value.code == "review_not_due"
    assert _review(submitted).summary == "Freed disk space."


def test_an_unknown_request_is_not_visible(db, alice):
    with pytest.raises(NotVisible):
        services.submit_review(10**9, actor=alice, summary="x")


# Deciding


def test_the_full_walk_due_submitted_sent_back_submitted_signed_off(
    active, alice, cora
):
    with time_machine.travel(active.grant.expires_at + SECOND, tick=False):
        services.sweep()
    assert _review(active).status == Review.Status.DUE

    services.submit_review(active.pk, actor=alice, summary="Looked at the logs.")
    assert _review(active).status == Review.Status.SUBMITTED

    services.send_back_review(active.pk, actor=cora, comment="Which tables?")
    review = _review(active)
    assert review.status == Review.Status.SENT_BACK
    assert review.reviewer == cora
    assert review.reviewer_comment == "Which tables?"
    event = last_event("review.sent_back")
    assert event.actor == "cora"
    assert event.data == {"comment": "Which tables?"}
    assert _alerted(event) == ["alice@example.com"]

    services.submit_review(active.pk, actor=alice, summary="Read orders only.")
    review = _review(active)
    assert review.status == Review.Status.SUBMITTED
    assert review.summary == "Read orders only."

    services.sign_off_review(active.pk, actor=cora, comment="Thanks.")
    review = _review(active)
    assert review.status == Review.Status.SIGNED_OFF
    assert review.reviewer == cora
    assert review.reviewed_at is not None
    assert review.reviewer_comment == "Thanks."
    event = last_event("review.signed_off")
    assert event.actor == "cora"
    assert _alerted(event) == ["alice@example.com"]
    assert actions(active)[-6:] == [
        "grant.expired",
        "review.due",
        "review.submitted",
        "review.sent_back",
        "review.submitted",
        "review.signed_off",
    ]


def test_an_admin_may_sign_off(submitted, ada):
    services.sign_off_review(submitted.pk, actor=ada)

    assert _review(submitted).status == Review.Status.SIGNED_OFF
    assert last_event("review.signed_off").data == {"comment": ""}


@pytest.mark.parametrize("decide", ["sign_off_review", "send_back_review"])
def test_approvers_requesters_and_outsiders_cannot_decide(
    submitted, decide, alice, bob, oscar
):
    for actor in (alice, bob, oscar):
        with pytest.raises(NotAllowed) as refused:
            getattr(services, decide)(submitted.pk, actor=actor, comment="ok")
        assert refused.value.status == 403

    assert _review(submitted).status == Review.Status.SUBMITTED


def test_a_compliance_reviewer_cannot_decide_on_their_own_review(
    bastion, bob, carol, cora
):
    rita = make_user("rita", roles.REQUESTER, roles.COMPLIANCE, groups=["oncall"])
    own = _ended_early(rita, bob, carol, incident="INC-7")
    services.submit_review(own.pk, actor=rita, summary="Restarted the service.")

    with pytest.raises(NotAllowed) as refused:
        services.sign_off_review(own.pk, actor=rita)

    assert refused.value.code == "self_review"
    assert _review(own).status == Review.Status.SUBMITTED
    assert not AuditEvent.objects.filter(action="review.signed_off").exists()


def test_only_a_submitted_review_is_decided(expired, cora, alice):
    for decide in (services.sign_off_review, services.send_back_review):
        with pytest.raises(WrongState) as refused:
            decide(expired.pk, actor=cora, comment="too early")
        assert refused.value.code == "review_not_submitted"

    services.submit_review(expired.pk, actor=alice, summary="done")
    services.sign_off_review(expired.pk, actor=cora)
    with pytest.raises(WrongState):
        services.send_back_review(expired.pk, actor=cora, comment="reopen")
    with pytest.raises(WrongState):
        services.submit_review(expired.pk, actor=alice, summary="more")


def test_a_review_not_due_yet_cannot_be_decided(active, cora):
    with pytest.raises(WrongState) as refused:
        services.sign_off_review(active.pk, actor=cora)

    assert refused.value.code == "review_not_submitted"


@pytest.mark.parametrize("comment", ["", "  "])
def test_sending_back_needs_a_comment(submitted, cora, comment):
    with pytest.raises(InvalidInput) as refused:
        services.send_back_review(submitted.pk, actor=cora, comment=comment)

    assert refused.value.fields == {"comment": ["Required."]}
    assert _review(submitted).status == Review.Status.SUBMITTED


# Reminders


def test_no_reminder_before_the_review_is_overdue(expired):
    review = _review(expired)

    with time_machine.travel(review.due_at - SECOND, tick=False):
        assert services.remind_overdue_reviews() == 0

    assert not AuditEvent.objects.filter(action="review.reminder").exists()


def test_an_overdue_review_is_reminded_once_per_interval(expired, settings):
    settings.BREAKGLASS_REVIEW_REMINDER_HOURS = 24
    due_at = _review(expired).due_at

    with time_machine.travel(due_at + SECOND, tick=False):
        assert services.remind_overdue_reviews() == 1
        assert services.remind_overdue_reviews() == 0
    with time_machine.travel(due_at + 23 * HOUR, tick=False):
        assert services.remind_overdue_reviews() == 0
    with time_machine.travel(due_at + 24 * HOUR + SECOND, tick=False):
        assert services.remind_overdue_reviews() == 1

    review = _review(expired)
    assert review.reminders == 2
    assert review.last_reminded_at == due_at + 24 * HOUR + SECOND
    events = AuditEvent.objects.filter(action="review.reminder").order_by("seq")
    assert [e.data["reminder"] for e in events] == [1, 2]
    assert events[0].actor == "system"
    assert events[0].data["overdue_seconds"] == 1
    assert events[0].data["status"] == "due"
    assert _alerted(events[1]) == ["alice@example.com"]


def test_a_review_sent_back_and_overdue_is_reminded(submitted, cora):
    services.send_back_review(submitted.pk, actor=cora, comment="More detail.")

    with time_machine.travel(_review(submitted).due_at + SECOND, tick=False):
        assert services.remind_overdue_reviews() == 1

    assert last_event("review.reminder").data["status"] == "sent_back"


def test_no_reminder_once_submitted(submitted):
    with time_machine.travel(_review(submitted).due_at + 48 * HOUR, tick=False):
        assert services.remind_overdue_reviews() == 0

    assert not AuditEvent.objects.filter(action="review.reminder").exists()


def test_the_scheduler_runs_the_reminders(expired):
    app.finalize()
    schedule = {e["task"]: e["schedule"] for e in app.conf.beat_schedule.values()}
    assert schedule["breakglass.tasks.remind_overdue_reviews"] <= 300

    with time_machine.travel(_review(expired).due_at + SECOND, tick=False):
        tasks.remind_overdue_reviews()

    assert _review(expired).reminders == 1


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_at_once_remind_once(
    alice, bob, carol, cora, tmp_path, monkeypatch
):
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target()
    access_request = issued_request(alice, bob, carol)
    with time_machine.travel(access_request.grant.expires_at + SECOND, tick=False):
        services.end_grant(access_request.grant.pk)
    barrier = threading.Barrier(2)
    results = []

    def scheduler():
        try:
            barrier.wait()
            results.append(services.remind_overdue_reviews())
        finally:
            connection.close()

    with time_machine.travel(_review(access_request).due_at + SECOND, tick=False):
        threads = [threading.Thread(target=scheduler) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    assert sorted(results) == [0, 1]
    assert _review(access_request).reminders == 1
    assert AuditEvent.objects.filter(action="review.reminder").count() == 1


# Selectors


def test_overdue_reviews_lists_those_waiting_on_their_requester(
    submitted, alice, bob, carol, cora
):
    # Ended early, before the first one expired: due first.
    second = _ended_early(alice, bob, carol, incident="INC-43")
    services.send_back_review(submitted.pk, actor=cora, comment="Say more.")
    first_due, last_due = _review(second).due_at, _review(submitted).due_at
    assert first_due < last_due

    assert list(selectors.overdue_reviews(first_due - SECOND)) == []
    overdue = selectors.overdue_reviews(last_due + SECOND)
    assert [r.request_id for r in overdue] == [second.pk, submitted.pk]

    services.submit_review(second.pk, actor=alice, summary="Checked a replica.")
    overdue = selectors.overdue_reviews(last_due + SECOND)
    assert [r.request_id for r in overdue] == [submitted.pk]


def test_reviews_waiting_for_each_person(submitted, alice, bob, carol, cora, ada):
    second = _ended_early(alice, bob, carol, incident="INC-43")

    assert [r.request_id for r in selectors.reviews_waiting_for(alice)] == [second.pk]
    assert [r.request_id for r in selectors.reviews_waiting_for(cora)] == [submitted.pk]
    assert [r.request_id for r in selectors.reviews_waiting_for(ada)] == [submitted.pk]
    assert list(selectors.reviews_waiting_for(bob)) == []
