import datetime

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.signals import pre_delete
from django.dispatch import receiver


class Target(models.Model):
    """A production system that break-glass credentials can be created on."""

    class Kind(models.TextChoices):
        POSTGRES = "postgres", "PostgreSQL"
        REDIS = "redis", "Redis"
        SSH = "ssh", "SSH certificate authority"
        SEALED = "sealed", "Sealed shared credential"

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    environment = models.CharField(max_length=100, blank=True)
    connection_env = models.CharField(
        max_length=200,
        blank=True,
        help_text="Environment variable holding the admin DSN or URL (never stored).",
    )
    ca_key_env = models.CharField(
        max_length=200,
        blank=True,
        help_text="Environment variable holding the path of the SSH CA private key.",
    )
    revocation_list_path = models.CharField(
        max_length=500,
        blank=True,
        help_text="SSH: the key revocation list file the servers' sshd reads "
        "(RevokedKeys). Empty: certificates cannot be recalled before they expire.",
    )
    auth_log_path = models.CharField(
        max_length=500,
        blank=True,
        help_text="SSH: the sshd log where accepted logins are detected.",
    )
    rotator = models.JSONField(
        default=dict,
        blank=True,
        help_text="Sealed: how the shared secret is replaced on the system "
        "(kind, username, connection_env or command_env).",
    )
    slack_webhook_env = models.CharField(
        max_length=200,
        blank=True,
        help_text="Environment variable holding a Slack incoming-webhook address "
        "that gets this target's alerts (never stored).",
    )
    pagerduty_routing_key_env = models.CharField(
        max_length=200,
        blank=True,
        help_text="Environment variable holding a PagerDuty Events API v2 routing "
        "key that gets this target's critical alerts (never stored).",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Scope(models.Model):
    """A named level of access on a target, with what a credential receives."""

    target = models.ForeignKey(Target, on_delete=models.CASCADE, related_name="scopes")
    name = models.SlugField(max_length=100)
    grants = models.JSONField(
        default=list,
        help_text="PostgreSQL roles, Redis ACL rules or SSH principals.",
    )
    approver_groups = models.ManyToManyField(
        Group,
        blank=True,
        related_name="+",
        help_text="Empty: the approver groups of the target's policy.",
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["target", "name"]
        constraints = [
            models.UniqueConstraint(fields=["target", "name"], name="unique_scope")
        ]

    def __str__(self):
        return f"{self.target.name}/{self.name}"


def default_working_days():
    return ["mon", "tue", "wed", "thu", "fri"]


class Policy(models.Model):
    """Who may ask for a target, who must approve, and for how long."""

    target = models.OneToOneField(
        Target, on_delete=models.CASCADE, related_name="policy"
    )
    approvals_required = models.PositiveSmallIntegerField(
        default=2, validators=[MinValueValidator(1), MaxValueValidator(10)]
    )
    approver_groups = models.ManyToManyField(
        Group, blank=True, related_name="+", help_text="Empty: any approver."
    )
    requester_groups = models.ManyToManyField(
        Group, blank=True, related_name="+", help_text="Empty: any requester."
    )
    max_duration_minutes = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1), MaxValueValidator(7 * 24 * 60)]
    )
    approval_window_minutes = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(7 * 24 * 60)]
    )
    incident_pattern = models.CharField(max_length=200, default=r"^\S.*$")

    # Context known at request time: working hours in the policy's time zone,
    # how many grants the requester holds and has had recently.
    timezone = models.CharField(max_length=64, default="UTC")
    working_days = models.JSONField(
        default=default_working_days,
        help_text="Days of the working week: mon, tue, wed, thu, fri, sat, sun.",
    )
    working_hours_start = models.TimeField(default=datetime.time(9, 0))
    working_hours_end = models.TimeField(default=datetime.time(18, 0))
    max_active_grants = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Most open requests and grants one requester may hold.",
    )
    recent_window_days = models.PositiveSmallIntegerField(
        default=30,
        validators=[MinValueValidator(1), MaxValueValidator(366)],
        help_text="How far back 'recent grants' are counted.",
    )
    rules = models.JSONField(
        default=list,
        blank=True,
        help_text="Conditions that add approvals or shorten the longest duration.",
    )

    class Meta:
        verbose_name_plural = "policies"

    def __str__(self):
        return f"policy for {self.target.name}"


class AccessRequest(models.Model):
    """One engineer's request for emergency access to one scope of one target."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        ACTIVE = "active"
        EXPIRED = "expired"
        REVOKED = "revoked"
        DENIED = "denied"
        CANCELLED = "cancelled"
        TIMED_OUT = "timed_out"
        FAILED = "failed"

    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    target = models.ForeignKey(Target, on_delete=models.PROTECT, related_name="+")
    scope = models.ForeignKey(Scope, on_delete=models.PROTECT, related_name="+")
    duration_minutes = models.PositiveIntegerField()
    reason = models.TextField()
    incident = models.CharField(max_length=200, db_index=True)
    public_key = models.TextField(blank=True)
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True
    )

    # The policy decision taken at request time, kept as it was decided.
    approvals_required = models.PositiveSmallIntegerField()
    approver_groups = models.ManyToManyField(
        Group, blank=True, related_name="+", help_text="Empty: any approver."
    )
    policy_rule = models.TextField()
    # What was evaluated and which rules fired, for approvers and the trail.
    decision = models.JSONField(default=dict)

    created_at = models.DateTimeField()
    approval_deadline = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # Every list shows the newest requests first, a page at a time: without
        # it, each page joins and sorts every request ever made.
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="request_newest_first")
        ]

    def __str__(self):
        return f"request {self.pk} ({self.target.name}/{self.scope.name})"

    @property
    def is_open(self):
        return self.status == self.Status.PENDING


class OnCallShift(models.Model):
    """A period during which a person is on call."""

    class Source(models.TextChoices):
        CONFIG = "config"
        API = "api"
        ADMIN = "admin"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oncall_shifts"
    )
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    note = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["starts_at", "user"]
        indexes = [models.Index(fields=["user", "starts_at", "ends_at"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")),
                name="oncall_ends_after_start",
            )
        ]

    def __str__(self):
        return f"{self.user} on call {self.starts_at:%Y-%m-%d %H:%M}Z"


class Grant(models.Model):
    """The credential created on the target for an approved request."""

    class EndReason(models.TextChoices):
        EXPIRED = "expired"
        REVOKED = "revoked"

    request = models.OneToOneField(
        AccessRequest, on_delete=models.PROTECT, related_name="grant"
    )
    principal = models.CharField(max_length=63, unique=True)
    # What the provider needs to revoke, frozen at issuance so that editing or
    # removing the target later cannot strand a live credential.
    target_snapshot = models.JSONField(default=dict)
    # The credential waiting to be revealed, encrypted; erased at reveal or end.
    sealed_credential = models.BinaryField(null=True, blank=True, editable=False)

    approved_at = models.DateTimeField()
    issued_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    revealed_at = models.DateTimeField(null=True, blank=True)
    end_requested_at = models.DateTimeField(null=True, blank=True)
    end_requested_by = models.CharField(max_length=150, blank=True)
    end_reason = models.TextField(blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    issue_attempts = models.PositiveSmallIntegerField(default=0)
    revoke_attempts = models.PositiveSmallIntegerField(default=0)
    # When the sweep may try a failed issuance or revocation again (backoff).
    retry_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    def __str__(self):
        return self.principal


class SealedCredential(models.Model):
    """The one shared secret of a sealed target, encrypted, and its rotation.

    Checked out by one grant at a time; replaced on the system after every
    grant. A new secret is kept as pending before the system is changed, so
    that whichever of the two the system holds after a crash is still known.
    """

    target = models.OneToOneField(
        Target, on_delete=models.PROTECT, related_name="sealed_credential"
    )
    secret = models.BinaryField(null=True, blank=True, editable=False)
    pending_secret = models.BinaryField(null=True, blank=True, editable=False)
    sealed_at = models.DateTimeField(null=True, blank=True)
    rotated_at = models.DateTimeField(null=True, blank=True)
    # Someone may know the current secret: it was revealed or typed in.
    exposed = models.BooleanField(default=False)
    # Exposed, and the rotation that should have replaced it failed.
    compromised_since = models.DateTimeField(null=True, blank=True)
    rotation_due_at = models.DateTimeField(null=True, blank=True, db_index=True)
    rotation_attempts = models.PositiveIntegerField(default=0)
    # When the sweep may try a failed rotation again (backoff).
    retry_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # The request whose end made the rotation due, for the trail.
    last_request = models.ForeignKey(
        "AccessRequest",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )

    def __str__(self):
        return f"sealed credential of {self.target.name}"

    @property
    def is_compromised(self):
        return self.compromised_since is not None


class Review(models.Model):
    """The requester's account of what a grant that ended was used for.

    Due when the grant ends; the requester submits it, and a compliance reviewer
    signs it off or sends it back, which makes it due again.
    """

    class Status(models.TextChoices):
        DUE = "due"
        SUBMITTED = "submitted"
        SIGNED_OFF = "signed_off", "Signed off"
        SENT_BACK = "sent_back", "Sent back"

    # The states in which the review waits for its requester.
    WAITING_ON_REQUESTER = (Status.DUE, Status.SENT_BACK)
    SUMMARY_MAX_LENGTH = 4000
    COMMENT_MAX_LENGTH = 2000

    request = models.OneToOneField(
        AccessRequest, on_delete=models.PROTECT, related_name="review"
    )
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.DUE, db_index=True
    )
    created_at = models.DateTimeField()
    due_at = models.DateTimeField(db_index=True)
    summary = models.TextField(blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    reviewer_comment = models.TextField(blank=True)
    last_reminded_at = models.DateTimeField(null=True, blank=True)
    reminders = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["due_at", "id"]

    def __str__(self):
        return f"review of request {self.request_id} ({self.status})"

    @property
    def is_waiting_on_requester(self):
        return self.status in self.WAITING_ON_REQUESTER

    def is_overdue(self, now):
        return self.is_waiting_on_requester and self.due_at <= now


class CredentialUse(models.Model):
    """One session or login seen on a target with a grant's credential."""

    grant = models.ForeignKey(Grant, on_delete=models.PROTECT, related_name="uses")
    # What identifies the session on the target (a backend pid and start time, a
    # client id, a log line), so that each use is alerted once.
    session_key = models.CharField(max_length=255)
    source_address = models.CharField(max_length=255, blank=True)
    used_at = models.DateTimeField()
    detected_at = models.DateTimeField()
    details = models.JSONField(default=dict)

    class Meta:
        ordering = ["used_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["grant", "session_key"], name="one_use_per_session"
            )
        ]

    def __str__(self):
        return f"use of {self.grant} from {self.source_address or 'unknown'}"


class AuditEvent(models.Model):
    """One link of the append-only, hash-chained trail."""

    seq = models.BigIntegerField(unique=True)
    at = models.DateTimeField(db_index=True)
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=64, db_index=True)
    request = models.ForeignKey(
        AccessRequest,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="events",
        db_constraint=False,
    )
    incident = models.CharField(max_length=200, blank=True, db_index=True)
    target = models.CharField(max_length=100, blank=True)
    scope = models.CharField(max_length=100, blank=True)
    requester = models.CharField(max_length=150, blank=True)
    data = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["seq"]

    def __str__(self):
        return f"#{self.seq} {self.action}"


class ChainVerification(models.Model):
    """The result of one full verification of the trail.

    Pages show the latest one and check only the events appended since, so that
    showing the trail's state stays cheap however long the trail grows.
    """

    checked_at = models.DateTimeField()
    checked = models.PositiveBigIntegerField()
    # The seq of the first event that fails, or None when the chain held.
    first_bad = models.BigIntegerField(null=True, blank=True)
    head_seq = models.BigIntegerField(default=0)
    head_hash = models.CharField(max_length=64, blank=True)
    seconds = models.FloatField()

    class Meta:
        ordering = ["-checked_at", "-id"]
        get_latest_by = ["checked_at", "id"]

    def __str__(self):
        state = "intact" if self.first_bad is None else f"broken at {self.first_bad}"
        return f"{self.checked} events {state}"


class Alert(models.Model):
    """One audit event waiting to be, or delivered on one channel."""

    class Channel(models.TextChoices):
        WEBHOOK = "webhook"
        EMAIL = "email"
        SLACK = "slack"
        PAGERDUTY = "pagerduty", "PagerDuty"

    event = models.ForeignKey(AuditEvent, on_delete=models.PROTECT, related_name="+")
    channel = models.CharField(max_length=20, choices=Channel.choices)
    # Slack and PagerDuty: where the address or key is read from at delivery,
    # `setting:NAME[#index]` or `env:NAME`, since the address is itself a secret.
    destination = models.TextField()
    delivery_id = models.UUIDField(unique=True)
    created_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField(db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    delivered_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return f"{self.channel} alert {self.delivery_id}"


def uses_of_groups(groups):
    """Return the policies, scopes and requests that name any of the groups.

    Such a group must outlive them: with it gone, a policy that named it would
    read as "any approver" or "any requester", and a request's approvers as
    every approver.
    """
    return [
        *Policy.objects.filter(
            models.Q(approver_groups__in=groups) | models.Q(requester_groups__in=groups)
        ).distinct(),
        *Scope.objects.filter(approver_groups__in=groups).distinct(),
        *AccessRequest.objects.filter(approver_groups__in=groups).distinct(),
    ]


@receiver(pre_delete, sender=Group)
def _keep_groups_in_use(sender, instance, **kwargs):
    uses = uses_of_groups([instance])
    if uses:
        raise models.ProtectedError(
            f"The group {instance.name} is named by {len(uses)} policies, scopes "
            "or requests and cannot be deleted.",
            set(uses),
        )


class WorkerHeartbeat(models.Model):
    """When a Celery worker last ran the scheduler's heartbeat task.

    A fresh one shows that the scheduler, the broker and a worker all work:
    /readyz checks it.
    """

    worker = models.CharField(max_length=255, unique=True)
    seen_at = models.DateTimeField()

    class Meta:
        ordering = ["-seen_at"]

    def __str__(self):
        return f"{self.worker} at {self.seen_at:%Y-%m-%d %H:%M:%S}Z"
