"""REST API: the trail exported as a streamed file that verifies offline."""

import csv
import io
import json
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command

from breakglass import audit, export, offline, services
from breakglass.models import AuditEvent

from .flows import issued_request, make_ssh_ca, make_ssh_target, open_request

URL = "/api/v1/audit/export/"


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def history(bastion, alice, bob, carol):
    """A whole flow for INC-1, then a request for INC-2 cancelled ten minutes later."""
    issued_request(alice, bob, carol, incident="INC-1")
    start = AuditEvent.objects.order_by("seq").first().at
    with time_machine.travel(start + timedelta(minutes=10), tick=False):
        second = open_request(alice, incident="INC-2")
    with time_machine.travel(start + timedelta(minutes=20), tick=False):
        services.cancel_request(second.pk, actor=alice)
    audit.record_event(
        "test.note", actor="ada", data={"note": "Zoë, 東京", "n": 2**70, "f": 0.1}
    )
    return start, second


def body_of(response):
    assert response.status_code == 200, response.content
    assert response.streaming
    return b"".join(response.streaming_content).decode()


def csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == code
    return body


def verify_with_script(text, tmp_path, name, *args):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-I", offline.__file__, *args, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_export_is_for_compliance_and_admins(
    api, history, alice, bob, oscar, cora, ada
):
    for user in (alice, bob, oscar):
        for query in ({}, {"format": "csv"}, {"since": "bad"}):
            assert_error(api(user).get(URL, query), 403, "not_allowed")
    assert api().get(URL).status_code == 401
    assert not AuditEvent.objects.filter(action="audit.exported").exists()

    for user in (cora, ada):
        assert api(user).get(URL, {"format": "csv"}).status_code == 200


def test_csv_export_carries_every_hashed_field_and_verifies(
    api, history, cora, tmp_path
):
    before = AuditEvent.objects.count()

    response = api(cora).get(URL, {"format": "csv"})

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    disposition = response["Content-Disposition"]
    assert disposition.startswith('attachment; filename="breakglass-trail-')
    assert disposition.endswith('.csv"')
    text = body_of(response)
    rows = csv_rows(text)
    # The export's own event is the last one it holds.
    assert len(rows) == before + 1
    assert list(rows[0]) == list(offline.FIELDS)
    assert [int(r["seq"]) for r in rows] == list(range(1, before + 2))
    assert rows[-1]["action"] == "audit.exported"
    for row, event in zip(rows, AuditEvent.objects.order_by("seq"), strict=True):
        assert row["at"] == event.at.isoformat(timespec="microseconds")
        assert json.loads(row["data"]) == event.data
        assert row["hash"] == event.hash
        assert row["request"] == (
            "" if event.request_id is None else str(event.request_id)
        )

    done = verify_with_script(text, tmp_path, "trail.csv")
    assert done.returncode == 0, done.stderr
    assert f"intact: {before + 1} events checked" in done.stdout


def test_json_export_is_one_document_that_verifies(api, history, cora, tmp_path):
    text = body_of(api(cora).get(URL, {"format": "json"}))

    document = json.loads(text)
    assert set(document) == {"exported_at", "filter", "events"}
    assert document["filter"] == {}
    events = document["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert set(events[0]) == set(offline.FIELDS)
    note = next(e for e in events if e["action"] == "test.note")
    assert note["data"] == {"note": "Zoë, 東京", "n": 2**70, "f": 0.1}
    assert note["request"] is None
    for event in events:
        assert offline.compute_hash(event) == event["hash"]

    done = verify_with_script(text, tmp_path, "trail.json")
    assert done.returncode == 0, done.stderr

    out = StringIO()
    call_command("verify_audit", "--file", str(tmp_path / "trail.json"), stdout=out)
    assert f"intact: {len(events)} events checked" in out.getvalue()


def test_the_default_format_is_json(api, history, cora):
    response = api(cora).get(URL)
    assert response["Content-Type"] == "application/json"
    assert json.loads(body_of(response))["events"]


def test_an_export_is_recorded_in_the_trail(api, history, cora):
    query = {"format": "csv", "incident": "INC-2", "since": "2020-01-01T00:00:00Z"}
    body_of(api(cora).get(URL, query))

    event = AuditEvent.objects.order_by("seq").last()
    assert event.action == "audit.exported"
    assert event.actor == "cora"
    assert event.data == {
        "format": "csv",
        "filter": {"incident": "INC-2", "since": "2020-01-01T00:00:00+00:00"},
    }
    checked, first_bad = audit.verify_chain()
    assert first_bad is None


def test_filters_select_what_the_trail_list_selects(api, history, cora, tmp_path):
    start, second = history
    client = api(cora)

    def exported(query):
        document = json.loads(body_of(client.get(URL, query)))
        return document, [(e["action"], e["incident"]) for e in document["events"]]

    document, events = exported({"incident": "INC-2"})
    assert events == [("request.created", "INC-2"), ("request.cancelled", "INC-2")]
    assert document["filter"] == {"incident": "INC-2"}
    assert exported({"request": second.pk})[1] == events
    assert exported({"incident": "INC-404"})[1] == []
    window = {
        "since": (start + timedelta(minutes=5)).isoformat(),
        "until": (start + timedelta(minutes=15)).isoformat(),
    }
    assert exported(window)[1] == [("request.created", "INC-2")]

    # A filtered export states its filter: the script allows its gaps.
    text = body_of(client.get(URL, {"incident": "INC-1"}))
    done = verify_with_script(text, tmp_path, "inc1.json")
    assert done.returncode == 0, done.stderr
    assert "filtered" in done.stdout
    # The CSV is told so.
    text = body_of(client.get(URL, {"incident": "INC-2", "format": "csv"}))
    assert verify_with_script(text, tmp_path, "inc2.csv").returncode == 1
    done = verify_with_script(text, tmp_path, "inc2.csv", "--filtered")
    assert done.returncode == 0, done.stderr


def test_a_filtered_name_says_what_it_holds(api, history, cora):
    response = api(cora).get(URL, {"incident": 'INC 7/"x"', "format": "csv"})
    name = response["Content-Disposition"].split("filename=")[1].strip('"')
    assert name.startswith("breakglass-trail-incident-INC_7_x_-")
    assert name.endswith(".csv")


@pytest.mark.parametrize(
    "query, field",
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"request": "abc"}, "request"),
        ({"request": str(10**30)}, "request"),
        ({"format": "xml"}, "format"),
        ({"incident": "I" * 300}, "incident"),
        ({"incidnet": "INC-1"}, "incidnet"),
        ({"limit": "10"}, "limit"),
        ({"after_seq": "3"}, "after_seq"),
    ],
)
def test_bad_filters_are_refused_and_not_recorded(api, history, cora, query, field):
    response = api(cora).get(URL, query)

    body = assert_error(response, 400, "invalid")
    assert field in body["fields"]
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


def test_every_refusal_is_named_at_once(api, history, cora):
    response = api(cora).get(URL, {"since": "bad", "colour": "red", "format": "csv"})
    assert set(assert_error(response, 400, "invalid")["fields"]) == {"since", "colour"}


def test_export_streams_in_chunks(api, history, cora, monkeypatch):
    monkeypatch.setattr(export, "CHUNK_ROWS", 2)
    monkeypatch.setattr(export, "FETCH_SIZE", 3)
    response = api(cora).get(URL, {"format": "json"})
    chunks = list(response.streaming_content)
    events = AuditEvent.objects.count()
    # The head, one chunk per two events, the tail.
    assert len(chunks) == 1 + (events + 1) // 2 + 1
    assert len(json.loads(b"".join(chunks))["events"]) == events


def test_export_is_in_the_openapi_document(api, alice):
    document = api(alice).get("/api/v1/schema/", {"format": "json"}).json()
    operation = document["paths"]["/api/v1/audit/export/"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"incident", "request", "since", "until", "format"} <= names
