from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView

from . import views

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("requests/", views.RequestListView.as_view(), name="api-requests"),
    path("requests/<int:pk>/", views.RequestDetailView.as_view(), name="api-request"),
    path("requests/<int:pk>/approve/", views.ApproveView.as_view(), name="api-approve"),
    path("requests/<int:pk>/deny/", views.DenyView.as_view(), name="api-deny"),
    path("requests/<int:pk>/cancel/", views.CancelView.as_view(), name="api-cancel"),
    path("requests/<int:pk>/revoke/", views.RevokeView.as_view(), name="api-revoke"),
    path(
        "requests/<int:pk>/credential/",
        views.CredentialView.as_view(),
        name="api-credential",
    ),
    path(
        "requests/<int:pk>/review/",
        views.ReviewSubmitView.as_view(),
        name="api-review-submit",
    ),
    path(
        "requests/<int:pk>/review/sign-off/",
        views.ReviewSignOffView.as_view(),
        name="api-review-sign-off",
    ),
    path(
        "requests/<int:pk>/review/send-back/",
        views.ReviewSendBackView.as_view(),
        name="api-review-send-back",
    ),
    path("reviews/", views.ReviewListView.as_view(), name="api-reviews"),
    path("audit/", views.AuditListView.as_view(), name="api-audit"),
    path("oncall/", views.OnCallListView.as_view(), name="api-oncall"),
    path("oncall/<int:pk>/", views.OnCallDetailView.as_view(), name="api-oncall-shift"),
    path("audit/verify/", views.AuditVerifyView.as_view(), name="api-audit-verify"),
    path("audit/export/", views.AuditExportView.as_view(), name="api-audit-export"),
    path(
        "operations/failing-revocations/",
        views.FailingRevocationsView.as_view(),
        name="api-failing-revocations",
    ),
    path(
        "reports/compliance/",
        views.ComplianceReportView.as_view(),
        name="api-compliance-report",
    ),
    # Only addresses ending in a slash, so that a missing one is still redirected.
    re_path(r"^(?P<path>.*/)$", views.UnknownView.as_view()),
]
