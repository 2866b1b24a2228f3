from django.contrib.auth import views as auth_views
from django.urls import path

from approvals import views as approval_views

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("awaiting/", views.awaiting, name="awaiting"),
    path("login/", approval_views.login, name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("requests/", views.history, name="history"),
    path("requests/new/", views.new_request, name="request-new"),
    path("requests/new/preview/", views.request_preview, name="request-preview"),
    path("requests/<int:pk>/", views.request_detail, name="request-detail"),
    path("requests/<int:pk>/live/", views.request_live, name="request-live"),
    path("requests/<int:pk>/approve/", approval_views.approve, name="request-approve"),
    path("requests/<int:pk>/deny/", approval_views.deny, name="request-deny"),
    path("requests/<int:pk>/cancel/", views.cancel, name="request-cancel"),
    path("requests/<int:pk>/end/", views.end, name="request-end"),
    path("requests/<int:pk>/credential/", views.reveal, name="request-reveal"),
    path("requests/<int:pk>/review/", views.review_submit, name="review-submit"),
    path(
        "requests/<int:pk>/review/sign-off/",
        views.review_sign_off,
        name="review-sign-off",
    ),
    path(
        "requests/<int:pk>/review/send-back/",
        views.review_send_back,
        name="review-send-back",
    ),
    path("targets/<slug:name>/", views.target_detail, name="target-detail"),
    path("reviews/", views.reviews, name="reviews"),
    path("oncall/", views.roster, name="oncall"),
    path("trail/", views.trail, name="trail"),
    path("trail/export/", views.trail_export, name="trail-export"),
    path("operations/", views.operations, name="operations"),
    path("report/", views.report_page, name="report"),
    path("report/export/", views.report_export, name="report-export"),
    path("incidents/<path:incident>/", views.incident, name="incident"),
    path("account/otp/", approval_views.otp_devices, name="otp-devices"),
    path("account/otp/add/", approval_views.otp_add, name="otp-add"),
    path("account/otp/confirm/", approval_views.otp_confirm, name="otp-confirm"),
    path("account/otp/discard/", approval_views.otp_discard, name="otp-discard"),
]
