from django.conf import settings
from django.db import models

from breakglass.models import AccessRequest


class Approval(models.Model):
    """One approver's decision on a request, confirmed with a one-time code."""

    class Decision(models.TextChoices):
        APPROVED = "approved"
        DENIED = "denied"

    request = models.ForeignKey(
        AccessRequest, on_delete=models.PROTECT, related_name="approvals"
    )
    approver = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True)
    # Which second factor confirmed the decision, kept for the trail.
    otp_device = models.CharField(max_length=255)
    # The request as it was voted on: a vote counts only for that exact request.
    request_digest = models.CharField(max_length=64, blank=True)
    at = models.DateTimeField()

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "approver"], name="one_vote_per_approver"
            )
        ]

    def __str__(self):
        return f"{self.approver} {self.decision} request {self.request_id}"
