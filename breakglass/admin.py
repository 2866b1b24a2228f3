"""Admin: targets, scopes and policies are edited here; the rest is read-only.

Requests, grants, the trail and alerts change only through the services, so the
admin shows them and nothing more. A change to a target or its policy is
recorded in the trail like an applied configuration file.
"""

import re

from django import forms
from django.contrib import admin

from . import audit
from .configfile import ENV_NAME
from .models import AccessRequest, Alert, AuditEvent, Grant, Policy, Scope, Target


class ReadOnlyAdmin(admin.ModelAdmin):
    """Show rows without any way to add, change or delete them."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ScopeForm(forms.ModelForm):
    class Meta:
        model = Scope
        fields = ["name", "grants", "is_active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # An empty list gets the clearer message of clean_grants.
        self.fields["grants"].required = False

    def clean_grants(self):
        grants = self.cleaned_data["grants"]
        if not isinstance(grants, list) or not grants:
            raise forms.ValidationError(
                'Give a non-empty list, e.g. ["pg_read_all_data"].'
            )
        if not all(isinstance(g, str) and g.strip() for g in grants):
            raise forms.ValidationError("Every grant must be a non-empty string.")
        return grants


class ScopeInline(admin.TabularInline):
    model = Scope
    form = ScopeForm
    extra = 0
    min_num = 1
    # Past requests point at their scope: deactivate a scope instead.
    can_delete = False


class PolicyForm(forms.ModelForm):
    class Meta:
        model = Policy
        fields = [
            "approvals_required",
            "approver_groups",
            "requester_groups",
            "max_duration_minutes",
            "approval_window_minutes",
            "incident_pattern",
        ]

    def clean_incident_pattern(self):
        pattern = self.cleaned_data["incident_pattern"]
        try:
            re.compile(pattern)
        except re.error as exc:
            raise forms.ValidationError(
                f"Not a valid regular expression: {exc}."
            ) from None
        return pattern


class PolicyInline(admin.StackedInline):
    model = Policy
    form = PolicyForm
    min_num = 1
    max_num = 1
    can_delete = False
    filter_horizontal = ["approver_groups", "requester_groups"]


class TargetForm(forms.ModelForm):
    class Meta:
        model = Target
        fields = [
            "name",
            "kind",
            "environment",
            "connection_env",
            "ca_key_env",
            "is_active",
        ]

    def clean(self):
        cleaned = super().clean()
        kind = cleaned.get("kind")
        for field in ("connection_env", "ca_key_env"):
            value = cleaned.get(field)
            if value and not ENV_NAME.match(value):
                self.add_error(field, "Must be the name of an environment variable.")
        if kind == Target.Kind.SSH and not cleaned.get("ca_key_env"):
            self.add_error("ca_key_env", "Required for an SSH target.")
        if kind and kind != Target.Kind.SSH and not cleaned.get("connection_env"):
            self.add_error("connection_env", f"Required for a {kind} target.")
        return cleaned


@admin.register(Target)
class TargetAdmin(admin.ModelAdmin):
    form = TargetForm
    inlines = [ScopeInline, PolicyInline]
    list_display = ["name", "kind", "environment", "is_active", "updated_at"]
    list_filter = ["kind", "is_active", "environment"]
    search_fields = ["name", "environment"]

    def has_delete_permission(self, request, obj=None):
        # Past requests point at their target: deactivate it instead.
        return False

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        audit.record_event(
            "config.applied",
            actor=request.user.get_username(),
            data={"source": "admin", "targets": [form.instance.name]},
        )


@admin.register(AccessRequest)
class AccessRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "target",
        "scope",
        "requester",
        "incident",
        "status",
        "created_at",
    ]
    list_filter = ["status", "target"]
    search_fields = ["incident", "requester__username", "reason"]
    date_hierarchy = "created_at"
    list_select_related = ["target", "scope", "requester"]


@admin.register(Grant)
class GrantAdmin(ReadOnlyAdmin):
    # The sealed credential is never shown, not even encrypted.
    fields = [
        "request",
        "principal",
        "target_snapshot",
        "approved_at",
        "issued_at",
        "expires_at",
        "revealed_at",
        "end_requested_at",
        "end_requested_by",
        "end_reason",
        "ended_at",
        "issue_attempts",
        "revoke_attempts",
        "retry_at",
        "last_error",
    ]
    list_display = ["principal", "request", "issued_at", "expires_at", "ended_at"]
    search_fields = ["principal"]
    list_select_related = ["request"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("sealed_credential")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["seq", "at", "actor", "action", "request", "incident", "target"]
    list_filter = ["action"]
    search_fields = ["incident", "actor", "target", "requester"]
    date_hierarchy = "at"


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = [
        "delivery_id",
        "event",
        "channel",
        "attempts",
        "delivered_at",
        "next_attempt_at",
    ]
    list_filter = ["channel"]
    list_select_related = ["event"]
