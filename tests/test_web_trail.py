"""The trail and incident pages: compliance and admins only, with the chain's state."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from breakglass import detection, services
from breakglass.models import AuditEvent, Grant
from breakglass.providers.base import Session

from .flows import issued_request
from .tampering import triggers_disabled
from .web_helpers import login, make_ssh_target, open_request


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


def event_rows(page):
    return page.text.count('<tr class="action-')


def test_trail_is_for_compliance_and_admins_only(two_incidents, cora, ada, bob, oscar):
    alice = two_incidents[0].requester
    for user in [cora, ada]:
        page = login(user).get("/trail/")
        assert page.status_code == 200, user
        assert event_rows(page) == 2
    for user in [alice, bob, oscar]:
        response = login(user).get("/trail/")
        assert response.status_code == 403, user
        assert "request.created" not in response.text
        assert login(user).get("/incidents/INC-1/").status_code == 403


def test_trail_counts_its_events_and_pages_them(bastion, alice, cora):
    for n in range(3):
        open_request(alice, incident=f"INC-{n}")
    client = login(cora)

    assert "3 events, newest first" in client.get("/trail/").text
    assert "1 event, newest first" in client.get("/trail/", {"incident": "INC-1"}).text


def test_trail_filters_by_incident_request_and_day(two_incidents, cora):
    first, second = two_incidents
    client = login(cora)

    page = client.get("/trail/", {"incident": "INC-1"})
    assert event_rows(page) == 1
    assert f'href="/requests/{first.pk}/"' in page.text
    assert f'href="/requests/{second.pk}/"' not in page.text

    page = client.get("/trail/", {"request": second.pk})
    assert event_rows(page) == 1
    assert f'href="/requests/{second.pk}/"' in page.text

    assert event_rows(client.get("/trail/", {"since": "2030-03-02"})) == 1
    assert event_rows(client.get("/trail/", {"until": "2030-03-01"})) == 1
    both = {"since": "2030-03-01", "until": "2030-03-03"}
    assert event_rows(client.get("/trail/", both)) == 2
    assert event_rows(client.get("/trail/", {"since": "2030-03-04"})) == 0


def test_trail_refuses_bad_filters_with_400(two_incidents, cora):
    client = login(cora)
    response = client.get("/trail/", {"since": "yesterday"})
    assert response.status_code == 400
    assert "Enter a valid date." in response.text
    response = client.get("/trail/", {"since": "2030-03-03", "until": "2030-03-01"})
    assert response.status_code == 400
    assert client.get("/trail/", {"request": "x"}).status_code == 400
    assert client.get("/trail/", {"request": "9" * 30}).status_code == 400


def test_trail_shows_the_chain_intact_then_broken(two_incidents, cora):
    client = login(cora)
    assert "Audit chain intact, 2 events" in client.get("/trail/").text

    with triggers_disabled():
        AuditEvent.objects.filter(seq=2).update(actor="mallory")

    page = client.get("/trail/")
    assert "Audit chain broken at seq 2" in page.text
    assert "intact" not in page.text


def test_incident_page_shows_one_timeline(two_incidents, cora, bob):
    first, second = two_incidents
    second_of_first = open_request(first.requester, incident="INC-1")

    page = login(cora).get("/incidents/INC-1/")

    assert page.status_code == 200
    assert f'href="/requests/{first.pk}/"' in page.text
    assert f'href="/requests/{second_of_first.pk}/"' in page.text
    assert f'href="/requests/{second.pk}/"' not in page.text
    assert event_rows(page) == 2
    assert "Audit chain intact, 3 events" in page.text
    assert login(cora).get("/incidents/INC-404/").status_code == 404


def test_request_page_links_its_incident_for_compliance(two_incidents, cora):
    first = two_incidents[0]
    page = login(cora).get(f"/requests/{first.pk}/")
    assert 'href="/incidents/INC-1/"' in page.text
    page = login(first.requester).get(f"/requests/{first.pk}/")
    assert 'href="/incidents/INC-1/"' not in page.text


def test_trail_until_the_last_day_there_is_shows_everything(two_incidents, cora):
    page = login(cora).get("/trail/", {"until": "9999-12-31"})

    assert page.status_code == 200
    assert event_rows(page) > 0


def test_incident_timeline_tells_the_whole_story_in_words(
    bastion, alice, bob, carol, cora
):
    access_request = issued_request(alice, bob, carol, incident="INC-7")
    services.reveal_credential(access_request.pk, actor=alice)
    grant = Grant.objects.get(request=access_request)
    used_at = datetime(2026, 12, 3, 3, 12, tzinfo=UTC)
    detection._record_new(grant, [Session("pid-1", "10.0.0.7:51234", used_at)])
    with time_machine.travel(grant.expires_at + timedelta(seconds=1)):
        services.end_grant(grant.pk)

    page = login(cora).get("/incidents/INC-7/")

    assert page.status_code == 200
    text = page.text
    story = [
        "alice asked for read on bastion for 30 minutes",
        "bob approved with the one-time code of device “phone”",
        "carol approved with the one-time code of device “phone”",
        f"Credential {grant.principal} created on bastion",
        "alice revealed the credential",
        f"{grant.principal} used from 10.0.0.7:51234",
        f"Credential {grant.principal} removed at expiry",
    ]
    positions = [text.index(line) for line in story]
    assert positions == sorted(positions)
