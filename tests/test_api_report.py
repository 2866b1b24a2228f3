"""REST API: the compliance report, for compliance and admins."""

import pytest
import time_machine

from breakglass import roles

from . import report_data
from .conftest import make_user
from .flows import make_ssh_ca, make_ssh_target
from .report_data import NOW

URL = "/api/v1/reports/compliance/"
MARCH = {"since": "2030-03-01", "until": "2030-03-03"}


@pytest.fixture
def erin(db):
    return make_user("erin", roles.REQUESTER, groups=["oncall"])


@pytest.fixture
def made(db, tmp_path, monkeypatch, alice, erin, bob, carol):
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target("bastion")
    make_ssh_target("jump")
    return report_data.build(alice, erin, bob, carol)


def _get(client, query=None):
    with time_machine.travel(NOW, tick=False):
        return client.get(URL, query or {})


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) <= {"code", "detail", "fields"}
    assert body["code"] == code
    return body


def test_the_report_is_for_compliance_and_admins(api, made, cora, ada, oscar):
    alice, bob = made["quick"].requester, made["denied"].approvals.get().approver
    for user in [cora, ada]:
        assert _get(api(user), MARCH).status_code == 200, user
    for user in [alice, bob, oscar]:
        assert_error(_get(api(user), MARCH), 403, "not_allowed")
    assert_error(_get(api()), 401, "not_authenticated")


def test_a_refusal_does_not_say_what_input_would_be_valid(api, made, oscar):
    body = assert_error(_get(api(oscar), {"since": "x"}), 403, "not_allowed")
    assert "fields" not in body


def test_the_report_answers_every_figure(api, made, cora):
    slow, failing = made["slow"], made["failing"]

    body = _get(api(cora), MARCH).json()

    assert body["since"] == "2030-03-01" and body["until"] == "2030-03-03"
    assert body["generated_at"] == "2030-03-04T12:00:00Z"
    assert (body["requests_total"], body["grants_issued"]) == (5, 4)
    assert {"status": "denied", "count": 1} in body["requests_by_status"]
    assert body["grants_by_target"] == [
        {"target": "bastion", "count": 3},
        {"target": "jump", "count": 1},
    ]
    assert body["grants_by_requester"][0] == {"requester": "alice", "count": 3}
    assert body["grants_by_day"][0] == {"day": "2030-03-01", "count": 2}
    assert body["time_to_approval"] == {
        "count": 4,
        "median_seconds": 105.0,
        "p95_seconds": 600.0,
        "worst_seconds": 600.0,
        "worst_request": slow.pk,
    }
    assert body["time_to_revocation"]["median_seconds"] == 100.0
    assert body["revoked_late"][0] == {
        "request": slow.pk,
        "target": "bastion",
        "scope": "read",
        "requester": "erin",
        "incident": "INC-42",
        "principal": slow.grant.principal,
        "due_at": "2030-03-01T10:20:30Z",
        "ended_at": "2030-03-01T10:25:30Z",
        "late_seconds": 300.0,
    }
    assert body["failed_revocations"][-1] == {
        "request": failing.pk,
        "target": "bastion",
        "scope": "read",
        "requester": "alice",
        "incident": "INC-42",
        "principal": failing.grant.principal,
        "failures": 1,
        "last_failed_at": "2030-03-03T09:30:30Z",
        "still_failing": True,
        "ended_at": None,
    }


def test_the_default_range_is_the_last_30_days(api, made, cora):
    body = _get(api(cora)).json()

    assert (body["since"], body["until"]) == ("2030-02-03", "2030-03-04")
    assert body["requests_total"] == 7
    assert len(body["grants_by_day"]) == 30
    assert _get(api(cora), {**MARCH, "format": "json"}).json()["grants_issued"] == 4


@pytest.mark.parametrize(
    "query, fields",
    [
        ({"since": "yesterday"}, {"since"}),
        ({"since": "2030-03-01", "until": "2030-13-01"}, {"until"}),
        ({"since": "2030-03-03", "until": "2030-03-01"}, {"until"}),
        ({"since": "2030-01-01", "until": "2031-01-02"}, {"until"}),
        ({**MARCH, "target": "bastion"}, {"target"}),
        ({"since": "x", "sinse": "2030-03-01"}, {"since", "sinse"}),
    ],
)
def test_bad_filters_answer_400_with_field_errors(api, made, cora, query, fields):
    body = assert_error(_get(api(cora), query), 400, "invalid")

    assert set(body["fields"]) == fields
    for problems in body["fields"].values():
        assert problems and all(isinstance(p, str) for p in problems)


def test_the_openapi_document_describes_the_report(api, alice):
    schema = api(alice).get("/api/v1/schema/", {"format": "json"}).json()

    operation = schema["paths"][URL]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"since", "until"}
    assert set(operation["responses"]) == {"200", "400", "403"}
    report = schema["components"]["schemas"]["ComplianceReport"]["properties"]
    assert {
        "time_to_approval",
        "time_to_issuance",
        "time_to_revocation",
        "revoked_late",
        "failed_revocations",
        "grants_by_day",
    } <= set(report)
    duration = schema["components"]["schemas"]["ReportDuration"]["properties"]
    assert duration["worst_request"]["nullable"] is True
