"""REST API: a request's review, submitting and deciding it, and the list of reviews."""

from datetime import timedelta

import pytest
import time_machine

from breakglass import roles, services
from breakglass.models import Alert, AuditEvent, Review

from .conftest import make_user
from .flows import issued_request, last_event, make_ssh_ca, make_ssh_target

SECOND = timedelta(seconds=1)
REVIEW_FIELDS = {
    "status",
    "due_at",
    "overdue",
    "summary",
    "submitted_at",
    "reviewer",
    "reviewed_at",
    "reviewer_comment",
}


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def active(alice, bob, carol, cora, bastion):
    return issued_request(alice, bob, carol)


@pytest.fixture
def ended(active, alice):
    services.request_end(active.pk, actor=alice, reason="fixed")
    services.end_grant(active.grant.pk)
    return active


@pytest.fixture
def submitted(ended, alice):
    services.submit_review(ended.pk, actor=alice, summary="Cleared the queue.")
    return ended


def _url(access_request, action=""):
    return f"/api/v1/requests/{access_request.pk}/review/" + (
        f"{action}/" if action else ""
    )


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) <= {"code", "detail", "fields"}
    assert body["code"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# The review in the request


def test_a_request_without_review_shows_null(api, alice, active):
    body = api(alice).get(f"/api/v1/requests/{active.pk}/").json()

    assert body["review"] is None
    assert body["status"] == "active"


def test_an_ended_grant_shows_its_review_due(api, alice, ended):
    body = api(alice).get(f"/api/v1/requests/{ended.pk}/").json()

    review = body["review"]
    assert set(review) == REVIEW_FIELDS
    assert review["status"] == "due"
    assert review["overdue"] is False
    assert review["summary"] == ""
    assert review["reviewer"] is None
    assert review["due_at"] == Review.objects.get().due_at.isoformat().replace(
        "+00:00", "Z"
    )


def test_the_review_shows_overdue_after_its_due_time(api, alice, ended):
    with time_machine.travel(Review.objects.get().due_at + SECOND):
        body = api(alice).get(f"/api/v1/requests/{ended.pk}/").json()

    assert body["review"]["overdue"] is True


# Submitting and deciding


def test_the_walk_through_the_api(api, alice, cora, ended):
    response = api(alice).post(_url(ended), {"summary": "Read two tables."})
    assert response.status_code == 200, response.content
    assert response.json()["review"]["status"] == "submitted"
    assert response.json()["review"]["summary"] == "Read two tables."
    event = last_event("review.submitted")
    assert list(Alert.objects.filter(event=event).values_list("destination")) == [
        ("cora@example.com",)
    ]

    response = api(cora).post(
        _url(ended, "send-back"), {"comment": "Which ones?"}, format="json"
    )
    assert response.status_code == 200, response.content
    review = response.json()["review"]
    assert review["status"] == "sent_back"
    assert review["reviewer"] == "cora"
    assert review["reviewer_comment"] == "Which ones?"

    response = api(alice).post(
        _url(ended), {"summary": "orders and refunds."}, format="json"
    )
    assert response.json()["review"]["status"] == "submitted"

    response = api(cora).post(_url(ended, "sign-off"), {}, format="json")
    assert response.status_code == 200, response.content
    review = response.json()["review"]
    assert review["status"] == "signed_off"
    assert review["reviewed_at"]
    assert [e.action for e in AuditEvent.objects.filter(request=ended)][-5:] == [
        "review.due",
        "review.submitted",
        "review.sent_back",
        "review.submitted",
        "review.signed_off",
    ]


@pytest.mark.parametrize("summary", ["", "   "])
def test_a_blank_summary_is_400_with_the_field(api, alice, ended, summary):
    body = assert_error(
        api(alice).post(_url(ended), {"summary": summary}), 400, "invalid"
    )

    assert "summary" in body["fields"]
    assert Review.objects.get().status == "due"


def test_a_missing_or_long_summary_is_400(api, alice, ended):
    assert_error(api(alice).post(_url(ended), {}), 400, "invalid")
    long = "x" * (Review.SUMMARY_MAX_LENGTH + 1)
    body = assert_error(api(alice).post(_url(ended), {"summary": long}), 400, "invalid")
    assert "summary" in body["fields"]


def test_sending_back_without_a_comment_is_400(api, cora, submitted):
    body = assert_error(
        api(cora).post(_url(submitted, "send-back"), {}), 400, "invalid"
    )

    assert "comment" in body["fields"]
    assert Review.objects.get().status == "submitted"


def test_submitting_before_the_grant_ends_is_409(api, alice, active):
    assert_error(api(alice).post(_url(active), {"summary": "x"}), 409, "review_not_due")


def test_deciding_a_review_not_submitted_is_409(api, cora, ended):
    assert_error(api(cora).post(_url(ended, "sign-off")), 409, "review_not_submitted")
    assert_error(
        api(cora).post(_url(ended, "send-back"), {"comment": "no"}),
        409,
        "review_not_submitted",
    )


def test_signing_off_twice_is_409(api, cora, submitted):
    assert api(cora).post(_url(submitted, "sign-off")).status_code == 200

    assert_error(
        api(cora).post(_url(submitted, "sign-off")), 409, "review_not_submitted"
    )
    assert AuditEvent.objects.filter(action="review.signed_off").count() == 1


def test_who_may_do_what(api, alice, bob, cora, oscar, submitted):
    # The requester cannot judge their own review; an approver cannot judge.
    assert_error(api(alice).post(_url(submitted, "sign-off")), 403, "self_review")
    assert_error(api(bob).post(_url(submitted, "sign-off")), 403, "not_allowed")
    assert_error(
        api(bob).post(_url(submitted, "send-back"), {"comment": "x"}),
        403,
        "not_allowed",
    )
    # Only the requester writes it.
    assert_error(api(cora).post(_url(submitted), {"summary": "x"}), 403, "not_allowed")
    # Someone who cannot see the request is told nothing about it.
    assert_error(api(oscar).post(_url(submitted, "sign-off")), 404, "not_found")
    assert_error(api(oscar).post(_url(submitted), {"summary": "x"}), 404, "not_found")
    assert Review.objects.get().status == "submitted"


def test_a_compliance_requester_cannot_sign_off_their_own(api, bob, carol, bastion):
    rita = make_user("rita", roles.REQUESTER, roles.COMPLIANCE, groups=["oncall"])
    own = issued_request(rita, bob, carol)
    services.request_end(own.pk, actor=rita)
    services.end_grant(own.grant.pk)
    services.submit_review(own.pk, actor=rita, summary="Restarted it.")

    assert_error(api(rita).post(_url(own, "sign-off")), 403, "self_review")


def test_review_actions_need_a_token(api, submitted):
    assert_error(api().post(_url(submitted, "sign-off")), 401, "not_authenticated")


# The list


def test_compliance_lists_every_review_overdue_first(
    api, alice, bob, carol, cora, ended
):
    with time_machine.travel(timedelta(seconds=31)):
        later = issued_request(alice, bob, carol, incident="INC-43")
        services.request_end(later.pk, actor=alice)
        services.end_grant(later.grant.pk)
    services.submit_review(later.pk, actor=alice, summary="Nothing.")
    first_due = Review.objects.get(request=ended).due_at

    with time_machine.travel(first_due + SECOND):
        body = api(cora).get("/api/v1/reviews/").json()
        overdue = api(cora).get("/api/v1/reviews/", {"overdue": "true"}).json()
        submitted = api(cora).get("/api/v1/reviews/", {"status": "submitted"}).json()

    assert [(r["request"], r["overdue"]) for r in body] == [
        (ended.pk, True),
        (later.pk, False),
    ]
    assert body[0]["requester"] == "alice"
    assert body[0]["target"] == "bastion"
    assert body[0]["incident"] == "INC-42"
    assert body[0]["reminders"] == 0
    assert [r["request"] for r in overdue] == [ended.pk]
    assert [r["request"] for r in submitted] == [later.pk]


def test_a_requester_lists_only_their_own(api, alice, bob, carol, ended):
    dora = make_user("dora", roles.REQUESTER, groups=["oncall"])

    assert [r["request"] for r in api(alice).get("/api/v1/reviews/").json()] == [
        ended.pk
    ]
    assert api(dora).get("/api/v1/reviews/").json() == []


def test_people_without_reviews_get_403(api, bob, oscar, ended):
    assert_error(api(oscar).get("/api/v1/reviews/"), 403, "not_allowed")
    assert_error(api(bob).get("/api/v1/reviews/"), 403, "not_allowed")


@pytest.mark.parametrize(
    "query",
    [
        {"status": "late"},
        {"overdue": "maybe"},
        {"limit": "0"},
        {"offset": "-1"},
        {"stauts": "due"},
    ],
)
def test_unknown_filter_values_are_400(api, cora, ended, query):
    body = assert_error(api(cora).get("/api/v1/reviews/", query), 400, "invalid")

    assert set(body["fields"]) == set(query)


def test_the_openapi_document_lists_the_review_endpoints(api, alice):
    schema = api(alice).get("/api/v1/schema/", {"format": "json"}).json()

    paths = schema["paths"]
    for path in (
        "/api/v1/requests/{id}/review/",
        "/api/v1/requests/{id}/review/sign-off/",
        "/api/v1/requests/{id}/review/send-back/",
    ):
        assert "post" in paths[path]
    listed = {p["name"] for p in paths["/api/v1/reviews/"]["get"]["parameters"]}
    assert {"status", "overdue"} <= listed
    components = schema["components"]["schemas"]
    assert set(components["Review"]["properties"]) == REVIEW_FIELDS
    assert "review" in components["Request"]["properties"]
    assert "StatusEnum" in components
