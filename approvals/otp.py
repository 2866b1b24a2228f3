"""Second-factor confirmation of a decision with the approver's own TOTP device."""

from django.db import transaction
from django.utils.crypto import constant_time_compare
from django.views.decorators.debug import sensitive_variables
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from breakglass import clock
from breakglass.errors import Throttled


@sensitive_variables("token")
def verify(user, token, device=None):
    """Return the user's device that accepts the code, or None.

    Each device row is locked while its code is checked, so a code can be used once
    per device: a replay, or the same code sent twice at once, is refused (django-otp
    keeps the last accepted time step). `device` (a name or persistent id) picks one
    device, so that failures count against it alone and a resting device does not
    lock its owner out of the others; without it every device that is not resting
    is tried and a failure counts against the first of them only. Raise Throttled
    when every candidate is resting.
    """
    token = (token or "").strip().replace(" ", "")
    with transaction.atomic():
        devices = list(
            TOTPDevice.objects.select_for_update()
            .filter(user=user, confirmed=True)
            .order_by("pk")
        )
        if device:
            devices = [d for d in devices if device in (d.name, d.persistent_id)][:1]
        if not devices:
            return None
        resting_until = []
        counted = False
        for device in devices:
            allowed, info = device.verify_is_allowed()
            if not allowed:
                resting_until.append((info or {}).get("locked_until"))
                continue
            before = (
                device.throttling_failure_count,
                device.throttling_failure_timestamp,
            )
            if token.isdigit() and device.verify_token(token):
                return device
            if not token.isdigit():
                # Count a malformed code as a failure too, without asking the device.
                device.throttle_increment()
            if counted:
                # One wrong code rests one device, the first one that was tried,
                # so that its owner can still use the others.
                (
                    device.throttling_failure_count,
                    device.throttling_failure_timestamp,
                ) = before
                device.save(
                    update_fields=[
                        "throttling_failure_count",
                        "throttling_failure_timestamp",
                    ]
                )
            counted = True
        if len(resting_until) == len(devices):
            until = min((t for t in resting_until if t), default=None)
            wait = (until - clock.now()).total_seconds() if until else 60
            raise Throttled(
                "Too many wrong codes; wait before trying again.",
                code="otp_throttled",
                retry_after=wait,
            )
    return None


@sensitive_variables("token")
def is_spent(user, token):
    """Return whether the code is one a device of the user accepted and still shows.

    Such a code is refused like any other, but its owner, who may have just logged
    in with it, should be told to wait for the next one rather than that it is wrong.
    """
    token = (token or "").strip().replace(" ", "")
    for device in TOTPDevice.objects.filter(user=user, confirmed=True):
        if device.last_t is None or device.last_t < 0:
            continue
        totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
        if abs(totp.t() - device.last_t) > device.tolerance:
            continue
        totp.time = device.t0 + (device.last_t - device.drift) * device.step
        if constant_time_compare(f"{totp.token():0{device.digits}d}", token):
            return True
    return False


def has_device(user):
    """Return whether the user has a confirmed authenticator."""
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def describe(device):
    """Return how the trail names a device: its kind, id and name."""
    return f"{device.persistent_id} ({device.name})"
