"""Verify an exported audit trail offline, with nothing but Python's standard library.

This file imports nothing from Breakglass or Django, so an auditor can copy it alone
and run it on a CSV or JSON export of the trail:

    python offline.py breakglass-trail.csv
    python offline.py --filtered breakglass-trail-filtered.csv
    python -m breakglass.offline breakglass-trail.json

Each event's hash is recomputed over the same canonical form the server hashes, and
each event is checked to link to the one before it wherever both are in the file. An
export of the whole trail must run from seq 1 without a gap. A filtered export (a JSON
export says so in its "filter"; say so with --filtered for a CSV export) may skip
events: consecutive events must still link, the others are counted as "filtered, not
linked", and every event's own hash is still checked.

Exit status: 0 when the export is intact, 1 naming the first bad seq and why, 2 when
the file cannot be read as an export.
"""

import argparse
import csv
import hashlib
import json
import sys
from dataclasses import dataclass

GENESIS_HASH = "0" * 64

# What the hash covers, in the export's column order; the hash comes last.
HASHED_FIELDS = (
    "seq",
    "at",
    "actor",
    "action",
    "request",
    "incident",
    "target",
    "scope",
    "requester",
    "data",
    "prev_hash",
)
FIELDS = (*HASHED_FIELDS, "hash")
_TEXT_FIELDS = ("at", "actor", "action", "incident", "target", "scope", "requester")


class UnreadableExport(Exception):
    """The file is not a trail export at all: nothing in it could be checked."""


class BadEvent(Exception):
    """One event of the export is malformed, tampered, missing or out of place."""

    def __init__(self, seq, reason, where=""):
        self.seq = seq
        self.reason = reason
        self.where = where
        super().__init__(reason)


@dataclass
class Result:
    checked: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    # Places where the filter left events out, so two events could not be linked.
    unlinked: int = 0
    filtered: bool = False
    bad: BadEvent | None = None

    @property
    def ok(self):
        return self.bad is None


def canonical_content(event):
    """Return the bytes an event's hash covers, as breakglass.audit hashes them."""
    content = {name: event[name] for name in HASHED_FIELDS}
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def compute_hash(event):
    return hashlib.sha256(canonical_content(event)).hexdigest()


def read_export(path):
    """Return (events, filtered) for an export file; events are (where, event).

    `filtered` is True or False for a JSON export, which states its filter, and
    None for a CSV export. A malformed row is yielded as a BadEvent, in its place.
    """
    try:
        with open(path, encoding="utf-8-sig") as file:
            start = file.read(1024).lstrip()
    except (OSError, UnicodeError) as exc:
        raise UnreadableExport(f"cannot read {path}: {exc}") from None
    if start.startswith("{"):
        return _read_json(path)
    return _read_csv(path), None


def _read_json(path):
    try:
        with open(path, encoding="utf-8-sig") as file:
            document = json.load(file)
    except (OSError, UnicodeError, ValueError) as exc:
        raise UnreadableExport(f"{path} is not a JSON document: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("events"), list):
        raise UnreadableExport(f'{path} has no "events" list')
    trail_filter = document.get("filter")
    if not isinstance(trail_filter, dict):
        raise UnreadableExport(f'{path} has no "filter" object')

    def events():
        for index, event in enumerate(document["events"]):
            where = f"event {index + 1} of the events list"
            if not isinstance(event, dict):
                yield BadEvent(None, "is not an object", where)
                continue
            yield _checked_shape(event, where)

    return events(), bool(trail_filter)


def _read_csv(path):
    # A row's data can be long; the default limit of 128 KiB is not a property of
    # the trail.
    csv.field_size_limit(2**31 - 1)
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file)
            header = reader.fieldnames or []
            missing = [name for name in FIELDS if name not in header]
            if missing:
                raise UnreadableExport(
                    f"{path} is not a trail export: no column {', '.join(missing)}"
                )
            for row in reader:
                where = f"line {reader.line_num}"
                if None in row or any(value is None for value in row.values()):
                    yield BadEvent(
                        _seq_of(row), "has the wrong number of fields", where
                    )
                    continue
                yield _event_from_csv(row, where)
    except (OSError, UnicodeError, csv.Error) as exc:
        raise UnreadableExport(f"cannot read {path} as CSV: {exc}") from None


def _seq_of(row):
    try:
        return int(row.get("seq"))
    except (TypeError, ValueError):
        return None


def _event_from_csv(row, where):
    seq = _seq_of(row)
    event = {name: row[name] for name in FIELDS}
    event["seq"] = seq
    try:
        event["request"] = int(row["request"]) if row["request"] != "" else None
    except ValueError:
        return BadEvent(seq, "has a request that is not a number", where)
    try:
        event["data"] = json.loads(row["data"])
    except ValueError:
        return BadEvent(seq, "has data that is not JSON", where)
    return _checked_shape(event, where)


def _checked_shape(event, where):
    seq = event.get("seq")
    if not _is_int(seq):
        return BadEvent(None, "has no valid seq", where)
    missing = [name for name in FIELDS if name not in event]
    if missing:
        return BadEvent(seq, f"lacks {', '.join(missing)}", where)
    if event["request"] is not None and not _is_int(event["request"]):
        return BadEvent(seq, "has a request that is not a number", where)
    for name in (*_TEXT_FIELDS, "prev_hash", "hash"):
        if not isinstance(event[name], str):
            return BadEvent(seq, f"has a {name} that is not text", where)
    return where, event


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def verify(events, *, filtered=False):
    """Check every event's hash and every link the export can show; return a Result.

    Stops at the first bad event. With `filtered` false the export must be the
    whole trail: gapless from seq 1, starting from the genesis hash.
    """
    result = Result(filtered=filtered)
    seen = set()
    previous = None
    # A jump in seq is judged on the next row: a row that comes back to fill it
    # means the rows were reordered, not that an event is missing.
    pending_gap = None
    for item in events:
        if isinstance(item, BadEvent):
            result.bad = pending_gap or item
            return result
        where, event = item
        seq = event["seq"]

        if seq in seen:
            result.bad = pending_gap or BadEvent(seq, "appears twice", where)
            return result
        if previous is not None and seq < previous["seq"]:
            result.bad = BadEvent(
                seq, f"comes after seq {previous['seq']}: rows are out of order", where
            )
            return result
        if pending_gap is not None:
            result.bad = pending_gap
            return result
        if compute_hash(event) != event["hash"]:
            result.bad = BadEvent(
                seq, "was altered: its hash does not match its content", where
            )
            return result

        if previous is None:
            if not filtered and seq != 1:
                pending_gap = BadEvent(
                    1, f"is missing: the export starts at seq {seq}", where
                )
            elif not filtered and event["prev_hash"] != GENESIS_HASH:
                result.bad = BadEvent(
                    seq, "does not start from the genesis hash", where
                )
                return result
        elif seq == previous["seq"] + 1:
            if event["prev_hash"] != previous["hash"]:
                result.bad = BadEvent(
                    seq,
                    f"does not link to seq {previous['seq']}: its prev_hash is not "
                    "that event's hash",
                    where,
                )
                return result
        elif filtered:
            result.unlinked += 1
        else:
            missing = previous["seq"] + 1
            span = (
                f"seq {missing}" if missing == seq - 1 else f"seqs {missing}-{seq - 1}"
            )
            pending_gap = BadEvent(
                missing,
                f"is missing: the export jumps from seq {previous['seq']} to {seq} "
                f"({span} absent)",
                where,
            )

        seen.add(seq)
        previous = {"seq": seq, "hash": event["hash"]}
        result.checked += 1
        if result.first_seq is None:
            result.first_seq = seq
        result.last_seq = seq
        result.last_hash = event["hash"]
    result.bad = pending_gap
    return result


def verify_file(path, *, filtered=False):
    """Read and check an export file; raise UnreadableExport if it is not one."""
    events, states_filtered = read_export(path)
    return verify(events, filtered=filtered or bool(states_filtered))


def describe(result, path):
    """Return the report of a verification in one line."""
    if result.bad is not None:
        bad = result.bad
        name = f"seq {bad.seq}" if bad.seq is not None else "an event"
        where = f" ({bad.where})" if bad.where else ""
        return (
            f"trail export {path} is broken: {name} {bad.reason}{where}; "
            f"{result.checked} events checked before it"
        )
    if not result.checked:
        return f"trail export {path} holds no events"
    text = (
        f"trail export {path} intact: {result.checked} events checked, "
        f"seq {result.first_seq} to {result.last_seq}, last hash {result.last_hash}"
    )
    if result.filtered:
        text += f"; filtered, {result.unlinked} breaks not linked"
    return text


def main(argv=None, stdout=None, stderr=None):
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = argparse.ArgumentParser(
        prog="offline.py",
        description="Verify a CSV or JSON export of the Breakglass audit trail.",
    )
    parser.add_argument("path", help="the exported file")
    parser.add_argument(
        "--filtered",
        action="store_true",
        help="the export was filtered: gaps are allowed between events that are "
        "not consecutive (a JSON export states this itself)",
    )
    options = parser.parse_args(argv)
    try:
        result = verify_file(options.path, filtered=options.filtered)
    except UnreadableExport as exc:
        print(f"cannot verify: {exc}", file=stderr)
        return 2
    if result.ok:
        print(describe(result, options.path), file=stdout)
        return 0
    print(describe(result, options.path), file=stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
