"""Web forms: they check the shape of input; the services decide what is allowed."""

from datetime import UTC, date, datetime, time, timedelta

from django import forms

from . import report
from .errors import InvalidInput
from .models import AccessRequest, Review

MAX_MINUTES = 7 * 24 * 60


class RequestForm(forms.Form):
    """Ask for access to one scope of one target."""

    REASON_MAX_LENGTH = 2000

    target = forms.ChoiceField()
    scope = forms.ChoiceField(
        help_text="Only the scopes of the chosen target are accepted."
    )
    duration_minutes = forms.IntegerField(
        label="Duration (minutes)", min_value=1, max_value=MAX_MINUTES, initial=30
    )
    reason = forms.CharField(
        max_length=REASON_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="What is broken and what you need to do; approvers read this.",
    )
    incident = forms.CharField(
        label="Incident reference", max_length=200, help_text="For example INC-1234."
    )
    public_key = forms.CharField(
        label="SSH public key (optional)",
        required=False,
        max_length=16000,
        widget=forms.Textarea(
            attrs={"rows": 2, "spellcheck": "false", "autocomplete": "off"}
        ),
        help_text="SSH targets only. Without one, a key pair is generated for you "
        "and its private key is shown once with the certificate.",
    )

    def __init__(self, *args, targets, **kwargs):
        """Offer the given targets and their active scopes, grouped by target."""
        super().__init__(*args, **kwargs)
        self.fields["target"].choices = [("", "Choose a target")] + [
            (t.name, f"{t.name} ({t.get_kind_display()}, {t.environment or '-'})")
            for t in targets
        ]
        self.fields["scope"].choices = [("", "Choose a scope")] + [
            (t.name, [(f"{t.name}:{s.name}", s.name) for s in t.active_scopes])
            for t in targets
        ]
        self.fields["duration_minutes"].widget.attrs["inputmode"] = "numeric"

    def clean(self):
        cleaned = super().clean()
        target, scope = cleaned.get("target"), cleaned.get("scope")
        if target and scope:
            scope_target, _, scope_name = scope.partition(":")
            if scope_target != target:
                self.add_error(
                    "scope",
                    f"Scope {scope_name} belongs to {scope_target}, not {target}.",
                )
            else:
                cleaned["scope"] = scope_name
        return cleaned


class VoteForm(forms.Form):
    """Approve or deny a request, confirmed with a code from the approver's device."""

    otp = forms.CharField(
        label="One-time code",
        max_length=12,
        widget=forms.TextInput(
            attrs={
                "inputmode": "numeric",
                "autocomplete": "one-time-code",
                "pattern": "[0-9]{6}",
                "size": 8,
                "title": "The 6-digit code from your authenticator app",
            }
        ),
        error_messages={"required": "Enter the 6-digit code from your authenticator."},
    )
    comment = forms.CharField(
        required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2})
    )


class EndForm(forms.Form):
    """End an active grant now."""

    reason = forms.CharField(
        required=False, max_length=2000, widget=forms.TextInput(), label="Reason"
    )


class ReviewForm(forms.Form):
    """Record what was done with the access, after the grant ended."""

    summary = forms.CharField(
        label="What you did with the access",
        max_length=Review.SUMMARY_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text="Commands run, data read or changed, and whether the incident "
        "is resolved. Compliance reads this.",
        error_messages={"required": "Describe what you did with the access."},
    )


class SignOffForm(forms.Form):
    """Accept a submitted review."""

    comment = forms.CharField(
        required=False,
        max_length=Review.COMMENT_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class SendBackForm(forms.Form):
    """Return a submitted review to its requester."""

    comment = forms.CharField(
        max_length=Review.COMMENT_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="What the requester should add or correct.",
        error_messages={"required": "Say what is missing from the review."},
    )


class TrailFilterForm(forms.Form):
    """Narrow the trail by incident, request and day (days are UTC, both inclusive)."""

    incident = forms.CharField(required=False, max_length=200)
    request = forms.IntegerField(
        required=False, min_value=1, max_value=2**63 - 1, label="Request id"
    )
    since = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="From"
    )
    until = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="To"
    )

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and until < since:
            self.add_error("until", "Must not be before the first day.")
        return cleaned

    def query(self):
        """Return the filters as selectors.events takes them."""
        data = self.cleaned_data
        return {
            "incident": data.get("incident") or None,
            "request": data.get("request"),
            **_day_bounds(data.get("since"), data.get("until")),
        }


def _day_bounds(since, until):
    """Return UTC days, both inclusive, as the times `since` and `until` (excluded)."""
    return {
        "since": datetime.combine(since, time.min, UTC) if since else None,
        # The last day is included: stop at the start of the next one.
        "until": datetime.combine(until + timedelta(days=1), time.min, UTC)
        if until and until < date.max
        else None,
    }


def _refuse_unknown(form, known=()):
    """Name every query parameter the form does not take, so a typo is not ignored."""
    unknown = sorted(
        name for name in form.data if name not in form.fields and name not in known
    )
    if unknown:
        form.add_error(None, f"Unknown filter: {', '.join(unknown)}.")


class TrailExportForm(TrailFilterForm):
    """The trail's filters and the file format of the export."""

    format = forms.ChoiceField(choices=[("csv", "CSV"), ("json", "JSON")])

    def clean(self):
        cleaned = super().clean()
        _refuse_unknown(self)
        return cleaned


class RequestSearchForm(forms.Form):
    """Search the requests' history (days are UTC, both inclusive)."""

    requester = forms.CharField(required=False, max_length=150)
    approver = forms.CharField(
        required=False, max_length=150, help_text="Someone who voted, either way."
    )
    target = forms.CharField(required=False, max_length=100)
    incident = forms.CharField(required=False, max_length=200)
    status = forms.ChoiceField(
        required=False, choices=[("", "any"), *AccessRequest.Status.choices]
    )
    since = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="From"
    )
    until = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="To"
    )

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and until < since:
            self.add_error("until", "Must not be before the first day.")
        _refuse_unknown(self, known=("page",))
        return cleaned

    def query(self):
        """Return the filters as selectors.search_requests takes them."""
        data = self.cleaned_data
        filters = {
            name: data.get(name) or None
            for name in ("requester", "approver", "target", "incident", "status")
        }
        return {**filters, **_day_bounds(data.get("since"), data.get("until"))}


class ReportFilterForm(forms.Form):
    """Choose the days of the compliance report (UTC, both inclusive)."""

    since = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="From"
    )
    until = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="To"
    )

    def __init__(self, *args, **kwargs):
        """Show the default range when no day is asked for."""
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            since, until = report.report_range()
            self.initial = {"since": since, "until": until}

    def clean(self):
        cleaned = super().clean()
        unknown = sorted(set(self.data) - set(self.fields))
        for name in unknown:
            self.add_error(None, f"Unknown field: {name}.")
        if "since" in self.errors or "until" in self.errors:
            return cleaned
        try:
            cleaned["since"], cleaned["until"] = report.report_range(
                cleaned.get("since"), cleaned.get("until")
            )
        except InvalidInput as exc:
            for field, problems in exc.fields.items():
                self.add_error(field, problems)
        return cleaned

    def report_range(self):
        """Return the first and last day asked for, or the default range."""
        if not self.is_bound:
            return report.report_range()
        return self.cleaned_data["since"], self.cleaned_data["until"]


class ReportExportForm(ReportFilterForm):
    """Choose the days and the file format of a compliance report download."""

    format = forms.ChoiceField(choices=[("csv", "CSV"), ("json", "JSON")])
