"""The operations page and its API: revocations due and not done, stuck alerts.

Cora (compliance) and Ada (admin) watch it; nobody else may see it.
"""

from datetime import timedelta

import pytest
import time_machine
from django.test import Client

from breakglass import services
from breakglass.models import AccessRequest, Alert

from .conftest import make_target
from .flows import issued_request, make_ssh_ca, make_ssh_target, open_request
from .web_helpers import login

Status = AccessRequest.Status

PG_ENV = "BG_TEST_OPS_PG_DSN"
URL = "/operations/"
API_URL = "/api/v1/operations/failing-revocations/"


@pytest.fixture
def targets(db, pg_target, tmp_path, monkeypatch):
    monkeypatch.setenv(PG_ENV, pg_target.admin_dsn)
    make_ssh_ca(tmp_path, monkeypatch)
    make_target("orders-db", "postgres", grants=["orders_read"], env_var=PG_ENV)
    make_ssh_target()


def _issued(step, requester, approvers, **fields):
    # A code is accepted once: each request is approved a TOTP step later.
    with time_machine.travel(timedelta(seconds=31 * step)):
        return issued_request(requester, *approvers, **fields)


@pytest.fixture
def grants(alice, bob, carol, targets, pg_target, monkeypatch):
    """Four grants: failing, overdue, ended and not yet due, at the returned time."""
    approvers = (bob, carol)
    failing = _issued(0, alice, approvers, target="orders-db", duration_minutes=30)
    overdue = _issued(1, alice, approvers, duration_minutes=10)
    ended = _issued(2, alice, approvers, duration_minutes=5)
    later = _issued(3, alice, approvers, duration_minutes=60)

    with time_machine.travel(ended.grant.expires_at + timedelta(seconds=1)):
        assert services.end_grant(ended.grant.pk) is True
    # The admin DSN has gone from the worker's environment.
    monkeypatch.delenv(PG_ENV)
    with time_machine.travel(failing.grant.expires_at + timedelta(seconds=1)):
        assert services.end_grant(failing.grant.pk) is False
    monkeypatch.setenv(PG_ENV, pg_target.admin_dsn)

    yield {
        "failing": failing,
        "overdue": overdue,
        "ended": ended,
        "later": later,
        "now": failing.grant.expires_at + timedelta(seconds=5),
    }
    pg_target.drop_role(failing.grant.principal)


def _z(moment):
    return moment.isoformat().replace("+00:00", "Z")


def test_the_page_lists_revocations_due_and_not_done(grants, cora):
    failing = grants["failing"].grant
    failing.refresh_from_db()
    overdue = grants["overdue"].grant

    with time_machine.travel(grants["now"], tick=False):
        page = login(cora).get(URL)

    assert page.status_code == 200
    text = page.text
    assert text.index(overdue.principal) < text.index(failing.principal)
    assert "failing" in text and "overdue" in text
    assert f"environment variable {PG_ENV} (admin DSN) is not set" in text
    assert failing.retry_at.strftime("%Y-%m-%d %H:%M:%S UTC") in text
    assert "next sweep" in text
    for other in ("ended", "later"):
        assert grants[other].grant.principal not in text
    assert f'href="/requests/{grants["failing"].pk}/"' in text


def test_the_api_lists_the_same_rows(grants, ada, api):
    failing = grants["failing"].grant
    failing.refresh_from_db()
    overdue = grants["overdue"].grant

    with time_machine.travel(grants["now"], tick=False):
        response = api(ada).get(API_URL)

    assert response.status_code == 200
    rows = response.data["revocations"]
    assert [row["principal"] for row in rows] == [
        overdue.principal,
        failing.principal,
    ]
    first, second = rows
    assert first["state"] == "overdue"
    assert (first["attempts"], first["last_error"], first["next_attempt_at"]) == (
        0,
        "",
        None,
    )
    assert first["due_at"] == _z(overdue.expires_at)
    assert first["overdue_seconds"] == int(
        (grants["now"] - overdue.expires_at).total_seconds()
    )
    assert second == {
        "request": grants["failing"].pk,
        "target": "orders-db",
        "scope": "read",
        "requester": "alice",
        "incident": "INC-42",
        "principal": failing.principal,
        "state": "failing",
        "due_at": _z(failing.expires_at),
        "overdue_seconds": 5,
        "expires_at": _z(failing.expires_at),
        "end_requested_at": None,
        "attempts": 1,
        "last_error": failing.last_error,
        "next_attempt_at": _z(failing.retry_at),
    }
    # The approvers were told of each request by email; no mail went out.
    assert (
        response.data["undelivered_alerts"]
        == Alert.objects.filter(
            delivered_at__isnull=True,
            created_at__lt=grants["now"] - timedelta(minutes=1),
        ).count()
    )


def test_an_end_asked_for_early_is_due_at_once(alice, bob, carol, targets, ada, api):
    access_request = _issued(0, alice, (bob, carol), target="orders-db")
    services.request_end(access_request.pk, actor=bob, reason="done")

    rows = api(ada).get(API_URL).data["revocations"]

    grant = access_request.grant
    grant.refresh_from_db()
    assert [(r["principal"], r["state"]) for r in rows] == [
        (grant.principal, "overdue")
    ]
    assert rows[0]["due_at"] == _z(grant.end_requested_at)
    assert rows[0]["end_requested_at"] == _z(grant.end_requested_at)
    services.end_grant(grant.pk)
    assert api(ada).get(API_URL).data["revocations"] == []


def test_alerts_undelivered_after_a_minute_are_counted(
    alice, targets, cora, api, settings
):
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]
    access_request = open_request(alice)
    stuck = Alert.objects.filter(delivered_at__isnull=True).count()
    assert stuck >= 1

    with time_machine.travel(access_request.created_at + timedelta(seconds=30)):
        assert api(cora).get(API_URL).data["undelivered_alerts"] == 0
    with time_machine.travel(access_request.created_at + timedelta(minutes=2)):
        data = api(cora).get(API_URL).data
        page = login(cora).get(URL)
    assert data["undelivered_alerts"] == stuck
    oldest = Alert.objects.order_by("created_at").first().created_at
    assert data["oldest_undelivered_alert_at"] == _z(oldest)
    assert "Alerts not delivered after a minute" in page.text
    assert f'<span class="count">{stuck}</span>' in page.text

    with time_machine.travel(access_request.created_at + timedelta(minutes=2)):
        services.sweep()
        assert api(cora).get(API_URL).data["undelivered_alerts"] == 0


def test_nothing_to_show(targets, cora, api):
    page = login(cora).get(URL)

    assert "Every grant that was due to end has been revoked." in page.text
    assert "Every alert older than a minute has been delivered." in page.text
    assert api(cora).get(API_URL).data == {
        "revocations": [],
        "undelivered_alerts": 0,
        "oldest_undelivered_alert_at": None,
    }


def test_only_compliance_and_admins_may_see_it(
    grants, alice, bob, oscar, cora, ada, api
):
    principal = grants["failing"].grant.principal
    for user in (alice, bob, oscar):
        page = login(user).get(URL)
        assert page.status_code == 403, user
        assert principal not in page.text
        assert 'href="/operations/"' not in login(user).get("/").text
        response = api(user).get(API_URL)
        assert response.status_code == 403, user
        assert response.data["code"] == "not_allowed"
        assert principal not in str(response.data)
    for user in (cora, ada):
        assert login(user).get(URL).status_code == 200
        assert 'href="/operations/"' in login(user).get("/").text
        assert api(user).get(API_URL).status_code == 200


def test_anonymous_callers_are_sent_to_log_in(targets, api):
    page = Client().get(URL)
    assert page.status_code == 302
    assert page["Location"].startswith("/login/")
    response = api().get(API_URL)
    assert response.status_code == 401
    assert response.data["code"] == "not_authenticated"


def test_the_api_only_reads(cora, api):
    response = api(cora).post(API_URL, {}, format="json")

    assert response.status_code == 405
    assert response.data["code"] == "method_not_allowed"


def test_an_ssh_grant_that_cannot_be_recalled_is_not_due_before_its_end(
    alice, bob, carol, cora, tmp_path, monkeypatch
):
    make_ssh_ca(tmp_path, monkeypatch)
    target = make_ssh_target("plain-bastion")
    target.revocation_list_path = ""
    target.save(update_fields=["revocation_list_path"])
    access_request = issued_request(alice, bob, carol, target="plain-bastion")
    services.request_end(access_request.pk, actor=alice, reason="done")

    assert services.end_grant(access_request.grant.pk) is False
    client = login(cora)
    assert client.get(API_URL).json()["revocations"] == []

    with time_machine.travel(access_request.grant.expires_at + timedelta(seconds=5)):
        rows = client.get(API_URL).json()["revocations"]
    assert [row["request"] for row in rows] == [access_request.pk]
