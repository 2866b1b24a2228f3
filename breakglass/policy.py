"""The policy decision taken when a request is made."""

import re
from dataclasses import dataclass

from django.contrib.auth import get_user_model

from . import roles
from .models import Policy
from .errors import InvalidInput, NotAllowed


@dataclass(frozen=True)
class Decision:
    approvals_required: int
    approver_groups: list
    max_duration_minutes: int
    approval_window_minutes: int
    rule: str


def decide(target, scope, requester):
    """Return what the target's policy asks of a request by this requester."""
    policy = Policy.objects.filter(target=target).first()
    if policy is None:
        # Fail closed: a target nobody wrote a policy for grants nothing.
        raise InvalidInput(
            f"Target {target.name} has no policy yet; an admin must configure one.",
            fields={"target": ["No policy configured."]},
        )
    approver_groups = sorted(policy.approver_groups.values_list("name", flat=True))
    requester_groups = set(policy.requester_groups.values_list("name", flat=True))

    if not roles.has_role(requester, roles.REQUESTER):
        raise NotAllowed("You do not hold the requester role.", code="not_eligible")
    if requester_groups and not requester_groups & roles.group_names(requester):
        raise NotAllowed(
            f"Only members of {', '.join(sorted(requester_groups))} may request "
            f"access to {target.name}.",
            code="not_eligible",
        )

    who = f"from {', '.join(approver_groups)}" if approver_groups else "from approvers"
    plural = "s" if policy.approvals_required != 1 else ""
    rule = (
        f"policy of target {target.name} ({target.environment or 'no environment'}): "
        f"{policy.approvals_required} approval{plural} {who}, "
        f"at most {policy.max_duration_minutes} minutes"
    )
    return Decision(
        approvals_required=policy.approvals_required,
        approver_groups=approver_groups,
        max_duration_minutes=policy.max_duration_minutes,
        approval_window_minutes=policy.approval_window_minutes,
        rule=rule,
    )


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
            f"for {target.name}."
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


def eligible_approvers(access_request):
    """Return the active users who may vote on the request; never its requester."""
    approvers = (
        get_user_model()
        .objects.filter(is_active=True, groups__name=roles.APPROVER)
        .exclude(pk=access_request.requester_id)
    )
    groups = list(access_request.approver_groups.all())
    if groups:
        approvers = approvers.filter(groups__in=groups)
    return approvers.distinct()


def is_eligible_approver(user, access_request):
    """Return whether the user may vote on the request; never its requester."""
    if not user.is_authenticated or user.pk == access_request.requester_id:
        return False
    return eligible_approvers(access_request).filter(pk=user.pk).exists()
