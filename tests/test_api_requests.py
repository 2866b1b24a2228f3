"""REST API: requests, cancel, revoke and credential (CONTRACT.md, section 4)."""

import subprocess
from datetime import timedelta

import pytest
import time_machine
from django.http import HttpRequest
from rest_framework.test import APIClient

from breakglass import services
from breakglass.models import AccessRequest, AuditEvent, Grant

from .conftest import make_target
from .flows import (
    actions,
    issued_request,
    last_event,
    make_ssh_ca,
    make_ssh_target,
    open_request,
)

Status = AccessRequest.Status

REQUEST_FIELDS = {
    "id",
    "status",
    "target",
    "scope",
    "environment",
    "requester",
    "reason",
    "incident",
    "duration_minutes",
    "approvals_required",
    "approvals",
    "created_at",
    "approval_deadline",
    "issued_at",
    "expires_at",
    "ended_at",
}
VALID = {
    "target": "bastion",
    "scope": "read",
    "duration_minutes": 30,
    "reason": "disk full on the primary",
    "incident": "INC-42",
}


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def pending(alice, bob, carol, bastion):
    return open_request(alice)


@pytest.fixture
def active(alice, bob, carol, bastion):
    return issued_request(alice, bob, carol)


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) <= {"code", "detail", "fields"}
    assert body["code"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def _snapshot():
    return (
        list(AccessRequest.objects.values_list("pk", "status")),
        AuditEvent.objects.count(),
    )


def _url(access_request, action=""):
    pk = access_request if isinstance(access_request, int) else access_request.pk
    return f"/api/v1/requests/{pk}/" + (f"{action}/" if action else "")


# Authentication


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/v1/requests/"),
        ("post", "/api/v1/requests/"),
        ("get", "/api/v1/requests/1/"),
        ("post", "/api/v1/requests/1/approve/"),
        ("post", "/api/v1/requests/1/deny/"),
        ("post", "/api/v1/requests/1/cancel/"),
        ("post", "/api/v1/requests/1/revoke/"),
        ("post", "/api/v1/requests/1/credential/"),
        ("get", "/api/v1/audit/"),
        ("get", "/api/v1/audit/verify/"),
    ],
)
def test_every_endpoint_needs_authentication(db, method, path):
    response = getattr(APIClient(), method)(path, {}, format="json")
    assert_error(response, 401, "not_authenticated")

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = getattr(client, method)(path, {}, format="json")
    assert_error(response, 401, "not_authenticated")


def test_session_authentication_enforces_csrf(alice, bastion):
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(request=HttpRequest(), username="alice", password="pw-alice")

    assert client.get("/api/v1/requests/").status_code == 200
    response = client.post("/api/v1/requests/", VALID, format="json")

    assert_error(response, 403, "not_allowed")
    assert AccessRequest.objects.count() == 0


# Creating


def test_create_request(api, alice, bob, carol, bastion):
    response = api(alice).post("/api/v1/requests/", VALID, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert REQUEST_FIELDS <= set(body)
    assert body["status"] == "pending"
    assert (body["target"], body["scope"], body["environment"]) == (
        "bastion",
        "read",
        "production",
    )
    assert body["requester"] == "alice"
    assert body["incident"] == "INC-42"
    assert body["duration_minutes"] == 30
    assert body["approvals_required"] == 2
    assert body["approvals"] == []
    assert body["issued_at"] is None and body["expires_at"] is None
    assert "sre-leads" in body["policy_rule"]
    access_request = AccessRequest.objects.get(pk=body["id"])
    assert actions(access_request) == ["request.created"]
    assert last_event("request.created").actor == "alice"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"target": "nowhere"}, "target"),
        ({"scope": "admin"}, "scope"),
        ({"duration_minutes": 61}, "duration_minutes"),
        ({"duration_minutes": "thirty"}, "duration_minutes"),
        ({"duration_minutes": 1.5}, "duration_minutes"),
        ({"duration_minutes": 10**30}, "duration_minutes"),
        ({"duration_minutes": None}, "duration_minutes"),
        ({"duration_minutes": True}, "duration_minutes"),
        ({"incident": "outage-7"}, "incident"),
        ({"incident": "INC-" + "1" * 300}, "incident"),
        ({"reason": "x" * 5000}, "reason"),
        ({"reason": ""}, "reason"),
        ({"reason": "nul \x00 byte"}, "reason"),
        ({"target": "b" * 500}, "target"),
        ({"public_key": "ssh-rsa not-base64"}, "public_key"),
        ({"scope": None}, "scope"),
    ],
)
def test_bad_input_gets_400_with_fields_and_changes_nothing(
    api, alice, bastion, change, field
):
    before = _snapshot()

    response = api(alice).post("/api/v1/requests/", {**VALID, **change}, format="json")

    body = assert_error(response, 400, "invalid")
    assert field in body["fields"]
    assert _snapshot() == before


@pytest.mark.parametrize("missing", sorted(VALID))
def test_missing_field_is_named(api, alice, bastion, missing):
    data = {k: v for k, v in VALID.items() if k != missing}

    response = api(alice).post("/api/v1/requests/", data, format="json")

    assert missing in assert_error(response, 400, "invalid")["fields"]
    assert AccessRequest.objects.count() == 0


@pytest.mark.parametrize(
    "body", ["{not json", '["a", "list"]', '"text"', "", "\xff\xfe"]
)
def test_malformed_body_gets_400(api, alice, bastion, body):
    response = api(alice).post(
        "/api/v1/requests/", body, content_type="application/json"
    )

    assert_error(response, 400, "invalid")
    assert AccessRequest.objects.count() == 0


def test_unsupported_media_type_gets_415(api, alice, bastion):
    response = api(alice).post(
        "/api/v1/requests/", "<xml/>", content_type="application/xml"
    )

    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("who", ["oscar", "bob", "cora"])
def test_only_requesters_may_create(api, request, bastion, who):
    response = api(request.getfixturevalue(who)).post(
        "/api/v1/requests/", VALID, format="json"
    )

    assert_error(response, 403, "not_eligible")
    assert AccessRequest.objects.count() == 0


# Reading


def test_detail_visibility(api, pending, alice, bob, carol, dave, oscar, cora, ada):
    for user in (alice, bob, carol, cora, ada):
        response = api(user).get(_url(pending))
        assert response.status_code == 200, user
        assert response.json()["id"] == pending.pk

    for user in (dave, oscar):
        assert_error(api(user).get(_url(pending)), 404, "not_found")


def test_unknown_or_huge_id_is_404(api, alice, bastion):
    assert_error(api(alice).get(_url(987654)), 404, "not_found")
    assert_error(api(alice).get(_url(10**25)), 404, "not_found")


def test_list_shows_what_each_person_may_see(
    api, alice, bob, dave, oscar, cora, bastion, pending
):
    def ids(user):
        response = api(user).get("/api/v1/requests/")
        assert response.status_code == 200
        return [item["id"] for item in response.json()]

    assert ids(alice) == [pending.pk]
    assert ids(bob) == [pending.pk]
    assert ids(cora) == [pending.pk]
    assert ids(dave) == []
    assert ids(oscar) == []


def test_list_filters(api, alice, bob, carol, cora, bastion):
    first = open_request(alice, incident="INC-1")
    second = open_request(alice, incident="INC-2")
    services.cancel_request(second.pk, actor=alice)
    client = api(cora)

    def ids(query):
        response = client.get("/api/v1/requests/", query)
        assert response.status_code == 200, response.content
        return [item["id"] for item in response.json()]

    assert ids({}) == [second.pk, first.pk]
    assert ids({"status": "pending"}) == [first.pk]
    assert ids({"status": "cancelled"}) == [second.pk]
    assert ids({"status": "active"}) == []
    assert ids({"incident": "INC-2"}) == [second.pk]
    assert ids({"target": "bastion", "incident": "INC-1"}) == [first.pk]
    assert ids({"target": "elsewhere"}) == []


@pytest.mark.parametrize(
    "query, field",
    [
        ({"status": "sleeping"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": str(10**30)}, "offset"),
    ],
)
def test_list_rejects_bad_filters(api, cora, bastion, query, field):
    response = api(cora).get("/api/v1/requests/", query)

    assert field in assert_error(response, 400, "invalid")["fields"]


def test_approvals_are_listed_on_the_request(api, alice, bob, carol, active):
    body = api(alice).get(_url(active)).json()

    assert body["status"] == "active"
    assert [(a["approver"], a["decision"]) for a in body["approvals"]] == [
        ("bob", "approved"),
        ("carol", "approved"),
    ]
    assert set(body["approvals"][0]) >= {"approver", "decision", "comment", "at"}
    assert body["issued_at"] and body["expires_at"]
    assert body["ended_at"] is None


# Cancelling


def test_cancel_by_the_requester(api, alice, pending):
    response = api(alice).post(_url(pending, "cancel"))

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert last_event("request.cancelled").actor == "alice"


def test_cancel_by_others_is_refused(api, pending, bob, ada, oscar, dave):
    before = _snapshot()

    assert_error(api(bob).post(_url(pending, "cancel")), 403, "not_allowed")
    assert_error(api(ada).post(_url(pending, "cancel")), 403, "not_allowed")
    assert_error(api(oscar).post(_url(pending, "cancel")), 404, "not_found")
    assert_error(api(dave).post(_url(pending, "cancel")), 404, "not_found")
    assert _snapshot() == before


def test_cancel_after_a_decision_is_409(api, alice, active):
    before = _snapshot()

    assert_error(api(alice).post(_url(active, "cancel")), 409, "already_decided")
    assert _snapshot() == before


# Revoking


@pytest.mark.parametrize("who", ["alice", "bob", "ada"])
def test_revoke_ends_the_grant(
    api, request, active, who, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = api(request.getfixturevalue(who)).post(
            _url(active, "revoke"), {"reason": "incident over"}, format="json"
        )

    assert response.status_code == 200, response.content
    assert response.json()["end_requested_at"] is not None
    assert len(queued) == 1

    services.end_grant(active.grant.pk)

    body = api(request.getfixturevalue(who)).get(_url(active)).json()
    assert body["status"] == "revoked"
    assert body["ended_at"] is not None
    event = last_event("grant.revoked")
    assert (event.actor, event.data["reason"]) == (who, "incident over")


def test_revoke_refused_to_others(api, active, oscar, dave, cora):
    before = _snapshot()

    assert_error(api(oscar).post(_url(active, "revoke")), 404, "not_found")
    assert_error(api(dave).post(_url(active, "revoke")), 404, "not_found")
    assert_error(api(cora).post(_url(active, "revoke")), 403, "not_allowed")
    assert _snapshot() == before
    assert Grant.objects.get(pk=active.grant.pk).end_requested_at is None


def test_revoke_of_a_pending_request_is_409(api, alice, pending):
    assert_error(api(alice).post(_url(pending, "revoke")), 409, "not_active")


def test_revoke_with_a_too_long_reason_is_400(api, alice, active):
    response = api(alice).post(
        _url(active, "revoke"), {"reason": "r" * 3000}, format="json"
    )

    assert "reason" in assert_error(response, 400, "invalid")["fields"]
    assert Grant.objects.get(pk=active.grant.pk).end_requested_at is None


# Revealing


def test_credential_once_then_410(api, alice, active):
    client = api(alice)

    response = client.post(_url(active, "credential"))

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    credential = response.json()
    assert credential["kind"] == "ssh"
    assert credential["username"] == "root"
    assert credential["certificate"].startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert "OPENSSH PRIVATE KEY" in credential["private_key"]
    assert credential["expires_at"]
    event = last_event("credential.revealed")
    assert event.actor == "alice"
    assert credential["private_key"] not in str(event.data)

    assert_error(
        client.post(_url(active, "credential")), 410, "credential_already_revealed"
    )
    assert AuditEvent.objects.filter(action="credential.revealed").count() == 1


def test_credential_refused_to_others(api, active, bob, ada, oscar):
    assert_error(api(bob).post(_url(active, "credential")), 403, "not_allowed")
    assert_error(api(ada).post(_url(active, "credential")), 403, "not_allowed")
    assert_error(api(oscar).post(_url(active, "credential")), 404, "not_found")
    assert Grant.objects.get(pk=active.grant.pk).sealed_credential is not None


def test_credential_of_a_pending_request_is_409(api, alice, pending):
    assert_error(api(alice).post(_url(pending, "credential")), 409, "not_active")


def test_credential_after_expiry_is_refused(api, alice, active):
    with time_machine.travel(active.grant.expires_at + timedelta(seconds=1)):
        services.sweep()
        response = api(alice).post(_url(active, "credential"))

    assert_error(response, 409, "not_active")
    assert Grant.objects.get(pk=active.grant.pk).sealed_credential is None


def test_wrong_method_is_405(api, alice, pending):
    assert_error(api(alice).get(_url(pending, "cancel")), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "path", ["/api/v1/requests/abc/", "/api/v1/nothing/", "/api/v1/requests/1/x/"]
)
def test_unknown_api_address_is_404_in_the_error_shape(api, alice, path):
    assert_error(api(alice).get(path), 404, "not_found")
    assert_error(api(alice).post(path, {}, format="json"), 404, "not_found")
    assert_error(APIClient().get(path), 401, "not_authenticated")


def test_missing_slash_is_redirected(api, alice, pending):
    response = api(alice).get(f"/api/v1/requests/{pending.pk}")

    assert response.status_code == 301
    assert response["Location"].endswith(f"/api/v1/requests/{pending.pk}/")


def test_deactivated_user_token_is_refused(api, alice, pending):
    client = api(alice)
    alice.is_active = False
    alice.save()

    assert_error(client.get("/api/v1/requests/"), 401, "not_authenticated")


def test_a_body_nested_too_deeply_is_400_not_500(api, alice):
    body = '{"a":' * 5000 + "1" + "}" * 5000

    response = api(alice).post(
        "/api/v1/requests/", body, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


def test_a_token_header_that_is_not_utf8_is_refused_not_500(client, alice):
    response = client.get(
        "/api/v1/requests/", HTTP_AUTHORIZATION=b"Token \xe9".decode("latin-1")
    )

    assert response.status_code in (400, 401)
    assert response.json()["code"] in ("invalid", "not_authenticated")


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("rsa1024", "at least 2048 bits"),
        ("dsa", "Use an Ed25519, ECDSA or RSA key."),
        ("two_lines", "Paste one line"),
        ("certificate", "not a certificate"),
    ],
)
def test_an_unusable_ssh_public_key_is_refused(
    api, alice, tmp_path, kind, problem, monkeypatch
):
    ca = tmp_path / "ca"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", ca], check=True
    )
    monkeypatch.setenv("KEYCHECK_CA", str(ca))
    make_target("keycheck", "ssh", grants=["root"], ca_env="KEYCHECK_CA")
    key = tmp_path / "user"
    if kind == "rsa1024":
        args = ["-t", "rsa", "-b", "1024"]
    elif kind == "dsa":
        # Accepted at request time, a DSA key could never be certified.
        args = ["-t", "dsa"]
    else:
        args = ["-t", "ed25519"]
    subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-f", key], check=True)
    public = (tmp_path / "user.pub").read_text()
    if kind == "two_lines":
        public = public + public
    if kind == "certificate":
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-s",
                ca,
                "-I",
                "x",
                "-n",
                "root",
                key.with_suffix(".pub"),
            ],
            check=True,
        )
        public = (tmp_path / "user-cert.pub").read_text()

    response = api(alice).post(
        "/api/v1/requests/",
        {
            "target": "keycheck",
            "scope": "read",
            "duration_minutes": 5,
            "reason": "disk full",
            "incident": "INC-7",
            "public_key": public,
        },
        format="json",
    )

    assert response.status_code == 400
    (message,) = response.json()["fields"]["public_key"]
    assert problem in message
    assert not AccessRequest.objects.exists()
