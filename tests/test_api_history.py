"""REST API: searching the history of requests, within what each person may see."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from breakglass.models import AccessRequest

from .history_fixtures import DAY_1, erin_fixture, history_fixture  # noqa: F401

URL = "/api/v1/requests/"


def ids(client, query=None):
    response = client.get(URL, query or {})
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()]


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code
    return body


def test_ended_requests_stay_searchable(api, history, cora):
    expired, denied, pending = history
    assert expired.status == AccessRequest.Status.EXPIRED
    assert denied.status == AccessRequest.Status.DENIED
    client = api(cora)

    assert ids(client) == [pending.pk, denied.pk, expired.pk]
    assert ids(client, {"status": "expired"}) == [expired.pk]
    assert ids(client, {"status": "denied"}) == [denied.pk]


def test_search_by_requester_approver_target_and_incident(api, history, cora):
    expired, denied, pending = history
    client = api(cora)

    assert ids(client, {"requester": "alice"}) == [denied.pk, expired.pk]
    assert ids(client, {"requester": "erin"}) == [pending.pk]
    assert ids(client, {"requester": "nobody"}) == []
    assert ids(client, {"approver": "bob"}) == [expired.pk]
    # A denial is a vote too.
    assert ids(client, {"approver": "carol"}) == [denied.pk, expired.pk]
    assert ids(client, {"approver": "alice"}) == []
    assert ids(client, {"incident": "INC-1"}) == [pending.pk, expired.pk]
    assert ids(client, {"incident": "INC-1", "requester": "alice"}) == [expired.pk]
    assert ids(client, {"target": "bastion", "approver": "carol"}) == [
        denied.pk,
        expired.pk,
    ]
    assert ids(client, {"target": "elsewhere"}) == []


def test_search_by_creation_time_until_excluded(api, history, cora):
    expired, denied, pending = history
    client = api(cora)

    assert ids(client, {"since": "2030-03-02T00:00:00Z"}) == [pending.pk, denied.pk]
    assert ids(client, {"until": "2030-03-03T09:00:00Z"}) == [expired.pk]
    assert ids(client, {"until": "2030-03-03T09:00:00.000001Z"}) == [
        denied.pk,
        expired.pk,
    ]
    assert ids(client, {"since": DAY_1.isoformat(), "until": "2030-03-04T00:00Z"}) == [
        denied.pk,
        expired.pk,
    ]
    assert ids(client, {"since": "2030-03-03T09:00:00+00:00"})[-1] == denied.pk


def test_search_stays_within_what_each_person_may_see(
    api, history, alice, bob, erin, oscar
):
    expired, denied, pending = history

    assert ids(api(alice)) == [denied.pk, expired.pk]
    assert ids(api(alice), {"requester": "erin"}) == []
    assert ids(api(alice), {"incident": "INC-1"}) == [expired.pk]
    assert ids(api(erin), {"approver": "bob"}) == []
    assert ids(api(bob), {"requester": "erin"}) == [pending.pk]
    assert ids(api(oscar), {"requester": "alice"}) == []


@pytest.mark.parametrize(
    "query, field",
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2030-13-01T00:00Z"}, "until"),
        ({"since": "2030-03-02T00:00Z", "until": "2030-03-01T00:00Z"}, "until"),
        ({"since": "2030-03-02T00:00Z", "until": "2030-03-02T00:00Z"}, "until"),
        ({"status": "sleeping"}, "status"),
        ({"requester": "a" * 200}, "requester"),
        ({"approver": "a" * 200}, "approver"),
        ({"approvr": "bob"}, "approvr"),
        ({"page": "2"}, "page"),
    ],
)
def test_bad_or_unknown_filters_are_400(api, history, cora, query, field):
    response = api(cora).get(URL, query)

    assert field in assert_error(response, 400, "invalid")["fields"]


def test_every_bad_filter_is_named_at_once(api, history, cora):
    response = api(cora).get(URL, {"since": "x", "colour": "red", "status": "z"})
    fields = assert_error(response, 400, "invalid")["fields"]
    assert set(fields) == {"since", "colour", "status"}


def test_the_query_count_does_not_grow_with_the_results(api, history, cora):
    client = api(cora)

    def queries(query):
        with CaptureQueriesContext(connection) as captured:
            ids(client, query)
        return len(captured)

    # A page whose requests carry votes costs the same, however many they are.
    assert queries({"limit": 2}) == queries({}) <= 10
    by_carol = {"approver": "carol", "since": "2030-01-01T00:00Z"}
    assert queries({**by_carol, "limit": 1}) == queries(by_carol) == queries({})
