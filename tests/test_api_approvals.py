"""REST API: approve and deny with a one-time code (CONTRACT.md, section 4)."""

from datetime import timedelta

import pytest
import time_machine

from breakglass.models import AccessRequest, Alert, AuditEvent, Grant

from .conftest import make_user, otp_code
from .flows import actions, last_event, make_ssh_ca, make_ssh_target, open_request

Status = AccessRequest.Status


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def pending(alice, bob, carol, bastion):
    return open_request(alice)


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) <= {"code", "detail", "fields"}
    assert body["code"] == code
    assert body["detail"]
    return body


def _url(access_request, action):
    return f"/api/v1/requests/{access_request.pk}/{action}/"


def _state(access_request):
    access_request.refresh_from_db()
    return (
        access_request.status,
        access_request.approvals.count(),
        AuditEvent.objects.count(),
    )


def test_two_approvals_approve_the_request(
    api, pending, bob, carol, django_capture_on_commit_callbacks
):
    response = api(bob).post(
        _url(pending, "approve"),
        {"otp": otp_code(bob), "comment": "go"},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "pending"
    assert [(a["approver"], a["comment"]) for a in body["approvals"]] == [("bob", "go")]

    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = api(carol).post(
            _url(pending, "approve"), {"otp": otp_code(carol)}, format="json"
        )

    assert response.status_code == 200
    assert response.json()["status"] == "approved"
    # Issuance, and the alert telling the requester and approvers.
    assert len(queued) == 2
    assert Alert.objects.filter(event__action="request.approved").count() == 1
    assert Grant.objects.filter(request=pending).exists()
    assert actions(pending) == [
        "request.created",
        "approval.approved",
        "approval.approved",
        "request.approved",
    ]
    assert last_event("request.approved").actor == "carol"


def test_deny(api, pending, bob):
    response = api(bob).post(
        _url(pending, "deny"), {"otp": otp_code(bob), "comment": "no"}, format="json"
    )

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "denied"
    assert body["approvals"][0]["decision"] == "denied"
    assert actions(pending)[-2:] == ["approval.denied", "request.denied"]
    assert not Grant.objects.exists()


@pytest.mark.parametrize("action", ["approve", "deny"])
def test_wrong_otp_is_403_and_leaves_only_an_otp_failed_event(
    api, pending, bob, action, settings
):
    settings.BREAKGLASS_ALERT_WEBHOOK_URLS = ["http://127.0.0.1:9/hook"]
    settings.BREAKGLASS_ALERT_WEBHOOK_SECRET = "s"
    before = _state(pending)
    wrong = f"{(int(otp_code(bob)) + 1) % 1_000_000:06d}"

    response = api(bob).post(_url(pending, action), {"otp": wrong}, format="json")

    assert_error(response, 403, "otp_invalid")
    assert _state(pending) == (before[0], before[1], before[2] + 1)
    event = last_event("otp.failed")
    assert (event.actor, event.request_id) == ("bob", pending.pk)
    assert wrong not in str(event.data)
    alert = Alert.objects.get(event=event)
    assert (alert.channel, alert.destination) == ("webhook", "http://127.0.0.1:9/hook")


def test_reused_otp_is_refused_on_a_second_request(api, alice, bob, bastion):
    first = open_request(alice, incident="INC-1")
    second = open_request(alice, incident="INC-2")
    client = api(bob)

    with time_machine.travel(first.created_at + timedelta(seconds=1), tick=False):
        code = otp_code(bob)
        ok = client.post(_url(first, "approve"), {"otp": code}, format="json")
        before = _state(second)
        reused = client.post(_url(second, "approve"), {"otp": code}, format="json")

    assert ok.status_code == 200
    assert_error(reused, 403, "otp_invalid")
    assert _state(second) == (before[0], before[1], before[2] + 1)
    assert actions(second) == ["request.created", "otp.failed"]


def test_throttled_after_a_wrong_code(api, pending, bob):
    client = api(bob)
    wrong = f"{(int(otp_code(bob)) + 1) % 1_000_000:06d}"
    client.post(_url(pending, "approve"), {"otp": wrong}, format="json")
    before = _state(pending)

    response = client.post(
        _url(pending, "approve"), {"otp": otp_code(bob)}, format="json"
    )

    assert_error(response, 429, "otp_throttled")
    assert int(response["Retry-After"]) >= 1
    status, approvals, events = before
    # Nothing changes but the trail, which records the attempt.
    assert _state(pending) == (status, approvals, events + 1)
    last = AuditEvent.objects.order_by("-seq").first()
    assert (last.action, last.actor, last.data["throttled"]) == (
        "otp.failed",
        "bob",
        True,
    )


def test_self_approval_is_403(api, pending, alice):
    before = _state(pending)

    response = api(alice).post(
        _url(pending, "approve"), {"otp": "123456"}, format="json"
    )

    assert_error(response, 403, "self_approval")
    assert _state(pending) == before


def test_self_approval_is_403_for_a_requester_in_the_approver_group(api, bob, bastion):
    pat = make_user(
        "pat", "requester", "approver", groups=["oncall", "sre-leads"], totp=True
    )
    access_request = open_request(pat)
    before = _state(access_request)

    response = api(pat).post(
        _url(access_request, "approve"), {"otp": otp_code(pat)}, format="json"
    )

    assert_error(response, 403, "self_approval")
    assert _state(access_request) == before


@pytest.mark.parametrize("action", ["approve", "deny"])
def test_approver_of_another_group_cannot_vote(api, pending, dave, action):
    before = _state(pending)

    response = api(dave).post(
        _url(pending, action), {"otp": otp_code(dave)}, format="json"
    )

    assert_error(response, 404, "not_found")
    assert _state(pending) == before


def test_compliance_can_see_but_not_vote(api, pending, cora):
    response = api(cora).post(
        _url(pending, "approve"), {"otp": "123456"}, format="json"
    )

    assert_error(response, 403, "not_eligible")
    assert pending.approvals.count() == 0


def test_outsider_gets_404(api, pending, oscar):
    response = api(oscar).post(
        _url(pending, "approve"), {"otp": "123456"}, format="json"
    )

    assert_error(response, 404, "not_found")


def test_second_vote_is_409(api, pending, bob):
    client = api(bob)
    client.post(_url(pending, "approve"), {"otp": otp_code(bob)}, format="json")
    before = _state(pending)

    with time_machine.travel(timedelta(seconds=31)):
        response = client.post(
            _url(pending, "deny"), {"otp": otp_code(bob)}, format="json"
        )

    assert_error(response, 409, "already_voted")
    assert _state(pending) == before


def test_vote_on_a_decided_request_is_409(api, pending, bob, carol):
    api(bob).post(_url(pending, "deny"), {"otp": otp_code(bob)}, format="json")
    before = _state(pending)

    response = api(carol).post(
        _url(pending, "approve"), {"otp": otp_code(carol)}, format="json"
    )

    assert_error(response, 409, "already_decided")
    assert _state(pending) == before


def test_vote_after_the_deadline_times_the_request_out(api, pending, bob):
    with time_machine.travel(pending.approval_deadline + timedelta(seconds=1)):
        response = api(bob).post(
            _url(pending, "approve"), {"otp": otp_code(bob)}, format="json"
        )

    assert_error(response, 409, "timed_out")
    pending.refresh_from_db()
    assert pending.status == Status.TIMED_OUT
    assert pending.approvals.count() == 0
    assert actions(pending) == ["request.created", "request.timed_out"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "otp"),
        ({"otp": ""}, "otp"),
        ({"otp": "1" * 50}, "otp"),
        ({"otp": ["123456"]}, "otp"),
        ({"otp": "123456", "comment": "c" * 3000}, "comment"),
    ],
)
def test_bad_vote_body_is_400(api, pending, bob, body, field):
    before = _state(pending)

    response = api(bob).post(_url(pending, "approve"), body, format="json")

    assert field in assert_error(response, 400, "invalid")["fields"]
    assert _state(pending) == before


def test_malformed_json_vote_is_400(api, pending, bob):
    before = _state(pending)

    response = api(bob).post(
        _url(pending, "approve"), '{"otp": ', content_type="application/json"
    )

    assert_error(response, 400, "invalid")
    assert _state(pending) == before
