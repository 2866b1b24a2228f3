"""Use detection: every session or login with a grant's credential is alerted once.

Each active grant's provider lists the sessions its target shows for the
credential; a session not seen before becomes a CredentialUse row and a
`credential.used` event, written together under the grant's lock.
"""

import contextlib
import logging

from django.db import connection, transaction

from . import audit, clock, services
from .errors import ProviderError
from .models import AccessRequest, CredentialUse, Grant
from .providers import provider_for

logger = logging.getLogger(__name__)

# Held by the detection run in progress (PostgreSQL only).
_RUN_LOCK_KEY = 0x6267_6465_7465_6374  # "bgdetect"


def detect_uses():
    """Look for new uses of every active grant's credential; return how many.

    A run that starts while another is still going returns 0 at once: with many
    grants a run outlasts its interval, and stacked runs would take every worker
    thread from the revocations that must end grants on time.
    """
    with _only_run() as alone:
        if not alone:
            logger.info("detection: the previous run is still going; skipped")
            return 0
        grant_ids = (
            Grant.objects.filter(
                request__status=AccessRequest.Status.ACTIVE, issued_at__isnull=False
            )
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        return sum(detect_grant_uses(grant_id) for grant_id in list(grant_ids))


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
    sessions = _unrecorded(grant, _sessions(grant))
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
    snapshot = grant.target_snapshot
    try:
        return provider_for(snapshot["kind"]).sessions(
            snapshot, principal=grant.principal
        )
    except Exception as exc:
        # Only a provider's own message is known to hold no connection secret.
        reason = str(exc) if isinstance(exc, ProviderError) else type(exc).__name__
        logger.warning(
            "uses of grant %s (%s) on %s not checked: %s",
            grant.pk,
            grant.principal,
            snapshot.get("name"),
            reason,
        )
        return []


def _unrecorded(grant, sessions):
    if not sessions:
        return []
    recorded = set(
        CredentialUse.objects.filter(
            grant_id=grant.pk, session_key__in=[s.key for s in sessions]
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
    for session in _unrecorded(grant, sessions):
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
