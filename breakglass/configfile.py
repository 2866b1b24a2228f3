"""The targets-and-policies file (CONTRACT.md, section 3): validate, then apply."""

import hashlib
import re
from dataclasses import dataclass

import yaml
from django.contrib.auth.models import Group
from django.db import transaction

from . import audit
from .models import Policy, Scope, Target

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
    "scopes",
    "policy",
}
SCOPE_KEYS = {"name", "grants"}
# The longest value a key may hold, as the database stores it.
MAX_LENGTHS = {
    "name": Target._meta.get_field("name").max_length,
    "environment": Target._meta.get_field("environment").max_length,
    "connection_env": Target._meta.get_field("connection_env").max_length,
    "ca_key_env": Target._meta.get_field("ca_key_env").max_length,
    "incident_pattern": Policy._meta.get_field("incident_pattern").max_length,
    "approver_groups": Group._meta.get_field("name").max_length,
    "requester_groups": Group._meta.get_field("name").max_length,
}
POLICY_DEFAULTS = {
    "approvals_required": 2,
    "approver_groups": [],
    "requester_groups": [],
    "max_duration_minutes": 60,
    "approval_window_minutes": 30,
    "incident_pattern": r"^\S.*$",
}


@dataclass
class ConfigError(Exception):
    path: str
    problem: str

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
    _no_unknown_keys(document, {"targets"}, "")
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
    return cleaned


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
    }
    if item["kind"] not in KINDS:
        raise ConfigError(f"{path}.kind", f"must be one of {', '.join(sorted(KINDS))}")
    if item["kind"] == "ssh" and not item["ca_key_env"]:
        raise ConfigError(f"{path}.ca_key_env", "is required for an ssh target")
    if item["kind"] != "ssh" and not item["connection_env"]:
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
        grants = _string_list(scope, "grants", scope_path, required=True)
        item["scopes"].append({"name": name, "grants": grants})

    item["policy"] = _policy(target.get("policy", {}), f"{path}.policy")
    return item


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
    }
    try:
        re.compile(cleaned["incident_pattern"])
    except re.error as exc:
        raise ConfigError(
            f"{path}.incident_pattern", f"not a valid regular expression: {exc}"
        ) from None
    return cleaned


def apply(targets, *, source, actor=audit.SYSTEM):
    """Create or update the targets, scopes and policies; return the names applied.

    Idempotent. Targets the file does not name are left as they are; scopes of a
    named target that the file no longer lists are deactivated, not deleted, so
    that past requests keep pointing at them.
    """
    with transaction.atomic():
        for item in targets:
            target, _ = Target.objects.update_or_create(
                name=item["name"],
                defaults={
                    "kind": item["kind"],
                    "environment": item["environment"],
                    "connection_env": item["connection_env"],
                    "ca_key_env": item["ca_key_env"],
                    "is_active": True,
                },
            )
            for scope in item["scopes"]:
                Scope.objects.update_or_create(
                    target=target,
                    name=scope["name"],
                    defaults={"grants": scope["grants"], "is_active": True},
                )
            target.scopes.exclude(name__in=[s["name"] for s in item["scopes"]]).update(
                is_active=False
            )
            rules = dict(item["policy"])
            approver_groups = rules.pop("approver_groups")
            requester_groups = rules.pop("requester_groups")
            policy, _ = Policy.objects.update_or_create(target=target, defaults=rules)
            policy.approver_groups.set(_groups(approver_groups))
            policy.requester_groups.set(_groups(requester_groups))

        names = [item["name"] for item in targets]
        audit.record_event(
            "config.applied",
            actor=actor,
            data={
                "source": source["name"],
                "sha256": source["sha256"],
                "targets": names,
            },
        )
    return names


def _groups(names):
    return [Group.objects.get_or_create(name=name)[0] for name in names]


def apply_file(path, *, actor=audit.SYSTEM):
    """Validate and apply the file at `path`; if it is bad, raise and change nothing."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError("", f"cannot read the file: {exc.strerror}") from None
    targets = load(raw.decode("utf-8", errors="replace"))
    source = {"name": str(path), "sha256": hashlib.sha256(raw).hexdigest()}
    return apply(targets, source=source, actor=actor)
