"""The audit trail: append-only events linked in a hash chain."""

import hashlib
import json
import logging
import time

from django.db import connection, transaction

from . import alerts, checkpoints, clock
from .models import AuditEvent, ChainVerification

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# The pieces of json.dumps and json.loads, built once and called directly:
# verification runs them for every event, and their wrappers cost more than
# the work itself.
_quote = json.encoder.encode_basestring_ascii
_decode_data = json.JSONDecoder().decode
if json.encoder.c_make_encoder is not None:
    _iterencode = json.encoder.c_make_encoder(
        None, None, _quote, None, ":", ",", True, False, True
    )

    def _encode_data(data):
        return "".join(_iterencode(data, 0))

else:  # pragma: no cover - Python built without the C accelerator
    _encode_data = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
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
    data = _encode_data(data)
    request = "null" if request is None else int(request)
    return (
        f'{{"action":{_quote(action)},"actor":{_quote(actor)},"at":"{at}",'
        f'"data":{data},"incident":{_quote(incident)},"prev_hash":"{prev}",'
        f'"request":{request},"requester":{_quote(requester)},'
        f'"scope":{_quote(scope)},"seq":{int(seq)},"target":{_quote(target)}}}'
    ).encode()


def compute_hash(event):
    return hashlib.sha256(canonical_content(event)).hexdigest()


def record_event(action, *, actor, subject=None, data=None, notify=()):
    """Append an event and queue its alerts; call inside the state change's transaction.

    `subject` names what the event is about: request id, incident, target, scope
    and requester, the grant id for the log line, and the target's own alert
    channels when the caller has them at hand. `data` must never hold a
    secret. `notify` adds email addresses that get this event besides the
    configured channels.
    """
    subject = subject or {}
    # No savepoint: an event that fails to append must fail its state change,
    # and the chain's lock is held to commit, so every round trip here counts.
    with transaction.atomic(savepoint=False):
        _lock_chain()
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
        alerts.queue_alerts(
            event, notify=notify, target_channels=subject.get("target_channels")
        )
        _log_event(event, subject.get("grant"))
    return event


def _log_event(event, grant_id):
    """Write one log line for a recorded event: ids and names, never its data."""
    logger.info(
        "%s seq=%s request=%s grant=%s actor=%s",
        event.action,
        event.seq,
        event.request_id,
        grant_id,
        event.actor,
        extra={
            "event": event.action,
            "seq": event.seq,
            "request_id": event.request_id,
            "grant_id": grant_id,
            "actor": event.actor,
            "target": event.target,
            "scope": event.scope,
            "incident": event.incident,
        },
    )


def _lock_chain():
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])


def verify_chain(after=None):
    """Check every event's hash and link; return (checked, first bad seq or None).

    `after` is a (seq, hash) already known good: only the events after it are
    checked. Rows are read as tuples, not model instances, so that a million
    events verify in seconds.
    """
    checked, first_bad, _ = _verify(after)
    return checked, first_bad


def _verify(after):
    """Return (checked, first bad seq or None, (seq, hash) of the last good event)."""
    expected_seq, expected_prev = (0, GENESIS_HASH) if after is None else after
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
            return checked, seq, (expected_seq - 1, expected_prev)
        expected_prev = stored
        expected_seq += 1
    return checked, None, (expected_seq - 1, expected_prev)


def _missing_since(verification):
    """Return the head seq a recorded verification saw if it is gone, or None.

    A chain that is whole from seq 1 can still have lost its end, or have been
    rewritten: the event at the head that verification saw must still be there,
    with its hash. The answer stays the same however many events follow.
    """
    if verification is None or verification.head_seq == 0:
        return None
    kept = AuditEvent.objects.filter(
        seq=verification.head_seq, hash=verification.head_hash
    ).exists()
    return None if kept else verification.head_seq


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
        loads = _decode_data
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


# Recorded verifications


def verify_and_record():
    """Verify the whole trail, keep the result, and alert when it newly breaks.

    Runs periodically and from `verify_audit`; pages show its latest result.
    """
    started = time.monotonic()
    checked, first_bad, (head_seq, head_hash) = _verify(None)
    if first_bad is None:
        first_bad = _missing_since(_last_intact())
    with transaction.atomic():
        previous = ChainVerification.objects.order_by("-checked_at", "-id").first()
        verification = ChainVerification.objects.create(
            checked_at=clock.now(),
            checked=checked,
            first_bad=first_bad,
            # Exactly what was checked: events appended meanwhile are left to
            # the next look.
            head_seq=head_seq if first_bad is None else 0,
            head_hash=head_hash if first_bad is None else "",
            seconds=round(time.monotonic() - started, 3),
        )
        if first_bad is not None and (
            previous is None or previous.first_bad != first_bad
        ):
            logger.error("audit trail broken at seq %s", first_bad)
            record_event(
                "audit.chain_broken",
                actor=SYSTEM,
                data={"first_bad": first_bad, "checked": checked},
            )
    return verification


def _last_intact():
    return (
        ChainVerification.objects.filter(first_bad__isnull=True, head_seq__gt=0)
        .order_by("-checked_at", "-id")
        .first()
    )


def chain_state():
    """Return the trail's state for a page: the last full check plus newer events.

    Only the events appended since the last recorded full verification are
    checked here; with none recorded, the whole trail is.
    """
    latest = ChainVerification.objects.order_by("-checked_at", "-id").first()
    if latest is None:
        checked, first_bad = verify_chain()
        return {"checked": checked, "first_bad": first_bad, "full_check_at": None}
    state = {
        "checked": latest.checked,
        "first_bad": latest.first_bad,
        "full_check_at": latest.checked_at,
    }
    if latest.first_bad is None:
        first_bad = _missing_since(latest)
        newer = 0
        if first_bad is None:
            # An empty trail's head has no hash of its own: the chain starts at
            # the genesis hash.
            after = (latest.head_seq, latest.head_hash or GENESIS_HASH)
            newer, first_bad = verify_chain(after=after)
        state.update(checked=latest.checked + newer, first_bad=first_bad)
    return state


# Checkpoints


def sign_checkpoint():
    """Sign the chain's head and send it out as an `audit.checkpoint` event.

    Returns the checkpoint, or None when nothing was appended since the last one.
    """
    key = checkpoints.load_signing_key()
    with transaction.atomic():
        _lock_chain()
        head = AuditEvent.objects.order_by("-seq").values("seq", "hash", "action")
        head = head.first()
        if head is None or head["action"] == "audit.checkpoint":
            return None
        checkpoint = checkpoints.sign(
            key, seq=head["seq"], hash=head["hash"], signed_at=clock.now()
        )
        record_event("audit.checkpoint", actor=SYSTEM, data=checkpoint)
    logger.info("audit checkpoint signed at seq %s", checkpoint["seq"])
    return checkpoint


def check_against_checkpoint(checkpoint, public_key):
    """Raise CheckpointError unless the trail still holds the signed head.

    The signature must verify; the event at the checkpoint's seq must exist and
    carry its hash. Together with a verified chain, this shows that nothing up
    to the checkpoint was rewritten, removed or truncated.
    """
    checkpoints.check_signature(checkpoint, public_key)
    seq, expected = int(checkpoint["seq"]), checkpoint["hash"]
    found = AuditEvent.objects.filter(seq=seq).values_list("hash", flat=True).first()
    if found is None:
        last = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True)
        raise checkpoints.CheckpointError(
            f"the trail ends at seq {last.first() or 0}, before checkpoint seq {seq}"
            f" signed at {checkpoint['signed_at']}: events were removed"
        )
    if found != expected:
        raise checkpoints.CheckpointError(
            f"event seq {seq} has hash {found[:16]}..., but the checkpoint signed"
            f" at {checkpoint['signed_at']} says {expected[:16]}...: the trail"
            " was rewritten"
        )
