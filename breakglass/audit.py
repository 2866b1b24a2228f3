"""The audit trail: append-only events linked in a hash chain."""

import hashlib
import json

from django.db import connection, transaction

from . import alerts, clock
from .models import AuditEvent

GENESIS_HASH = "0" * 64
_dumps = json.dumps
SYSTEM = "system"

# Serialises writers of the chain on PostgreSQL so that sequence numbers stay
# gapless and every event links to the one before it (SQLite locks the whole file).
_CHAIN_LOCK_KEY = 0x6267_6175_6469_74  # "bgaudit"


# The fields an event's hash covers, in the order verification reads them.
HASHED_FIELDS = (
    "seq",
    "actor",
    "action",
    "request_id",
    "incident",
    "target",
    "scope",
    "requester",
    "data",
    "prev_hash",
    "at",
)


def canonical_content(event):
    """Return the bytes the event's hash covers (everything but the hash itself).

    They are the compact JSON of those fields with sorted keys, ASCII only, as
    `json.dumps(content, sort_keys=True, separators=(",", ":"))` writes it; the
    template below is that, spelled out so that verification runs fast.
    """
    at = event.at.isoformat(timespec="microseconds")
    return _canonical(*(getattr(event, field) for field in HASHED_FIELDS[:-1]), at)


def _canonical(
    seq, actor, action, request, incident, target, scope, requester, data, prev, at
):
    data = _dumps(data, sort_keys=True, separators=(",", ":"))
    request = "null" if request is None else int(request)
    return (
        f'{{"action":{_dumps(action)},"actor":{_dumps(actor)},"at":"{at}",'
        f'"data":{data},"incident":{_dumps(incident)},"prev_hash":"{prev}",'
        f'"request":{request},"requester":{_dumps(requester)},'
        f'"scope":{_dumps(scope)},"seq":{int(seq)},"target":{_dumps(target)}}}'
    ).encode()


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


def verify_chain(after=None):
    """Check every event's hash and link; return (checked, first bad seq or None).

    `after` is a (seq, hash) already known good: only the events after it are
    checked. Rows are read as tuples, not model instances, so that a million
    events verify in seconds.
    """
    expected_seq, expected_prev = (1, GENESIS_HASH) if after is None else after
    if after is not None:
        expected_seq += 1
    checked = 0
    sha256 = hashlib.sha256
    for row in _hashed_rows(expected_seq - 1):
        checked += 1
        seq, prev, stored = row[0], row[9], row[11]
        if (
            seq != expected_seq
            or prev != expected_prev
            or sha256(_canonical(*row[:11])).hexdigest() != stored
        ):
            return checked, seq
        expected_prev = stored
        expected_seq += 1
    return checked, None


# Ask PostgreSQL for `at` already in the canonical form: isoformat in UTC.
_TRAIL_SQL = """
SELECT seq, actor, action, request_id, incident, target, scope, requester,
       data::text, prev_hash,
       to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), hash
FROM breakglass_auditevent WHERE seq > %s ORDER BY seq
"""


def _hashed_rows(after_seq):
    """Yield each event after `after_seq`: the fields its hash covers, its hash."""
    if connection.vendor == "postgresql":
        loads = json.loads
        with transaction.atomic(), connection.chunked_cursor() as cursor:
            cursor.execute(_TRAIL_SQL, [after_seq])
            while batch := cursor.fetchmany(10000):
                for row in batch:
                    yield (*row[:8], loads(row[8]), *row[9:])
        return
    fields = [f for f in HASHED_FIELDS if f != "at"]
    rows = AuditEvent.objects.filter(seq__gt=after_seq).order_by("seq")
    for row in rows.values_list(*fields, "at", "hash").iterator(chunk_size=5000):
        yield (*row[:10], row[10].isoformat(timespec="microseconds"), row[11])
