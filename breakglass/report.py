"""The compliance report: the break-glass access asked for, given and ended in a range.

A report covers the requests made on the days from `since` to `until`, both
included, in UTC, and the grants of those requests. Its cost does not grow with
the number of grants in queries: counts are grouped in the database, and the
durations come from one row per grant read in a single query.
"""

import math
import statistics
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Count, Max

from . import clock, selectors
from .errors import InvalidInput
from .models import AccessRequest, AuditEvent, Grant

Status = AccessRequest.Status

# A grant revoked more than this after it was due is revoked late.
LATE_REVOCATION = timedelta(seconds=60)
# The range of a report, in days, both ends included.
DEFAULT_DAYS = 30
MAX_DAYS = 366

_ENDED = (Status.EXPIRED, Status.REVOKED)
# What names a grant in the lists of the report.
_SUBJECT = ["request", "target", "scope", "requester", "incident", "principal"]
_GRANT_FIELDS = {
    "request": "request_id",
    "status": "request__status",
    "created_at": "request__created_at",
    "target": "request__target__name",
    "scope": "request__scope__name",
    "requester": "request__requester__username",
    "incident": "request__incident",
    "principal": "principal",
    "approved_at": "approved_at",
    "issued_at": "issued_at",
    "expires_at": "expires_at",
    "end_requested_at": "end_requested_at",
    "ended_at": "ended_at",
}


def can_see_report(user):
    return selectors.can_read_trail(user)


def report_range(since=None, until=None, *, today=None):
    """Return the first and last day of a report, filling in what is missing.

    Without `until` the report ends today (UTC); without `since` it covers the
    30 days up to `until`. Raise InvalidInput, naming the field, for a range that
    ends before it starts or is longer than MAX_DAYS.
    """
    until = until or today or clock.now().astimezone(UTC).date()
    if since is None:
        # Counted in day numbers: a date before date.min cannot even be made.
        since = date.fromordinal(max(1, until.toordinal() - (DEFAULT_DAYS - 1)))
    if until < since:
        raise InvalidInput(
            "The report ends before it starts.",
            fields={"until": ["Must not be before the first day."]},
        )
    if (until - since).days + 1 > MAX_DAYS:
        raise InvalidInput(
            "The range is too long.",
            fields={"until": [f"A report covers at most {MAX_DAYS} days."]},
        )
    return since, until


def compliance_report(since, until, now=None):
    """Return the figures of the requests made from day `since` to day `until`.

    Both days are included and read in UTC. Failed revocations are those alerted
    in the range, whatever the request's day, and those still failing at `now`.
    """
    now = now or clock.now()
    starts_at = datetime.combine(since, time.min, UTC)
    # The last instant of the last day, not the start of the next one: the day
    # after date.max does not exist.
    ends_at = datetime.combine(until, time.max, UTC)
    requests = AccessRequest.objects.filter(
        created_at__gte=starts_at, created_at__lte=ends_at
    )
    grants = _grant_rows(Grant.objects.filter(request__in=requests.values("pk")))
    issued = [row for row in grants if row["issued_at"] is not None]
    ended = [row for row in grants if row["status"] in _ENDED]
    # Grants due to end and not ended: one query, whatever the range.
    unrevoked = selectors.failing_revocations(now)

    return {
        "since": since,
        "until": until,
        "generated_at": now,
        "late_after_seconds": int(LATE_REVOCATION.total_seconds()),
        **_requests_by_status(requests),
        "grants_issued": len(issued),
        "grants_by_target": _counts(issued, "target"),
        "grants_by_requester": _counts(issued, "requester"),
        "grants_by_day": _by_day(issued, since, until),
        "time_to_approval": _summary(
            (row["approved_at"] - row["created_at"], row["request"]) for row in grants
        ),
        "time_to_issuance": _summary(
            (row["issued_at"] - row["approved_at"], row["request"]) for row in issued
        ),
        "time_to_revocation": _summary(
            (row["ended_at"] - _due_at(row), row["request"]) for row in ended
        ),
        "revoked_late": _revoked_late(ended, grants, unrevoked, now),
        "failed_revocations": _failed_revocations(starts_at, ends_at, unrevoked),
        "reviews_overdue": _reviews_overdue(requests, now),
    }


def _grant_rows(queryset):
    rows = queryset.values(*_GRANT_FIELDS.values()).order_by("request_id")
    return [{name: row[field] for name, field in _GRANT_FIELDS.items()} for row in rows]


def _requests_by_status(requests):
    counts = dict(requests.order_by().values_list("status").annotate(count=Count("pk")))
    return {
        "requests_total": sum(counts.values()),
        "requests_by_status": [
            {"status": status, "count": counts.get(status, 0)}
            for status in Status.values
        ],
    }


def _counts(rows, key):
    counts = Counter(row[key] for row in rows)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{key: name, "count": count} for name, count in ranked]


def _by_day(rows, since, until):
    counts = Counter(row["created_at"].astimezone(UTC).date() for row in rows)
    days = (until - since).days + 1
    return [
        {"day": day, "count": counts.get(day, 0)}
        for day in (since + timedelta(days=n) for n in range(days))
    ]


def _due_at(row):
    """Return when an ended grant was due to be revoked.

    A grant ended early (revoked) was due when the end was asked for; any other
    was due at its expiry, an SSH grant that could not be recalled included.
    """
    if row["status"] == Status.REVOKED:
        return row["end_requested_at"]
    return row["expires_at"]


def _summary(pairs):
    """Return the count, median, 95th percentile and worst of (duration, request)."""
    pairs = [(delta.total_seconds(), request) for delta, request in pairs]
    if not pairs:
        return {
            "count": 0,
            "median_seconds": None,
            "p95_seconds": None,
            "worst_seconds": None,
            "worst_request": None,
        }
    values = sorted(seconds for seconds, _ in pairs)
    # Of equal worst times, the earliest request is named.
    worst_seconds, worst_request = max(pairs, key=lambda pair: (pair[0], -pair[1]))
    return {
        "count": len(values),
        "median_seconds": _rounded(statistics.median(values)),
        # Nearest rank: a time that some request really took.
        "p95_seconds": _rounded(values[math.ceil(0.95 * len(values)) - 1]),
        "worst_seconds": _rounded(worst_seconds),
        "worst_request": worst_request,
    }


def _rounded(seconds):
    return round(seconds, 3)


def _revoked_late(ended, grants, unrevoked, now):
    """Return the grants revoked, or still not revoked at `now`, late.

    Late means more than LATE_REVOCATION after they were due.
    """
    late = []
    for row in ended:
        due_at = _due_at(row)
        if row["ended_at"] - due_at > LATE_REVOCATION:
            late.append(_late_row(row, due_at, row["ended_at"]))
    in_range = {row["request"]: row for row in grants}
    for pending in unrevoked:
        row = in_range.get(pending["request"])
        if row is not None and now - pending["due_at"] > LATE_REVOCATION:
            late.append(_late_row(row, pending["due_at"], None, now=now))
    return sorted(late, key=lambda row: (row["due_at"], row["request"]))


def _late_row(row, due_at, ended_at, *, now=None):
    return {
        **_subject(row),
        "due_at": due_at,
        "ended_at": ended_at,
        "late_seconds": _rounded(((ended_at or now) - due_at).total_seconds()),
    }


def _subject(row):
    return {key: row[key] for key in _SUBJECT}


def _failed_revocations(starts_at, ends_at, unrevoked):
    """Return the grants whose revocation failed in the range or is failing now."""
    failures = {
        row["request_id"]: row
        for row in AuditEvent.objects.filter(
            action="grant.revocation_failed", at__gte=starts_at, at__lte=ends_at
        )
        .order_by()
        .values("request_id")
        .annotate(failures=Count("pk"), last_failed_at=Max("at"))
    }
    failing = {row["request"] for row in unrevoked if row["state"] == "failing"}
    ids = set(failures) | failing
    if not ids:
        return []
    rows = _grant_rows(Grant.objects.filter(request_id__in=ids))
    return [
        {
            **_subject(row),
            "failures": failures.get(row["request"], {}).get("failures", 0),
            "last_failed_at": failures.get(row["request"], {}).get("last_failed_at"),
            "still_failing": row["request"] in failing,
            "ended_at": row["ended_at"],
        }
        for row in rows
    ]


def _reviews_overdue(requests, now):
    """Return the reviews of these requests that are past due now, oldest first."""
    reviews = selectors.overdue_reviews(now).filter(request__in=requests.values("pk"))
    return [
        {
            "request": review.request_id,
            "target": review.request.target.name,
            "scope": review.request.scope.name,
            "requester": review.request.requester.get_username(),
            "incident": review.request.incident,
            "status": review.status,
            "due_at": review.due_at,
            "overdue_seconds": round((now - review.due_at).total_seconds(), 3),
            "reminders": review.reminders,
        }
        for review in reviews
    ]


def csv_sections(report):
    """Return the report as named tables, (name, header, rows), for a CSV download.

    Names and headers are the keys of the JSON form, so both read alike.
    """
    summary = [
        "since",
        "until",
        "generated_at",
        "late_after_seconds",
        "requests_total",
        "grants_issued",
    ]
    tables = [("report", summary, [[report[key] for key in summary]])]
    for name, key in (
        ("requests_by_status", "status"),
        ("grants_by_target", "target"),
        ("grants_by_requester", "requester"),
        ("grants_by_day", "day"),
    ):
        rows = [[row[key], row["count"]] for row in report[name]]
        tables.append((name, [key, "count"], rows))
    rows = [[name, *(report[name][key] for key in _DURATION)] for name in _TIMES]
    tables.append(("times", ["figure", *_DURATION], rows))
    for name, header in _LIST_HEADERS.items():
        rows = [[row[key] for key in header] for row in report[name]]
        tables.append((name, header, rows))
    return [
        (name, header, [[_cell(value) for value in row] for row in rows])
        for name, header, rows in tables
    ]


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


_TIMES = ("time_to_approval", "time_to_issuance", "time_to_revocation")
_DURATION = ["count", "median_seconds", "p95_seconds", "worst_seconds", "worst_request"]
_LIST_HEADERS = {
    "reviews_overdue": [
        "request",
        "target",
        "scope",
        "requester",
        "incident",
        "status",
        "due_at",
        "overdue_seconds",
        "reminders",
    ],
    "revoked_late": [*_SUBJECT, "due_at", "ended_at", "late_seconds"],
    "failed_revocations": [
        *_SUBJECT,
        "failures",
        "last_failed_at",
        "still_failing",
        "ended_at",
    ],
}
