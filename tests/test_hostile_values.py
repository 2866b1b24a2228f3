"""Odd values in every free-text field: stored exactly and shown escaped, or refused.

Text that looks like SQL or HTML, right-to-left overrides, emoji, combining marks
and control characters are kept as they were sent and shown escaped on every page,
in the trail, its export and the alert email. A NUL byte, which PostgreSQL cannot
store, and text longer than a field holds are refused with a 400 that names the
field, and nothing is stored.
"""

import csv
import io
import json
from urllib.parse import quote

import pytest
from django.core import mail
from django.utils.html import escape

from breakglass import alerts
from breakglass.models import AccessRequest, Alert, AuditEvent, OnCallShift

from .flows import make_ssh_ca, make_ssh_target
from .web_helpers import login

SCRIPT = "<script>alert(1)</script>"
ODD = (
    "'; DROP TABLE breakglass_accessrequest; -- " + SCRIPT + ' "quoted" & amp'
    " \u202egnp.exe \U0001f525 e\u0301 \u0627\u0644\u0639\u0631\u0628\u064a\u0629"
    " \x07\x1b[31m\ttab"
)
ODD_INCIDENT = "INC-<b>7</b> '; -- \u202e & \U0001f525"


@pytest.fixture
def bastion(db, tmp_path, monkeypatch, settings):
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]
    make_ssh_ca(tmp_path, monkeypatch)
    # No incident pattern, so that the incident can be as odd as the reason.
    return make_ssh_target(approvals=1, incident_pattern="")


def _create(api, user, **fields):
    body = {
        "target": "bastion",
        "scope": "read",
        "duration_minutes": 30,
        "reason": ODD,
        "incident": ODD_INCIDENT,
    }
    body.update(fields)
    return api(user).post("/api/v1/requests/", body, format="json")


def _assert_shown_escaped(page, *texts):
    assert page.status_code == 200
    for text in texts:
        assert escape(text) in page.text
    assert SCRIPT not in page.text
    assert "<b>7</b>" not in page.text


def test_odd_text_is_stored_exactly_and_shown_escaped_everywhere(
    api, bastion, alice, bob, cora
):
    created = _create(api, alice)
    assert created.status_code == 201, created.content
    pk = created.json()["id"]
    voted = api(bob).post(
        f"/api/v1/requests/{pk}/approve/",
        {"otp": _code(bob), "comment": ODD},
        format="json",
    )
    assert voted.status_code == 200, voted.content

    stored = AccessRequest.objects.get(pk=pk)
    assert (stored.reason, stored.incident) == (ODD, ODD_INCIDENT)
    assert stored.approvals.get().comment == ODD
    answer = api(cora).get(f"/api/v1/requests/{pk}/").json()
    assert (answer["reason"], answer["incident"]) == (ODD, ODD_INCIDENT)
    assert answer["approvals"][0]["comment"] == ODD

    reader = login(cora)
    _assert_shown_escaped(login(alice).get(f"/requests/{pk}/"), ODD, ODD_INCIDENT)
    _assert_shown_escaped(reader.get(f"/requests/{pk}/"), ODD, ODD_INCIDENT)
    _assert_shown_escaped(reader.get("/trail/"), ODD_INCIDENT)
    _assert_shown_escaped(
        reader.get("/requests/", {"incident": ODD_INCIDENT}), ODD_INCIDENT
    )
    _assert_shown_escaped(
        reader.get(f"/incidents/{quote(ODD_INCIDENT)}/"), ODD, ODD_INCIDENT
    )
    _assert_shown_escaped(login(alice).get("/"), ODD_INCIDENT)

    events = api(cora).get("/api/v1/audit/", {"incident": ODD_INCIDENT}).json()
    created_event = next(e for e in events if e["action"] == "request.created")
    assert created_event["data"]["reason"] == ODD
    assert created_event["incident"] == ODD_INCIDENT


def test_odd_text_survives_the_trail_export_and_the_alert_email(
    api, bastion, alice, cora
):
    pk = _create(api, alice).json()["id"]

    export = login(cora).get(
        "/trail/export/", {"format": "csv", "incident": ODD_INCIDENT}
    )
    for alert in Alert.objects.filter(channel="email", event__request_id=pk):
        assert alerts.deliver(alert.pk) is True

    assert export.status_code == 200
    rows = list(
        csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode()))
    )
    created = next(r for r in rows if r["action"] == "request.created")
    assert created["incident"] == ODD_INCIDENT
    assert json.loads(created["data"])["reason"] == ODD
    (email,) = [m for m in mail.outbox if "request.created" in m.subject]
    body = json.loads(email.body)
    assert (body["incident"], body["data"]["reason"]) == (ODD_INCIDENT, ODD)
    assert not email.alternatives


def test_odd_text_in_reviews_ends_and_the_roster_is_shown_escaped(
    api, bastion, alice, bob, ada
):
    pk = _create(api, alice).json()["id"]
    api(bob).post(f"/api/v1/requests/{pk}/approve/", {"otp": _code(bob)}, format="json")
    _issue(pk)

    ended = api(alice).post(
        f"/api/v1/requests/{pk}/revoke/", {"reason": ODD}, format="json"
    )
    _end(pk)
    reviewed = api(alice).post(
        f"/api/v1/requests/{pk}/review/", {"summary": ODD}, format="json"
    )
    shift = api(ada).post(
        "/api/v1/oncall/",
        {
            "user": "alice",
            "starts_at": "2030-01-01T00:00:00Z",
            "ends_at": "2030-01-02T00:00:00Z",
            "note": ODD,
        },
        format="json",
    )

    assert ended.status_code == 200, ended.content
    assert reviewed.status_code == 200, reviewed.content
    assert reviewed.json()["review"]["summary"] == ODD
    assert shift.status_code == 201, shift.content
    assert OnCallShift.objects.get().note == ODD
    end_event = AuditEvent.objects.get(action="grant.revoked")
    assert end_event.data["reason"] == ODD
    _assert_shown_escaped(login(alice).get(f"/requests/{pk}/"), ODD)
    _assert_shown_escaped(login(ada).get("/reviews/"), ODD_INCIDENT)
    _assert_shown_escaped(login(ada).get("/oncall/"), ODD)


# Refused: NUL bytes and text longer than the field


NUL = "before\x00after"


@pytest.mark.parametrize(
    "field, value",
    [
        ("target", NUL),
        ("scope", NUL),
        ("reason", NUL),
        ("incident", NUL),
        ("public_key", NUL),
        ("reason", "x" * 4001),
        ("incident", "x" * 201),
    ],
    ids=lambda v: v if len(v) < 20 else f"{len(v)} characters",
)
def test_a_request_with_a_nul_or_too_long_field_is_refused(
    api, bastion, alice, field, value
):
    response = _create(api, alice, **{field: value})

    assert response.status_code == 400
    assert list(response.json()["fields"]) == [field]
    assert not AccessRequest.objects.exists()


@pytest.mark.parametrize(
    "action, body, field",
    [
        ("approve", {"otp": "123456", "comment": NUL}, "comment"),
        ("approve", {"otp": NUL}, "otp"),
        ("approve", {"otp": "123456", "device": NUL}, "device"),
        ("deny", {"otp": "123456", "comment": "x" * 2001}, "comment"),
        ("revoke", {"reason": NUL}, "reason"),
        ("review", {"summary": NUL}, "summary"),
        ("review/send-back", {"comment": NUL}, "comment"),
        ("review/sign-off", {"comment": NUL}, "comment"),
    ],
)
def test_a_decision_with_a_nul_or_too_long_field_is_refused(
    api, bastion, alice, bob, ada, action, body, field
):
    pk = _create(api, alice).json()["id"]
    caller = {"approve": bob, "deny": bob}.get(action, alice)
    if action.startswith("review/"):
        caller = ada
    before = AuditEvent.objects.count()

    response = api(caller).post(f"/api/v1/requests/{pk}/{action}/", body, format="json")

    assert response.status_code == 400, response.content
    assert list(response.json()["fields"]) == [field]
    assert AuditEvent.objects.count() == before


@pytest.mark.parametrize("value", [NUL, "x" * 1001], ids=["nul", "too-long"])
@pytest.mark.parametrize(
    "path, field",
    [
        ("/api/v1/requests/", "requester"),
        ("/api/v1/requests/", "approver"),
        ("/api/v1/requests/", "target"),
        ("/api/v1/requests/", "incident"),
        ("/api/v1/audit/", "incident"),
        ("/api/v1/audit/export/", "incident"),
        ("/api/v1/oncall/", "user"),
    ],
)
def test_a_filter_with_a_nul_or_too_long_is_refused(
    api, bastion, ada, path, field, value
):
    response = api(ada).get(path, {field: value})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert list(response.json()["fields"]) == [field]


def test_a_shift_note_with_a_nul_is_refused(api, bastion, alice, ada):
    response = api(ada).post(
        "/api/v1/oncall/",
        {
            "user": "alice",
            "starts_at": "2030-01-01T00:00:00Z",
            "ends_at": "2030-01-02T00:00:00Z",
            "note": NUL,
        },
        format="json",
    )

    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["note"]
    assert not OnCallShift.objects.exists()


@pytest.mark.parametrize(
    "path, data, field",
    [
        ("/requests/new/", {"reason": NUL}, "reason"),
        ("/requests/new/", {"incident": NUL}, "incident"),
        ("/requests/new/", {"reason": "x" * 2001}, "reason"),
        ("/requests/new/", {"public_key": NUL}, "public_key"),
    ],
)
def test_a_web_form_with_a_nul_or_too_long_field_shows_it_beside_the_field(
    bastion, alice, path, data, field
):
    form = {
        "target": "bastion",
        "scope": "bastion:read",
        "duration_minutes": "30",
        "reason": "disk full",
        "incident": "INC-1",
        **data,
    }

    page = login(alice).post(path, form)

    assert page.status_code == 400
    assert list(page.context["form"].errors) == [field]
    assert not AccessRequest.objects.exists()


@pytest.mark.parametrize(
    "path, field",
    [("/trail/", "incident"), ("/requests/", "requester"), ("/requests/", "incident")],
)
def test_a_web_filter_with_a_nul_is_a_400(bastion, cora, path, field):
    page = login(cora).get(path, {field: NUL})

    assert page.status_code == 400
    assert field in page.context["form"].errors


def test_an_incident_address_with_a_nul_is_not_found(bastion, cora):
    assert login(cora).get("/incidents/INC-1%00/").status_code == 404


@pytest.mark.parametrize(
    "username", ["x" * 100_000, NUL, "\u202eadmin", "' OR 1=1; --"], ids=repr
)
def test_odd_usernames_on_the_login_page_are_refused_without_error(db, username):
    from django.test import Client

    page = Client().post("/login/", {"username": username, "password": "x"})

    assert page.status_code == 200
    assert "Please enter a correct username and password" in page.text or (
        page.context["form"].errors
    )


@pytest.mark.parametrize(
    "header", ["Token abc\x00def", "Token " + "z" * 5000, "Token ab-cd"], ids=repr
)
def test_a_malformed_api_token_is_a_401(bastion, header):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/api/v1/requests/")

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def _code(user):
    from .conftest import otp_code

    return otp_code(user)


def _issue(pk):
    from breakglass import services

    services.issue_grant(AccessRequest.objects.get(pk=pk).grant.pk)


def _end(pk):
    from breakglass import services

    services.end_grant(AccessRequest.objects.get(pk=pk).grant.pk)


@pytest.mark.parametrize(
    "state, who, action, data, form, field",
    [
        (
            "pending",
            "bob",
            "approve",
            {"otp": "123456", "comment": NUL},
            "vote_form",
            "comment",
        ),
        ("pending", "bob", "deny", {"otp": NUL}, "vote_form", "otp"),
        ("active", "alice", "end", {"reason": NUL}, "end_form", "reason"),
        ("active", "alice", "end", {"reason": "x" * 2001}, "end_form", "reason"),
        ("ended", "alice", "review", {"summary": NUL}, "review_form", "summary"),
        (
            "submitted",
            "cora",
            "review/sign-off",
            {"comment": NUL},
            "sign_off_form",
            "comment",
        ),
        (
            "submitted",
            "cora",
            "review/send-back",
            {"comment": NUL},
            "send_back_form",
            "comment",
        ),
    ],
)
def test_a_web_decision_with_a_nul_or_too_long_field_shows_it_beside_the_field(
    api, bastion, alice, bob, cora, state, who, action, data, form, field
):
    pk = _create(api, alice, incident="INC-1").json()["id"]
    if state != "pending":
        api(bob).post(
            f"/api/v1/requests/{pk}/approve/", {"otp": _code(bob)}, format="json"
        )
        _issue(pk)
    if state in ("ended", "submitted"):
        api(alice).post(f"/api/v1/requests/{pk}/revoke/", {}, format="json")
        _end(pk)
    if state == "submitted":
        api(alice).post(
            f"/api/v1/requests/{pk}/review/", {"summary": "Done."}, format="json"
        )
    user = {"alice": alice, "bob": bob, "cora": cora}[who]
    before = AuditEvent.objects.count()

    page = login(user).post(f"/requests/{pk}/{action}/", data)

    assert page.status_code == 400
    assert list(page.context[form].errors) == [field]
    assert AuditEvent.objects.count() == before
