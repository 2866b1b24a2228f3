"""Policies and decisions in plain words, for the people who read the pages."""

import datetime
import re

from .configfile import WEEKDAYS

DAY_NAMES = dict(
    zip(
        WEEKDAYS,
        ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
        strict=True,
    )
)


def plural(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def yes_no(value):
    return "yes" if value else "no"


def approvers_text(groups):
    return ", ".join(groups) if groups else "any approver"


def describe_decision(decision):
    """Return a recorded decision as labelled sentences; empty if none was kept."""
    if not decision:
        return {}
    evaluated = decision.get("evaluated") or {}
    facts = []
    if "local_time" in evaluated:
        facts.append(
            ("Local time when asked", _local_time(evaluated["local_time"], evaluated))
        )
    if "off_hours" in evaluated:
        facts.append(("Outside working hours", yes_no(evaluated["off_hours"])))
    if "on_call" in evaluated:
        facts.append(("Requester on call", yes_no(evaluated["on_call"])))
    if "recent_grants" in evaluated:
        days = plural(evaluated.get("recent_window_days", 0), "day")
        facts.append((f"Grants in the last {days}", str(evaluated["recent_grants"])))
    if "open_requests" in evaluated:
        facts.append(
            ("Requests and grants already open", str(evaluated["open_requests"]))
        )
    longest = decision.get("max_duration_minutes")
    return {
        "summary": decision.get("summary", ""),
        "approvers": approvers_text(decision.get("approver_groups") or []),
        "longest": plural(longest, "minute") if longest else "",
        "evaluated": facts,
        "fired": list(decision.get("fired") or []),
    }


def _local_time(text, evaluated):
    try:
        moment = datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return str(text)
    zone = evaluated.get("timezone", "")
    offset = moment.strftime("%z")
    offset = f"UTC{offset[:3]}:{offset[3:]}" if offset else ""
    return " ".join(
        part
        for part in (
            f"{DAY_NAMES[WEEKDAYS[moment.weekday()]]} {moment:%Y-%m-%d %H:%M}",
            zone,
            f"({offset})" if offset and zone != "UTC" else "",
        )
        if part
    )


def describe_policy(policy, approver_groups):
    """Return a policy's base and limits as sentences."""
    lines = [
        f"{plural(policy.approvals_required, 'approval')} from "
        f"{approvers_text(approver_groups)}, for at most "
        f"{plural(policy.max_duration_minutes, 'minute')}; approvals must arrive "
        f"within {plural(policy.approval_window_minutes, 'minute')}.",
        f"Working hours: {working_days_text(policy.working_days)}, "
        f"{policy.working_hours_start:%H:%M} to {policy.working_hours_end:%H:%M} "
        f"({policy.timezone}).",
    ]
    limit = policy.max_active_grants
    if limit:
        held = "open request or grant" if limit == 1 else "open requests and grants"
        lines.append(f"A requester may hold at most {limit} {held} at a time.")
    return lines


def working_days_text(days):
    """Return working days as "Monday to Friday" or a list of days."""
    ordered = [day for day in WEEKDAYS if day in (days or [])]
    if not ordered:
        return "no working days (always off hours)"
    indexes = [WEEKDAYS.index(day) for day in ordered]
    if len(ordered) > 2 and indexes == list(range(indexes[0], indexes[-1] + 1)):
        return f"{DAY_NAMES[ordered[0]]} to {DAY_NAMES[ordered[-1]]}"
    return ", ".join(DAY_NAMES[day] for day in ordered)


def describe_rule(rule, recent_window_days):
    """Return one rule as "name: if <conditions>, <effects>."."""
    when = rule.get("when") or {}
    conditions = [
        _condition(key, when[key], recent_window_days)
        for key in sorted(when, key=_condition_order)
    ]
    effects = []
    if rule.get("add_approvals"):
        effects.append(plural(rule["add_approvals"], "more approval"))
    if rule.get("max_duration_minutes"):
        effects.append(f"at most {plural(rule['max_duration_minutes'], 'minute')}")
    when = " and ".join(conditions) or "always"
    return f"{rule.get('name', '')}: if {when}, {' and '.join(effects) or 'no change'}."


def _condition_order(key):
    order = ("environment", "scope", "off_hours", "on_call", "recent_grants_at_least")
    return order.index(key) if key in order else len(order)


def _condition(key, value, recent_window_days):
    if key in ("environment", "scope"):
        values = [value] if isinstance(value, str) else list(value)
        return f"the {key} is {' or '.join(values)}"
    if key == "off_hours":
        return "it is outside working hours" if value else "it is working hours"
    if key == "on_call":
        return "the requester is on call" if value else "the requester is not on call"
    if key == "recent_grants_at_least":
        return (
            f"the requester had {value} or more grants in the last "
            f"{plural(recent_window_days, 'day')}"
        )
    return f"{key} is {value}"


def describe_event(event):
    """Return what an event says happened, in one plain sentence."""
    data = event.data or {}
    actor = event.actor
    principal = data.get("principal", "")
    sentences = {
        "request.created": lambda: (
            f"{actor} asked for {event.scope} on "
            f"{event.target} for {data.get('duration_minutes', '?')} minutes"
        ),
        "approval.approved": lambda: (
            f"{actor} approved with the one-time code of "
            f"{_device(data.get('otp_device'))}"
        ),
        "approval.denied": lambda: (
            f"{actor} denied with the one-time code of "
            f"{_device(data.get('otp_device'))}"
        ),
        "request.approved": lambda: (
            f"Approved: {plural(data.get('approvals', 0), 'approval')} reached"
        ),
        "request.denied": lambda: f"Denied by {actor}",
        "request.cancelled": lambda: f"Cancelled by {actor}",
        "request.timed_out": lambda: "Timed out waiting for approvals",
        "grant.issued": lambda: f"Credential {principal} created on {event.target}",
        "grant.issue_failed": lambda: "The credential could not be created",
        "credential.revealed": lambda: f"{actor} revealed the credential",
        "credential.used": lambda: (
            f"{principal} used from "
            f"{data.get('source_address') or 'an unknown address'}"
        ),
        "grant.end_requested": lambda: f"{actor} asked to end the grant",
        "grant.revoked": lambda: f"Credential {principal} revoked early",
        "grant.expired": lambda: f"Credential {principal} removed at expiry",
        "grant.revocation_failed": lambda: (
            f"Revocation failed (attempt {data.get('attempt', '?')}); it is retried"
        ),
        "credential.sealed": lambda: f"{actor} sealed a new shared secret",
        "credential.rotated": lambda: (
            f"Shared secret of {data.get('username')} replaced on {event.target}"
        ),
        "credential.rotation_failed": lambda: (
            f"The shared secret could not be replaced (attempt "
            f"{data.get('attempt', '?')}); it is retried"
        ),
        "credential.resealed": lambda: (
            f"{plural(data.get('credentials', 0), 'sealed secret')} encrypted "
            "with the newest key"
        ),
        "otp.failed": lambda: f"A wrong one-time code from {actor}",
        "user.created": lambda: (
            f"{actor} created {data.get('user')} in "
            f"{', '.join(data.get('groups') or []) or 'no group'}"
        ),
        "user.changed": lambda: f"{actor} changed what {data.get('user')} may do",
        "user.removed": lambda: f"{actor} deleted {data.get('user')}",
        "audit.checkpoint": lambda: f"Trail head at seq {data.get('seq')} signed",
        "audit.chain_broken": lambda: (
            f"The trail is broken at seq {data.get('first_bad')}"
        ),
    }
    describe = sentences.get(event.action)
    return describe() if describe else event.action


def _device(described):
    """Name a device as the trail recorded it: "<id> (<name>)"."""
    found = re.fullmatch(r"(\S+) \((.*)\)", described or "")
    if not found:
        return described or "a device"
    return f"device “{found[2]}” ({found[1]})"
