"""Alerts: every audit event goes out on every configured channel, and is never dropped.

Webhooks, email and Slack get every event; PagerDuty gets the critical ones and
orphans found. A target may name its own Slack webhook and PagerDuty routing key,
which get the events about it, besides the global channels.

Alerts are rows written in the same transaction as their event (an outbox), so an
event cannot commit without its alerts. Delivery starts after commit and is retried
with backoff until it succeeds; the periodic sweep picks up any delivery whose task
was lost.
"""

import hashlib
import hmac
import json
import logging
import os
import re
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from . import clock
from .models import Alert, Target

logger = logging.getLogger(__name__)

CRITICAL_ACTIONS = {
    "grant.revocation_failed",
    "grant.issue_failed",
    "credential.orphan_removal_failed",
    "audit.chain_broken",
    "credential.rotation_failed",
}
# Paged besides the critical ones: an orphan was a live credential that no grant
# accounted for (a crash mid-issuance, or one made behind our back), removed now
# but worth a person's look.
PAGED_ACTIONS = CRITICAL_ACTIONS | {"credential.orphan_removed"}
MAX_BACKOFF_SECONDS = 600
# Slack and PagerDuty alerts name where their address or key is read from, never
# the secret itself: `setting:NAME` or `setting:NAME#index` for the global
# settings, `env:NAME` for a target's own.
SLACK_SETTING = "BREAKGLASS_ALERT_SLACK_URLS"
PAGERDUTY_SETTING = "BREAKGLASS_ALERT_PAGERDUTY_ROUTING_KEY"
SLACK_TEXT_LIMIT = 300
_ADDRESS = re.compile(r"https?://\S+|(?<=url: )\S+")


def severity(action):
    return "critical" if action in CRITICAL_ACTIONS else "info"


def queue_alerts(event, *, notify=(), target_channels=None):
    """Create the event's alerts and start their delivery once the transaction commits.

    `notify` holds extra email addresses for this event only, such as the
    approvers a new request waits for. `target_channels`, the event's target's
    (slack_webhook_env, pagerduty_routing_key_env), saves reading them again.
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
    destinations += _chat_and_paging(event, target_channels)
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


def _chat_and_paging(event, target_channels=None):
    """Return the Slack and PagerDuty destinations of an event, global then target."""
    paged = event.action in PAGED_ACTIONS
    found = [
        (Alert.Channel.SLACK, f"setting:{SLACK_SETTING}#{index}")
        for index in range(len(settings.BREAKGLASS_ALERT_SLACK_URLS))
    ]
    if paged and settings.BREAKGLASS_ALERT_PAGERDUTY_ROUTING_KEY:
        found.append((Alert.Channel.PAGERDUTY, f"setting:{PAGERDUTY_SETTING}"))
    if event.target:
        slack_env, pagerduty_env = (
            target_channels
            or (
                Target.objects.filter(name=event.target)
                .values_list("slack_webhook_env", "pagerduty_routing_key_env")
                .first()
            )
            or ("", "")
        )
        if slack_env:
            found.append((Alert.Channel.SLACK, f"env:{slack_env}"))
        if paged and pagerduty_env:
            found.append((Alert.Channel.PAGERDUTY, f"env:{pagerduty_env}"))
    return found


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
            _SENDERS[alert.channel](alert)
        except Exception as exc:
            alert.attempts += 1
            delay = min(MAX_BACKOFF_SECONDS, 2 ** min(alert.attempts, 10))
            alert.next_attempt_at = clock.now() + timedelta(seconds=delay)
            alert.last_error = _describe(exc, quiet=alert.channel in SECRET_CHANNELS)
            alert.last_error = alert.last_error[:1000]
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


def _undelivered_of_same_request(alert):
    """Return the other undelivered alerts of the alert's request to its webhook.

    A webhook gets a request's alerts in order; mail gives no order anyway, so an
    email goes as soon as it can.
    """
    if alert.channel != Alert.Channel.WEBHOOK or alert.event.request_id is None:
        return Alert.objects.none()
    return Alert.objects.filter(
        delivered_at__isnull=True,
        channel=alert.channel,
        destination=alert.destination,
        event__request_id=alert.event.request_id,
    ).order_by("event__seq")


def _earlier_undelivered(alert):
    """Return an earlier undelivered alert of the same request to the same webhook."""
    earlier = _undelivered_of_same_request(alert).filter(event__seq__lt=alert.event.seq)
    return earlier.only("next_attempt_at").first()


def _next_waiting(alert):
    """Return the next alert of the same request waiting on this one."""
    later = _undelivered_of_same_request(alert).filter(event__seq__gt=alert.event.seq)
    return later.only("pk").first()


def _describe(exc, *, quiet=False):
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if quiet and isinstance(exc, requests.RequestException):
        # The message of a failed request quotes its address, which is the
        # secret of a Slack webhook: say only what happened underneath.
        cause = exc
        while cause.__context__ is not None:
            cause = cause.__context__
        return f"{type(exc).__name__}: {_ADDRESS.sub('…', str(cause))}"
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


class MissingDestination(Exception):
    """The setting or environment variable an alert names holds nothing now."""


def resolve(destination):
    """Return the address or key a Slack or PagerDuty destination names."""
    source, _, name = destination.partition(":")
    name, _, index = name.partition("#")
    if source == "setting":
        value = getattr(settings, name, None)
        if index:
            value = value[int(index)] if int(index) < len(value or []) else None
    else:
        value = os.environ.get(name)
    if not value:
        raise MissingDestination(f"{name} is not set")
    return value


def _post_json(url, body, *, expected):
    response = requests.post(
        url,
        data=json.dumps(body, sort_keys=True).encode(),
        headers={
            "Content-Type": "application/json",
            "User-Agent": "breakglass-alerts/1",
        },
        timeout=settings.BREAKGLASS_ALERT_TIMEOUT_SECONDS,
        allow_redirects=False,
    )
    response.raise_for_status()
    if response.status_code not in expected:
        raise requests.HTTPError(response=response)


def _post_slack(alert):
    url = resolve(alert.destination)
    if not url.startswith(("http://", "https://")):
        raise MissingDestination(f"{alert.destination} is not an http(s) address")
    _post_json(url, slack_message(alert.event), expected=range(200, 300))


def slack_message(event):
    """Return a Slack incoming-webhook message for an event: text and blocks."""
    url = _request_url(event.request_id) or settings.BREAKGLASS_BASE_URL
    what = f"request {event.request_id}" if event.request_id else "the trail"
    subject = ""
    if event.target:
        subject = f" on {event.target}" + (f"/{event.scope}" if event.scope else "")
    if event.requester:
        subject += f" for {event.requester}"
    if event.incident:
        subject += f", incident {event.incident}"
    marker = ":rotating_light: " if severity(event.action) == "critical" else ""
    headline = f"{marker}*{_escape(event.action)}*: <{url}|{_escape(what)}>"
    lines = [headline + _escape(subject)]
    reason = event.data.get("reason") if isinstance(event.data, dict) else None
    if isinstance(reason, str) and reason:
        lines.append(f">{_escape(reason[:SLACK_TEXT_LIMIT])}")
    return {
        "text": f"[breakglass] {event.action}: {what}{subject}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": _escape(
                            f"by {event.actor} at {event.at.isoformat()}, "
                            f"event {event.seq}"
                        ),
                    }
                ],
            },
        ],
    }


def _escape(text):
    # Slack reads <, > and & as markup: a reason could otherwise forge a link.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _post_pagerduty(alert):
    body = pagerduty_event(alert.event, routing_key=resolve(alert.destination))
    # The Events API answers 202 once it has accepted the event.
    _post_json(settings.BREAKGLASS_ALERT_PAGERDUTY_URL, body, expected=range(200, 300))


def pagerduty_event(event, *, routing_key):
    """Return the PagerDuty Events API v2 trigger for a paged event."""
    about = (
        f"request {event.request_id}"
        if event.request_id
        else event.target or "the audit trail"
    )
    data = event.data if isinstance(event.data, dict) else {}
    # One incident per thing that went wrong: retries of one grant's revocation
    # or one orphan's removal add to it instead of paging again.
    subject = event.request_id or data.get("principal") or event.target or ""
    body = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": f"breakglass/{event.action}/{subject}".rstrip("/"),
        "client": "Breakglass",
        "client_url": settings.BREAKGLASS_BASE_URL,
        "payload": {
            "summary": f"Breakglass: {event.action} ({about})"[:1024],
            "source": event.target or urlsplit(settings.BREAKGLASS_BASE_URL).netloc,
            "severity": (
                "critical" if severity(event.action) == "critical" else "warning"
            ),
            "timestamp": event.at.isoformat(),
            "class": event.action,
            "component": event.target or "audit",
            "custom_details": payload(event),
        },
    }
    url = _request_url(event.request_id)
    if url:
        body["links"] = [{"href": url, "text": f"Request {event.request_id}"}]
    return body


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


_SENDERS = {
    Alert.Channel.WEBHOOK: _post_webhook,
    Alert.Channel.EMAIL: _send_email,
    Alert.Channel.SLACK: _post_slack,
    Alert.Channel.PAGERDUTY: _post_pagerduty,
}
SECRET_CHANNELS = {Alert.Channel.SLACK, Alert.Channel.PAGERDUTY}


def due_alert_ids(limit=500):
    """Return ids of undelivered alerts whose next attempt is due, oldest first."""
    return list(
        Alert.objects.filter(
            delivered_at__isnull=True, next_attempt_at__lte=clock.now()
        ).values_list("pk", flat=True)[:limit]
    )
