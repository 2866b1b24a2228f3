"""The audit trail: append-only events linked in a hash chain."""

import hashlib
import json

from django.db import connection, transaction

from . import alerts, clock
from .models import AuditEvent

GENESIS_HASH = "0" * 64
SYSTEM = "system"

# Serialises writers of the chain on PostgreSQL so that sequence numbers stay
# gapless and every event links to the one before it (SQLite locks the whole file).
_CHAIN_LOCK_KEY = 0x6267_6175_6469_74  # "bgaudit"


def canonical_content(event):
    """Return the bytes the event's hash covers (everything but the hash itself)."""
    content = {
        "seq": event.seq,
        "at": event.at.isoformat(timespec="microseconds"),
        "actor": event.actor,
        "action": event.action,
        "request": event.request_id,
        "incident": event.incident,
        "target": event.target,
        "scope": event.scope,
        "requester": event.requester,
        "data": event.data,
        "prev_hash": event.prev_hash,
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def compute_hash(event):
    return hashlib.sha256(canonical_content(event)).hexdigest()


def record_event(action, *, actor, subject=None, data=None, notify=()):
    """Append an event and queue its alerts; call inside the state change's transaction.

    `subject` names what the event is about: request id, incident, target, scope
    and requester. `data` must never hold a secret. `notify` adds email addresses
    that get this event besides the configured channels.
    """
    subject = subject or {}
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
        last = AuditEvent.objects.order_by("-seq").values("seq", "hash").first()
        event = AuditEvent(
            seq=(last["seq"] + 1) if last else 1,
            prev_hash=last["hash"] if last else GENESIS_HASH,
            at=clock.now(),
            actor=actor or SYSTEM,
            action=action,
            request_id=subject.get("request"),
            incident=subject.get("incident", ""),
            target=subject.get("target", ""),
            scope=subject.get("scope", ""),
            requester=subject.get("requester", ""),
            data=data or {},
        )
        # Store the data as the database will return it, so the hash verifies later.
        event.data = json.loads(json.dumps(event.data))
        event.hash = compute_hash(event)
        event.save()
        alerts.queue_alerts(event, notify=notify)
    return event


def verify_chain(events=None):
    """Check every event's hash and link; return (checked, first bad seq or None)."""
    events = events if events is not None else AuditEvent.objects.order_by("seq")
    checked = 0
    expected_prev = GENESIS_HASH
    expected_seq = 1
    for event in events.iterator(chunk_size=5000):
        checked += 1
        if (
            event.seq != expected_seq
            or event.prev_hash != expected_prev
            or compute_hash(event) != event.hash
        ):
            return checked, event.seq
        expected_prev = event.hash
        expected_seq += 1
    return checked, None
