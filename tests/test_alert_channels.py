"""Slack and PagerDuty alerts: global and per target, delivered like every alert."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from breakglass import alerts, audit, configfile, services
from breakglass.models import Alert, AuditEvent, Target

from .flows import make_ssh_ca, make_ssh_target, open_request

SLACK_PATH = "/services/T0001/B0001/slack-webhook-secret-part"
ROUTING_KEY = "pagerduty-routing-key-0123456789abcdef"


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def slack(settings, webhook_receiver):
    settings.BREAKGLASS_ALERT_SLACK_URLS = [webhook_receiver.url + SLACK_PATH]
    settings.BREAKGLASS_BASE_URL = "https://breakglass.example.com"
    settings.BREAKGLASS_ALERT_TIMEOUT_SECONDS = 1
    return webhook_receiver


@pytest.fixture
def pagerduty(settings, webhook_receiver):
    settings.BREAKGLASS_ALERT_PAGERDUTY_ROUTING_KEY = ROUTING_KEY
    settings.BREAKGLASS_ALERT_PAGERDUTY_URL = webhook_receiver.url + "/v2/enqueue"
    settings.BREAKGLASS_BASE_URL = "https://breakglass.example.com"
    return webhook_receiver


def _revocation_failed(target="bastion", request_id=None):
    return audit.record_event(
        "grant.revocation_failed",
        actor="system",
        subject={"request": request_id, "target": target, "scope": "read"},
        data={"principal": "bg_alice_7_ab12", "error": "connection refused"},
    )


def _only(event, channel):
    (alert,) = Alert.objects.filter(event=event, channel=channel)
    return alert


def test_slack_gets_every_event_with_a_link_to_the_request(slack, alice, bastion):
    access_request = open_request(alice, reason="disk <full> & the primary is down")
    event = AuditEvent.objects.get(action="request.created")
    alert = _only(event, Alert.Channel.SLACK)

    assert alerts.deliver(alert.pk) is True

    (delivery,) = slack.deliveries
    assert delivery.path.endswith(SLACK_PATH)
    message = delivery.json()
    link = f"https://breakglass.example.com/requests/{access_request.pk}/"
    assert message["text"].startswith("[breakglass] request.created")
    assert "bastion/read for alice, incident INC-42" in message["text"]
    section = message["blocks"][0]["text"]["text"]
    assert f"<{link}|request {access_request.pk}>" in section
    # The reason is shown, but cannot add links or markup of its own.
    assert "disk &lt;full&gt; &amp; the primary is down" in section
    # The stored alert names the setting, never the webhook's secret address.
    assert alert.destination == "setting:BREAKGLASS_ALERT_SLACK_URLS#0"
    alert.refresh_from_db()
    assert alert.delivered_at is not None


def test_pagerduty_gets_only_critical_events(pagerduty, alice, bastion):
    open_request(alice)
    failed = _revocation_failed()

    assert not Alert.objects.filter(
        event__action="request.created", channel=Alert.Channel.PAGERDUTY
    ).exists()
    alert = _only(failed, Alert.Channel.PAGERDUTY)
    assert ROUTING_KEY not in alert.destination

    assert alerts.deliver(alert.pk) is True

    (delivery,) = pagerduty.deliveries
    assert delivery.path == "/hooks/breakglass/v2/enqueue"
    body = delivery.json()
    assert body["routing_key"] == ROUTING_KEY
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == "breakglass/grant.revocation_failed/bg_alice_7_ab12"
    assert body["payload"]["severity"] == "critical"
    assert body["payload"]["source"] == "bastion"
    assert body["payload"]["summary"] == "Breakglass: grant.revocation_failed (bastion)"
    assert body["payload"]["custom_details"]["data"] == failed.data


def test_an_orphan_found_on_a_target_pages_as_a_warning(pagerduty, bastion):
    orphan = audit.record_event(
        "credential.orphan_removed",
        actor="system",
        subject={"target": "bastion"},
        data={"target": "bastion", "principal": "bg_zed_9_deadbeef"},
    )

    assert alerts.deliver(_only(orphan, Alert.Channel.PAGERDUTY).pk) is True

    body = pagerduty.deliveries[0].json()
    assert body["dedup_key"] == "breakglass/credential.orphan_removed/bg_zed_9_deadbeef"
    assert body["payload"]["severity"] == "warning"


def test_a_broken_chain_pages_without_a_target(pagerduty, db):
    broken = audit.record_event(
        "audit.chain_broken", actor="system", data={"first_bad": 12}
    )

    assert alerts.deliver(_only(broken, Alert.Channel.PAGERDUTY).pk) is True

    body = pagerduty.deliveries[0].json()
    assert body["dedup_key"] == "breakglass/audit.chain_broken"
    assert body["payload"]["source"] == "breakglass.example.com"
    assert "links" not in body


def test_a_target_alerts_its_own_channels(
    settings, webhook_receiver, alice, bastion, monkeypatch
):
    settings.BREAKGLASS_ALERT_PAGERDUTY_URL = webhook_receiver.url + "/v2/enqueue"
    bastion.slack_webhook_env = "BASTION_SLACK_URL"
    bastion.pagerduty_routing_key_env = "BASTION_PAGERDUTY_KEY"
    bastion.save()
    monkeypatch.setenv("BASTION_SLACK_URL", webhook_receiver.url + SLACK_PATH)
    monkeypatch.setenv("BASTION_PAGERDUTY_KEY", ROUTING_KEY)
    make_ssh_target("jumphost")

    open_request(alice)
    open_request(alice, target="jumphost")
    failed = _revocation_failed()

    made = Alert.objects.order_by("id").values_list(
        "event__target", "event__action", "channel", "destination"
    )
    assert list(made) == [
        ("bastion", "request.created", "slack", "env:BASTION_SLACK_URL"),
        ("bastion", "grant.revocation_failed", "slack", "env:BASTION_SLACK_URL"),
        (
            "bastion",
            "grant.revocation_failed",
            "pagerduty",
            "env:BASTION_PAGERDUTY_KEY",
        ),
    ]
    assert alerts.deliver(_only(failed, Alert.Channel.PAGERDUTY).pk) is True
    assert webhook_receiver.deliveries[0].json()["routing_key"] == ROUTING_KEY


def test_an_unset_variable_keeps_the_alert_until_it_is_set(
    webhook_receiver, alice, bastion, monkeypatch
):
    bastion.slack_webhook_env = "BASTION_SLACK_URL"
    bastion.save()
    monkeypatch.delenv("BASTION_SLACK_URL", raising=False)
    open_request(alice)
    alert = Alert.objects.get(channel=Alert.Channel.SLACK)
    start = timezone.now()

    with time_machine.travel(start, tick=False):
        assert alerts.deliver(alert.pk) is False

    alert.refresh_from_db()
    assert (alert.attempts, alert.delivered_at) == (1, None)
    assert alert.last_error == "MissingDestination: BASTION_SLACK_URL is not set"
    assert alert.next_attempt_at > start

    monkeypatch.setenv("BASTION_SLACK_URL", webhook_receiver.url + SLACK_PATH)
    with time_machine.travel(alert.next_attempt_at + timedelta(seconds=1)):
        services.sweep()

    alert.refresh_from_db()
    assert alert.delivered_at is not None
    assert len(webhook_receiver.deliveries) == 1


@pytest.mark.parametrize("answer", [500, 404, 302])
def test_refused_slack_delivery_is_kept_and_retried_with_backoff(
    slack, alice, bastion, answer
):
    open_request(alice)
    alert = Alert.objects.get(channel=Alert.Channel.SLACK)
    slack.statuses = [answer]
    start = timezone.now()

    with time_machine.travel(start, tick=False):
        assert alerts.deliver(alert.pk) is False
    alert.refresh_from_db()
    assert (alert.attempts, alert.last_error) == (1, f"HTTP {answer}")

    with time_machine.travel(start + timedelta(seconds=1), tick=False):
        services.sweep()
    assert len(slack.attempts) == 1

    with time_machine.travel(alert.next_attempt_at + timedelta(seconds=1)):
        services.sweep()

    alert.refresh_from_db()
    assert (alert.attempts, alert.delivered_at is not None) == (2, True)
    (failed, first), (delivered, second) = slack.attempts
    assert (failed, delivered) == (answer, 200)
    assert first.body == second.body


def test_unreachable_slack_is_described_without_its_address(
    settings, alice, bastion, caplog
):
    settings.BREAKGLASS_ALERT_SLACK_URLS = ["http://127.0.0.1:9" + SLACK_PATH]
    open_request(alice)
    alert = Alert.objects.get(channel=Alert.Channel.SLACK)

    assert alerts.deliver(alert.pk) is False

    alert.refresh_from_db()
    assert alert.last_error.startswith("ConnectionError: ")
    assert "refused" in alert.last_error
    assert "slack-webhook-secret-part" not in alert.last_error + caplog.text


CONFIG = """
targets:
  - name: orders-db
    kind: postgres
    connection_env: ORDERS_DB_DSN
    scopes: [{name: read, grants: [pg_read_all_data]}]
    alerts:
      slack_webhook_env: ORDERS_SLACK_URL
      pagerduty_routing_key_env: ORDERS_PAGERDUTY_KEY
"""


def test_the_file_names_a_targets_channels(db):
    config = configfile.load(CONFIG)
    configfile.apply(config, source={"name": "test", "sha256": "0"})
    target = Target.objects.get(name="orders-db")
    assert target.slack_webhook_env == "ORDERS_SLACK_URL"
    assert target.pagerduty_routing_key_env == "ORDERS_PAGERDUTY_KEY"

    without = CONFIG.split("    alerts:")[0]
    configfile.apply(configfile.load(without), source={"name": "t", "sha256": "1"})
    target.refresh_from_db()
    assert (target.slack_webhook_env, target.pagerduty_routing_key_env) == ("", "")


@pytest.mark.parametrize(
    ("alerts_block", "path", "problem"),
    [
        ("slack_webhook_env: https://hooks.slack.com/x", "slack_webhook_env", "not"),
        ("pagerduty_routing_key: ABC", "pagerduty_routing_key", "unknown key"),
        ("slack_webhook_env: [A]", "slack_webhook_env", "non-empty string"),
    ],
)
def test_bad_alert_settings_are_named_by_key_path(db, alerts_block, path, problem):
    text = CONFIG.split("    alerts:")[0] + f"    alerts:\n      {alerts_block}\n"

    with pytest.raises(configfile.ConfigError) as raised:
        configfile.load(text)

    assert raised.value.path == f"targets[0].alerts.{path}"
    assert problem in raised.value.problem
