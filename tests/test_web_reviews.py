"""The web pages for post-incident reviews, as each person sees them."""

from datetime import timedelta

import pytest
import time_machine
from django.test import Client

from breakglass import roles, services
from breakglass.models import Alert, AuditEvent, Review

from .conftest import make_user
from .web_helpers import actions, approve, issue, login, make_ssh_target, open_request

SECOND = timedelta(seconds=1)


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    return make_ssh_target(tmp_path, monkeypatch)


def _ended(requester, *approvers, incident="INC-1"):
    access_request = open_request(requester, incident=incident)
    approve(access_request, *approvers)
    issue(access_request)
    services.request_end(access_request.pk, actor=requester, reason="fixed")
    services.end_grant(access_request.grant.pk)
    access_request.refresh_from_db()
    return access_request


@pytest.fixture
def ended(bastion, alice, bob, carol, cora):
    return _ended(alice, bob, carol)


@pytest.fixture
def submitted(ended, alice):
    services.submit_review(ended.pk, actor=alice, summary="Cleared the queue.")
    return ended


def _url(access_request, action=""):
    return f"/requests/{access_request.pk}/" + (f"{action}/" if action else "")


def _review():
    return Review.objects.get()


# The request page


def test_the_requester_sees_review_due_and_the_form(ended, alice):
    page = login(alice).get(_url(ended))

    assert page.status_code == 200
    assert "Review due" in page.text
    assert "Post-incident review" in page.text
    assert f'action="/requests/{ended.pk}/review/"' in page.text
    assert "Sign off" not in page.text


def test_the_badge_says_overdue_after_the_due_time(ended, alice):
    with time_machine.travel(_review().due_at + SECOND):
        page = login(alice).get(_url(ended))

    assert "Review due, overdue" in page.text
    assert "Your review is overdue" in page.text


def test_a_request_still_active_has_no_review(bastion, alice, bob, carol):
    active = open_request(alice)
    approve(active, bob, carol)
    issue(active)

    page = login(alice).get(_url(active))

    assert "Review due" not in page.text
    assert "Post-incident review" not in page.text


def test_submitting_records_and_alerts_compliance(ended, alice):
    client = login(alice)

    response = client.post(_url(ended, "review"), {"summary": "Freed disk space."})

    assert response.status_code == 302
    assert _review().status == Review.Status.SUBMITTED
    event = AuditEvent.objects.get(action="review.submitted")
    assert event.actor == "alice"
    assert Alert.objects.get(event=event).destination == "cora@example.com"
    page = client.get(_url(ended))
    assert "Review due" not in page.text
    assert "waits for compliance" in page.text
    assert "Freed disk space." in page.text


@pytest.mark.parametrize("summary", ["", "   "])
def test_a_blank_summary_is_400_with_a_message(ended, alice, summary):
    response = login(alice).post(_url(ended, "review"), {"summary": summary})

    assert response.status_code == 400
    assert "Describe what you did with the access." in response.text
    assert _review().status == Review.Status.DUE


def test_a_summary_too_long_is_400(ended, alice):
    long = "x" * (Review.SUMMARY_MAX_LENGTH + 1)

    response = login(alice).post(_url(ended, "review"), {"summary": long})

    assert response.status_code == 400
    assert _review().status == Review.Status.DUE


def test_compliance_sends_back_then_signs_off(submitted, alice, cora):
    page = login(cora).get(_url(submitted))
    assert "Sign off" in page.text
    assert "Send back" in page.text
    assert "Cleared the queue." in page.text

    response = login(cora).post(
        _url(submitted, "review/send-back"), {"comment": "Which queue?"}
    )
    assert response.status_code == 302
    assert _review().status == Review.Status.SENT_BACK
    page = login(alice).get(_url(submitted))
    assert "Review due" in page.text
    assert "Sent back by cora" in page.text
    assert "Which queue?" in page.text

    login(alice).post(_url(submitted, "review"), {"summary": "The orders queue."})
    response = login(cora).post(_url(submitted, "review/sign-off"), {"comment": ""})

    assert response.status_code == 302
    review = _review()
    assert review.status == Review.Status.SIGNED_OFF
    assert review.reviewer == cora
    assert actions(request=submitted)[-4:] == [
        "review.submitted",
        "review.sent_back",
        "review.submitted",
        "review.signed_off",
    ]
    page = login(cora).get(_url(submitted))
    assert "Signed off" in page.text
    assert "Sign off</button>" not in page.text


def test_sending_back_without_a_comment_is_400(submitted, cora):
    response = login(cora).post(_url(submitted, "review/send-back"), {"comment": ""})

    assert response.status_code == 400
    assert "Say what is missing from the review." in response.text
    assert _review().status == Review.Status.SUBMITTED


def test_the_requester_and_approvers_cannot_decide(submitted, alice, bob):
    for user in (alice, bob):
        for action in ("review/sign-off", "review/send-back"):
            response = login(user).post(_url(submitted, action), {"comment": "ok"})
            assert response.status_code == 403
            assert "Refused" in response.text

    assert _review().status == Review.Status.SUBMITTED
    page = login(bob).get(_url(submitted))
    assert "Sign off</button>" not in page.text


def test_only_the_requester_submits(ended, cora):
    response = login(cora).post(_url(ended, "review"), {"summary": "not mine"})

    assert response.status_code == 403
    assert _review().status == Review.Status.DUE


def test_an_outsider_sees_nothing(submitted, oscar):
    for action in ("review", "review/sign-off", "review/send-back"):
        response = login(oscar).post(_url(submitted, action), {"comment": "x"})
        assert response.status_code == 404


def test_wrong_state_is_409(ended, cora, alice):
    response = login(cora).post(_url(ended, "review/sign-off"))

    assert response.status_code == 409
    assert "only a submitted review can be decided" in response.text

    services.submit_review(ended.pk, actor=alice, summary="done")
    response = login(alice).post(_url(ended, "review"), {"summary": "again"})
    assert response.status_code == 409


def test_review_forms_need_the_csrf_token(ended, alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    response = client.post(_url(ended, "review"), {"summary": "x"})

    assert response.status_code == 403
    assert _review().status == Review.Status.DUE


def test_review_actions_are_post_only(ended, alice):
    assert login(alice).get(_url(ended, "review")).status_code == 405


# The list of reviews


def test_compliance_sees_every_open_review_overdue_first(
    bastion, alice, bob, carol, cora, ada
):
    first = _ended(alice, bob, carol)
    with time_machine.travel(timedelta(seconds=31)):
        second = _ended(alice, bob, carol, incident="INC-2")
    services.submit_review(second.pk, actor=alice, summary="Looked around.")
    due = Review.objects.get(request=first).due_at

    with time_machine.travel(due + SECOND):
        page = login(cora).get("/reviews/")
        admin_page = login(ada).get("/reviews/")

    assert page.status_code == 200
    assert admin_page.status_code == 200
    text = page.text
    assert "Reviews not signed off" in text
    assert text.index(_url(first)) < text.index(_url(second))
    assert text.count('class="overdue"') == 1
    assert "Submitted" in text

    services.sign_off_review(second.pk, actor=cora)
    assert _url(second) not in login(cora).get("/reviews/").text


def test_a_requester_sees_only_their_reviews_due(ended, alice, bob, carol):
    dora = make_user("dora", roles.REQUESTER, groups=["oncall"])

    page = login(alice).get("/reviews/")
    assert page.status_code == 200
    assert "My reviews due" in page.text
    assert _url(ended) in page.text

    page = login(dora).get("/reviews/")
    assert _url(ended) not in page.text
    assert "No review is waiting." in page.text

    services.submit_review(ended.pk, actor=alice, summary="done")
    assert _url(ended) not in login(alice).get("/reviews/").text


def test_people_without_the_role_get_403(ended, bob, oscar):
    assert login(oscar).get("/reviews/").status_code == 403
    assert login(bob).get("/reviews/").status_code == 403
    assert Client().get("/reviews/").status_code == 302


def test_the_nav_links_to_reviews_for_those_who_have_them(ended, alice, cora, oscar):
    assert 'href="/reviews/"' in login(alice).get("/").text
    assert 'href="/reviews/"' in login(cora).get("/").text
    assert 'href="/reviews/"' not in login(oscar).get("/").text


# Home


def test_home_shows_the_requester_their_reviews_due(ended, alice, cora):
    page = login(alice).get("/")
    assert "Reviews due" in page.text
    assert _url(ended) in page.text

    services.submit_review(ended.pk, actor=alice, summary="done")
    assert "Reviews due" not in login(alice).get("/").text
    assert "1 submitted review to sign off" in login(cora).get("/").text


# The admin


def test_the_admin_shows_reviews_read_only(submitted, ada):
    client = login(ada)
    review = _review()

    assert client.get("/admin/breakglass/review/").status_code == 200
    change = client.get(f"/admin/breakglass/review/{review.pk}/change/")
    assert change.status_code == 200
    assert "Cleared the queue." in change.text
    assert 'name="_save"' not in change.text
    assert client.get("/admin/breakglass/review/add/").status_code == 403
    response = client.post(
        f"/admin/breakglass/review/{review.pk}/change/", {"status": "signed_off"}
    )
    assert response.status_code == 403
    assert (
        client.post(f"/admin/breakglass/review/{review.pk}/delete/").status_code == 403
    )
    assert _review().status == Review.Status.SUBMITTED
