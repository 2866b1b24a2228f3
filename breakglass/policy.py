"""The policy decision: what a request needs, from what is known when it is made.

A target's policy sets a base (approvals, approver groups, longest duration) and
rules that tighten it in context: the environment, the scope, the time of day in
the policy's time zone, whether the requester is on call, and how much break-glass
access they have had recently. The same decision is taken again at issuance.
"""

import datetime
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from zoneinfo import ZoneInfo

from django.contrib.auth import get_user_model
from django.db.models import Count, Q

from . import clock, roles
from .errors import InvalidInput, NotAllowed, Throttled
from .models import AccessRequest, OnCallShift, Policy

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Requests that hold, or are on their way to, a credential.
OPEN_STATUSES = (
    AccessRequest.Status.PENDING,
    AccessRequest.Status.APPROVED,
    AccessRequest.Status.ACTIVE,
)
MAX_APPROVALS = 20


@dataclass(frozen=True)
class Decision:
    approvals_required: int
    approver_groups: list
    max_duration_minutes: int
    approval_window_minutes: int
    rule: str
    summary: str = ""
    evaluated: dict = field(default_factory=dict)
    fired: list = field(default_factory=list)

    def as_record(self):
        """Return the decision as it is kept on the request and in the trail."""
        record = asdict(self)
        record.pop("rule")
        return record


def decide(target, scope, requester, *, exclude_request=None, at=None):
    """Return what the target's policy asks of a request by this requester, now.

    `at` sets the moment whose context (hours, on call, recent grants) is
    evaluated, by default now. Raise NotAllowed when the requester may not ask at
    all, and Throttled when they already hold as many requests and grants as the
    policy allows.
    """
    try:
        # Read through the target so that it keeps the policy for check_request.
        policy = target.policy
    except Policy.DoesNotExist:
        # Fail closed: a target nobody wrote a policy for grants nothing.
        raise InvalidInput(
            f"Target {target.name} has no policy yet; an admin must configure one.",
            fields={"target": ["No policy configured."]},
        ) from None
    _check_requester(policy, target, requester)

    now = clock.now()
    context = _context(policy, target, scope, requester, at or now, exclude_request)
    _check_open_grants(policy, context, requester, now, exclude_request)

    approvals = policy.approvals_required
    longest = policy.max_duration_minutes
    fired = []
    for rule in policy.rules or []:
        if _matches(rule.get("when", {}), context):
            fired.append(rule["name"])
            approvals += rule.get("add_approvals", 0)
            if rule.get("max_duration_minutes"):
                longest = min(longest, rule["max_duration_minutes"])
    approvals = min(approvals, MAX_APPROVALS)

    approver_groups = sorted(
        scope.approver_groups.values_list("name", flat=True)
    ) or sorted(policy.approver_groups.values_list("name", flat=True))
    summary = _summary(target, approvals, fired)
    who = ", ".join(approver_groups) if approver_groups else "any approver"
    return Decision(
        approvals_required=approvals,
        approver_groups=approver_groups,
        max_duration_minutes=longest,
        approval_window_minutes=policy.approval_window_minutes,
        rule=f"{summary} (from {who}; at most {longest} minutes)",
        summary=summary,
        evaluated=context,
        fired=fired,
    )


def _check_requester(policy, target, requester):
    held = roles.group_names(requester)
    if not (requester.is_active and roles.REQUESTER in held):
        raise NotAllowed("You do not hold the requester role.", code="not_eligible")
    requester_groups = set(policy.requester_groups.values_list("name", flat=True))
    if requester_groups and not requester_groups & held:
        raise NotAllowed(
            f"Only members of {', '.join(sorted(requester_groups))} may request "
            f"access to {target.name}.",
            code="not_eligible",
        )


def _context(policy, target, scope, requester, now, exclude_request):
    local = now.astimezone(ZoneInfo(policy.timezone))
    working_day = WEEKDAYS[local.weekday()] in policy.working_days
    in_hours = policy.working_hours_start <= local.time() < policy.working_hours_end
    since = now - datetime.timedelta(days=policy.recent_window_days)
    mine = AccessRequest.objects.filter(requester=requester)
    if exclude_request is not None:
        mine = mine.exclude(pk=exclude_request.pk)
    counts = mine.aggregate(
        recent_grants=Count(
            "pk", filter=Q(grant__issued_at__gte=since, grant__issued_at__lte=now)
        ),
        open_requests=Count("pk", filter=Q(status__in=OPEN_STATUSES)),
    )
    return {
        "environment": target.environment,
        "scope": scope.name,
        "timezone": policy.timezone,
        "local_time": local.isoformat(timespec="minutes"),
        "off_hours": not (working_day and in_hours),
        "on_call": is_on_call(requester, now),
        "recent_grants": counts["recent_grants"],
        "recent_window_days": policy.recent_window_days,
        "open_requests": counts["open_requests"],
    }


def is_on_call(user, at):
    """Return whether the roster has the user on call at that moment."""
    return OnCallShift.objects.filter(
        user=user, starts_at__lte=at, ends_at__gt=at
    ).exists()


def _check_open_grants(policy, context, requester, now, exclude_request):
    limit = policy.max_active_grants
    if limit is None or context["open_requests"] < limit:
        return
    soonest = (
        AccessRequest.objects.filter(
            requester=requester,
            status=AccessRequest.Status.ACTIVE,
            grant__expires_at__isnull=False,
        )
        .order_by("grant__expires_at")
        .values_list("grant__expires_at", flat=True)
        .first()
    )
    wait = (soonest - now).total_seconds() if soonest else 60
    raise Throttled(
        f"You already hold {context['open_requests']} open requests or grants; "
        f"the policy allows {limit}. End one before asking for more.",
        code="too_many_grants",
        retry_after=wait,
    )


def _matches(when, context):
    """Return whether every condition of a rule holds in the context."""
    for key, expected in when.items():
        if key in ("environment", "scope"):
            allowed = [expected] if isinstance(expected, str) else expected
            if context[key] not in allowed:
                return False
        elif key in ("off_hours", "on_call"):
            if context[key] != expected:
                return False
        elif key == "recent_grants_at_least":
            if context["recent_grants"] < expected:
                return False
        else:
            # Rules are validated on load; an unknown condition never matches.
            return False
    return True


def _summary(target, approvals, fired):
    plural = "s" if approvals != 1 else ""
    reasons = [target.environment or target.name] + fired
    return f"{approvals} approval{plural}: {', '.join(reasons)}"


def check_request(target, decision, *, duration_minutes, incident):
    """Refuse a duration or incident reference the policy does not allow."""
    fields = {}
    if (
        isinstance(duration_minutes, bool)
        or not isinstance(duration_minutes, int)
        or not 1 <= duration_minutes <= decision.max_duration_minutes
    ):
        fields["duration_minutes"] = [
            f"Must be between 1 and {decision.max_duration_minutes} minutes "
            f"for {target.name} now."
        ]
    if not re.search(target.policy.incident_pattern, incident or ""):
        fields["incident"] = [
            f"Must match the pattern {target.policy.incident_pattern} "
            f"for {target.name}."
        ]
    if fields:
        raise InvalidInput(
            "The request does not meet the target's policy.", fields=fields
        )


def request_digest(access_request):
    """Return a fingerprint of what was asked, to which each vote is bound."""
    content = {
        "target": access_request.target_id,
        "kind": access_request.target.kind,
        "scope": access_request.scope_id,
        # What the scope gives is part of what was approved: a scope edited
        # after the votes voids them.
        "grants": list(access_request.scope.grants),
        "duration_minutes": access_request.duration_minutes,
        "reason": access_request.reason,
        "incident": access_request.incident,
        "public_key": access_request.public_key,
    }
    encoded = json.dumps(content, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()


def eligible_approvers(access_request, group_names=None):
    """Return the active users who may vote on the request; never its requester.

    `group_names` overrides the groups decided at request time, for the check
    at issuance against the policy as it is now.
    """
    approvers = (
        get_user_model()
        .objects.filter(is_active=True, groups__name=roles.APPROVER)
        .exclude(pk=access_request.requester_id)
    )
    if group_names is None:
        group_names = [group.name for group in access_request.approver_groups.all()]
    if group_names:
        approvers = approvers.filter(groups__name__in=group_names)
    return approvers.distinct()


def is_eligible_approver(user, access_request):
    """Return whether the user may vote on the request; never its requester."""
    if not user.is_authenticated or user.pk == access_request.requester_id:
        return False
    return eligible_approvers(access_request).filter(pk=user.pk).exists()


def recheck(access_request):
    """Take the decision again at issuance; return why it must not issue, or None.

    The requester may have lost eligibility, an approver may have left the approver
    group, the request may have changed after the votes, or the policy may have
    tightened since the request was made.
    """
    if not access_request.target.is_active or not access_request.scope.is_active:
        return (
            f"{access_request.target.name}/{access_request.scope.name} is no longer "
            "offered"
        )
    try:
        # The context is the one known when the request was made: the clock
        # passing 18:00 or a shift ending while approvers decide tightens nothing.
        decision = decide(
            access_request.target,
            access_request.scope,
            access_request.requester,
            exclude_request=access_request,
            at=access_request.created_at,
        )
    except (NotAllowed, Throttled, InvalidInput) as exc:
        return f"the requester is no longer allowed: {exc.detail}"

    digest = request_digest(access_request)
    eligible = set(
        eligible_approvers(access_request, decision.approver_groups).values_list(
            "pk", flat=True
        )
    )
    votes = access_request.approvals.filter(decision="approved")
    valid = [
        v for v in votes if v.request_digest == digest and v.approver_id in eligible
    ]
    if len(valid) < decision.approvals_required:
        lost = sorted(
            v.approver.get_username() for v in votes if v.approver_id not in eligible
        )
        why = f"; no longer eligible: {', '.join(lost)}" if lost else ""
        return (
            f"the policy now needs {decision.approvals_required} approvals "
            f"({decision.summary}) and {len(valid)} still count{why}"
        )
    if access_request.duration_minutes > decision.max_duration_minutes:
        return (
            f"the policy now allows at most {decision.max_duration_minutes} minutes, "
            f"not {access_request.duration_minutes}"
        )
    try:
        check_request(
            access_request.target,
            decision,
            duration_minutes=access_request.duration_minutes,
            incident=access_request.incident,
        )
    except InvalidInput as exc:
        problems = " ".join(m for messages in exc.fields.values() for m in messages)
        return f"the request no longer meets the policy: {problems}"
    return None
