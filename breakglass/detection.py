"""Use detection: every session or login with a grant's credential is alerted once.

Each target is asked once per run for the sessions of all its active grants'
credentials; a session not seen before becomes a CredentialUse row and a
`credential.used` event, written together under the grant's lock.
"""

import contextlib
import logging
from collections import defaultdict

from django.db import connection, transaction

from . import audit, clock, services
from .errors import ProviderError
from .models import AccessRequest, CredentialUse, Grant
from .providers import provider_for

logger = logging.getLogger(__name__)

# Held by the detection run in progress (PostgreSQL only).
_RUN_LOCK_KEY = 0x6267_6465_7465_6374  # "bgdetect"
# How many principals a warning about an unreachable target names.
MAX_NAMED = 5


def detect_uses():
    """Look for new uses of every active grant's credential; return how many.

    Each target is asked once per run for the sessions of all its active grants.
    A run that starts while another is still going returns 0 at once: stacked
    runs would take every worker thread from the revocations that must end
    grants on time.
    """
    with _only_run() as alone:
        if not alone:
            logger.info("detection: the previous run is still going; skipped")
            return 0
        grants = (
            Grant.objects.filter(
                request__status=AccessRequest.Status.ACTIVE, issued_at__isnull=False
            )
            .order_by("pk")
            .only("principal", "target_snapshot")
        )
        by_target = defaultdict(dict)
        for grant in grants:
            by_target[_reached_through(grant.target_snapshot)][grant.principal] = grant
        found = 0
        for on_target in by_target.values():
            sessions = _sessions_on_target(on_target)
            for principal, grant in on_target.items():
                found += _record_if_new(grant.pk, sessions.get(principal, []))
        return found


def _reached_through(snapshot):
    """Return what names one target and the way to it, for grouping grants."""
    return snapshot["kind"], snapshot.get("name", ""), snapshot.get("connection_env")


@contextlib.contextmanager
def _only_run():
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_RUN_LOCK_KEY])
        alone = cursor.fetchone()[0]
    try:
        yield alone
    finally:
        if alone:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_RUN_LOCK_KEY])


def detect_grant_uses(grant_id):
    """Record the new uses the target shows for one grant; return how many.

    A target that cannot be reached is logged and skipped: detection tries again
    on its next run.
    """
    grant = Grant.objects.only("principal", "target_snapshot").get(pk=grant_id)
    return _record_if_new(grant.pk, _sessions(grant))


def _record_if_new(grant_id, sessions):
    sessions = _unrecorded(grant_id, sessions)
    if not sessions:
        # The usual case: nothing new, and no lock taken.
        return 0
    with transaction.atomic():
        # Two detectors, or a detector and the revocation, may see the same
        # session: the grant's lock lets one of them record it.
        grant = (
            Grant.objects.select_for_update(of=("self",))
            .select_related("request__target", "request__scope", "request__requester")
            .get(pk=grant_id)
        )
        grant.request.refresh_from_db(fields=["status"])
        if grant.request.status != AccessRequest.Status.ACTIVE:
            # Ended while its target was being asked: after the end, its sessions
            # are cut, not new uses.
            return 0
        return _record_new(grant, sessions)


def record_uses_before_end(grant):
    """Record the uses of a locked grant that is about to be revoked.

    A session opened and closed between two detection runs would otherwise be
    missed; called by the revocation in its transaction.
    """
    return _record_new(grant, _sessions(grant))


def _sessions(grant):
    return _sessions_on_target({grant.principal: grant}).get(grant.principal, [])


def _sessions_on_target(grants):
    """Return the sessions of these grants, all on one target, by principal."""
    snapshots = {principal: g.target_snapshot for principal, g in grants.items()}
    snapshot = next(iter(snapshots.values()))
    try:
        return provider_for(snapshot["kind"]).sessions_of(snapshots)
    except Exception as exc:
        # Only a provider's own message is known to hold no connection secret.
        reason = str(exc) if isinstance(exc, ProviderError) else type(exc).__name__
        named = sorted(grants)
        shown = ", ".join(named[:MAX_NAMED]) + (", ..." if named[MAX_NAMED:] else "")
        logger.warning(
            "uses of %s grant(s) (%s) on %s not checked: %s",
            len(named),
            shown,
            snapshot.get("name"),
            reason,
        )
        return {}


def _unrecorded(grant_id, sessions):
    if not sessions:
        return []
    recorded = set(
        CredentialUse.objects.filter(
            grant_id=grant_id, session_key__in=[s.key for s in sessions]
        ).values_list("session_key", flat=True)
    )
    new = {}
    for session in sessions:
        if session.key not in recorded:
            new.setdefault(session.key, session)
    return list(new.values())


def _record_new(grant, sessions):
    now = clock.now()
    recorded = 0
    for session in _unrecorded(grant.pk, sessions):
        CredentialUse.objects.create(
            grant=grant,
            session_key=session.key,
            source_address=session.source_address,
            used_at=session.used_at,
            detected_at=now,
            details=session.details,
        )
        services.record(
            "credential.used",
            grant.request,
            actor=audit.SYSTEM,
            data={
                "principal": grant.principal,
                "session": session.key,
                "source_address": session.source_address,
                "used_at": session.used_at.isoformat(),
                "detected_at": now.isoformat(),
                "delay_seconds": round((now - session.used_at).total_seconds(), 3),
                **session.details,
            },
        )
        logger.info(
            "grant %s (%s) used from %s",
            grant.pk,
            grant.principal,
            session.source_address,
        )
        recorded += 1
    return recorded
