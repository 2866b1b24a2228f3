"""Sealed shared credentials: checkout, reveal, rotation, import and rekeying.

A sealed target has one secret, so it is checked out by one request at a time:
a request is refused while another request for the target is open or while the
secret of the last checkout is still to be replaced. Each function that changes
state locks the credential's row, records its event and queues its work after
commit, as the grant services do.
"""

import logging
import secrets
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.views.decorators.debug import sensitive_variables

from . import audit, clock, vault
from .errors import InvalidInput, ProviderError, WrongState
from .models import AccessRequest, SealedCredential, Target
from .providers.rotators import rotator_for

logger = logging.getLogger(__name__)

Status = AccessRequest.Status
# The states in which a request holds, or may soon hold, the secret.
CHECKED_OUT = (Status.PENDING, Status.APPROVED, Status.ACTIVE)
MAX_RETRY_DELAY = timedelta(minutes=10)
SECRET_BYTES = 32


def _backoff(attempts):
    return min(MAX_RETRY_DELAY, timedelta(seconds=5 * 2 ** min(attempts - 1, 10)))


def _lock(target_id):
    return (
        SealedCredential.objects.select_for_update(of=("self",))
        .select_related("target", "last_request")
        .filter(target_id=target_id)
        .first()
    )


def _subject(credential, access_request=None):
    if access_request is None:
        return {"target": credential.target.name}
    from .services import subject_of

    return subject_of(access_request)


def _record(action, credential, *, actor=audit.SYSTEM, data=None):
    return audit.record_event(
        action,
        actor=actor.get_username() if hasattr(actor, "get_username") else actor,
        subject=_subject(credential, credential.last_request),
        data={"username": credential.target.rotator.get("username", ""), **data},
    )


def _queue_rotation(target_id):
    from . import tasks

    def queue():
        try:
            tasks.rotate_credential.delay(target_id)
        except Exception:
            # The sweep rotates whatever is due once a worker runs.
            logger.exception("could not queue the rotation of target %s", target_id)

    transaction.on_commit(queue)


# Checking out


def check_out(target):
    """Refuse a request for a sealed target whose secret is not free to hand out.

    Called inside the transaction that creates the request: the credential's
    row lock makes two requests for the same target wait on each other, so
    that the second sees the first.
    """
    credential = _lock(target.pk)
    if credential is None or credential.secret is None:
        raise WrongState(
            f"No secret is sealed for {target.name} yet; an operator seals it "
            "with manage.py seal_credential.",
            code="not_sealed",
        )
    holder = (
        AccessRequest.objects.filter(target=target, status__in=CHECKED_OUT)
        .order_by("pk")
        .first()
    )
    if holder is not None:
        raise WrongState(
            f"The shared credential of {target.name} is checked out by request "
            f"{holder.pk} ({holder.status}); only one request may hold it at a time.",
            code="checked_out",
        )
    if credential.rotation_due_at is not None:
        state = (
            "compromised: its rotation is failing"
            if credential.is_compromised
            else "being replaced after its last checkout"
        )
        raise WrongState(
            f"The shared credential of {target.name} is {state}; it can be checked "
            "out again once it is rotated.",
            code="rotation_pending",
        )
    return credential


NO_KEY = (
    "No key in BREAKGLASS_SEALING_KEYS opens the sealed secret: add back the key "
    "that sealed it."
)


@sensitive_variables("secret")
def reveal_secret(target_id):
    """Return the sealed secret for a grant being revealed, and mark it exposed.

    Called inside the reveal's transaction, which records the event.
    """
    credential = _lock(target_id)
    if credential is None or credential.secret is None:
        raise WrongState("There is no sealed secret to reveal.", code="not_sealed")
    try:
        secret = vault.unseal(credential.secret)
    except vault.InvalidToken:
        raise WrongState(NO_KEY, code="sealing_key_missing") from None
    credential.exposed = True
    credential.save(update_fields=["exposed"])
    return secret


def rotation_after_grant(access_request):
    """Make the secret's rotation due at the end of a grant of a sealed target.

    Called inside the transaction that ends the grant, whether or not the
    secret was revealed: nobody can prove it was not read.
    """
    credential = _lock(access_request.target_id)
    if credential is None:
        return
    credential.rotation_due_at = clock.now()
    credential.rotation_attempts = 0
    credential.retry_at = None
    credential.last_request = access_request
    credential.save(
        update_fields=[
            "rotation_due_at",
            "rotation_attempts",
            "retry_at",
            "last_request",
        ]
    )
    _queue_rotation(access_request.target_id)


# Rotating


def rotate_credential(target_id):
    """Replace a sealed secret on its system, then seal it; return if it rotated.

    The new secret is sealed as pending and committed before the system is
    told: a crash after the system accepted it leaves it known. A failure
    keeps the current secret, retries with backoff, and marks an exposed
    secret compromised until a rotation succeeds.
    """
    if not _prepare(target_id):
        return False
    with transaction.atomic():
        # Held across the system call: a second rotation waits, then finds none due.
        credential = _lock(target_id)
        if credential is None or credential.rotation_due_at is None:
            return False
        if credential.pending_secret is None:
            return False
        rotator = credential.target.rotator
        now = clock.now()
        credential.rotation_attempts += 1
        try:
            _check_same_account(credential, rotator)
            rotator_for(rotator).rotate(
                rotator, secret=vault.unseal(credential.pending_secret)
            )
        except Exception as exc:
            _rotation_failed(credential, _describe(exc), now=now)
            return False
        _promote(credential, now=now)
    return True


def _prepare(target_id):
    """Seal a pending secret for a due rotation, in its own transaction."""
    with transaction.atomic():
        credential = _lock(target_id)
        if credential is None or credential.rotation_due_at is None:
            return False
        # A pending secret left by a failed or interrupted attempt is used
        # again: the system may already hold it.
        if credential.pending_secret is None:
            credential.pending_secret = vault.seal(secrets.token_urlsafe(SECRET_BYTES))
            credential.save(update_fields=["pending_secret"])
    return True


def _check_same_account(credential, rotator):
    """Refuse to rotate another account than the one the last grant handed out.

    Rotating whatever the target names now would report the handed-out secret
    replaced while it still works.
    """
    grant = getattr(credential.last_request, "grant", None)
    if grant is None:
        return
    handed_out = grant.target_snapshot.get("rotator")
    if handed_out is not None and handed_out != rotator:
        raise ProviderError(
            f"the target's rotator was changed after the secret was handed out to "
            f"request {credential.last_request_id}; restore it, or replace that "
            "secret by hand and seal a new one"
        )


def _describe(exc):
    if isinstance(exc, ProviderError):
        return str(exc)
    if isinstance(exc, vault.InvalidToken):
        return NO_KEY
    return f"unexpected {type(exc).__name__} from the rotator"


def _promote(credential, *, now):
    was_compromised = credential.is_compromised
    credential.secret = credential.pending_secret
    credential.pending_secret = None
    credential.rotated_at = now
    credential.sealed_at = now
    credential.exposed = False
    credential.compromised_since = None
    credential.rotation_due_at = None
    credential.retry_at = None
    credential.last_error = ""
    credential.save()
    _record(
        "credential.rotated",
        credential,
        data={
            "rotator": credential.target.rotator.get("kind", ""),
            "attempt": credential.rotation_attempts,
            "was_compromised": was_compromised,
        },
    )
    logger.info(
        "sealed credential of %s rotated (attempt %s)",
        credential.target.name,
        credential.rotation_attempts,
    )


def _rotation_failed(credential, error, *, now):
    credential.last_error = error[:1000]
    credential.retry_at = now + _backoff(credential.rotation_attempts)
    if credential.exposed and credential.compromised_since is None:
        credential.compromised_since = now
    credential.save(
        update_fields=[
            "rotation_attempts",
            "last_error",
            "retry_at",
            "compromised_since",
        ]
    )
    _record(
        "credential.rotation_failed",
        credential,
        data={
            "rotator": credential.target.rotator.get("kind", ""),
            "error": credential.last_error,
            "attempt": credential.rotation_attempts,
            "next_attempt_at": credential.retry_at.isoformat(),
            "compromised": credential.is_compromised,
        },
    )
    logger.error(
        "sealed credential of %s not rotated, attempt %s: %s",
        credential.target.name,
        credential.rotation_attempts,
        credential.last_error,
    )


def rotate_due():
    """Rotate every sealed secret whose rotation is due; return how many rotated."""
    now = clock.now()
    due = SealedCredential.objects.filter(rotation_due_at__isnull=False).filter(
        Q(retry_at__isnull=True) | Q(retry_at__lte=now)
    )
    return sum(
        rotate_credential(target_id)
        for target_id in list(due.values_list("target_id", flat=True)[:100])
    )


# Importing and rekeying


@sensitive_variables("secret")
def seal_credential(target_name, secret, *, actor=audit.SYSTEM):
    """Seal an operator's secret for a sealed target and rotate it at once.

    The value that was typed is known to whoever typed it: it is rotated away
    straight after commit, and counts as exposed until then.
    """
    secret = (secret or "").strip("\r\n")
    if not secret:
        raise InvalidInput("The secret is empty.", fields={"secret": ["Required."]})
    with transaction.atomic():
        target = (
            Target.objects.select_for_update()
            .filter(name=target_name, kind=Target.Kind.SEALED)
            .first()
        )
        if target is None:
            raise InvalidInput(
                f"There is no sealed target {target_name!r}.",
                fields={"target": ["Unknown sealed target."]},
            )
        credential, _ = SealedCredential.objects.get_or_create(target=target)
        credential = _lock(target.pk)
        holder = AccessRequest.objects.filter(
            target=target, status__in=CHECKED_OUT
        ).first()
        if holder is not None:
            raise WrongState(
                f"The shared credential of {target.name} is checked out by request "
                f"{holder.pk}; seal a new secret once it is back.",
                code="checked_out",
            )
        now = clock.now()
        credential.secret = vault.seal(secret)
        credential.pending_secret = None
        credential.sealed_at = now
        credential.exposed = True
        credential.rotation_due_at = now
        credential.rotation_attempts = 0
        credential.retry_at = None
        credential.last_error = ""
        credential.last_request = None
        credential.save()
        _record("credential.sealed", credential, actor=actor, data={})
        _queue_rotation(target.pk)
    logger.info("secret of %s sealed by %s", target.name, actor)
    return credential


def reseal_all():
    """Encrypt every sealed secret again with the newest key; return how many."""
    resealed = 0
    for target_id in list(
        SealedCredential.objects.values_list("target_id", flat=True).order_by("pk")
    ):
        with transaction.atomic():
            credential = _lock(target_id)
            fields = []
            for field in ("secret", "pending_secret"):
                token = getattr(credential, field)
                if token is not None:
                    setattr(credential, field, vault.reseal(token))
                    fields.append(field)
            if fields:
                credential.save(update_fields=fields)
                resealed += 1
    if resealed:
        audit.record_event(
            "credential.resealed", actor=audit.SYSTEM, data={"credentials": resealed}
        )
    return resealed
