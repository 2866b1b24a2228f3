"""Reconciliation: remove the `bg_` principals that no live grant accounts for.

A crash between creating a credential on a target and recording it, or a failed
cleanup after a failed issuance, can leave a principal on the target that nothing
would ever revoke. A periodic job lists the principals on every PostgreSQL and
Redis target and removes, with an alert, each one that is not the principal of a
grant being issued or still active.
"""

import logging

from django.db import transaction

from . import audit, services
from .models import AccessRequest, Grant, Target
from .providers import provider_for

logger = logging.getLogger(__name__)

Status = AccessRequest.Status

KINDS = (Target.Kind.POSTGRES, Target.Kind.REDIS)
# A grant being issued has its row, principal included, before the credential
# exists on the target; an active one stays live until its revocation succeeds.
LIVE_STATUSES = (Status.APPROVED, Status.ACTIVE)
REMOVED = "credential.orphan_removed"
REMOVAL_FAILED = "credential.orphan_removal_failed"


def reconcile_targets():
    """Remove the orphan principals of every active target; return counts."""
    counts = {"targets": 0, "orphans": 0, "removed": 0, "failed": 0}
    targets = Target.objects.filter(is_active=True, kind__in=KINDS).order_by("pk")
    for target in targets:
        try:
            orphans = find_orphans(target)
        except Exception as exc:
            # Not alerted: an unreachable target shows in the failed revocations
            # of its grants, and the next run lists it again.
            logger.warning(
                "reconcile: cannot list the principals of %s: %s",
                target.name,
                services.describe_failure(exc),
            )
            continue
        counts["targets"] += 1
        counts["orphans"] += len(orphans)
        for principal in orphans:
            removed = remove_orphan(target.pk, principal)
            if removed is True:
                counts["removed"] += 1
            elif removed is False:
                counts["failed"] += 1
    return counts


def find_orphans(target):
    """Return the target's `bg_` principals that no live grant accounts for."""
    # The target is listed before the grants are read: a credential that exists
    # now was created after its grant's row committed, so that row is seen.
    listed = provider_for(target.kind).principals(services.target_snapshot(target))
    # A role or user that merely starts with bg_ (an application's, a scope's,
    # another installation's) is not ours to drop.
    principals = [name for name in listed if services.is_grant_principal(name)]
    if not principals:
        return []
    live = _live_principals(principals)
    return [p for p in principals if p not in live]


def _live_principals(principals):
    # Any target's grants count: two targets may name the same server.
    return set(
        Grant.objects.filter(
            principal__in=principals, request__status__in=LIVE_STATUSES
        ).values_list("principal", flat=True)
    )


def remove_orphan(target_id, principal):
    """Revoke one orphan principal and record it; return True, False or None.

    True when it was removed, False when removing it failed, None when there was
    nothing to do any more (another run removed it, or a grant now claims it).
    """
    with transaction.atomic():
        # Two schedulers running by mistake wait for each other here; the second
        # finds the principal gone and records nothing.
        target = Target.objects.select_for_update().get(pk=target_id)
        if _live_principals([principal]):
            return None
        snapshot = services.target_snapshot(target)
        provider = provider_for(target.kind)
        try:
            if principal not in provider.principals(snapshot):
                return None
            provider.revoke(snapshot, principal=principal)
        except Exception as exc:
            error = services.describe_failure(exc)[:1000]
            _record(REMOVAL_FAILED, target, principal, error=error)
            logger.error(
                "reconcile: orphan %s on %s not removed: %s",
                principal,
                target.name,
                error,
            )
            return False
        _record(REMOVED, target, principal)
    logger.warning("reconcile: removed orphan %s from %s", principal, target.name)
    return True


def _record(action, target, principal, **data):
    audit.record_event(
        action,
        actor=audit.SYSTEM,
        subject={"target": target.name},
        data={"target": target.name, "principal": principal, **data},
    )
