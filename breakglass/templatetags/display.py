"""Template filters and tags for times, event data and roles."""

import json
import re
from datetime import UTC, datetime

from django import template
from django.utils.html import format_html

from .. import explain, roles, selectors

register = template.Library()

_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


@register.filter
def utc(value):
    """Render a datetime in UTC, labelled, inside a machine-readable <time>."""
    if not value:
        return "—"
    value = value.astimezone(UTC)
    return format_html(
        '<time datetime="{}">{} UTC</time>',
        value.isoformat(timespec="seconds"),
        value.strftime("%Y-%m-%d %H:%M:%S"),
    )


@register.filter
def event_data(data):
    """Return an event's data as (key, text) pairs for display."""
    pairs = []
    for key, value in sorted((data or {}).items()):
        if not isinstance(value, str):
            text = json.dumps(value, sort_keys=True)
        elif _ISO_TIME.match(value):
            text = _utc_text(value)
        else:
            text = value
        pairs.append((key, text))
    return pairs


def _utc_text(value):
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        return value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@register.filter
def describe_event(event):
    return explain.describe_event(event)


@register.simple_tag
def has_role(user, role):
    """Return whether the user holds the role, for menus and buttons."""
    return roles.has_role(user, role)


@register.simple_tag
def can_read_trail(user):
    return user.is_authenticated and selectors.can_read_trail(user)


@register.filter
def duration(seconds):
    """Render a number of seconds in words, with the exact value kept in <data>."""
    if seconds is None:
        return "—"
    whole = int(seconds)
    if seconds < 60:
        text = f"{seconds:.1f} s".replace(".0 s", " s")
    elif whole < 3600:
        text = f"{whole // 60} min {whole % 60} s"
    elif whole < 86400:
        text = f"{whole // 3600} h {whole % 3600 // 60} min"
    else:
        text = f"{whole // 86400} d {whole % 86400 // 3600} h"
    return format_html('<data value="{}">{}</data>', seconds, text)
