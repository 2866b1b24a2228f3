"""Admin: targets, scopes, policies and the on-call roster are edited here.

Requests, grants, the trail and alerts change only through the services, so the
admin shows them; its one action on requests, ending a grant, calls the same
service as the web page and the API. A change to a target or its policy is
recorded in the trail like an applied configuration file; the roster is changed
through its services, which record every change.
"""

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group
from django.db import transaction
from django.http import HttpResponseRedirect
from django_otp.admin import OTPAdminSite
from django_otp.plugins.otp_totp.models import TOTPDevice

from . import audit, oncall, roles, services, users
from .configfile import ENV_NAME, WEEKDAYS, ConfigError, clean_rotator, clean_rules
from .errors import BreakglassError
from .models import (
    AccessRequest,
    Alert,
    AuditEvent,
    Grant,
    OnCallShift,
    Policy,
    Review,
    Scope,
    Target,
    uses_of_groups,
)

# The admin edits targets, policies and the roster: signing in to it takes a
# second factor, as approving does.
admin.site.__class__ = OTPAdminSite


class TOTPDeviceAdmin(admin.ModelAdmin):
    """Devices are enrolled by their owners only; an admin may remove a lost one."""

    list_display = ["user", "name", "confirmed", "last_used_at"]
    search_fields = ["user__username", "name"]
    fields = ["user", "name", "confirmed", "last_used_at"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


if admin.site.is_registered(TOTPDevice):
    admin.site.unregister(TOTPDevice)
admin.site.register(TOTPDevice, TOTPDeviceAdmin)


class GroupAdmin(BaseGroupAdmin):
    """Groups that policies, scopes or requests name are shown as protected."""

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(
            objs, request
        )
        uses = [
            f"{type(use)._meta.verbose_name}: {use}" for use in uses_of_groups(objs)
        ]
        return deleted, counts, perms_needed, [*protected, *uses]


if admin.site.is_registered(Group):
    admin.site.unregister(Group)
admin.site.register(Group, GroupAdmin)


class UserAdmin(BaseUserAdmin):
    """Every change to who may request, approve or administer is in the trail."""

    def save_model(self, request, obj, form, change):
        # The groups are saved after the user: remember what they were now.
        before = type(obj).objects.get(pk=obj.pk) if change else None
        obj._access_before = users.access_of(before) if before else None
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        user = form.instance
        users.record_access_change(
            user, user._access_before, actor=request.user.get_username()
        )

    def delete_model(self, request, obj):
        with transaction.atomic():
            users.record_removal(obj, actor=request.user.get_username())
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for user in queryset:
                users.record_removal(user, actor=request.user.get_username())
            super().delete_queryset(request, queryset)


User = get_user_model()
if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, UserAdmin)


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
        fields = ["name", "grants", "approver_groups", "is_active"]

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
    working_days = forms.MultipleChoiceField(
        choices=[(day, day.capitalize()) for day in WEEKDAYS],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Outside these days it is off hours all day.",
    )
    max_active_grants = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1000,
        help_text="Most open requests and grants one requester may hold; "
        "empty: no limit.",
    )

    class Meta:
        model = Policy
        fields = [
            "approvals_required",
            "approver_groups",
            "requester_groups",
            "max_duration_minutes",
            "approval_window_minutes",
            "incident_pattern",
            "timezone",
            "working_days",
            "working_hours_start",
            "working_hours_end",
            "max_active_grants",
            "recent_window_days",
            "rules",
        ]
        help_texts = {
            "timezone": "An IANA time zone such as Europe/Paris; working hours are "
            "local to it.",
            "rules": 'A JSON list, e.g. [{"name": "outside working hours", "when": '
            '{"off_hours": true}, "add_approvals": 1}]. Conditions: environment, '
            "scope, off_hours, on_call, recent_grants_at_least.",
        }

    def clean_timezone(self):
        name = self.cleaned_data["timezone"].strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise forms.ValidationError(f"Unknown time zone {name!r}.") from None
        return name

    def clean_working_days(self):
        chosen = set(self.cleaned_data["working_days"])
        return [day for day in WEEKDAYS if day in chosen]

    def clean_rules(self):
        try:
            return clean_rules(self.cleaned_data["rules"], "rules")
        except ConfigError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self):
        cleaned = super().clean()
        start = cleaned.get("working_hours_start")
        end = cleaned.get("working_hours_end")
        if start and end and end <= start:
            self.add_error("working_hours_end", "Must be after the start.")
        return cleaned

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
            "rotator",
            "slack_webhook_env",
            "pagerduty_routing_key_env",
            "is_active",
        ]

    def clean(self):
        cleaned = super().clean()
        kind = cleaned.get("kind")
        for field in (
            "connection_env",
            "ca_key_env",
            "slack_webhook_env",
            "pagerduty_routing_key_env",
        ):
            value = cleaned.get(field)
            if value and not ENV_NAME.match(value):
                self.add_error(field, "Must be the name of an environment variable.")
        if kind == Target.Kind.SSH and not cleaned.get("ca_key_env"):
            self.add_error("ca_key_env", "Required for an SSH target.")
        needs_connection = kind not in ("", None, Target.Kind.SSH, Target.Kind.SEALED)
        if needs_connection and not cleaned.get("connection_env"):
            self.add_error("connection_env", f"Required for a {kind} target.")
        if kind:
            # The same rules as the targets-and-policies file.
            rotator = cleaned.get("rotator") or None
            try:
                cleaned["rotator"] = clean_rotator({"rotator": rotator}, kind, "target")
            except ConfigError as exc:
                self.add_error("rotator", exc.problem)
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
    actions = ["end_grant_now"]
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

    @admin.action(description="End the grant now")
    def end_grant_now(self, request, queryset):
        """Ask each selected active grant to end, as the page's button would."""
        ended = 0
        for request_id in queryset.order_by("pk").values_list("pk", flat=True):
            try:
                services.request_end(
                    request_id, actor=request.user, reason="Ended from the admin."
                )
            except BreakglassError as exc:
                self.message_user(
                    request, f"Request {request_id}: {exc.detail}", messages.ERROR
                )
            else:
                ended += 1
        if ended:
            self.message_user(
                request,
                f"{ended} grant(s) are being revoked; this takes a few seconds.",
                messages.SUCCESS,
            )


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


@admin.register(Review)
class ReviewAdmin(ReadOnlyAdmin):
    # Reviews change through the review services only, so each change is recorded.
    list_display = ["request", "status", "due_at", "submitted_at", "reviewer"]
    list_filter = ["status"]
    search_fields = ["request__incident", "request__requester__username", "summary"]
    date_hierarchy = "due_at"
    list_select_related = ["request", "reviewer"]


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


class OnCallShiftForm(forms.ModelForm):
    class Meta:
        model = OnCallShift
        fields = ["user", "starts_at", "ends_at", "note"]
        help_texts = {"starts_at": "UTC.", "ends_at": "UTC."}

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            oncall.check_shift(
                user=cleaned.get("user"),
                starts_at=cleaned.get("starts_at"),
                ends_at=cleaned.get("ends_at"),
                note=cleaned.get("note", ""),
                exclude=self.instance.pk,
            )
        except BreakglassError as exc:
            _show_errors(self, exc)
        return cleaned


def _show_errors(form, exc):
    for field, problems in (exc.fields or {}).items():
        form.add_error(field if field in form.fields else None, problems)
    if not exc.fields:
        form.add_error(None, exc.detail)


@admin.register(OnCallShift)
class OnCallShiftAdmin(admin.ModelAdmin):
    """The roster; every change goes through the roster's services and the trail."""

    form = OnCallShiftForm
    list_display = ["user", "starts_at", "ends_at", "note", "source"]
    list_filter = ["source"]
    search_fields = ["user__username", "user__first_name", "user__last_name"]
    date_hierarchy = "starts_at"
    list_select_related = ["user"]
    autocomplete_fields = ["user"]

    def has_add_permission(self, request):
        return roles.has_role(request.user, roles.ADMIN)

    def has_change_permission(self, request, obj=None):
        return roles.has_role(request.user, roles.ADMIN)

    def has_delete_permission(self, request, obj=None):
        return roles.has_role(request.user, roles.ADMIN)

    def changeform_view(self, request, *args, **kwargs):
        # The form checks the shift first; this catches what changed in between
        # (another admin's overlapping shift) without a server error.
        try:
            return super().changeform_view(request, *args, **kwargs)
        except BreakglassError as exc:
            self.message_user(request, f"Not saved: {exc.detail}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def delete_view(self, request, *args, **kwargs):
        try:
            return super().delete_view(request, *args, **kwargs)
        except BreakglassError as exc:
            self.message_user(request, f"Not removed: {exc.detail}", messages.ERROR)
            return HttpResponseRedirect("../../")

    def save_model(self, request, obj, form, change):
        values = {
            "user": obj.user,
            "starts_at": obj.starts_at,
            "ends_at": obj.ends_at,
            "note": obj.note,
            "actor": request.user,
        }
        if change:
            shift = oncall.change_oncall_shift(obj.pk, **values)
        else:
            shift = oncall.add_oncall_shift(**values, source=OnCallShift.Source.ADMIN)
        obj.pk = shift.pk
        obj.source = shift.source
        obj.created_at = shift.created_at

    def delete_model(self, request, obj):
        oncall.remove_oncall_shift(obj.pk, actor=request.user)

    def delete_queryset(self, request, queryset):
        for shift_id in list(queryset.values_list("pk", flat=True)):
            try:
                oncall.remove_oncall_shift(shift_id, actor=request.user)
            except BreakglassError as exc:
                self.message_user(
                    request, f"Shift {shift_id}: {exc.detail}", messages.ERROR
                )
