from django.contrib.auth import get_user_model
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.settings import api_settings

from .. import clock, selectors
from ..models import AccessRequest, AuditEvent, OnCallShift, Review

# Ids, sequence numbers and offsets are PostgreSQL bigints: larger values are
# invalid input, not a database error.
MAX_BIGINT = 2**63 - 1


class RequestCreateSerializer(serializers.Serializer):
    target = serializers.CharField(max_length=100)
    scope = serializers.CharField(max_length=100)
    duration_minutes = serializers.IntegerField(min_value=1, max_value=7 * 24 * 60)
    reason = serializers.CharField(max_length=4000)
    incident = serializers.CharField(max_length=200)
    public_key = serializers.CharField(
        max_length=16000, required=False, allow_blank=True, default=""
    )


class VoteSerializer(serializers.Serializer):
    otp = serializers.CharField(max_length=20)
    device = serializers.CharField(
        max_length=255,
        required=False,
        allow_blank=True,
        default="",
        help_text="Name of the TOTP device the code is from; empty: try each.",
    )
    comment = serializers.CharField(
        max_length=2000, required=False, allow_blank=True, default=""
    )


class RevokeSerializer(serializers.Serializer):
    reason = serializers.CharField(
        max_length=2000, required=False, allow_blank=True, default=""
    )


class ApprovalSerializer(serializers.Serializer):
    approver = serializers.CharField(source="approver.username")
    decision = serializers.CharField()
    comment = serializers.CharField(allow_blank=True)
    otp_device = serializers.CharField(allow_blank=True)
    at = serializers.DateTimeField()


class EvaluatedSerializer(serializers.Serializer):
    environment = serializers.CharField(allow_blank=True)
    scope = serializers.CharField()
    timezone = serializers.CharField()
    local_time = serializers.CharField(help_text="ISO 8601, in the policy's zone.")
    off_hours = serializers.BooleanField()
    on_call = serializers.BooleanField()
    recent_grants = serializers.IntegerField()
    recent_window_days = serializers.IntegerField()
    open_requests = serializers.IntegerField()


class DecisionSerializer(serializers.Serializer):
    """The policy decision kept on a request, documented for the schema."""

    approvals_required = serializers.IntegerField()
    approver_groups = serializers.ListField(child=serializers.CharField())
    max_duration_minutes = serializers.IntegerField()
    approval_window_minutes = serializers.IntegerField()
    summary = serializers.CharField(
        help_text='In plain words, e.g. "3 approvals: production, outside working '
        'hours".'
    )
    evaluated = EvaluatedSerializer()
    fired = serializers.ListField(
        child=serializers.CharField(), help_text="Names of the rules that held."
    )


@extend_schema_field(DecisionSerializer)
class DecisionField(serializers.JSONField):
    """The decision as recorded: requests made before it existed show {}."""


class RevocationSerializer(serializers.Serializer):
    supported = serializers.BooleanField(
        help_text="Whether ending the grant early cuts the credential at once."
    )
    note = serializers.CharField(
        allow_blank=True,
        help_text="In plain words; for an SSH target without a revocation list, "
        "until when the certificate stays valid.",
    )


class ReviewSerializer(serializers.ModelSerializer):
    """A request's post-incident review, as its request shows it."""

    status = serializers.ChoiceField(choices=Review.Status.choices)
    overdue = serializers.SerializerMethodField(
        help_text="Past its due time and still waiting for the requester."
    )
    reviewer = serializers.CharField(source="reviewer.username", allow_null=True)

    class Meta:
        model = Review
        fields = [
            "status",
            "due_at",
            "overdue",
            "summary",
            "submitted_at",
            "reviewer",
            "reviewed_at",
            "reviewer_comment",
        ]

    def get_overdue(self, obj) -> bool:
        annotated = getattr(obj, "overdue", None)
        return annotated if annotated is not None else obj.is_overdue(clock.now())


class ReviewListItemSerializer(ReviewSerializer):
    """A review with what it is about, for lists of reviews."""

    request = serializers.IntegerField(source="request_id")
    target = serializers.CharField(source="request.target.name")
    scope = serializers.CharField(source="request.scope.name")
    requester = serializers.CharField(source="request.requester.username")
    incident = serializers.CharField(source="request.incident")

    class Meta(ReviewSerializer.Meta):
        fields = [
            "request",
            "target",
            "scope",
            "requester",
            "incident",
            *ReviewSerializer.Meta.fields,
            "reminders",
            "last_reminded_at",
        ]


class ReviewSubmitSerializer(serializers.Serializer):
    summary = serializers.CharField(
        max_length=Review.SUMMARY_MAX_LENGTH,
        help_text="What was done with the access.",
    )


class ReviewSignOffSerializer(serializers.Serializer):
    comment = serializers.CharField(
        max_length=Review.COMMENT_MAX_LENGTH,
        required=False,
        allow_blank=True,
        default="",
    )


class ReviewSendBackSerializer(serializers.Serializer):
    comment = serializers.CharField(
        max_length=Review.COMMENT_MAX_LENGTH,
        help_text="What the requester should add or correct.",
    )


class OnlyKnownFieldsMixin:
    """Refuse query parameters the serializer does not name: a typo is not ignored."""

    # Parameters that DRF itself reads, not the view.
    ignored_fields = ()

    def to_internal_value(self, data):
        errors = {
            name: ["Unknown field."]
            for name in data
            if name not in self.fields and name not in self.ignored_fields
        }
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            errors.update(exc.detail)
        if errors:
            raise serializers.ValidationError(errors)
        return value


class ReviewQuerySerializer(OnlyKnownFieldsMixin, serializers.Serializer):
    ignored_fields = ("format",)

    status = serializers.ChoiceField(choices=Review.Status.choices, required=False)
    overdue = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="true: only overdue reviews; false: only those not overdue.",
    )
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000)
    offset = serializers.IntegerField(required=False, min_value=0, max_value=MAX_BIGINT)


class RequestSerializer(serializers.ModelSerializer):
    target = serializers.CharField(source="target.name")
    scope = serializers.CharField(source="scope.name")
    environment = serializers.CharField(source="target.environment", allow_blank=True)
    kind = serializers.CharField(source="target.kind")
    requester = serializers.CharField(source="requester.username")
    approvals = ApprovalSerializer(many=True)
    approver_groups = serializers.SerializerMethodField()
    issued_at = serializers.SerializerMethodField()
    expires_at = serializers.SerializerMethodField()
    ended_at = serializers.SerializerMethodField()
    principal = serializers.SerializerMethodField()
    revealed_at = serializers.SerializerMethodField()
    end_requested_at = serializers.SerializerMethodField()
    decision = DecisionField(read_only=True)
    revocation = serializers.SerializerMethodField()
    review = serializers.SerializerMethodField()

    class Meta:
        model = AccessRequest
        fields = [
            "id",
            "status",
            "target",
            "scope",
            "environment",
            "kind",
            "requester",
            "reason",
            "incident",
            "duration_minutes",
            "approvals_required",
            "approver_groups",
            "policy_rule",
            "decision",
            "approvals",
            "created_at",
            "approval_deadline",
            "decided_at",
            "issued_at",
            "expires_at",
            "ended_at",
            "principal",
            "revealed_at",
            "end_requested_at",
            "revocation",
            "review",
        ]

    def _grant(self, obj):
        return getattr(obj, "grant", None)

    def _grant_field(self, obj, name):
        grant = self._grant(obj)
        return getattr(grant, name) if grant else None

    def get_approver_groups(self, obj) -> list[str]:
        return sorted(group.name for group in obj.approver_groups.all())

    def get_issued_at(self, obj) -> str | None:
        return _iso(self._grant_field(obj, "issued_at"))

    def get_expires_at(self, obj) -> str | None:
        return _iso(self._grant_field(obj, "expires_at"))

    def get_ended_at(self, obj) -> str | None:
        return _iso(self._grant_field(obj, "ended_at"))

    def get_principal(self, obj) -> str | None:
        grant = self._grant(obj)
        return grant.principal if grant and grant.issued_at else None

    def get_revealed_at(self, obj) -> str | None:
        return _iso(self._grant_field(obj, "revealed_at"))

    def get_end_requested_at(self, obj) -> str | None:
        return _iso(self._grant_field(obj, "end_requested_at"))

    @extend_schema_field(RevocationSerializer)
    def get_revocation(self, obj):
        return selectors.revocation_of(obj)

    @extend_schema_field(ReviewSerializer(allow_null=True))
    def get_review(self, obj):
        review = getattr(obj, "review", None)
        return ReviewSerializer(review).data if review is not None else None


def _iso(value):
    return value.isoformat().replace("+00:00", "Z") if value else None


class CredentialSerializer(serializers.Serializer):
    kind = serializers.CharField()
    username = serializers.CharField()
    expires_at = serializers.CharField()
    password = serializers.CharField(required=False)
    host = serializers.CharField(required=False)
    port = serializers.IntegerField(required=False)
    dbname = serializers.CharField(required=False)
    certificate = serializers.CharField(required=False)
    private_key = serializers.CharField(required=False)
    principals = serializers.ListField(child=serializers.CharField(), required=False)
    key_id = serializers.CharField(required=False)


class EventSerializer(serializers.ModelSerializer):
    request = serializers.IntegerField(source="request_id", allow_null=True)

    class Meta:
        model = AuditEvent
        fields = [
            "seq",
            "at",
            "actor",
            "action",
            "request",
            "incident",
            "target",
            "scope",
            "requester",
            "data",
            "prev_hash",
            "hash",
        ]


def _checked_range(attrs):
    """Refuse a time range that ends before it starts: it can only be a mistake."""
    since, until = attrs.get("since"), attrs.get("until")
    if since and until and until <= since:
        raise serializers.ValidationError({"until": ["Must be after since."]})
    return attrs


class AuditQuerySerializer(OnlyKnownFieldsMixin, serializers.Serializer):
    ignored_fields = ("format",)

    incident = serializers.CharField(required=False, max_length=200)
    request = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_BIGINT
    )
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    after_seq = serializers.IntegerField(
        required=False, min_value=0, max_value=MAX_BIGINT
    )
    limit = serializers.IntegerField(required=False, min_value=1, max_value=10000)

    def validate(self, attrs):
        return _checked_range(attrs)


class RequestQuerySerializer(OnlyKnownFieldsMixin, serializers.Serializer):
    ignored_fields = ("format",)

    status = serializers.ChoiceField(
        choices=AccessRequest.Status.choices, required=False
    )
    target = serializers.CharField(required=False, max_length=100)
    incident = serializers.CharField(required=False, max_length=200)
    requester = serializers.CharField(
        required=False, max_length=150, help_text="The requester's username."
    )
    approver = serializers.CharField(
        required=False,
        max_length=150,
        help_text="Username of someone who approved or denied the request.",
    )
    since = serializers.DateTimeField(
        required=False, help_text="Created at or after this time."
    )
    until = serializers.DateTimeField(
        required=False, help_text="Created before this time (exclusive)."
    )
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000)
    offset = serializers.IntegerField(required=False, min_value=0, max_value=MAX_BIGINT)

    def validate(self, attrs):
        return _checked_range(attrs)


class AuditExportQuerySerializer(AuditQuerySerializer):
    # An export is the whole of what the filter selects, in chain order.
    after_seq = None
    limit = None

    format = serializers.ChoiceField(
        choices=["csv", "json"], required=False, default="json"
    )


class VerifySerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    checked = serializers.IntegerField()
    first_bad = serializers.IntegerField(allow_null=True)


class AwareDateTimeField(serializers.DateTimeField):
    """A date and time that states its offset from UTC; kept in UTC."""

    default_error_messages = {
        "naive": "Give the offset from UTC, e.g. 2026-12-07T08:00:00Z.",
    }

    def enforce_timezone(self, value):
        if timezone.is_naive(value):
            self.fail("naive")
        return super().enforce_timezone(value)


class OnCallShiftSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username")
    starts_at = serializers.SerializerMethodField()
    ends_at = serializers.SerializerMethodField()

    class Meta:
        model = OnCallShift
        fields = ["id", "user", "starts_at", "ends_at", "note", "source", "created_at"]

    def get_starts_at(self, obj) -> str:
        return _iso(obj.starts_at)

    def get_ends_at(self, obj) -> str:
        return _iso(obj.ends_at)


class OnCallShiftCreateSerializer(serializers.Serializer):
    user = serializers.CharField(
        max_length=get_user_model()._meta.get_field("username").max_length
    )
    starts_at = AwareDateTimeField()
    ends_at = AwareDateTimeField()
    note = serializers.CharField(
        max_length=OnCallShift._meta.get_field("note").max_length,
        required=False,
        allow_blank=True,
        default="",
    )

    def validate_user(self, value):
        user = get_user_model().objects.filter(username=value).first()
        if user is None:
            raise serializers.ValidationError("Unknown user.")
        return user


class OnCallQuerySerializer(OnlyKnownFieldsMixin, serializers.Serializer):
    ignored_fields = ("format",)

    user = serializers.CharField(required=False, max_length=150)
    at = AwareDateTimeField(
        required=False, help_text="Who is on call at this moment (with its offset)."
    )
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000)


class FailingRevocationSerializer(serializers.Serializer):
    request = serializers.IntegerField()
    target = serializers.CharField()
    scope = serializers.CharField()
    requester = serializers.CharField()
    incident = serializers.CharField()
    principal = serializers.CharField()
    state = serializers.ChoiceField(choices=["overdue", "failing"])
    due_at = serializers.DateTimeField()
    overdue_seconds = serializers.IntegerField()
    expires_at = serializers.DateTimeField()
    end_requested_at = serializers.DateTimeField(allow_null=True)
    attempts = serializers.IntegerField()
    last_error = serializers.CharField(allow_blank=True)
    next_attempt_at = serializers.DateTimeField(
        allow_null=True, help_text="Null: the next sweep tries it."
    )


class FailingRevocationsSerializer(serializers.Serializer):
    revocations = FailingRevocationSerializer(many=True)
    undelivered_alerts = serializers.IntegerField(
        help_text="Alerts still undelivered a minute after their event."
    )
    oldest_undelivered_alert_at = serializers.DateTimeField(allow_null=True)


class ComplianceReportQuerySerializer(OnlyKnownFieldsMixin, serializers.Serializer):
    ignored_fields = (api_settings.URL_FORMAT_OVERRIDE,)

    since = serializers.DateField(
        required=False, help_text="First day (UTC), YYYY-MM-DD; 29 days before until."
    )
    until = serializers.DateField(
        required=False, help_text="Last day (UTC), included, YYYY-MM-DD; today."
    )


class ReportStatusCountSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=AccessRequest.Status.choices)
    count = serializers.IntegerField()


class ReportTargetCountSerializer(serializers.Serializer):
    target = serializers.CharField()
    count = serializers.IntegerField()


class ReportRequesterCountSerializer(serializers.Serializer):
    requester = serializers.CharField()
    count = serializers.IntegerField()


class ReportDayCountSerializer(serializers.Serializer):
    day = serializers.DateField()
    count = serializers.IntegerField()


class ReportDurationSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="How many requests were measured.")
    median_seconds = serializers.FloatField(allow_null=True)
    p95_seconds = serializers.FloatField(
        allow_null=True, help_text="95th percentile, nearest rank."
    )
    worst_seconds = serializers.FloatField(allow_null=True)
    worst_request = serializers.IntegerField(
        allow_null=True, help_text="The request that took the longest."
    )


class ReportLateRevocationSerializer(serializers.Serializer):
    request = serializers.IntegerField()
    target = serializers.CharField()
    scope = serializers.CharField()
    requester = serializers.CharField()
    incident = serializers.CharField()
    principal = serializers.CharField()
    due_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(
        allow_null=True, help_text="Null: not revoked yet."
    )
    late_seconds = serializers.FloatField(
        help_text="From due to revoked, or to the report's time if not revoked."
    )


class ReportFailedRevocationSerializer(serializers.Serializer):
    request = serializers.IntegerField()
    target = serializers.CharField()
    scope = serializers.CharField()
    requester = serializers.CharField()
    incident = serializers.CharField()
    principal = serializers.CharField()
    failures = serializers.IntegerField(help_text="Failed attempts within the range.")
    last_failed_at = serializers.DateTimeField(allow_null=True)
    still_failing = serializers.BooleanField()
    ended_at = serializers.DateTimeField(allow_null=True)


class ReportOverdueReviewSerializer(serializers.Serializer):
    request = serializers.IntegerField()
    target = serializers.CharField()
    scope = serializers.CharField()
    requester = serializers.CharField()
    incident = serializers.CharField()
    status = serializers.CharField(help_text="due or sent_back")
    due_at = serializers.DateTimeField()
    overdue_seconds = serializers.FloatField()
    reminders = serializers.IntegerField()


class ComplianceReportSerializer(serializers.Serializer):
    since = serializers.DateField()
    until = serializers.DateField(help_text="Included.")
    generated_at = serializers.DateTimeField()
    late_after_seconds = serializers.IntegerField()
    requests_total = serializers.IntegerField()
    requests_by_status = ReportStatusCountSerializer(many=True)
    grants_issued = serializers.IntegerField()
    grants_by_target = ReportTargetCountSerializer(many=True)
    grants_by_requester = ReportRequesterCountSerializer(many=True)
    grants_by_day = ReportDayCountSerializer(
        many=True, help_text="Every day of the range, by the day of the request."
    )
    time_to_approval = ReportDurationSerializer(
        help_text="From the request to its last needed approval."
    )
    time_to_issuance = ReportDurationSerializer(
        help_text="From the last needed approval to the credential's creation."
    )
    time_to_revocation = ReportDurationSerializer(
        help_text="From when an ended grant was due to end (its expiry, or the "
        "early end asked for) to its revocation."
    )
    revoked_late = ReportLateRevocationSerializer(many=True)
    failed_revocations = ReportFailedRevocationSerializer(many=True)
    reviews_overdue = ReportOverdueReviewSerializer(
        many=True,
        help_text="Post-incident reviews of these requests still waiting on their "
        "requester past their due time, now.",
    )
