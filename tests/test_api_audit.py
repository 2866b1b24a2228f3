"""REST API: the trail, its verification and the OpenAPI document."""

import json
from datetime import timedelta

import pytest
import time_machine

from breakglass import services
from breakglass.models import AuditEvent

from .flows import issued_request, make_ssh_ca, make_ssh_target, open_request
from .tampering import tamper

EVENT_FIELDS = {
    "seq",
    "at",
    "actor",
    "action",
    "request",
    "incident",
    "data",
    "prev_hash",
    "hash",
}


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) <= {"code", "detail", "fields"}
    assert body["code"] == code
    return body


def _trail(client, query=None):
    response = client.get("/api/v1/audit/", query or {})
    assert response.status_code == 200, response.content
    return response.json()


def test_trail_is_for_compliance_and_admins(api, alice, bob, oscar, cora, ada, bastion):
    open_request(alice)

    for user in (cora, ada):
        assert [e["action"] for e in _trail(api(user))] == ["request.created"]
    for user in (alice, bob, oscar):
        assert_error(api(user).get("/api/v1/audit/"), 403, "not_allowed")
        assert_error(api(user).get("/api/v1/audit/verify/"), 403, "not_allowed")


def test_the_whole_flow_is_in_the_trail_without_secrets(
    api, alice, bob, carol, cora, bastion
):
    access_request = issued_request(alice, bob, carol)
    credential = (
        api(alice).post(f"/api/v1/requests/{access_request.pk}/credential/").json()
    )
    api(alice).post(f"/api/v1/requests/{access_request.pk}/revoke/", {}, format="json")
    services.end_grant(access_request.grant.pk)

    events = _trail(api(cora), {"request": access_request.pk})

    assert [e["action"] for e in events] == [
        "request.created",
        "approval.approved",
        "approval.approved",
        "request.approved",
        "grant.issued",
        "credential.revealed",
        "grant.revoked",
        "review.due",
    ]
    assert [e["actor"] for e in events] == [
        "alice",
        "bob",
        "carol",
        "carol",
        "system",
        "alice",
        "alice",
        "system",
    ]
    first = events[0]
    assert EVENT_FIELDS <= set(first)
    assert first["request"] == access_request.pk
    assert first["incident"] == "INC-42"
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for before, after in zip(events, events[1:], strict=False):
        assert after["prev_hash"] == before["hash"]
    everything = json.dumps(events)
    for secret in (credential["private_key"], credential["certificate"]):
        assert secret.strip() not in everything


def test_trail_filters(api, alice, bob, carol, cora, bastion):
    start = open_request(alice, incident="INC-1").created_at
    with time_machine.travel(start + timedelta(minutes=10)):
        second = open_request(alice, incident="INC-2")
    with time_machine.travel(start + timedelta(minutes=20)):
        services.cancel_request(second.pk, actor=alice)
    client = api(cora)

    def actions(query):
        return [(e["action"], e["incident"]) for e in _trail(client, query)]

    assert actions({"incident": "INC-2"}) == [
        ("request.created", "INC-2"),
        ("request.cancelled", "INC-2"),
    ]
    assert actions({"request": second.pk}) == actions({"incident": "INC-2"})
    assert actions({"incident": "INC-404"}) == []
    assert actions({"since": (start + timedelta(minutes=5)).isoformat()}) == [
        ("request.created", "INC-2"),
        ("request.cancelled", "INC-2"),
    ]
    assert actions({"until": (start + timedelta(minutes=5)).isoformat()}) == [
        ("request.created", "INC-1"),
    ]
    assert actions(
        {
            "since": (start + timedelta(minutes=5)).isoformat(),
            "until": (start + timedelta(minutes=15)).isoformat(),
        }
    ) == [("request.created", "INC-2")]


@pytest.mark.parametrize(
    "query, field",
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"request": "abc"}, "request"),
        ({"request": "0"}, "request"),
        ({"request": str(10**30)}, "request"),
        ({"after_seq": str(10**30)}, "after_seq"),
        ({"limit": "0"}, "limit"),
        ({"incident": "I" * 300}, "incident"),
        # A misspelt filter would otherwise answer with the whole trail.
        ({"incidnet": "INC-1"}, "incidnet"),
        # An empty answer would read as "nothing happened then".
        ({"since": "2026-12-05T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, "until"),
    ],
)
def test_trail_rejects_bad_filters(api, cora, bastion, query, field):
    response = api(cora).get("/api/v1/audit/", query)

    assert field in assert_error(response, 400, "invalid")["fields"]


def test_verify_reports_an_intact_trail(api, alice, bob, carol, cora, ada, bastion):
    issued_request(alice, bob, carol)

    for user in (cora, ada):
        response = api(user).get("/api/v1/audit/verify/")
        assert response.status_code == 200
        assert response.json() == {
            "ok": True,
            "checked": AuditEvent.objects.count(),
            "first_bad": None,
        }


def test_verify_names_the_first_tampered_event(api, alice, bob, carol, cora, bastion):
    issued_request(alice, bob, carol)
    tampered = AuditEvent.objects.get(action="request.approved")
    tamper(
        "UPDATE breakglass_auditevent SET actor = %s WHERE id = %s",
        ["mallory", tampered.pk],
    )

    response = api(cora).get("/api/v1/audit/verify/")

    assert response.status_code == 200
    assert response.json() == {
        "ok": False,
        "checked": tampered.seq,
        "first_bad": tampered.seq,
    }


def test_openapi_document_names_the_endpoints(api, alice):
    response = api(alice).get("/api/v1/schema/", {"format": "json"})

    assert response.status_code == 200
    document = json.loads(response.content)
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path in (
        "/api/v1/requests/",
        "/api/v1/requests/{id}/",
        "/api/v1/requests/{id}/approve/",
        "/api/v1/requests/{id}/deny/",
        "/api/v1/requests/{id}/cancel/",
        "/api/v1/requests/{id}/revoke/",
        "/api/v1/requests/{id}/credential/",
        "/api/v1/audit/",
        "/api/v1/audit/verify/",
    ):
        assert path in paths, sorted(paths)
    assert "post" in paths["/api/v1/requests/"]
    assert not [p for p in paths if "{path}" in p]
    assert "get" in paths["/api/v1/requests/"]


def test_openapi_document_is_served_without_a_token(client, db):
    response = client.get("/api/v1/schema/")

    assert response.status_code == 200
    assert b"/api/v1/requests/" in response.content
