"""Alerts: one per event and channel, signed webhooks, emails, retries."""

import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from breakglass import alerts, audit, services
from breakglass.models import Alert, AuditEvent

from .flows import issued_request, make_ssh_ca, make_ssh_target, open_request

SECRET = "webhook-signing-secret"
CONTRACT_KEYS = {
    "event",
    "request",
    "target",
    "scope",
    "requester",
    "incident",
    "at",
    "data",
}


class Receiver:
    """A local HTTP server that answers with the statuses it is told, in order."""

    def __init__(self):
        self.received = []
        self.statuses = []
        self.delay = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.received.append((headers, body))
                time.sleep(receiver.delay)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def channels(settings, receiver):
    settings.BREAKGLASS_ALERT_WEBHOOK_URLS = [receiver.url]
    settings.BREAKGLASS_ALERT_WEBHOOK_SECRET = SECRET
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com", "sre@example.com"]
    settings.BREAKGLASS_ALERT_TIMEOUT_SECONDS = 1
    return settings


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


def _signature(body):
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def _webhook(event):
    return Alert.objects.get(event=event, channel=Alert.Channel.WEBHOOK)


def test_each_event_gets_one_alert_per_webhook_and_one_email(
    settings, channels, alice, bastion, django_capture_on_commit_callbacks
):
    settings.BREAKGLASS_ALERT_WEBHOOK_URLS = [
        "http://127.0.0.1:9/one",
        "http://127.0.0.1:9/two",
    ]
    access_request = open_request(alice)

    with django_capture_on_commit_callbacks(execute=False) as queued:
        services.cancel_request(access_request.pk, actor=alice)

    event = AuditEvent.objects.get(action="request.cancelled")
    made = Alert.objects.filter(event=event).order_by("id")
    assert [(a.channel, a.destination) for a in made] == [
        ("webhook", "http://127.0.0.1:9/one"),
        ("webhook", "http://127.0.0.1:9/two"),
        ("email", "security@example.com,sre@example.com"),
        # The requester hears that their request was decided.
        ("email", "alice@example.com"),
    ]
    assert len({a.delivery_id for a in made}) == 4
    assert all(a.attempts == 0 and a.delivered_at is None for a in made)
    # Delivery starts only after the event commits.
    assert len(queued) == 1


def test_new_request_also_mails_its_approvers(channels, alice, bob, carol, bastion):
    open_request(alice)

    event = AuditEvent.objects.get(action="request.created")
    emails = Alert.objects.filter(event=event, channel="email").order_by("id")
    assert [a.destination for a in emails] == [
        "security@example.com,sre@example.com",
        "bob@example.com,carol@example.com",
    ]


def test_no_channels_no_alerts(alice, bastion):
    open_request(alice)

    assert not Alert.objects.exists()


def test_every_step_of_the_flow_is_alerted(channels, alice, bob, carol, bastion):
    access_request = issued_request(alice, bob, carol)
    services.reveal_credential(access_request.pk, actor=alice)

    for event in AuditEvent.objects.all():
        assert Alert.objects.filter(event=event, channel="webhook").count() == 1
        assert Alert.objects.filter(event=event, channel="email").count() >= 1


def test_webhook_is_signed_and_carries_the_event(channels, receiver, alice, bastion):
    access_request = open_request(alice)
    event = AuditEvent.objects.get(action="request.created")
    alert = _webhook(event)

    assert alerts.deliver(alert.pk) is True

    ((headers, body),) = receiver.received
    assert headers["x-breakglass-signature"] == _signature(body)
    assert headers["x-breakglass-event"] == "request.created"
    assert headers["x-breakglass-delivery"] == str(alert.delivery_id)
    assert headers["content-type"] == "application/json"
    payload = json.loads(body)
    assert CONTRACT_KEYS <= set(payload)
    assert payload["event"] == "request.created"
    assert payload["request"] == access_request.pk
    assert (payload["target"], payload["scope"]) == ("bastion", "read")
    assert (payload["requester"], payload["incident"]) == ("alice", "INC-42")
    assert payload["data"] == event.data
    assert payload["severity"] == "info"
    alert.refresh_from_db()
    assert alert.delivered_at is not None
    assert alert.attempts == 1


def test_delivered_alert_is_not_sent_again(channels, receiver, alice, bastion):
    open_request(alice)
    alert = _webhook(AuditEvent.objects.get())

    assert alerts.deliver(alert.pk) is True
    assert alerts.deliver(alert.pk) is True
    services.sweep()

    assert len(receiver.received) == 1


@pytest.mark.parametrize("answer", [500, 404, 302])
def test_refused_delivery_is_kept_and_retried_with_the_same_id(
    channels, receiver, alice, bastion, answer
):
    open_request(alice)
    alert = _webhook(AuditEvent.objects.get())
    receiver.statuses = [answer]
    start = timezone.now()

    with time_machine.travel(start, tick=False):
        assert alerts.deliver(alert.pk) is False

    alert.refresh_from_db()
    assert alert.delivered_at is None
    assert alert.attempts == 1
    assert alert.next_attempt_at > start
    assert alert.last_error == f"HTTP {answer}"

    # Not due yet: the sweep leaves it.
    with time_machine.travel(start + timedelta(seconds=1), tick=False):
        services.sweep()
    assert len(receiver.received) == 1

    with time_machine.travel(alert.next_attempt_at + timedelta(seconds=1)):
        services.sweep()

    alert.refresh_from_db()
    assert alert.delivered_at is not None
    assert alert.attempts == 2
    first, second = receiver.received
    assert first[0]["x-breakglass-delivery"] == str(alert.delivery_id)
    assert second[0]["x-breakglass-delivery"] == str(alert.delivery_id)
    assert first[1] == second[1]


def test_backoff_grows_with_each_failure(channels, receiver, alice, bastion):
    open_request(alice)
    alert = _webhook(AuditEvent.objects.get())
    receiver.statuses = [503, 503, 503]
    start = timezone.now()
    waits = []

    for attempt in range(3):
        at = start + timedelta(minutes=attempt)
        with time_machine.travel(at, tick=False):
            assert alerts.deliver(alert.pk) is False
        alert.refresh_from_db()
        waits.append((alert.next_attempt_at - at).total_seconds())

    assert waits[0] < waits[1] < waits[2]
    assert alert.attempts == 3


def test_timeout_is_a_failed_attempt(channels, receiver, alice, bastion):
    open_request(alice)
    alert = _webhook(AuditEvent.objects.get())
    receiver.delay = 2

    assert alerts.deliver(alert.pk) is False

    alert.refresh_from_db()
    assert alert.attempts == 1
    assert alert.delivered_at is None
    assert "Timeout" in alert.last_error


def test_unreachable_receiver_keeps_the_alert(settings, channels, alice, bastion):
    settings.BREAKGLASS_ALERT_WEBHOOK_URLS = ["http://127.0.0.1:9/nobody"]
    open_request(alice)
    alert = _webhook(AuditEvent.objects.get())

    assert alerts.deliver(alert.pk) is False

    alert.refresh_from_db()
    assert (alert.attempts, alert.delivered_at) == (1, None)
    assert alert.last_error


def test_email_alert(channels, alice, bastion):
    access_request = open_request(alice)
    services.cancel_request(access_request.pk, actor=alice)
    event = AuditEvent.objects.get(action="request.cancelled")
    alert = Alert.objects.get(
        event=event, channel="email", destination="security@example.com,sre@example.com"
    )
    # The requester is told too, so that nobody acts on a stale request.
    waiting = Alert.objects.get(
        event=event, channel="email", destination="alice@example.com"
    )

    assert alerts.deliver(alert.pk) is True
    assert alerts.deliver(waiting.pk) is True

    message, told = mail.outbox
    assert message.subject.startswith("[breakglass] request.cancelled")
    assert message.to == ["security@example.com", "sre@example.com"]
    body = json.loads(message.body)
    assert body["event"] == "request.cancelled"
    assert body["request"] == access_request.pk
    assert told.subject.startswith("[breakglass] request.cancelled")
    assert told.to == ["alice@example.com"]
    alert.refresh_from_db()
    assert alert.delivered_at is not None


def test_critical_events_say_so(channels, receiver, db):
    event = audit.record_event(
        "grant.revocation_failed",
        actor="system",
        subject={"request": None, "target": "orders-db", "scope": "read"},
        data={"principal": "bg_alice_1_abcd", "error": "connection refused"},
    )

    assert alerts.deliver(_webhook(event).pk) is True

    ((_, body),) = receiver.received
    assert json.loads(body)["severity"] == "critical"


def test_no_secret_reaches_an_alert(channels, receiver, alice, bob, carol, bastion):
    access_request = issued_request(alice, bob, carol)
    credential = services.reveal_credential(access_request.pk, actor=alice)
    services.sweep()

    sent = b"".join(body for _, body in receiver.received).decode()
    sent += "".join(m.body for m in mail.outbox)
    assert "credential.revealed" in sent
    assert credential["private_key"].strip() not in sent
    assert credential["certificate"].split()[1] not in sent


def test_email_that_cannot_be_sent_is_kept(channels, settings, alice, bastion):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    open_request(alice)
    alert = Alert.objects.filter(channel="email").first()

    assert alerts.deliver(alert.pk) is False

    alert.refresh_from_db()
    assert (alert.attempts, alert.delivered_at) == (1, None)
    assert alert.next_attempt_at > alert.created_at
    assert "ConnectionRefused" in alert.last_error
