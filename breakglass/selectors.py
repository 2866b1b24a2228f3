"""Reads: which requests, events and queues a user can see."""

import time
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db.models import (
    BooleanField,
    Case,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Max,
    Min,
    Q,
    Sum,
    Value,
    When,
)

from . import clock, policy, roles
from .errors import NotVisible
from .models import (
    AccessRequest,
    Alert,
    AuditEvent,
    Grant,
    Review,
    Target,
    WorkerHeartbeat,
)
from .providers import ssh


def _with_relations(queryset):
    return queryset.select_related(
        "requester", "target", "scope", "grant", "review__reviewer"
    ).prefetch_related("approvals__approver", "approver_groups")


def visible_requests(user):
    """Return the requests the user may see: own, approvable, or all."""
    queryset = _with_relations(AccessRequest.objects.all())
    # The roles in one query: this runs on every page and API call.
    active = user.is_authenticated and user.is_active
    held = roles.group_names(user) if active else set()
    if (active and user.is_superuser) or roles.COMPLIANCE in held:
        return queryset
    visible = Q(requester=user)
    if roles.APPROVER in held:
        # A request with no approver groups may be approved by any approver.
        approvable = Q(approver_groups__isnull=True) | Q(
            approver_groups__in=user.groups.all()
        )
        visible |= approvable & ~Q(requester=user)
    ids = AccessRequest.objects.filter(visible).values("pk")
    return queryset.filter(pk__in=ids)


def search_requests(
    user,
    *,
    requester=None,
    approver=None,
    target=None,
    incident=None,
    status=None,
    since=None,
    until=None,
):
    """Return the visible requests matching every filter given, newest first.

    `approver` is the username of someone who voted on the request, either way;
    `since` and `until` bound its creation, `until` excluded.
    """
    found = visible_requests(user)
    if requester:
        found = found.filter(requester__username=requester)
    if approver:
        # One vote per approver and request: the join cannot repeat a request.
        found = found.filter(approvals__approver__username=approver)
    if target:
        found = found.filter(target__name=target)
    if incident:
        found = found.filter(incident=incident)
    if status:
        found = found.filter(status=status)
    if since:
        found = found.filter(created_at__gte=since)
    if until:
        found = found.filter(created_at__lt=until)
    return found


def get_visible_request(request_id, user):
    """Return the request if the user may see it; otherwise raise NotVisible."""
    found = visible_requests(user).filter(pk=request_id).first()
    if found is None:
        raise NotVisible("No such request.")
    return found


def check_visible(request_id, user):
    """Raise NotVisible unless the user may see the request; read nothing more."""
    if not visible_requests(user).filter(pk=request_id).exists():
        raise NotVisible("No such request.")


def awaiting_decision(user):
    """Return pending requests on which the user may still vote.

    The same rule as `policy.is_eligible_approver`, in one query rather than one
    per pending request.
    """
    if not roles.has_role(user, roles.APPROVER):
        return []
    # A request with no approver groups may be approved by any approver.
    eligible = AccessRequest.objects.filter(
        Q(approver_groups__isnull=True) | Q(approver_groups__in=user.groups.all())
    ).values("pk")
    return list(
        visible_requests(user)
        .filter(status=AccessRequest.Status.PENDING, pk__in=eligible)
        .exclude(requester=user)
        .exclude(approvals__approver=user)
    )


PREVIOUS_USE_SIZE = 10


def previous_use(access_request, viewer, *, limit=PREVIOUS_USE_SIZE):
    """Return the requester's other requests, newest first, and how they ended.

    Approvers weigh a request against its requester's earlier break-glass use, so
    the counts cover every request of theirs; the rows only those the viewer may
    open, since a request is visible to its own people alone.
    """
    others = AccessRequest.objects.filter(
        requester_id=access_request.requester_id
    ).exclude(pk=access_request.pk)
    counts = others.aggregate(
        total=Count("pk"), granted=Count("pk", filter=Q(grant__issued_at__isnull=False))
    )
    shown = (
        others.filter(pk__in=visible_requests(viewer).values("pk"))
        .select_related("target", "scope", "grant")
        .order_by("-created_at", "-pk")
    )
    return {"requests": list(shown[:limit]), **counts}


def preview_decision(user, target_name, scope_name):
    """Return what a request for this scope would need of the user now.

    Raise NotVisible for a target or scope the new request form would not offer,
    and the policy's own refusals (NotAllowed, Throttled) as they are.
    """
    target = Target.objects.filter(
        name=target_name, is_active=True, policy__isnull=False
    ).first()
    scope = (
        target.scopes.filter(name=scope_name, is_active=True).first()
        if target is not None
        else None
    )
    if scope is None:
        raise NotVisible("No such target or scope.")
    return target, scope, policy.decide(target, scope, user)


def approver_emails(access_request, group_names=None):
    """Return the addresses of the approvers a new request waits for.

    `group_names` are the request's approver groups when the caller has them.
    """
    approvers = policy.eligible_approvers(access_request, group_names)
    return sorted(email for email in approvers.values_list("email", flat=True) if email)


def people_waiting_on(access_request):
    """Return the addresses of the requester and eligible approvers of a request.

    They are told when it is decided, so that nobody acts on a stale alert.
    """
    emails = set(approver_emails(access_request))
    if access_request.requester.email:
        emails.add(access_request.requester.email)
    return sorted(emails)


def compliance_emails():
    """Return the addresses of the compliance reviewers, who decide on reviews."""
    users = get_user_model().objects.filter(
        is_active=True, groups__name=roles.COMPLIANCE
    )
    return sorted({email for email in users.values_list("email", flat=True) if email})


def can_read_trail(user):
    return roles.has_role(user, roles.COMPLIANCE) or roles.has_role(user, roles.ADMIN)


def events(*, incident=None, request=None, since=None, until=None):
    """Return audit events in chain order, filtered as the trail views need."""
    queryset = AuditEvent.objects.all()
    if incident:
        queryset = queryset.filter(incident=incident)
    if request:
        queryset = queryset.filter(request_id=request)
    if since:
        queryset = queryset.filter(at__gte=since)
    if until:
        queryset = queryset.filter(at__lt=until)
    return queryset.order_by("seq")


def trail_length():
    """Return how many events the trail holds, read from its head.

    Sequence numbers are gapless from 1, so the head's is the count; a gap is a
    break in the chain, which verification reports.
    """
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first()
    return head or 0


# Operations

# An alert still undelivered after this long is stuck, not merely in flight.
STUCK_ALERT_AGE = timedelta(minutes=1)


def can_see_operations(user):
    return can_read_trail(user)


def failing_revocations(now=None):
    """Return a row for each grant whose revocation is due and not done.

    Due means its expiry passed or someone asked for its end; a row is `failing`
    once an attempt failed, `overdue` before the first attempt. Oldest due first.
    """
    now = now or clock.now()
    grants = (
        Grant.objects.filter(request__status=AccessRequest.Status.ACTIVE)
        .filter(
            Q(expires_at__lte=now)
            | Q(end_requested_at__isnull=False)
            | (Q(revoke_attempts__gt=0) & ~Q(last_error=""))
        )
        .select_related("request__target", "request__scope", "request__requester")
    )
    rows = [_revocation_row(grant, now) for grant in grants]
    # An SSH grant asked to end on a target that cannot recall certificates is
    # not due before its expiry.
    rows = [row for row in rows if row["due_at"] <= now or row["attempts"]]
    return sorted(rows, key=lambda row: (row["due_at"], row["request"]))


def _revocation_row(grant, now):
    access_request = grant.request
    due_at = grant.expires_at
    recallable = grant.target_snapshot.get("kind") != "ssh" or ssh.can_recall(
        grant.target_snapshot
    )
    if grant.end_requested_at and grant.end_requested_at < due_at and recallable:
        due_at = grant.end_requested_at
    return {
        "request": access_request.pk,
        "target": access_request.target.name,
        "scope": access_request.scope.name,
        "requester": access_request.requester.get_username(),
        "incident": access_request.incident,
        "principal": grant.principal,
        "state": "failing" if grant.revoke_attempts else "overdue",
        "due_at": due_at,
        "overdue_seconds": max(0, int((now - due_at).total_seconds())),
        "expires_at": grant.expires_at,
        "end_requested_at": grant.end_requested_at,
        "attempts": grant.revoke_attempts,
        "last_error": grant.last_error,
        # None: the next sweep tries it.
        "next_attempt_at": grant.retry_at,
    }


def stuck_alerts(now=None):
    """Return how many alerts are undelivered after a minute, and the oldest's time."""
    now = now or clock.now()
    stuck = Alert.objects.filter(
        delivered_at__isnull=True, created_at__lte=now - STUCK_ALERT_AGE
    ).aggregate(count=Count("pk"), oldest=Min("created_at"))
    return {"count": stuck["count"], "oldest_created_at": stuck["oldest"]}


def revocation_of(access_request):
    """Return whether ending the request's grant early cuts its credential, in words.

    An SSH certificate can only be recalled through a revocation list that the
    target's servers read; without one it works until its own end.
    """
    grant = getattr(access_request, "grant", None)
    if access_request.target.kind != Target.Kind.SSH:
        return {"supported": True, "note": ""}
    if grant is not None and grant.issued_at is not None:
        supported = ssh.can_recall(grant.target_snapshot)
        valid_until = grant.expires_at.isoformat().replace("+00:00", "Z")
        until = f"the certificate stays valid until {valid_until}"
    else:
        snapshot = grant.target_snapshot if grant is not None else {}
        supported = bool(
            snapshot.get("revocation_list_path")
            or (grant is None and access_request.target.revocation_list_path)
        )
        until = "a certificate stays valid until its end"
    if supported:
        return {
            "supported": True,
            "note": "Ending early puts the certificate in the target's revocation "
            "list, which its servers read at every login.",
        }
    return {
        "supported": False,
        "note": f"This target takes no revocation list: {until}, even if access "
        "is ended early.",
    }


def wait_for_end(request_id, *, timeout):
    """Wait, at most `timeout` seconds, for a worker to end an active grant.

    Revocation runs on the workers, which hold the targets' admin secrets; the
    web answer waits for it briefly so that "revoked" can be said when it is true.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = AccessRequest.objects.filter(pk=request_id).select_related("grant")
        access_request = found.first()
        snapshot = access_request.grant.target_snapshot
        if access_request.status != AccessRequest.Status.ACTIVE:
            return
        if snapshot.get("kind") == "ssh" and not ssh.can_recall(snapshot):
            # Such a certificate cannot be recalled: nothing to wait for.
            return
        time.sleep(0.1)


# Post-incident reviews


def can_review_all(user):
    return roles.has_role(user, roles.COMPLIANCE) or roles.has_role(user, roles.ADMIN)


def can_list_reviews(user):
    return can_review_all(user) or roles.has_role(user, roles.REQUESTER)


def _overdue(now):
    return Q(status__in=Review.WAITING_ON_REQUESTER, due_at__lte=now)


def _reviews():
    return Review.objects.select_related(
        "request__requester", "request__target", "request__scope", "reviewer"
    )


def visible_reviews(user, now=None):
    """Return the reviews the user may see, each marked `overdue`, most urgent first.

    Compliance reviewers and admins see every review; anyone else their own.
    Overdue reviews come first, then by due date.
    """
    now = now or clock.now()
    queryset = _reviews().annotate(
        overdue=Case(
            When(_overdue(now), then=Value(True)),
            default=Value(False),
            output_field=BooleanField(),
        )
    )
    if not can_review_all(user):
        queryset = queryset.filter(request__requester=user)
    return queryset.order_by("-overdue", "due_at", "pk")


def _due_from(user):
    return Q(request__requester=user, status__in=Review.WAITING_ON_REQUESTER)


def reviews_due_from(user, now=None):
    """Return the user's own reviews that wait for them to write, overdue first."""
    return visible_reviews(user, now).filter(_due_from(user))


def reviews_waiting_for(user, now=None):
    """Return the reviews the user has to act on, overdue first.

    A requester writes their own reviews that are due or were sent back; a
    compliance reviewer or admin decides on the submitted reviews of others.
    """
    waiting = _due_from(user)
    if can_review_all(user):
        waiting |= Q(status=Review.Status.SUBMITTED) & ~Q(request__requester=user)
    return visible_reviews(user, now).filter(waiting)


def open_reviews(user, now=None):
    """Return the reviews not yet signed off that the user may see, overdue first."""
    return visible_reviews(user, now).exclude(status=Review.Status.SIGNED_OFF)


def overdue_reviews(now=None):
    """Return every review past its due date still waiting on its requester.

    Oldest due first, with its request, requester, target and scope loaded.
    """
    now = now or clock.now()
    return _reviews().filter(_overdue(now)).order_by("due_at", "pk")


def target_page(name):
    """Return an active target with its scopes and, if sealed, its secret's state."""
    target = (
        Target.objects.filter(name=name, is_active=True)
        .select_related("sealed_credential__last_request")
        .first()
    )
    if target is None:
        raise NotVisible("No such target.")
    target.active_scopes = list(target.scopes.filter(is_active=True))
    target.sealed = getattr(target, "sealed_credential", None)
    target.holder = None
    if target.kind == Target.Kind.SEALED:
        target.holder = (
            AccessRequest.objects.filter(
                target=target, status__in=("pending", "approved", "active")
            )
            .select_related("requester")
            .first()
        )
    return target


# Operational figures, for /metrics


# The events counted since the trail began, by action and target.
COUNTED_ACTIONS = (
    "approval.approved",
    "approval.denied",
    "credential.used",
    "grant.revocation_failed",
)
# Upper bounds, in seconds, of the buckets each time is counted in.
TIME_BUCKETS = {
    "approval": (30, 60, 120, 300, 600, 1800, 3600),
    "issuance": (0.5, 1, 2, 5, 10, 30, 60, 300),
    "revocation_lag": (0.5, 1, 2, 5, 10, 30, 60, 300),
}


def operations_figures(now=None):
    """Return what /metrics exposes, read from the database in a few queries.

    Every web node answers the same, whichever process handled the changes: the
    figures are the rows, not counters kept in memory.
    """
    now = now or clock.now()
    status_counts = dict(
        AccessRequest.objects.order_by()
        .values_list("status")
        .annotate(count=Count("pk"))
    )
    active = dict(
        AccessRequest.objects.filter(status=AccessRequest.Status.ACTIVE)
        .order_by()
        .values_list("target__name")
        .annotate(count=Count("pk"))
    )
    targets = Target.objects.filter(is_active=True).values_list("name", flat=True)
    events = (
        AuditEvent.objects.filter(action__in=COUNTED_ACTIONS)
        .order_by()
        .values_list("action", "target")
        .annotate(count=Count("pk"))
    )
    alerts = (
        Alert.objects.filter(delivered_at__isnull=True)
        .order_by()
        .values_list("channel")
        .annotate(
            count=Count("pk"),
            stuck=Count("pk", filter=Q(created_at__lte=now - STUCK_ALERT_AGE)),
        )
    )
    revocations = failing_revocations(now)
    heartbeat = WorkerHeartbeat.objects.aggregate(latest=Max("seen_at"))["latest"]
    return {
        "requests_by_status": {
            status: status_counts.get(status, 0) for status in AccessRequest.Status
        },
        "active_grants_by_target": {
            name: active.get(name, 0) for name in sorted({*targets, *active})
        },
        "events": [(action, target, count) for action, target, count in events],
        "undelivered_alerts": {
            channel: {"count": count, "stuck": stuck}
            for channel, count, stuck in alerts
        },
        "revocations_failing": sum(r["state"] == "failing" for r in revocations),
        "revocations_overdue": sum(r["state"] == "overdue" for r in revocations),
        "audit_head_seq": AuditEvent.objects.aggregate(head=Max("seq"))["head"] or 0,
        "heartbeat_age_seconds": (
            None if heartbeat is None else (now - heartbeat).total_seconds()
        ),
        "times": _time_histograms(),
    }


def _seconds(delta):
    return 0.0 if delta is None else delta.total_seconds()


def _time_histograms():
    """Return, per kind of time, its count, sum and cumulative bucket counts.

    One query, whatever the number of grants: every bucket is a filtered count.
    Approval runs from the request to its quorum, issuance from the quorum to the
    credential, revocation lag from when the end was due to when it happened
    (due at the end's request for a revoked grant, at expiry otherwise).
    """
    ended = Q(
        request__status__in=(
            AccessRequest.Status.EXPIRED,
            AccessRequest.Status.REVOKED,
        ),
        ended_at__isnull=False,
    )
    due_at = Case(
        When(
            request__status=AccessRequest.Status.REVOKED,
            end_requested_at__isnull=False,
            then=F("end_requested_at"),
        ),
        default=F("expires_at"),
    )
    grants = Grant.objects.annotate(
        approval=ExpressionWrapper(
            F("approved_at") - F("request__created_at"), output_field=DurationField()
        ),
        issuance=ExpressionWrapper(
            F("issued_at") - F("approved_at"), output_field=DurationField()
        ),
        revocation_lag=ExpressionWrapper(
            F("ended_at") - due_at, output_field=DurationField()
        ),
    )
    only = {
        "approval": Q(),
        "issuance": Q(issued_at__isnull=False),
        "revocation_lag": ended,
    }
    aggregates = {}
    for kind, bounds in TIME_BUCKETS.items():
        aggregates[f"{kind}_count"] = Count("pk", filter=only[kind])
        aggregates[f"{kind}_sum"] = Sum(kind, filter=only[kind])
        for index, bound in enumerate(bounds):
            aggregates[f"{kind}_le_{index}"] = Count(
                "pk",
                filter=only[kind] & Q(**{f"{kind}__lte": timedelta(seconds=bound)}),
            )
    row = grants.aggregate(**aggregates)
    return {
        kind: {
            "count": row[f"{kind}_count"],
            "sum": _seconds(row[f"{kind}_sum"]),
            "buckets": [
                (bound, row[f"{kind}_le_{index}"]) for index, bound in enumerate(bounds)
            ],
        }
        for kind, bounds in TIME_BUCKETS.items()
    }
