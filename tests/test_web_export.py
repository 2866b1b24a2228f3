"""The trail's export from the web: buttons, filters, refusals, a streamed file."""

import csv
import io
import json
from datetime import UTC, datetime
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command

from breakglass.models import AuditEvent

from .web_helpers import login, make_ssh_target, open_request

URL = "/trail/export/"


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    return make_ssh_target(tmp_path, monkeypatch)


@pytest.fixture
def two_incidents(bastion, alice):
    with time_machine.travel(datetime(2030, 3, 1, 9, 0, tzinfo=UTC), tick=False):
        first = open_request(alice, incident="INC-1")
    with time_machine.travel(datetime(2030, 3, 3, 9, 0, tzinfo=UTC), tick=False):
        second = open_request(alice, incident="INC-2")
    return first, second


def content(response):
    assert response.status_code == 200, response.content
    assert response.streaming
    return b"".join(response.streaming_content).decode()


def exports():
    return list(AuditEvent.objects.filter(action="audit.exported"))


def test_export_is_for_compliance_and_admins_only(two_incidents, cora, ada, bob, oscar):
    alice = two_incidents[0].requester
    for user in [alice, bob, oscar]:
        response = login(user).get(URL, {"format": "csv"})
        assert response.status_code == 403, user
        assert not response.streaming
    assert exports() == []
    for user in [cora, ada]:
        assert login(user).get(URL, {"format": "csv"}).status_code == 200


def test_a_signed_out_visitor_is_sent_to_log_in(two_incidents, client):
    response = client.get(URL, {"format": "csv"})
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_csv_export_of_a_day_carries_the_filter(two_incidents, cora, tmp_path):
    first, second = two_incidents
    response = login(cora).get(URL, {"format": "csv", "since": "2030-03-02"})

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment; filename=" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(content(response))))
    assert [r["request"] for r in rows] == [str(second.pk)]
    [event] = exports()
    assert event.actor == "cora"
    assert event.data == {
        "format": "csv",
        "filter": {"since": "2030-03-02T00:00:00+00:00"},
    }


def test_json_export_of_the_whole_trail_verifies(two_incidents, ada, tmp_path):
    text = content(login(ada).get(URL, {"format": "json"}))

    document = json.loads(text)
    assert document["filter"] == {}
    assert [e["action"] for e in document["events"]] == [
        "request.created",
        "request.created",
        "audit.exported",
    ]
    path = tmp_path / "trail.json"
    path.write_text(text, encoding="utf-8")
    out = StringIO()
    call_command("verify_audit", "--file", str(path), stdout=out)
    assert "intact: 3 events checked" in out.getvalue()


def test_days_are_inclusive_as_on_the_trail_page(two_incidents, cora):
    text = content(
        login(cora).get(
            URL, {"format": "json", "since": "2030-03-01", "until": "2030-03-01"}
        )
    )
    document = json.loads(text)
    assert [e["incident"] for e in document["events"]] == ["INC-1"]
    assert document["filter"] == {
        "since": "2030-03-01T00:00:00+00:00",
        "until": "2030-03-02T00:00:00+00:00",
    }


@pytest.mark.parametrize(
    "query, message",
    [
        ({"format": "csv", "since": "yesterday"}, "Enter a valid date."),
        ({"format": "csv", "since": "2030-03-03", "until": "2030-03-01"}, "Must not"),
        ({"format": "csv", "request": "x"}, "Enter a whole number."),
        ({"format": "xml"}, "Select a valid choice."),
        ({}, "This field is required."),
        ({"format": "csv", "incidnet": "INC-1"}, "Unknown filter: incidnet."),
        ({"format": "csv", "page": "2"}, "Unknown filter: page."),
    ],
)
def test_bad_filters_get_a_clear_400_page(two_incidents, cora, query, message):
    response = login(cora).get(URL, query)

    assert response.status_code == 400
    assert not response.streaming
    assert "Export refused" in response.text
    assert message in response.text
    assert exports() == []


def test_the_refusal_links_back_to_the_trail_with_the_known_filters(
    two_incidents, cora
):
    response = login(cora).get(URL, {"format": "xml", "incident": "INC-1", "x": "1"})
    assert 'href="/trail/?incident=INC-1"' in response.text


def test_trail_page_offers_downloads_of_its_filter(two_incidents, cora):
    page = login(cora).get("/trail/", {"incident": "INC-1", "page": "1"})

    assert 'href="/trail/export/?incident=INC-1&amp;format=csv"' in page.text
    assert 'href="/trail/export/?incident=INC-1&amp;format=json"' in page.text
    assert "Export CSV" in page.text
    assert "Export JSON" in page.text
    # An invalid filter offers nothing to export.
    page = login(cora).get("/trail/", {"since": "yesterday"})
    assert "Export CSV" not in page.text


def test_incident_page_offers_downloads_of_its_events(two_incidents, cora):
    page = login(cora).get("/incidents/INC-1/")

    link = "/trail/export/?incident=INC-1&amp;format=csv"
    assert f'href="{link}"' in page.text
    assert "Export JSON" in page.text
    rows = list(
        csv.DictReader(
            io.StringIO(content(login(cora).get(link.replace("&amp;", "&"))))
        )
    )
    assert [r["incident"] for r in rows] == ["INC-1"]
