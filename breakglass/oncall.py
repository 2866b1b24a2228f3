"""The on-call roster: who is on call, and when.

Everyone signed in may read it; only admins change it, and every change is written
to the trail (and so alerted) in the same transaction. The API, the admin and the
web pages all go through these functions.
"""

import datetime
import logging

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from . import audit, clock, roles
from .errors import InvalidInput, NotAllowed, NotVisible
from .models import OnCallShift

logger = logging.getLogger(__name__)

Source = OnCallShift.Source
NOTE_LENGTH = OnCallShift._meta.get_field("note").max_length


def add_oncall_shift(*, user, starts_at, ends_at, note="", actor, source):
    """Put the user on call from `starts_at` until `ends_at`; return the shift."""
    _require_admin(actor)
    if source not in Source.values:
        raise InvalidInput(f"Unknown source {source!r}.")
    note = _clean_note(note)

    with transaction.atomic():
        _lock_roster_of(user)
        check_shift(user=user, starts_at=starts_at, ends_at=ends_at, note=note)
        shift = OnCallShift.objects.create(
            user=user, starts_at=starts_at, ends_at=ends_at, note=note, source=source
        )
        _record("oncall.added", shift, actor=actor)
    logger.info("on-call shift %s added for %s by %s", shift.pk, user, actor)
    return shift


def change_oncall_shift(shift_id, *, user, starts_at, ends_at, note="", actor):
    """Move a shift to another person or period; return the shift."""
    _require_admin(actor)
    note = _clean_note(note)

    with transaction.atomic():
        shift = _lock_shift(shift_id)
        _lock_roster_of(user)
        check_shift(
            user=user, starts_at=starts_at, ends_at=ends_at, note=note, exclude=shift.pk
        )
        previous = _describe(shift)
        shift.user = user
        shift.starts_at = starts_at
        shift.ends_at = ends_at
        shift.note = note
        shift.save(update_fields=["user", "starts_at", "ends_at", "note"])
        _record("oncall.changed", shift, actor=actor, previous=previous)
    logger.info("on-call shift %s changed by %s", shift.pk, actor)
    return shift


def remove_oncall_shift(shift_id, *, actor):
    """Take a shift off the roster."""
    _require_admin(actor)
    with transaction.atomic():
        shift = _lock_shift(shift_id)
        _record("oncall.removed", shift, actor=actor)
        shift.delete()
    logger.info("on-call shift %s removed by %s", shift_id, actor)


def check_shift(*, user, starts_at, ends_at, note="", exclude=None):
    """Refuse a shift that is malformed or overlaps another of the same person.

    `exclude` is the id of the shift being changed, which may overlap itself.
    """
    fields = {}
    if not _is_user(user):
        fields["user"] = ["Unknown user."]
    for name, value in (("starts_at", starts_at), ("ends_at", ends_at)):
        if not isinstance(value, datetime.datetime):
            fields[name] = ["Must be a date and time."]
        elif timezone.is_naive(value):
            fields[name] = ["Must give its offset from UTC, e.g. 2026-12-07T08:00Z."]
    if not fields and ends_at <= starts_at:
        fields["ends_at"] = ["Must be after the start."]
    if not isinstance(note, str) or len(note) > NOTE_LENGTH:
        fields["note"] = [f"At most {NOTE_LENGTH} characters."]
    if fields:
        raise InvalidInput("The shift is not valid.", fields=fields)
    _refuse_overlap(user, starts_at, ends_at, exclude=exclude)


def shifts(*, user=None, at=None):
    """Return shifts in time order: those on at `at`, or those not yet ended."""
    queryset = OnCallShift.objects.select_related("user").order_by(
        "starts_at", "user__username", "pk"
    )
    if user is not None:
        queryset = queryset.filter(user__username=user)
    if at is not None:
        return queryset.filter(starts_at__lte=at, ends_at__gt=at)
    return queryset.filter(ends_at__gt=clock.now())


def get_shift(shift_id):
    """Return the shift; raise NotVisible when there is none with that id."""
    shift = OnCallShift.objects.select_related("user").filter(pk=shift_id).first()
    if shift is None:
        raise NotVisible("No such on-call shift.")
    return shift


def _require_admin(actor):
    if not roles.has_role(actor, roles.ADMIN):
        raise NotAllowed("Only admins can change the on-call roster.")


def _lock_shift(shift_id):
    shift = (
        OnCallShift.objects.select_for_update(of=("self",))
        .select_related("user")
        .filter(pk=shift_id)
        .first()
    )
    if shift is None:
        raise NotVisible("No such on-call shift.")
    return shift


def _clean_note(note):
    # Anything but text is left for check_shift to refuse with its field.
    return note.strip() if isinstance(note, str) else "" if note is None else note


def _is_user(user):
    return isinstance(user, get_user_model()) and user.pk is not None


def _lock_roster_of(user):
    # Two admins adding overlapping shifts for one person at once: the person's
    # row serialises them, so the second sees the first and is refused.
    if _is_user(user):
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()


def _refuse_overlap(user, starts_at, ends_at, exclude=None):
    clash = OnCallShift.objects.filter(
        user=user, starts_at__lt=ends_at, ends_at__gt=starts_at
    )
    if exclude is not None:
        clash = clash.exclude(pk=exclude)
    other = clash.order_by("starts_at").first()
    if other is not None:
        raise InvalidInput(
            f"{user.get_username()} is already on call from "
            f"{_iso(other.starts_at)} to {_iso(other.ends_at)}.",
            fields={
                "starts_at": [
                    f"Overlaps shift {other.pk} ({_iso(other.starts_at)} to "
                    f"{_iso(other.ends_at)})."
                ]
            },
        )


def _describe(shift):
    return {
        "shift": shift.pk,
        "user": shift.user.get_username(),
        "starts_at": _iso(shift.starts_at),
        "ends_at": _iso(shift.ends_at),
        "note": shift.note,
        "source": shift.source,
    }


def _record(action, shift, *, actor, previous=None):
    data = _describe(shift)
    if previous is not None:
        data["previous"] = {k: v for k, v in previous.items() if k != "shift"}
    audit.record_event(action, actor=actor.get_username(), data=data)


def _iso(moment):
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
