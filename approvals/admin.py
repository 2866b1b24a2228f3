"""Admin: decisions are shown, never made or changed here.

A vote needs the approver's own one-time code, which only the approval service
checks; the admin has no path to it.
"""

from django.contrib import admin

from breakglass.admin import ReadOnlyAdmin

from .models import Approval


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = ["request", "approver", "decision", "otp_device", "at"]
    list_filter = ["decision"]
    search_fields = ["approver__username", "comment"]
    list_select_related = ["request__target", "request__scope", "approver"]
