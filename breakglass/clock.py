"""The one source of the current time, so tests can move the clock."""

from django.utils import timezone


def now():
    """Return the current time as an aware UTC datetime."""
    return timezone.now()
