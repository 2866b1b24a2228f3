"""The targets-and-policies file (CONTRACT.md, section 3): validate, then apply."""

import datetime
import hashlib
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from . import audit
from .models import OnCallShift, Policy, Scope, Target

KINDS = {kind.value for kind in Target.Kind}
SLUG = re.compile(r"^[-a-zA-Z0-9_]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_MINUTES = 7 * 24 * 60

TARGET_KEYS = {
    "name",
    "kind",
    "environment",
    "connection_env",
    "ca_key_env",
    "revocation_list_path",
    "auth_log_path",
    "rotator",
    "scopes",
    "policy",
    "alerts",
}
ROTATOR_KEYS = {"kind", "username", "connection_env", "command_env"}
ROTATOR_KINDS = ("postgres", "redis", "command")
ALERT_KEYS = {"slack_webhook_env", "pagerduty_routing_key_env"}
SCOPE_KEYS = {"name", "grants", "approver_groups"}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
RULE_KEYS = {"name", "when", "add_approvals", "max_duration_minutes"}
CONDITION_KEYS = {
    "environment",
    "scope",
    "off_hours",
    "on_call",
    "recent_grants_at_least",
}
ONCALL_KEYS = {"user", "start", "end", "note"}
# The longest value a key may hold, as the database stores it.
MAX_LENGTHS = {
    "name": Target._meta.get_field("name").max_length,
    "environment": Target._meta.get_field("environment").max_length,
    "connection_env": Target._meta.get_field("connection_env").max_length,
    "ca_key_env": Target._meta.get_field("ca_key_env").max_length,
    "incident_pattern": Policy._meta.get_field("incident_pattern").max_length,
    "revocation_list_path": Target._meta.get_field("revocation_list_path").max_length,
    "auth_log_path": Target._meta.get_field("auth_log_path").max_length,
    "slack_webhook_env": Target._meta.get_field("slack_webhook_env").max_length,
    "pagerduty_routing_key_env": Target._meta.get_field(
        "pagerduty_routing_key_env"
    ).max_length,
    "approver_groups": Group._meta.get_field("name").max_length,
    "requester_groups": Group._meta.get_field("name").max_length,
    "groups": Group._meta.get_field("name").max_length,
}
POLICY_DEFAULTS = {
    "approvals_required": 2,
    "approver_groups": [],
    "requester_groups": [],
    "max_duration_minutes": 60,
    "approval_window_minutes": 30,
    "incident_pattern": r"^\S.*$",
    "timezone": "UTC",
    "working_hours": None,
    "max_active_grants": None,
    "recent_window_days": 30,
    "rules": [],
}
WORKING_HOURS_DEFAULT = {
    "days": ["mon", "tue", "wed", "thu", "fri"],
    "start": "09:00",
    "end": "18:00",
}


@dataclass
class Config:
    """A validated file: its targets, and its on-call roster when it has one."""

    targets: list
    oncall: list | None
    groups: list | None


@dataclass
class ConfigError(Exception):
    path: str
    problem: str

    def __post_init__(self):
        # A top-level key has no parent: `groups`, not `.groups`.
        self.path = self.path.removeprefix(".")

    def __str__(self):
        return f"{self.path}: {self.problem}" if self.path else self.problem


def load(text):
    """Parse and validate the file's text; return the list of target definitions."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError("", f"not valid YAML{where}: {problem}") from None
    if not isinstance(document, dict) or "targets" not in document:
        raise ConfigError("", "the file must be a mapping with a 'targets' list")
    _no_unknown_keys(document, {"targets", "oncall", "groups"}, "")
    targets = document["targets"]
    if not isinstance(targets, list):
        raise ConfigError("targets", "must be a list")

    seen = set()
    cleaned = []
    for index, target in enumerate(targets):
        path = f"targets[{index}]"
        item = _target(target, path)
        if item["name"] in seen:
            raise ConfigError(f"{path}.name", f"duplicate target name {item['name']!r}")
        seen.add(item["name"])
        cleaned.append(item)

    groups = None
    if "groups" in document:
        groups = _string_list(document, "groups", "")
        _check_groups_declared(cleaned, set(groups))
    oncall = None
    if "oncall" in document:
        oncall = _oncall(document["oncall"])
    return Config(targets=cleaned, oncall=oncall, groups=groups)


def _check_groups_declared(targets, declared):
    """With a `groups` list, every group a policy names must be declared or exist."""
    existing = set(Group.objects.values_list("name", flat=True))
    for index, item in enumerate(targets):
        named = [
            (f"targets[{index}].policy.{key}", name)
            for key in ("approver_groups", "requester_groups")
            for name in item["policy"][key]
        ] + [
            (f"targets[{index}].scopes[{n}].approver_groups", name)
            for n, scope in enumerate(item["scopes"])
            for name in scope["approver_groups"]
        ]
        for path, name in named:
            if name not in declared and name not in existing:
                raise ConfigError(path, f"unknown group {name!r}")


def _oncall(entries):
    if not isinstance(entries, list):
        raise ConfigError("oncall", "must be a list")
    users = get_user_model().objects
    cleaned = []
    for index, entry in enumerate(entries):
        path = f"oncall[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(path, "must be a mapping")
        _no_unknown_keys(entry, ONCALL_KEYS, path)
        username = _string(entry, "user", path, required=True)
        if not users.filter(username=username).exists():
            raise ConfigError(f"{path}.user", f"unknown user {username!r}")
        start = _moment(entry, "start", path)
        end = _moment(entry, "end", path)
        if end <= start:
            raise ConfigError(f"{path}.end", "must be after start")
        note = _string(entry, "note", path)
        if len(note) > 200:
            raise ConfigError(f"{path}.note", "must be at most 200 characters long")
        for other_index, other in enumerate(cleaned):
            if (
                other["user"] == username
                and start < other["end"]
                and other["start"] < end
            ):
                raise ConfigError(
                    path, f"overlaps oncall[{other_index}] for user {username!r}"
                )
        clash = (
            OnCallShift.objects.exclude(source=OnCallShift.Source.CONFIG)
            .filter(user__username=username, starts_at__lt=end, ends_at__gt=start)
            .first()
        )
        if clash is not None:
            raise ConfigError(
                path,
                f"overlaps a shift of {username!r} added through the {clash.source} "
                f"({clash.starts_at.isoformat()} to {clash.ends_at.isoformat()})",
            )
        cleaned.append({"user": username, "start": start, "end": end, "note": note})
    return cleaned


def _moment(mapping, key, path):
    value = mapping.get(key)
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            value = None
    if not isinstance(value, datetime.datetime):
        raise ConfigError(
            f"{path}.{key}", "must be a date and time such as 2026-12-03T09:00:00Z"
        )
    if value.tzinfo is None:
        raise ConfigError(f"{path}.{key}", "must give its offset from UTC (e.g. Z)")
    try:
        return value.astimezone(datetime.UTC)
    except OverflowError:
        raise ConfigError(f"{path}.{key}", "is out of range") from None


def _no_unknown_keys(mapping, allowed, path):
    for key in mapping:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(
                where, f"unknown key (allowed: {', '.join(sorted(allowed))})"
            )


def _string(mapping, key, path, *, required=False, pattern=None, default=""):
    value = mapping.get(key, None)
    if value is None:
        if required:
            raise ConfigError(f"{path}.{key}", "is required")
        return default
    if not isinstance(value, str) or (required and not value.strip()):
        raise ConfigError(f"{path}.{key}", "must be a non-empty string")
    _check_length(value, key, path)
    if pattern and not pattern.match(value):
        raise ConfigError(f"{path}.{key}", f"{value!r} is not allowed here")
    return value


def _string_list(mapping, key, path, *, required=False):
    value = mapping.get(key, [] if not required else None)
    if value is None:
        raise ConfigError(f"{path}.{key}", "is required")
    if not isinstance(value, list) or not all(
        isinstance(v, str) and v.strip() for v in value
    ):
        raise ConfigError(f"{path}.{key}", "must be a list of non-empty strings")
    if required and not value:
        raise ConfigError(f"{path}.{key}", "must not be empty")
    for item in value:
        _check_length(item, key, path)
    return value


def _check_length(value, key, path):
    limit = MAX_LENGTHS.get(key)
    if limit and len(value) > limit:
        raise ConfigError(f"{path}.{key}", f"must be at most {limit} characters long")


def _minutes(mapping, key, path, low, high):
    value = mapping[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= high
    ):
        raise ConfigError(
            f"{path}.{key}", f"must be a whole number from {low} to {high}"
        )
    return value


def _target(target, path):
    if not isinstance(target, dict):
        raise ConfigError(path, "must be a mapping")
    _no_unknown_keys(target, TARGET_KEYS, path)
    item = {
        "name": _string(target, "name", path, required=True, pattern=SLUG),
        "kind": _string(target, "kind", path, required=True),
        "environment": _string(target, "environment", path),
        "connection_env": _string(target, "connection_env", path, pattern=ENV_NAME),
        "ca_key_env": _string(target, "ca_key_env", path, pattern=ENV_NAME),
        "revocation_list_path": _string(target, "revocation_list_path", path),
        "auth_log_path": _string(target, "auth_log_path", path),
    }
    if item["kind"] not in KINDS:
        raise ConfigError(f"{path}.kind", f"must be one of {', '.join(sorted(KINDS))}")
    if item["kind"] == "ssh" and not item["ca_key_env"]:
        raise ConfigError(f"{path}.ca_key_env", "is required for an ssh target")
    for key in ("revocation_list_path", "auth_log_path"):
        if item[key] and item["kind"] != "ssh":
            raise ConfigError(f"{path}.{key}", "is only for an ssh target")
        if item[key] and not item[key].startswith("/"):
            raise ConfigError(f"{path}.{key}", "must be an absolute path")
    item["rotator"] = clean_rotator(target, item["kind"], path)
    if item["kind"] == "sealed" and item["connection_env"]:
        raise ConfigError(
            f"{path}.connection_env", "is not for a sealed target; see rotator"
        )
    if item["kind"] not in ("ssh", "sealed") and not item["connection_env"]:
        raise ConfigError(
            f"{path}.connection_env", f"is required for a {item['kind']} target"
        )

    scopes = target.get("scopes")
    if not isinstance(scopes, list) or not scopes:
        raise ConfigError(f"{path}.scopes", "must be a non-empty list")
    item["scopes"] = []
    names = set()
    for index, scope in enumerate(scopes):
        scope_path = f"{path}.scopes[{index}]"
        if not isinstance(scope, dict):
            raise ConfigError(scope_path, "must be a mapping")
        _no_unknown_keys(scope, SCOPE_KEYS, scope_path)
        name = _string(scope, "name", scope_path, required=True, pattern=SLUG)
        if name in names:
            raise ConfigError(f"{scope_path}.name", f"duplicate scope name {name!r}")
        names.add(name)
        # A sealed target's scopes only name levels of approval: the shared
        # account has whatever rights it has.
        grants = _string_list(
            scope, "grants", scope_path, required=item["kind"] != "sealed"
        )
        approver_groups = _string_list(scope, "approver_groups", scope_path)
        item["scopes"].append(
            {"name": name, "grants": grants, "approver_groups": approver_groups}
        )

    item["policy"] = _policy(target.get("policy", {}), f"{path}.policy")
    item.update(_alerts(target.get("alerts"), f"{path}.alerts"))
    return item


def clean_rotator(target, kind, path):
    """Validate how a sealed target's secret is replaced; {} for other kinds."""
    rotator = target.get("rotator")
    path = f"{path}.rotator"
    if kind != "sealed":
        if rotator is not None:
            raise ConfigError(path, "is only for a sealed target")
        return {}
    if not isinstance(rotator, dict):
        raise ConfigError(path, "is required for a sealed target, as a mapping")
    _no_unknown_keys(rotator, ROTATOR_KEYS, path)
    rotator_kind = _string(rotator, "kind", path, required=True)
    if rotator_kind not in ROTATOR_KINDS:
        raise ConfigError(f"{path}.kind", f"must be one of {', '.join(ROTATOR_KINDS)}")
    cleaned = {
        "kind": rotator_kind,
        "username": _string(rotator, "username", path),
        "connection_env": _string(rotator, "connection_env", path, pattern=ENV_NAME),
        "command_env": _string(rotator, "command_env", path, pattern=ENV_NAME),
    }
    if len(cleaned["username"]) > 63:
        raise ConfigError(f"{path}.username", "must be at most 63 characters long")
    needed = ("command_env",) if rotator_kind == "command" else ("connection_env",)
    if rotator_kind != "command":
        needed += ("username",)
    for key in needed:
        if not cleaned[key]:
            raise ConfigError(
                f"{path}.{key}", f"is required for a {rotator_kind} rotator"
            )
    unused = "connection_env" if rotator_kind == "command" else "command_env"
    if cleaned[unused]:
        raise ConfigError(f"{path}.{unused}", f"is not for a {rotator_kind} rotator")
    return cleaned


def _alerts(alerts, path):
    """Return the target's own alert channels: names of variables, never values."""
    if alerts is None:
        alerts = {}
    if not isinstance(alerts, dict):
        raise ConfigError(path, "must be a mapping")
    _no_unknown_keys(alerts, ALERT_KEYS, path)
    return {key: _string(alerts, key, path, pattern=ENV_NAME) for key in ALERT_KEYS}


def _policy(policy, path):
    if policy is None:
        policy = {}
    if not isinstance(policy, dict):
        raise ConfigError(path, "must be a mapping")
    _no_unknown_keys(policy, set(POLICY_DEFAULTS), path)
    merged = {**POLICY_DEFAULTS, **policy}
    cleaned = {
        "approvals_required": _minutes(merged, "approvals_required", path, 1, 10),
        "approver_groups": _string_list(merged, "approver_groups", path),
        "requester_groups": _string_list(merged, "requester_groups", path),
        "max_duration_minutes": _minutes(
            merged, "max_duration_minutes", path, 1, MAX_MINUTES
        ),
        "approval_window_minutes": _minutes(
            merged, "approval_window_minutes", path, 1, MAX_MINUTES
        ),
        "incident_pattern": _string(merged, "incident_pattern", path, required=True),
        "timezone": _timezone(merged, path),
        "max_active_grants": _optional_number(merged, "max_active_grants", path),
        "recent_window_days": _minutes(merged, "recent_window_days", path, 1, 366),
        "rules": clean_rules(merged["rules"], f"{path}.rules"),
    }
    cleaned.update(_working_hours(merged["working_hours"], f"{path}.working_hours"))
    try:
        re.compile(cleaned["incident_pattern"])
    except re.error as exc:
        raise ConfigError(
            f"{path}.incident_pattern", f"not a valid regular expression: {exc}"
        ) from None
    return cleaned


def _timezone(mapping, path):
    name = _string(mapping, "timezone", path, required=True)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{path}.timezone", f"unknown time zone {name!r}") from None
    return name


def _optional_number(mapping, key, path):
    if mapping[key] is None:
        return None
    return _minutes(mapping, key, path, 1, 1000)


def _working_hours(value, path):
    value = WORKING_HOURS_DEFAULT if value is None else value
    if not isinstance(value, dict):
        raise ConfigError(path, "must be a mapping with days, start and end")
    _no_unknown_keys(value, {"days", "start", "end"}, path)
    merged = {**WORKING_HOURS_DEFAULT, **value}
    days = merged["days"]
    if not isinstance(days, list) or not all(d in WEEKDAYS for d in days):
        raise ConfigError(f"{path}.days", f"must be a list of {', '.join(WEEKDAYS)}")
    start = _clock_time(merged, "start", path)
    end = _clock_time(merged, "end", path)
    if end <= start:
        raise ConfigError(f"{path}.end", "must be after start")
    return {
        "working_days": list(dict.fromkeys(days)),
        "working_hours_start": start,
        "working_hours_end": end,
    }


def _clock_time(mapping, key, path):
    value = mapping[key]
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 09:00 as a number of minutes (sexagesimal).
        value = f"{value // 60:02d}:{value % 60:02d}"
    try:
        moment = datetime.time.fromisoformat(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}.{key}", "must be a time such as 09:00") from None
    if moment.tzinfo is not None:
        # Working hours are local to the policy's `timezone`, never an offset.
        raise ConfigError(
            f"{path}.{key}", "must be a local time without offset; set timezone"
        )
    return moment


def clean_rules(rules, path):
    """Validate a policy's rules; return them as stored. Raise ConfigError if bad."""
    if rules is None:
        return []
    if not isinstance(rules, list):
        raise ConfigError(path, "must be a list")
    cleaned = []
    for index, rule in enumerate(rules):
        rule_path = f"{path}[{index}]"
        if not isinstance(rule, dict):
            raise ConfigError(rule_path, "must be a mapping")
        _no_unknown_keys(rule, RULE_KEYS, rule_path)
        name = _string(rule, "name", rule_path, required=True)
        if len(name) > 100:
            raise ConfigError(f"{rule_path}.name", "must be at most 100 characters")
        when = rule.get("when")
        if not isinstance(when, dict) or not when:
            raise ConfigError(f"{rule_path}.when", "must be a mapping of conditions")
        _no_unknown_keys(when, CONDITION_KEYS, f"{rule_path}.when")
        for key, expected in when.items():
            where = f"{rule_path}.when.{key}"
            if key in ("environment", "scope"):
                values = [expected] if isinstance(expected, str) else expected
                if not isinstance(values, list) or not all(
                    isinstance(v, str) and v for v in values
                ):
                    raise ConfigError(where, "must be a string or a list of strings")
            elif key in ("off_hours", "on_call"):
                if not isinstance(expected, bool):
                    raise ConfigError(where, "must be true or false")
            elif (
                isinstance(expected, bool)
                or not isinstance(expected, int)
                or not 1 <= expected <= 10000
            ):
                raise ConfigError(where, "must be a whole number from 1 to 10000")
        item = {"name": name, "when": when}
        if "add_approvals" in rule:
            item["add_approvals"] = _minutes(rule, "add_approvals", rule_path, 0, 10)
        if "max_duration_minutes" in rule:
            item["max_duration_minutes"] = _minutes(
                rule, "max_duration_minutes", rule_path, 1, MAX_MINUTES
            )
        if len(item) == 2:
            raise ConfigError(
                rule_path, "must set add_approvals or max_duration_minutes"
            )
        cleaned.append(item)
    return cleaned


def apply(config, *, source, actor=audit.SYSTEM):
    """Create or update the targets, scopes and policies; return the names applied.

    Idempotent. Targets the file does not name are left as they are; scopes of a
    named target that the file no longer lists are deactivated, not deleted, so
    that past requests keep pointing at them.
    """
    targets = config.targets
    with transaction.atomic():
        for name in config.groups or []:
            Group.objects.get_or_create(name=name)
        for item in targets:
            target, _ = Target.objects.update_or_create(
                name=item["name"],
                defaults={
                    "kind": item["kind"],
                    "environment": item["environment"],
                    "connection_env": item["connection_env"],
                    "ca_key_env": item["ca_key_env"],
                    "revocation_list_path": item["revocation_list_path"],
                    "auth_log_path": item["auth_log_path"],
                    "rotator": item["rotator"],
                    "slack_webhook_env": item["slack_webhook_env"],
                    "pagerduty_routing_key_env": item["pagerduty_routing_key_env"],
                    "is_active": True,
                },
            )
            for scope in item["scopes"]:
                scope_row, _ = Scope.objects.update_or_create(
                    target=target,
                    name=scope["name"],
                    defaults={"grants": scope["grants"], "is_active": True},
                )
                scope_row.approver_groups.set(_groups(scope["approver_groups"]))
            target.scopes.exclude(name__in=[s["name"] for s in item["scopes"]]).update(
                is_active=False
            )
            rules = dict(item["policy"])
            approver_groups = rules.pop("approver_groups")
            requester_groups = rules.pop("requester_groups")
            policy, _ = Policy.objects.update_or_create(target=target, defaults=rules)
            policy.approver_groups.set(_groups(approver_groups))
            policy.requester_groups.set(_groups(requester_groups))

        if config.oncall is not None:
            _replace_roster(config.oncall)

        names = [item["name"] for item in targets]
        audit.record_event(
            "config.applied",
            actor=actor,
            data={
                "source": source["name"],
                "sha256": source["sha256"],
                "targets": names,
                "oncall_entries": None if config.oncall is None else len(config.oncall),
            },
        )
    return names


def _replace_roster(entries):
    """Make the file's entries the roster's configured shifts; keep others."""
    users = {
        user.username: user
        for user in get_user_model().objects.filter(
            username__in={entry["user"] for entry in entries}
        )
    }
    OnCallShift.objects.filter(source=OnCallShift.Source.CONFIG).delete()
    OnCallShift.objects.bulk_create(
        OnCallShift(
            user=users[entry["user"]],
            starts_at=entry["start"],
            ends_at=entry["end"],
            note=entry["note"],
            source=OnCallShift.Source.CONFIG,
        )
        for entry in entries
    )


def _groups(names):
    return [Group.objects.get_or_create(name=name)[0] for name in names]


def apply_file(path, *, actor=audit.SYSTEM):
    """Validate and apply the file at `path`; if it is bad, raise and change nothing."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError("", f"cannot read the file: {exc.strerror}") from None
    config = load(raw.decode("utf-8", errors="replace"))
    source = {"name": str(path), "sha256": hashlib.sha256(raw).hexdigest()}
    return apply(config, source=source, actor=actor)
