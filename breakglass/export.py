"""Export the trail as CSV or JSON, streamed, with what an auditor needs to verify it.

Every row carries the fields the hash covers exactly as they were hashed, and the
hash, so that `breakglass/offline.py` (standard library only) can check the chain
away from the server. The rows are read with a server-side cursor and written as
they come, so that a long range never sits in memory.
"""

import csv
import json
import re

from django.http import StreamingHttpResponse

from . import audit, clock, selectors
from .offline import FIELDS

FORMATS = ("csv", "json")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json"}

# Rows fetched per round trip to the database, and rows per chunk sent.
FETCH_SIZE = 2000
CHUNK_ROWS = 500

_COLUMNS = [("request_id" if name == "request" else name) for name in FIELDS]


def export_trail(*, actor, file_format, trail_filter):
    """Record that the actor takes a copy of the trail; return the streamed answer.

    `trail_filter` holds what selectors.events takes (incident, request, since,
    until); only the filters given are recorded and written in the export.
    """
    trail_filter = {k: v for k, v in trail_filter.items() if v is not None}
    described = _describe_filter(trail_filter)
    audit.record_event(
        "audit.exported",
        actor=actor.get_username(),
        data={"format": file_format, "filter": described},
    )

    exported_at = clock.now()
    rows = _rows(selectors.events(**trail_filter))
    if file_format == "csv":
        chunks = _csv_chunks(rows)
    else:
        chunks = _json_chunks(rows, exported_at=exported_at, described=described)
    response = StreamingHttpResponse(chunks, content_type=CONTENT_TYPES[file_format])
    name = _file_name(exported_at, described, file_format)
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response


def _describe_filter(trail_filter):
    return {
        name: value.isoformat() if hasattr(value, "isoformat") else value
        for name, value in trail_filter.items()
    }


def _rows(events):
    for values in events.values_list(*_COLUMNS).iterator(chunk_size=FETCH_SIZE):
        row = dict(zip(FIELDS, values, strict=True))
        # The very text the hash covers (audit.canonical_content).
        row["at"] = row["at"].isoformat(timespec="microseconds")
        yield row


def _chunked(lines):
    chunk = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= CHUNK_ROWS:
            yield "".join(chunk)
            chunk = []
    if chunk:
        yield "".join(chunk)


class _Line:
    """A file that hands back what the csv writer writes, instead of keeping it."""

    def write(self, text):
        return text


def _csv_chunks(rows):
    writer = csv.writer(_Line())
    yield writer.writerow(FIELDS)
    yield from _chunked(writer.writerow(_csv_values(row)) for row in rows)


def _csv_values(row):
    values = []
    for name in FIELDS:
        if name == "data":
            values.append(_compact(row["data"]))
        else:
            values.append("" if row[name] is None else row[name])
    return values


def _json_chunks(rows, *, exported_at, described):
    head = {
        "exported_at": exported_at.isoformat(timespec="microseconds"),
        "filter": described,
    }
    yield _compact(head)[:-1] + ',"events":['
    # One event per line keeps the document readable and diffable.
    lines = (
        ("\n" if index == 0 else ",\n") + _compact(row)
        for index, row in enumerate(rows)
    )
    yield from _chunked(lines)
    yield "\n]}\n"


def _compact(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _file_name(exported_at, described, file_format):
    parts = ["breakglass-trail"]
    for name in ("incident", "request"):
        if name in described:
            parts.append(f"{name}-{described[name]}")
    if "since" in described or "until" in described:
        parts.append("range")
    parts.append(exported_at.strftime("%Y%m%dT%H%M%SZ"))
    name = "-".join(parts)
    # The incident is free text: keep the name safe in any header and file system.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) + f".{file_format}"
