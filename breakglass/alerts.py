"""Alerts: every audit event goes out on every configured channel, and is never dropped.

Alerts are rows written in the same transaction as their event (an outbox), so an
event cannot commit without its alerts. Delivery starts after commit and is retried
with backoff until it succeeds; the periodic sweep picks up any delivery whose task
was lost.
"""

import hashlib
import hmac
import json
import logging
import uuid
from datetime import timedelta

import requests
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from . import clock
from .models import Alert

logger = logging.getLogger(__name__)

CRITICAL_ACTIONS = {
    "grant.revocation_failed",
    "grant.issue_failed",
    "credential.orphan_removal_failed",
    "audit.chain_broken",
    "credential.rotation_failed",
}
MAX_BACKOFF_SECONDS = 600


def severity(action):
    return "critical" if action in CRITICAL_ACTIONS else "info"


def queue_alerts(event, *, notify=()):
    """Create the event's alerts and start their delivery once the transaction commits.

    `notify` holds extra email addresses for this event only, such as the
    approvers a new request waits for.
    """
    now = clock.now()
    destinations = [
        (Alert.Channel.WEBHOOK, url) for url in settings.BREAKGLASS_ALERT_WEBHOOK_URLS
    ]
    if settings.BREAKGLASS_ALERT_EMAILS:
        destinations.append(
            (Alert.Channel.EMAIL, ",".join(settings.BREAKGLASS_ALERT_EMAILS))
        )
    extra = sorted(set(notify) - set(settings.BREAKGLASS_ALERT_EMAILS))
    if extra:
        destinations.append((Alert.Channel.EMAIL, ",".join(extra)))
    created = Alert.objects.bulk_create(
        Alert(
            event=event,
            channel=channel,
            destination=destination,
            delivery_id=uuid.uuid4(),
            created_at=now,
            next_attempt_at=now,
        )
        for channel, destination in destinations
    )
    if created:
        transaction.on_commit(lambda: _start_delivery(created))


def _start_delivery(alerts):
    from .tasks import deliver_alert

    for alert in alerts:
        try:
            deliver_alert.delay(alert.pk)
        except Exception:
            # The broker is down: the alert row is safe and the sweep retries it.
            logger.exception("could not queue delivery of alert %s", alert.pk)


def payload(event):
    """Return the webhook body for an event (CONTRACT.md, section 6)."""
    return {
        "event": event.action,
        "severity": severity(event.action),
        "seq": event.seq,
        "request": event.request_id,
        "target": event.target,
        "scope": event.scope,
        "requester": event.requester,
        "incident": event.incident,
        "actor": event.actor,
        "at": event.at.isoformat(),
        "data": event.data,
        "url": _request_url(event.request_id),
    }


def _request_url(request_id):
    if request_id is None:
        return None
    return f"{settings.BREAKGLASS_BASE_URL.rstrip('/')}/requests/{request_id}/"


def sign(body):
    """Return the signature header value for a raw webhook body."""
    key = settings.BREAKGLASS_ALERT_WEBHOOK_SECRET.encode()
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def deliver(alert_id):
    """Try to deliver one alert now; return True when it is delivered."""
    with transaction.atomic():
        alert = (
            Alert.objects.select_for_update(skip_locked=True)
            .select_related("event")
            .filter(pk=alert_id, delivered_at__isnull=True)
            .first()
        )
        if alert is None:
            # Delivered already, or another worker is delivering it right now.
            return True
        earlier = _earlier_undelivered(alert)
        if earlier is not None:
            # A destination gets a request's alerts in the order of its events:
            # this one waits for the earlier one, and is tried again with it.
            alert.next_attempt_at = max(earlier.next_attempt_at, clock.now())
            alert.save(update_fields=["next_attempt_at"])
            return False

        try:
            if alert.channel == Alert.Channel.WEBHOOK:
                _post_webhook(alert)
            else:
                _send_email(alert)
        except Exception as exc:
            alert.attempts += 1
            delay = min(MAX_BACKOFF_SECONDS, 2 ** min(alert.attempts, 10))
            alert.next_attempt_at = clock.now() + timedelta(seconds=delay)
            alert.last_error = _describe(exc)[:1000]
            alert.save(update_fields=["attempts", "next_attempt_at", "last_error"])
            logger.warning(
                "alert %s (%s) not delivered, attempt %s: %s",
                alert.delivery_id,
                alert.event.action,
                alert.attempts,
                alert.last_error,
            )
            return False

        alert.attempts += 1
        alert.delivered_at = clock.now()
        alert.last_error = ""
        alert.save(update_fields=["attempts", "delivered_at", "last_error"])
        waiting = _next_waiting(alert)
        if waiting is not None:
            transaction.on_commit(lambda: _start_delivery([waiting]))
        return True


def _earlier_undelivered(alert):
    """Return an earlier undelivered alert of the same request to the same webhook.

    Mail gives no order anyway: an email goes as soon as it can.
    """
    if alert.channel != Alert.Channel.WEBHOOK or alert.event.request_id is None:
        return None
    return (
        Alert.objects.filter(
            delivered_at__isnull=True,
            channel=alert.channel,
            destination=alert.destination,
            event__request_id=alert.event.request_id,
            event__seq__lt=alert.event.seq,
        )
        .order_by("event__seq")
        .only("next_attempt_at")
        .first()
    )


def _next_waiting(alert):
    if alert.channel != Alert.Channel.WEBHOOK or alert.event.request_id is None:
        return None
    return (
        Alert.objects.filter(
            delivered_at__isnull=True,
            channel=alert.channel,
            destination=alert.destination,
            event__request_id=alert.event.request_id,
            event__seq__gt=alert.event.seq,
        )
        .order_by("event__seq")
        .only("pk")
        .first()
    )


def _describe(exc):
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}"


def _post_webhook(alert):
    body = json.dumps(payload(alert.event), sort_keys=True).encode()
    response = requests.post(
        alert.destination,
        data=body,
        headers={
            "Content-Type": "application/json",
            "User-Agent": "breakglass-alerts/1",
            "X-Breakglass-Event": alert.event.action,
            "X-Breakglass-Delivery": str(alert.delivery_id),
            "X-Breakglass-Signature": sign(body),
        },
        timeout=settings.BREAKGLASS_ALERT_TIMEOUT_SECONDS,
        allow_redirects=False,
    )
    response.raise_for_status()
    if response.status_code >= 300:
        raise requests.HTTPError(response=response)


def _send_email(alert):
    event = alert.event
    about = f" request {event.request_id}" if event.request_id else ""
    subject = f"[breakglass] {event.action}{about}"
    if event.target and event.scope:
        subject += f" {event.target}/{event.scope} by {event.requester}"
    elif event.target:
        subject += f" {event.target}"
    body = json.dumps(payload(event), indent=2, sort_keys=True)
    send_mail(
        subject,
        body,
        settings.DEFAULT_FROM_EMAIL,
        alert.destination.split(","),
        fail_silently=False,
    )


def due_alert_ids(limit=500):
    """Return ids of undelivered alerts whose next attempt is due, oldest first."""
    return list(
        Alert.objects.filter(
            delivered_at__isnull=True, next_attempt_at__lte=clock.now()
        ).values_list("pk", flat=True)[:limit]
    )
