"""Multi-party approval: votes confirmed with a one-time code, and the quorum."""

import logging

from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from breakglass import clock, policy, selectors, services
from breakglass.errors import NotAllowed, OtpInvalid, Throttled, WrongState
from breakglass.models import AccessRequest

from . import otp
from .models import Approval

logger = logging.getLogger(__name__)

Status = AccessRequest.Status


@sensitive_variables("code")
def approve_request(request_id, *, approver, code, comment="", device=None):
    """Record an approval; the last one needed hands the request to issuance."""
    return _vote(
        request_id,
        approver=approver,
        code=code,
        device=device,
        comment=comment,
        decision=Approval.Decision.APPROVED,
    )


@sensitive_variables("code")
def deny_request(request_id, *, approver, code, comment="", device=None):
    """Record a denial, which ends the request."""
    return _vote(
        request_id,
        approver=approver,
        code=code,
        device=device,
        comment=comment,
        decision=Approval.Decision.DENIED,
    )


def _check_can_vote(access_request, approver):
    if access_request.requester_id == approver.pk:
        raise NotAllowed("Nobody can approve their own request.", code="self_approval")
    if not policy.is_eligible_approver(approver, access_request):
        raise NotAllowed(
            "You are not an eligible approver for this request.", code="not_eligible"
        )
    if access_request.status != Status.PENDING:
        raise WrongState(
            f"The request is already {access_request.status}.", code="already_decided"
        )
    if access_request.approvals.filter(approver=approver).exists():
        raise WrongState(
            "You have already voted on this request.", code="already_voted"
        )


@sensitive_variables("code")
def _vote(request_id, *, approver, code, comment, decision, device=None):
    timed_out = False
    throttled = None
    confirmed_by = None
    with transaction.atomic():
        access_request = services.lock_request(request_id)
        if services.close_if_overdue(access_request):
            timed_out = True
        else:
            _check_can_vote(access_request, approver)
            try:
                confirmed_by = otp.verify(approver, code, device=device)
            except Throttled as exc:
                throttled = exc
            if confirmed_by is None:
                # Committed with the device's failure count; the vote is refused
                # below. A code sent while the devices rest is recorded too: a
                # guessing attack shows in the trail.
                services.record(
                    "otp.failed",
                    access_request,
                    actor=approver,
                    data={
                        "decision": decision,
                        "device": device or "",
                        "throttled": throttled is not None,
                    },
                )
            else:
                _record_vote(access_request, approver, confirmed_by, decision, comment)

    if timed_out:
        raise WrongState("The approval window has passed.", code="timed_out")
    if throttled is not None:
        raise throttled
    if confirmed_by is None:
        if otp.is_spent(approver, code):
            raise OtpInvalid(
                "This code was already used, for your login or another decision: "
                "wait for the next code from your authenticator."
            )
        raise OtpInvalid()
    return access_request


def _record_vote(access_request, approver, device, decision, comment):
    digest = policy.request_digest(access_request)
    Approval.objects.create(
        request=access_request,
        approver=approver,
        decision=decision,
        comment=(comment or "").strip()[:2000],
        otp_device=otp.describe(device),
        request_digest=digest,
        at=clock.now(),
    )
    data = {"otp_device": otp.describe(device), "comment": (comment or "").strip()}
    if decision == Approval.Decision.DENIED:
        services.record("approval.denied", access_request, actor=approver, data=data)
        access_request.status = Status.DENIED
        access_request.decided_at = clock.now()
        access_request.save(update_fields=["status", "decided_at"])
        services.record(
            "request.denied",
            access_request,
            actor=approver,
            notify=selectors.people_waiting_on(access_request),
        )
        return

    # A vote counts only for the request exactly as it was when cast.
    approvals = access_request.approvals.filter(
        decision=Approval.Decision.APPROVED, request_digest=digest
    ).count()
    data["approvals"] = approvals
    data["approvals_required"] = access_request.approvals_required
    services.record("approval.approved", access_request, actor=approver, data=data)
    if approvals >= access_request.approvals_required:
        services.approve_for_issuance(access_request, actor=approver)
