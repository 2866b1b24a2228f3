"""State changes of requests and grants: one function per change.

Each function runs in one transaction that locks the rows deciding access, writes
its audit event (and so its queued alerts) with the change, and starts Celery work
only after commit. Web views, API views, admin actions and tasks all call these.
"""

import logging
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Q
from django.views.decorators.debug import sensitive_variables

from . import audit, clock, policy, roles, rotation, sealing, selectors
from .errors import (
    CredentialAlreadyRevealed,
    InvalidInput,
    NotAllowed,
    NotVisible,
    ProviderError,
    WrongState,
)
from .models import AccessRequest, Grant, Review, Scope, Target
from .providers import provider_for, ssh

logger = logging.getLogger(__name__)

Status = AccessRequest.Status

MAX_ISSUE_ATTEMPTS = 3
# An approved grant whose issuance task has not finished by then was lost with its
# worker or broker; the sweep issues it.
ISSUE_STALL = timedelta(seconds=30)
MAX_RETRY_DELAY = timedelta(minutes=5)


def subject_of(access_request):
    """Return what an event about this request is about, for the trail and alerts."""
    target = access_request.target
    return {
        "request": access_request.pk,
        "grant": _grant_id(access_request),
        "incident": access_request.incident,
        "target": target.name,
        "target_channels": (target.slack_webhook_env, target.pagerduty_routing_key_env),
        "scope": access_request.scope.name,
        "requester": access_request.requester.get_username(),
    }


# A request gets its grant when it is approved; these never had one.
_WITHOUT_GRANT = {
    AccessRequest.Status.PENDING,
    AccessRequest.Status.DENIED,
    AccessRequest.Status.CANCELLED,
    AccessRequest.Status.TIMED_OUT,
}


def _grant_id(access_request):
    if access_request.status in _WITHOUT_GRANT:
        return None
    try:
        # Most changes after approval hold the grant already.
        grant = AccessRequest.grant.related.get_cached_value(access_request)
    except KeyError:
        pass
    else:
        return grant.pk if grant is not None else None
    return (
        Grant.objects.filter(request_id=access_request.pk)
        .values_list("pk", flat=True)
        .first()
    )


def record(action, access_request, *, actor, data=None, notify=()):
    """Append an event about the request to the trail, with its alerts."""
    name = actor.get_username() if hasattr(actor, "get_username") else actor
    return audit.record_event(
        action,
        actor=name,
        subject=subject_of(access_request),
        data=data,
        notify=notify,
    )


def lock_request(request_id):
    """Return the request with its row locked for the rest of the transaction."""
    return (
        AccessRequest.objects.select_for_update(of=("self",))
        .select_related("target", "scope", "requester")
        .get(pk=request_id)
    )


def _lock_grant(grant_id, *, skip_locked=False):
    """Return the grant with its row locked; None if skipped while locked."""
    grant = (
        Grant.objects.select_for_update(of=("self",), skip_locked=skip_locked)
        .select_related("request__target", "request__scope", "request__requester")
        .filter(pk=grant_id)
        .first()
    )
    if grant is None:
        if skip_locked:
            return None
        raise Grant.DoesNotExist(f"no grant {grant_id}")
    # The joined request was read before the lock was granted: a concurrent
    # holder of the lock (a duplicate task) may have just issued or ended it.
    grant.request.refresh_from_db(fields=["status"])
    return grant


def _backoff(attempts):
    return min(MAX_RETRY_DELAY, timedelta(seconds=2 ** min(attempts, 10)))


# Requesting


def create_request(
    *, requester, target, scope, duration_minutes, reason, incident, public_key=""
):
    """Open a request for access; the target's policy decides what it needs."""
    scope_obj = _offered_scope(target, scope)
    target_obj = scope_obj.target
    reason = (reason or "").strip()
    incident = (incident or "").strip()
    if not reason:
        raise InvalidInput("A reason is required.", fields={"reason": ["Required."]})
    incident_length = AccessRequest._meta.get_field("incident").max_length
    if len(incident) > incident_length:
        raise InvalidInput(
            "The incident reference is too long.",
            fields={"incident": [f"At most {incident_length} characters."]},
        )
    public_key = (public_key or "").strip()
    if public_key and target_obj.kind != Target.Kind.SSH:
        raise InvalidInput(
            "A public key is only for SSH targets.",
            fields={"public_key": ["Only for SSH targets."]},
        )
    problem = ssh.public_key_problem(public_key) if public_key else None
    if problem:
        raise InvalidInput(
            "The public key cannot be certified.", fields={"public_key": [problem]}
        )

    with transaction.atomic():
        # One request at a time per requester: the count of their open requests
        # that the policy may limit must not change under the decision.
        get_user_model().objects.select_for_update().filter(pk=requester.pk).first()
        if target_obj.kind == Target.Kind.SEALED:
            rotation.check_out(target_obj)
        decision = policy.decide(target_obj, scope_obj, requester)
        policy.check_request(
            target_obj, decision, duration_minutes=duration_minutes, incident=incident
        )

        now = clock.now()
        access_request = AccessRequest.objects.create(
            requester=requester,
            target=target_obj,
            scope=scope_obj,
            duration_minutes=duration_minutes,
            reason=reason,
            incident=incident,
            public_key=public_key,
            approvals_required=decision.approvals_required,
            policy_rule=decision.rule,
            decision=decision.as_record(),
            created_at=now,
            approval_deadline=now + timedelta(minutes=decision.approval_window_minutes),
        )
        # A new request has no approver groups yet: insert them in one statement.
        AccessRequest.approver_groups.through.objects.bulk_create(
            AccessRequest.approver_groups.through(
                accessrequest_id=access_request.pk, group_id=group_id
            )
            for group_id in Group.objects.filter(
                name__in=decision.approver_groups
            ).values_list("pk", flat=True)
        )
        record(
            "request.created",
            access_request,
            actor=requester,
            data={
                "duration_minutes": duration_minutes,
                "reason": reason,
                "environment": target_obj.environment,
                "approvals_required": decision.approvals_required,
                "approver_groups": decision.approver_groups,
                "policy_rule": decision.rule,
                "decision": decision.as_record(),
                "approval_deadline": access_request.approval_deadline.isoformat(),
            },
            notify=selectors.approver_emails(access_request, decision.approver_groups),
        )
    logger.info("request %s created by %s", access_request.pk, requester)
    return access_request


def _offered_scope(target, scope):
    """Return the active scope of the active target, with both and the policy."""
    found = (
        Scope.objects.select_related("target__policy")
        .filter(target__name=target, target__is_active=True, name=scope)
        .filter(is_active=True)
        .first()
    )
    if found is not None:
        return found
    target_obj = Target.objects.filter(name=target, is_active=True).first()
    if target_obj is None:
        raise InvalidInput(
            f"Unknown target {target!r}.", fields={"target": ["Unknown target."]}
        )
    raise InvalidInput(
        f"Target {target_obj.name} has no scope {scope!r}.",
        fields={"scope": [f"Unknown scope for {target_obj.name}."]},
    )


def cancel_request(request_id, *, actor):
    """Withdraw a request that is still waiting for approvals."""
    with transaction.atomic():
        access_request = lock_request(request_id)
        if access_request.requester_id != actor.pk:
            raise NotAllowed("Only the requester can cancel a request.")
        if access_request.status != Status.PENDING:
            raise WrongState(
                f"The request is {access_request.status}; only a pending request "
                "can be cancelled.",
                code="already_decided",
            )
        access_request.status = Status.CANCELLED
        access_request.decided_at = clock.now()
        access_request.save(update_fields=["status", "decided_at"])
        record(
            "request.cancelled",
            access_request,
            actor=actor,
            notify=selectors.people_waiting_on(access_request),
        )
    return access_request


def time_out_request(request_id):
    """End a pending request whose approval window has passed; return if it did."""
    with transaction.atomic():
        access_request = lock_request(request_id)
        if not _is_overdue(access_request):
            return False
        _time_out(access_request)
    return True


def _is_overdue(access_request):
    return (
        access_request.status == Status.PENDING
        and access_request.approval_deadline <= clock.now()
    )


def _time_out(access_request):
    access_request.status = Status.TIMED_OUT
    access_request.decided_at = clock.now()
    access_request.save(update_fields=["status", "decided_at"])
    record(
        "request.timed_out",
        access_request,
        actor=audit.SYSTEM,
        data={"approval_deadline": access_request.approval_deadline.isoformat()},
        notify=selectors.people_waiting_on(access_request),
    )


def close_if_overdue(access_request):
    """Time out a locked pending request whose window passed; return if it did."""
    if _is_overdue(access_request):
        _time_out(access_request)
        return True
    return False


# Issuing


# The exact shape of the names this product gives its credentials; anything
# else on a target, even starting with bg_, is never treated as one of ours.
PRINCIPAL_PATTERN = re.compile(r"^bg_[a-z0-9]{0,24}_[0-9]+_[0-9a-f]{8}$")


def is_grant_principal(name):
    """Return whether a name on a target has the shape of a grant's credential."""
    return bool(PRINCIPAL_PATTERN.match(name))


def _principal_for(access_request):
    user = re.sub(r"[^a-z0-9]", "", access_request.requester.get_username().lower())
    # The random tail makes the name unguessable and never reused, even if
    # request ids were ever reset.
    return f"bg_{user[:24]}_{access_request.pk}_{secrets.token_hex(4)}"


def _snapshot(target, scope):
    return {
        "kind": target.kind,
        "name": target.name,
        "environment": target.environment,
        "connection_env": target.connection_env,
        "ca_key_env": target.ca_key_env,
        "revocation_list_path": target.revocation_list_path,
        "auth_log_path": target.auth_log_path,
        "scope": scope.name if scope else "",
        "grants": list(scope.grants) if scope else [],
        "rotator": dict(target.rotator or {}),
    }


def target_snapshot(target):
    """Return what a provider needs to reach the target, with no scope's grants."""
    return _snapshot(target, None)


def approve_for_issuance(access_request, *, actor):
    """Mark a locked request approved and hand it to issuance after commit.

    Called by the approval service inside its transaction, once the last needed
    approval is recorded: the only way from approvals to a credential.
    """
    now = clock.now()
    access_request.status = Status.APPROVED
    access_request.decided_at = now
    access_request.save(update_fields=["status", "decided_at"])
    grant = Grant.objects.create(
        request=access_request,
        principal=_principal_for(access_request),
        target_snapshot=_snapshot(access_request.target, access_request.scope),
        approved_at=now,
    )
    record(
        "request.approved",
        access_request,
        actor=actor,
        data={"approvals": access_request.approvals_required},
        notify=selectors.people_waiting_on(access_request),
    )
    transaction.on_commit(lambda: _queue("issue_grant", grant.pk))
    return grant


def _queue(task_name, grant_id, **options):
    from . import tasks

    try:
        getattr(tasks, task_name).apply_async((grant_id,), **options)
    except Exception:
        # The broker is unreachable: the grant row says what is due and the
        # sweep will do it once a worker runs.
        logger.exception("could not queue %s for grant %s", task_name, grant_id)


@sensitive_variables("credential")
def issue_grant(grant_id):
    """Create the credential on the target; return the grant.

    A failure is retried by the sweep with backoff; the last one fails the request.
    """
    with transaction.atomic():
        # The lock is held across the provider call so that a duplicate or
        # concurrent delivery of this task waits, then finds the grant issued.
        grant = _lock_grant(grant_id)
        access_request = grant.request
        if access_request.status != Status.APPROVED:
            return grant

        refusal = policy.recheck(access_request)
        if refusal is not None:
            _refuse_issue(grant, refusal)
            return grant

        now = clock.now()
        expires_at = now + timedelta(minutes=access_request.duration_minutes)
        grant.issue_attempts += 1
        try:
            credential = provider_for(grant.target_snapshot["kind"]).issue(
                grant.target_snapshot,
                principal=grant.principal,
                expires_at=expires_at,
                key_id=_key_id(access_request, grant),
                public_key=access_request.public_key,
            )
        except Exception as exc:
            _issue_failed(grant, describe_failure(exc))
            return grant

        if "serial" in credential:
            # An early end recalls the certificate by its serial.
            grant.target_snapshot = {
                **grant.target_snapshot,
                "certificate_serial": credential["serial"],
                "certificate_key_id": credential["key_id"],
                "certificate_expires_at": expires_at.isoformat(),
                # The CA that signed it: a list entry under a rotated CA would
                # not recall it.
                "certificate_ca_public_key": credential["ca_public_key"],
            }
        grant.issued_at = now
        grant.expires_at = expires_at
        grant.sealed_credential = sealing.seal(credential)
        grant.retry_at = None
        grant.last_error = ""
        grant.save()
        access_request.status = Status.ACTIVE
        access_request.save(update_fields=["status"])
        data = {"principal": grant.principal, "expires_at": expires_at.isoformat()}
        if "serial" in credential:
            data["certificate_serial"] = credential["serial"]
            data["key_id"] = credential["key_id"]
        record("grant.issued", access_request, actor=audit.SYSTEM, data=data)
        transaction.on_commit(lambda: _queue("end_grant", grant.pk, eta=expires_at))
    logger.info("grant %s issued as %s", grant.pk, grant.principal)
    return grant


def _refuse_issue(grant, refusal):
    """Fail a request that the policy, taken again at issuance, no longer allows."""
    access_request = grant.request
    grant.last_error = f"not issued: {refusal}"[:1000]
    grant.retry_at = None
    grant.ended_at = clock.now()
    grant.save(update_fields=["last_error", "retry_at", "ended_at"])
    access_request.status = Status.FAILED
    access_request.save(update_fields=["status"])
    record(
        "grant.issue_failed",
        access_request,
        actor=audit.SYSTEM,
        data={"reason": "policy", "error": grant.last_error, "attempts": 0},
        notify=selectors.people_waiting_on(access_request),
    )
    logger.warning("grant %s refused at issuance: %s", grant.pk, refusal)


def describe_failure(exc):
    """Return what the trail and the logs may say about a provider's failure."""
    if isinstance(exc, ProviderError):
        return str(exc)
    # Not a failure the provider knows: its message may quote the target's
    # connection settings, so only its kind is kept. It is retried all the same.
    return f"unexpected {type(exc).__name__} from the provider"


def _key_id(access_request, grant):
    return (
        f"breakglass request {access_request.pk} "
        f"by {access_request.requester.get_username()} "
        f"incident {access_request.incident} grant {grant.principal}"
    )


def _issue_failed(grant, error):
    access_request = grant.request
    grant.last_error = error[:1000]
    if grant.issue_attempts < MAX_ISSUE_ATTEMPTS:
        grant.retry_at = clock.now() + _backoff(grant.issue_attempts)
        grant.save(update_fields=["issue_attempts", "retry_at", "last_error"])
        logger.warning(
            "grant %s not issued (attempt %s): %s",
            grant.pk,
            grant.issue_attempts,
            error,
        )
        return

    # Whatever the failed attempts left behind on the target must not outlive
    # the failure.
    try:
        provider_for(grant.target_snapshot["kind"]).revoke(
            grant.target_snapshot, principal=grant.principal
        )
    except Exception as exc:
        logger.error(
            "cleanup after failed issuance of grant %s: %s",
            grant.pk,
            describe_failure(exc),
        )
    grant.retry_at = None
    grant.ended_at = clock.now()
    grant.save()
    access_request.status = Status.FAILED
    access_request.save(update_fields=["status"])
    record(
        "grant.issue_failed",
        access_request,
        actor=audit.SYSTEM,
        data={"error": grant.last_error, "attempts": grant.issue_attempts},
    )
    logger.error("grant %s failed after %s attempts", grant.pk, grant.issue_attempts)


# Revealing


@sensitive_variables("credential")
def reveal_credential(request_id, *, actor):
    """Return the grant's credential to its requester, once."""
    with transaction.atomic():
        access_request = lock_request(request_id)
        if access_request.requester_id != actor.pk:
            raise NotAllowed("Only the requester can reveal the credential.")
        grant = Grant.objects.select_for_update().filter(request=access_request).first()
        if grant is not None and grant.revealed_at is not None:
            raise CredentialAlreadyRevealed()
        if access_request.status != Status.ACTIVE or grant.sealed_credential is None:
            raise WrongState(
                f"The request is {access_request.status}; there is no credential "
                "to reveal.",
                code="not_active",
            )
        credential = sealing.unseal(grant.sealed_credential)
        if credential.get("kind") == Target.Kind.SEALED:
            credential["password"] = rotation.reveal_secret(access_request.target_id)
        grant.revealed_at = clock.now()
        grant.sealed_credential = None
        grant.save(update_fields=["revealed_at", "sealed_credential"])
        record(
            "credential.revealed",
            access_request,
            actor=actor,
            data={"principal": grant.principal},
        )
    return credential


# Ending


def request_end(request_id, *, actor, reason=""):
    """Ask for an active grant to end now; a worker revokes it straight away."""
    with transaction.atomic():
        access_request = lock_request(request_id)
        if not can_end(actor, access_request):
            raise NotAllowed(
                "Only the requester, an eligible approver or an admin can end a grant."
            )
        grant = Grant.objects.select_for_update().filter(request=access_request).first()
        if access_request.status != Status.ACTIVE:
            raise WrongState(
                f"The request is {access_request.status}; only an active grant "
                "can be ended.",
                code="not_active",
            )
        if grant.end_requested_at is None:
            grant.end_requested_at = clock.now()
            grant.end_requested_by = actor.get_username()
            grant.end_reason = (reason or "").strip()[:2000]
            grant.retry_at = None
            grant.save(
                update_fields=[
                    "end_requested_at",
                    "end_requested_by",
                    "end_reason",
                    "retry_at",
                ]
            )
        transaction.on_commit(lambda: _queue("end_grant", grant.pk))
    return access_request


def can_end(user, access_request):
    return (
        user.pk == access_request.requester_id
        or roles.has_role(user, roles.ADMIN)
        or policy.is_eligible_approver(user, access_request)
    )


def end_grant(grant_id, *, skip_locked=False):
    """Revoke a grant that is due to end (expired or asked to end); return if it ended.

    Idempotent: a second delivery, or a second worker, finds it ended and does
    nothing. A failure is alerted as critical and retried by the sweep with backoff.
    With `skip_locked`, a grant whose row another worker holds (it is ending it)
    is left to that worker instead of waited for.
    """
    with transaction.atomic():
        grant = _lock_grant(grant_id, skip_locked=skip_locked)
        if grant is None:
            return False
        access_request = grant.request
        if access_request.status != Status.ACTIVE:
            return False
        now = clock.now()
        early = grant.end_requested_at is not None and grant.end_requested_at < (
            grant.expires_at
        )
        if early and not _can_end_early(grant):
            _record_end_request(grant)
            early = False
        if not early and grant.expires_at > now:
            return False

        # A session opened since the last detection run is recorded before the
        # revocation cuts it.
        from .detection import record_uses_before_end

        record_uses_before_end(grant)
        grant.revoke_attempts += 1
        try:
            provider_for(grant.target_snapshot["kind"]).revoke(
                grant.target_snapshot, principal=grant.principal
            )
        except Exception as exc:
            grant.last_error = describe_failure(exc)[:1000]
            grant.retry_at = now + _backoff(grant.revoke_attempts)
            grant.save(update_fields=["revoke_attempts", "last_error", "retry_at"])
            record(
                "grant.revocation_failed",
                access_request,
                actor=audit.SYSTEM,
                data={
                    "principal": grant.principal,
                    "error": grant.last_error,
                    "attempt": grant.revoke_attempts,
                    "next_attempt_at": grant.retry_at.isoformat(),
                },
            )
            logger.error(
                "grant %s (%s) not revoked, attempt %s: %s",
                grant.pk,
                grant.principal,
                grant.revoke_attempts,
                grant.last_error,
            )
            return False

        grant.ended_at = now
        grant.sealed_credential = None
        grant.retry_at = None
        grant.last_error = ""
        grant.save()
        access_request.status = Status.REVOKED if early else Status.EXPIRED
        access_request.save(update_fields=["status"])
        data = {
            "principal": grant.principal,
            "expires_at": grant.expires_at.isoformat(),
            "lag_seconds": round(max(0.0, (now - grant.expires_at).total_seconds()), 3),
        }
        if early:
            data["lag_seconds"] = round(
                (now - grant.end_requested_at).total_seconds(), 3
            )
            data["reason"] = grant.end_reason
            if grant.target_snapshot["kind"] == Target.Kind.SSH:
                data["certificate_serial"] = grant.target_snapshot["certificate_serial"]
                data["revocation_list_path"] = grant.target_snapshot[
                    "revocation_list_path"
                ]
            record(
                "grant.revoked",
                access_request,
                actor=grant.end_requested_by,
                data=data,
            )
        else:
            record("grant.expired", access_request, actor=audit.SYSTEM, data=data)
        _open_review(access_request, ended_at=now)
        if grant.target_snapshot["kind"] == Target.Kind.SEALED:
            rotation.rotation_after_grant(access_request)
    logger.info("grant %s ended (%s)", grant.pk, access_request.status)
    return True


def _can_end_early(grant):
    snapshot = grant.target_snapshot
    return snapshot["kind"] != Target.Kind.SSH or ssh.can_recall(snapshot)


def _record_end_request(grant):
    """Tell people that an early end was asked for a credential that cannot be cut.

    The grant stays active until its expiry, where it ends as usual: showing it
    revoked would hide a certificate that still works.
    """
    access_request = grant.request
    if access_request.events.filter(action="grant.end_requested").exists():
        return
    record(
        "grant.end_requested",
        access_request,
        actor=grant.end_requested_by,
        data={
            "principal": grant.principal,
            "reason": grant.end_reason,
            "certificate_valid_until": grant.expires_at.isoformat(),
        },
    )
    logger.warning(
        "grant %s: end asked, but the target takes no revocation list; "
        "its certificate stays valid until %s",
        grant.pk,
        grant.expires_at.isoformat(),
    )


# Reviewing


def _open_review(access_request, *, ended_at):
    """Ask the requester of a grant that just ended what the access was used for.

    Called inside the transaction that ends the grant, so that no ended grant
    goes without its review.
    """
    due_at = ended_at + timedelta(hours=settings.BREAKGLASS_REVIEW_DUE_HOURS)
    Review.objects.create(request=access_request, created_at=ended_at, due_at=due_at)
    record(
        "review.due",
        access_request,
        actor=audit.SYSTEM,
        data={"due_at": due_at.isoformat(), "grant_status": access_request.status},
        notify=_requester_email(access_request),
    )


def _requester_email(access_request):
    email = access_request.requester.email
    return [email] if email else []


def _lock_review(request_id):
    """Return the request and its locked review, None before the grant has ended."""
    access_request = (
        AccessRequest.objects.select_related("target", "scope", "requester")
        .filter(pk=request_id)
        .first()
    )
    if access_request is None:
        raise NotVisible("No such request.")
    review = Review.objects.select_for_update().filter(request=access_request).first()
    return access_request, review


def can_review(user, access_request):
    """Return whether the user may sign off or send back the request's review."""
    return user.pk != access_request.requester_id and (
        roles.has_role(user, roles.COMPLIANCE) or roles.has_role(user, roles.ADMIN)
    )


def _check_reviewer(actor, access_request):
    if actor.pk == access_request.requester_id:
        raise NotAllowed(
            "Nobody can sign off or send back the review of their own request.",
            code="self_review",
        )
    if not can_review(actor, access_request):
        raise NotAllowed(
            "Only compliance reviewers and admins can sign off or send back a review."
        )


def _check_submitted(review):
    if review is None or review.status != Review.Status.SUBMITTED:
        state = review.get_status_display().lower() if review else "not due yet"
        raise WrongState(
            f"The review is {state}; only a submitted review can be decided.",
            code="review_not_submitted",
        )


def _bounded_text(value, *, field, limit, required):
    text = (value or "").strip()
    if required and not text:
        raise InvalidInput(f"The {field} is required.", fields={field: ["Required."]})
    if len(text) > limit:
        raise InvalidInput(
            f"The {field} is too long.",
            fields={field: [f"At most {limit} characters."]},
        )
    return text


def submit_review(request_id, *, actor, summary):
    """Record what the requester did with the access; the review goes to compliance."""
    with transaction.atomic():
        access_request, review = _lock_review(request_id)
        if access_request.requester_id != actor.pk:
            raise NotAllowed("Only the requester can submit the review of a request.")
        if review is None or not review.is_waiting_on_requester:
            state = review.get_status_display().lower() if review else "not due yet"
            raise WrongState(
                f"The review is {state}; it can be submitted only when it is due "
                "or was sent back.",
                code="review_not_due",
            )
        summary = _bounded_text(
            summary, field="summary", limit=Review.SUMMARY_MAX_LENGTH, required=True
        )

        review.status = Review.Status.SUBMITTED
        review.summary = summary
        review.submitted_at = clock.now()
        review.save(update_fields=["status", "summary", "submitted_at"])
        record(
            "review.submitted",
            access_request,
            actor=actor,
            data={"summary": summary, "due_at": review.due_at.isoformat()},
            notify=selectors.compliance_emails(),
        )
    return review


def sign_off_review(request_id, *, actor, comment=""):
    """Accept a submitted review; the request's review is then closed."""
    with transaction.atomic():
        access_request, review = _lock_review(request_id)
        _check_reviewer(actor, access_request)
        _check_submitted(review)
        comment = _bounded_text(
            comment, field="comment", limit=Review.COMMENT_MAX_LENGTH, required=False
        )

        _decide(review, Review.Status.SIGNED_OFF, actor=actor, comment=comment)
        record(
            "review.signed_off",
            access_request,
            actor=actor,
            data={"comment": comment},
            notify=_requester_email(access_request),
        )
    return review


def send_back_review(request_id, *, actor, comment):
    """Return a submitted review to its requester, saying what is missing."""
    with transaction.atomic():
        access_request, review = _lock_review(request_id)
        _check_reviewer(actor, access_request)
        _check_submitted(review)
        comment = _bounded_text(
            comment, field="comment", limit=Review.COMMENT_MAX_LENGTH, required=True
        )

        _decide(review, Review.Status.SENT_BACK, actor=actor, comment=comment)
        record(
            "review.sent_back",
            access_request,
            actor=actor,
            data={"comment": comment},
            notify=_requester_email(access_request),
        )
    return review


def _decide(review, status, *, actor, comment):
    review.status = status
    review.reviewer = actor
    review.reviewed_at = clock.now()
    review.reviewer_comment = comment
    review.save(update_fields=["status", "reviewer", "reviewed_at", "reviewer_comment"])


def remind_overdue_reviews():
    """Remind the requester of each overdue review, once per reminder interval.

    Return how many were reminded. Safe under two schedulers: each reminder is
    taken under its row's lock and the condition is read again under it.
    """
    now = clock.now()
    due = Review.objects.filter(_needs_reminder(now)).order_by("due_at")
    reminded = 0
    for review_id in list(due.values_list("pk", flat=True)[:500]):
        reminded += _remind(review_id)
    return reminded


def _needs_reminder(now):
    interval = timedelta(hours=settings.BREAKGLASS_REVIEW_REMINDER_HOURS)
    return Q(status__in=Review.WAITING_ON_REQUESTER, due_at__lte=now) & (
        Q(last_reminded_at__isnull=True) | Q(last_reminded_at__lte=now - interval)
    )


def _remind(review_id):
    with transaction.atomic():
        now = clock.now()
        # A row locked by another scheduler is being reminded right now: skip it
        # rather than wait and remind twice.
        review = (
            Review.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("request__target", "request__scope", "request__requester")
            .filter(_needs_reminder(now), pk=review_id)
            .first()
        )
        if review is None:
            return False
        review.reminders += 1
        review.last_reminded_at = now
        review.save(update_fields=["reminders", "last_reminded_at"])
        record(
            "review.reminder",
            review.request,
            actor=audit.SYSTEM,
            data={
                "due_at": review.due_at.isoformat(),
                "status": review.status,
                "reminder": review.reminders,
                "overdue_seconds": int((now - review.due_at).total_seconds()),
            },
            notify=_requester_email(review.request),
        )
    return True


# The sweep


def sweep():
    """Do whatever is due and was not done: time-outs, issuance, ends, alerts.

    Runs every few seconds. Safe to run in several places at once: every step
    locks its row and re-checks it.
    """
    from . import alerts

    now = clock.now()
    counts = {"timed_out": 0, "issued": 0, "ended": 0, "rotated": 0, "alerts": 0}

    overdue = AccessRequest.objects.filter(
        status=Status.PENDING, approval_deadline__lte=now
    ).values_list("pk", flat=True)
    for request_id in list(overdue[:500]):
        counts["timed_out"] += time_out_request(request_id)

    stalled = Grant.objects.filter(request__status=Status.APPROVED).filter(
        _due_retry(now) | _stalled(now)
    )
    for grant_id in list(stalled.values_list("pk", flat=True)[:100]):
        grant = issue_grant(grant_id)
        counts["issued"] += grant.issued_at is not None

    ending = (
        Grant.objects.filter(request__status=Status.ACTIVE)
        .filter(Q(expires_at__lte=now) | Q(end_requested_at__isnull=False))
        .filter(Q(retry_at__isnull=True) | Q(retry_at__lte=now))
        .order_by("expires_at")
    )
    for grant_id in list(ending.values_list("pk", flat=True)[:500]):
        # With many grants ending at once, their own tasks are ending most of
        # them: waiting on each one's lock would hold this run back from the rest.
        counts["ended"] += end_grant(grant_id, skip_locked=True)

    counts["rotated"] = rotation.rotate_due()

    for alert_id in alerts.due_alert_ids():
        counts["alerts"] += alerts.deliver(alert_id)
    return counts


def _due_retry(now):
    return Q(retry_at__isnull=False, retry_at__lte=now)


def _stalled(now):
    return Q(retry_at__isnull=True, approved_at__lte=now - ISSUE_STALL)
