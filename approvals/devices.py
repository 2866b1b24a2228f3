"""Enrolment of the TOTP devices that approvers confirm their decisions with."""

import logging

from django.db import transaction
from django.views.decorators.debug import sensitive_variables
from django_otp.plugins.otp_totp.models import TOTPDevice

from breakglass import audit, clock
from breakglass.errors import OtpInvalid, Throttled, WrongState

from . import otp

logger = logging.getLogger(__name__)


def confirmed_devices(user):
    return TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk")


def pending_device(user):
    """Return the user's device that waits for its first code, if any."""
    return TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-pk").first()


def start_enrolment(user, *, name):
    """Create an unconfirmed device, replacing one left unconfirmed before."""
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user, confirmed=False).delete()
        return TOTPDevice.objects.create(user=user, name=name.strip(), confirmed=False)


def discard_enrolment(user):
    """Forget the device that was never confirmed."""
    TOTPDevice.objects.filter(user=user, confirmed=False).delete()


@sensitive_variables("code")
def confirm_enrolment(user, *, code):
    """Confirm the pending device with a code it shows; return the device.

    Only a confirmed device can confirm decisions. The new device is recorded in
    the trail, and so alerted: a second factor added from a stolen session must
    not go unseen.
    """
    code = (code or "").strip().replace(" ", "")
    with transaction.atomic():
        device = (
            TOTPDevice.objects.select_for_update()
            .filter(user=user, confirmed=False)
            .order_by("-pk")
            .first()
        )
        if device is None:
            raise WrongState(
                "No authenticator is waiting for confirmation; add one first.",
                code="no_pending_device",
            )
        allowed, info = device.verify_is_allowed()
        if not allowed:
            until = (info or {}).get("locked_until")
            wait = (until - clock.now()).total_seconds() if until else 60
            raise Throttled(
                "Too many wrong codes; wait before trying again.",
                code="otp_throttled",
                retry_after=wait,
            )
        if code.isdigit() and device.verify_token(code):
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            audit.record_event(
                "otp.device_added",
                actor=user.get_username(),
                data={"device": otp.describe(device)},
                # Its owner hears of it too, in case it was not them.
                notify=[user.email] if user.email else [],
            )
            logger.info("TOTP device %s confirmed for %s", device.pk, user)
            return device
        if not code.isdigit():
            device.throttle_increment()
    # Raised after commit, so that the device's failure count is kept.
    raise OtpInvalid(
        "The code is wrong or expired; check the time on your phone and try again."
    )
