"""/metrics: names and values after a flow, read from the rows; the token.

Alice's requests go to the bastion (SSH, two approvals) and to the orders
database (PostgreSQL on this machine, one approval); Bob and Carol approve, and
the clock is moved so that every time has a known length.
"""

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import time_machine
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from approvals import services as approval_services
from breakglass import detection, services
from breakglass.models import Alert, AuditEvent

from .conftest import make_target, otp_code
from .flows import approve, issued_request, make_ssh_ca, make_ssh_target, open_request

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
UNREACHABLE_DSN = "postgresql://postgres@127.0.0.1:1/postgres"
DSN_ENV = "BG_TEST_METRICS_ORDERS_DSN"


def scrape(client=None, **headers):
    response = (client or Client()).get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def orders_db(db, monkeypatch):
    monkeypatch.setenv(DSN_ENV, ADMIN_DSN)
    return make_target(
        "orders-db",
        "postgres",
        grants=["pg_read_all_data"],
        env_var=DSN_ENV,
        approvals=1,
    )


def _at(seconds):
    return time_machine.travel(T0 + timedelta(seconds=seconds), tick=False)


def test_times_approvals_grants_and_the_trail_after_a_flow(
    alice, bob, carol, bastion, settings
):
    settings.BREAKGLASS_ALERT_WEBHOOK_URLS = ["http://127.0.0.1:9/hooks"]
    settings.BREAKGLASS_ALERT_WEBHOOK_SECRET = "metrics-test"
    with _at(0):
        ended = open_request(alice)
    with _at(90):
        approve(ended, bob)
    with _at(100):
        approve(ended, carol)
    with _at(103):
        services.issue_grant(ended.grant.pk)
    with _at(200):
        services.request_end(ended.pk, actor=alice, reason="fixed")
    with _at(201.5):
        services.end_grant(ended.grant.pk)
    with _at(300):
        denied = open_request(alice, incident="INC-43")
    with _at(310):
        approval_services.deny_request(denied.pk, approver=bob, code=otp_code(bob))
    with _at(400):
        active = issued_request(alice, bob, carol, incident="INC-44")

    with _at(401):
        samples = scrape()

    assert value(samples, "breakglass_requests", status="revoked") == 1
    assert value(samples, "breakglass_requests", status="denied") == 1
    assert value(samples, "breakglass_requests", status="active") == 1
    assert value(samples, "breakglass_requests", status="pending") == 0
    assert value(samples, "breakglass_active_grants", target="bastion") == 1
    assert value(samples, "breakglass_approvals_total", decision="approved") == 4
    assert value(samples, "breakglass_approvals_total", decision="denied") == 1

    # The first grant: approved after 100 s, issued 3 s later, revoked 1.5 s
    # after its end was asked for; the second, all at once.
    approval = "breakglass_time_to_approval_seconds"
    assert value(samples, f"{approval}_count") == 2
    assert value(samples, f"{approval}_sum") == 100
    assert value(samples, f"{approval}_bucket", le="60.0") == 1
    assert value(samples, f"{approval}_bucket", le="120.0") == 2
    assert value(samples, f"{approval}_bucket", le="+Inf") == 2
    issuance = "breakglass_time_to_issuance_seconds"
    assert value(samples, f"{issuance}_count") == 2
    assert value(samples, f"{issuance}_sum") == 3
    assert value(samples, f"{issuance}_bucket", le="2.0") == 1
    assert value(samples, f"{issuance}_bucket", le="5.0") == 2
    lag = "breakglass_revocation_lag_seconds"
    assert value(samples, f"{lag}_count") == 1
    assert value(samples, f"{lag}_sum") == 1.5
    assert value(samples, f"{lag}_bucket", le="1.0") == 0
    assert value(samples, f"{lag}_bucket", le="2.0") == 1

    head = AuditEvent.objects.order_by("-seq").first()
    assert value(samples, "breakglass_audit_head_seq") == head.seq
    # Nothing was delivered: the test sends no alert anywhere.
    for channel in ("webhook", "email"):
        alerts = Alert.objects.filter(channel=channel)
        assert alerts.count() > 0
        assert (
            value(samples, "breakglass_alerts_undelivered", channel=channel)
            == alerts.count()
        )
        # A minute before the scrape, the third request was not made yet.
        assert value(samples, "breakglass_alerts_stuck", channel=channel) == (
            alerts.filter(created_at__lte=T0 + timedelta(seconds=341)).count()
        )
        assert value(samples, "breakglass_alerts_stuck", channel=channel) < (
            alerts.count()
        )
    assert value(samples, "breakglass_revocations_failing") == 0
    assert active.status == "active"


@pytest.mark.django_db(transaction=True)
def test_uses_and_failed_revocations_after_a_flow(alice, bob, orders_db, monkeypatch):
    access_request = issued_request(alice, bob, target="orders-db")
    grant = access_request.grant
    credential = services.reveal_credential(access_request.pk, actor=alice)
    with psycopg.connect(
        ADMIN_DSN, user=credential["username"], password=credential["password"]
    ):
        assert detection.detect_grant_uses(grant.pk) == 1
    monkeypatch.setenv(DSN_ENV, UNREACHABLE_DSN)
    with time_machine.travel(grant.expires_at + timedelta(seconds=1), tick=False):
        assert services.end_grant(grant.pk) is False
        samples = scrape()

    assert value(samples, "breakglass_credential_uses_total", target="orders-db") == 1
    assert (
        value(samples, "breakglass_revocation_failures_total", target="orders-db") == 1
    )
    assert value(samples, "breakglass_revocations_failing") == 1
    assert value(samples, "breakglass_active_grants", target="orders-db") == 1

    monkeypatch.setenv(DSN_ENV, ADMIN_DSN)
    with time_machine.travel(grant.expires_at + timedelta(seconds=5), tick=False):
        assert services.end_grant(grant.pk) is True
        samples = scrape()
    assert value(samples, "breakglass_revocations_failing") == 0
    assert value(samples, "breakglass_active_grants", target="orders-db") == 0
    assert value(samples, "breakglass_requests", status="expired") == 1
    assert value(samples, "breakglass_revocation_lag_seconds_count") == 1
    assert value(samples, "breakglass_revocation_lag_seconds_sum") == 5


def test_requests_are_counted_by_method_and_status(db):
    client = Client()
    before = scrape(client)
    client.get("/healthz")
    client.get("/healthz")
    client.post("/healthz")
    after = scrape(client)

    def delta(**labels):
        name = "breakglass_http_requests_total"
        return value(after, name, **labels) - before.get(
            (name, tuple(sorted(labels.items()))), 0
        )

    # The first scrape itself is counted too.
    assert delta(method="GET", status="200") == 3
    assert delta(method="POST", status="405") == 1


def test_a_scrape_takes_a_bounded_number_of_queries(
    alice, bob, carol, bastion, django_assert_max_num_queries
):
    # A code is accepted once: each grant is approved a step later.
    for step in range(3):
        with _at(step * 30):
            issued_request(alice, bob, carol, incident=f"INC-{step}")

    with django_assert_max_num_queries(9):
        scrape()


def test_with_a_token_only_a_scraper_sending_it_gets_the_metrics(db, settings):
    settings.BREAKGLASS_METRICS_TOKEN = "s3cret-scrape-token"
    client = Client()

    missing = client.get("/metrics")
    wrong = client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"})
    basic = client.get(
        "/metrics", headers={"Authorization": "Basic s3cret-scrape-token"}
    )

    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response.json()["code"] == "not_authenticated"
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"breakglass_" not in response.content
    samples = scrape(client, Authorization="Bearer s3cret-scrape-token")
    assert value(samples, "breakglass_audit_head_seq") == 0
