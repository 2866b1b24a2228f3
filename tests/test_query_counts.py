"""Pages and API lists run as many queries for many rows as for a few.

The timings at scale are in bench/scale.py; what is checked here is that no
list runs a query per row it shows.
"""

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from .conftest import otp_code
from .flows import approve, issued_request, make_ssh_ca, make_ssh_target, open_request

PAGES = [
    ("ada", "/"),
    ("ada", "/requests/"),
    ("ada", "/operations/"),
    ("cora", "/trail/"),
    ("alice", "/"),
    ("ada", "/api/v1/requests/"),
    ("ada", "/api/v1/requests/?status=active"),
    ("cora", "/api/v1/audit/"),
    ("alice", "/api/v1/requests/"),
]


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


def _add_rows(alice, bob, carol, count, clock):
    """Add `count` active grants and as many pending requests, one vote each."""
    for n in range(count):
        # A code is good once per step: each vote of the same approver needs
        # the next one.
        clock.shift(30)
        issued_request(alice, bob, carol, incident=f"INC-{n}")
        clock.shift(30)
        approve(open_request(alice, incident=f"INC-{n}"), bob)


def _queries(people, url):
    client = Client()
    client.force_login(people[url[0]])
    client.get(url[1])
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url[1])
    assert response.status_code == 200, url
    return len(captured)


def test_no_list_runs_a_query_per_row(
    alice, bob, carol, cora, ada, bastion, time_machine
):
    people = {"alice": alice, "cora": cora, "ada": ada}
    time_machine.move_to(timezone.now(), tick=False)
    _add_rows(alice, bob, carol, 2, time_machine)
    few = {page: _queries(people, page) for page in PAGES}
    _add_rows(alice, bob, carol, 6, time_machine)
    many = {page: _queries(people, page) for page in PAGES}

    assert many == few


def _api_post(user, url, body):
    client = Client()
    client.force_login(user)
    with CaptureQueriesContext(connection) as captured:
        response = client.post(url, body, content_type="application/json")
    assert response.status_code in (200, 201), response.content
    return response.json(), len(captured)


def _create_and_approve(alice, bob, clock):
    clock.shift(30)
    created, create_queries = _api_post(
        alice,
        "/api/v1/requests/",
        {
            "target": "bastion",
            "scope": "read",
            "duration_minutes": 30,
            "reason": "disk full on the primary",
            "incident": "INC-7",
        },
    )
    _, approve_queries = _api_post(
        bob,
        f"/api/v1/requests/{created['id']}/approve/",
        {"otp": otp_code(bob), "comment": "ok"},
    )
    return create_queries, approve_queries


def test_requesting_and_approving_cost_the_same_with_more_history(
    alice, bob, carol, bastion, time_machine
):
    time_machine.move_to(timezone.now(), tick=False)
    _add_rows(alice, bob, carol, 2, time_machine)
    few = _create_and_approve(alice, bob, time_machine)
    _add_rows(alice, bob, carol, 6, time_machine)
    many = _create_and_approve(alice, bob, time_machine)

    assert many == few
    # The calls that bench/api_throughput.py measures: each query is a round
    # trip, and the trail's lock is held from the event to the commit.
    assert few[0] <= 24 and few[1] <= 24, few
