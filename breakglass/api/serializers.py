from rest_framework import serializers

from ..models import AccessRequest, AuditEvent

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
    comment = serializers.CharField()
    otp_device = serializers.CharField()
    at = serializers.DateTimeField()


class RequestSerializer(serializers.ModelSerializer):
    target = serializers.CharField(source="target.name")
    scope = serializers.CharField(source="scope.name")
    environment = serializers.CharField(source="target.environment")
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


class AuditQuerySerializer(serializers.Serializer):
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


class RequestQuerySerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=AccessRequest.Status.choices, required=False
    )
    target = serializers.CharField(required=False, max_length=100)
    incident = serializers.CharField(required=False, max_length=200)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000)
    offset = serializers.IntegerField(required=False, min_value=0, max_value=MAX_BIGINT)


class VerifySerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    checked = serializers.IntegerField()
    first_bad = serializers.IntegerField(allow_null=True)
