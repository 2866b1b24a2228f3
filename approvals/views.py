"""Pages for deciding on requests and for enrolling an authenticator."""

from base64 import b32encode

import django_otp
import qrcode
import qrcode.image.svg
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_POST

from breakglass.errors import BreakglassError, Throttled
from breakglass.forms import VoteForm
from breakglass.views import render_detail, render_refusal, visible_request

from . import devices, services
from .forms import AddDeviceForm, ConfirmDeviceForm, LoginForm

OTP_ERRORS = {"otp_invalid", "otp_throttled"}


# Logging in


class LoginView(auth_views.LoginView):
    """Django's login, asking for a one-time code from anyone with an authenticator."""

    form_class = LoginForm

    def form_valid(self, form):
        response = super().form_valid(form)
        if form.device is not None:
            # The session counts as verified, as after the admin's own OTP login.
            django_otp.login(self.request, form.device)
        return response


login = sensitive_post_parameters("password", "otp")(LoginView.as_view())


# Deciding


@login_required
@require_POST
@sensitive_post_parameters("otp")
def approve(request, pk):
    return _vote(request, pk, services.approve_request, "Your approval is recorded.")


@login_required
@require_POST
@sensitive_post_parameters("otp")
def deny(request, pk):
    return _vote(request, pk, services.deny_request, "Your denial is recorded.")


def _vote(request, pk, decide, done):
    access_request = visible_request(pk, request.user)
    form = VoteForm(request.POST)
    if not form.is_valid():
        return render_detail(request, access_request, status=400, vote_form=form)
    try:
        decide(
            pk,
            approver=request.user,
            code=form.cleaned_data["otp"],
            comment=form.cleaned_data["comment"],
        )
    except BreakglassError as exc:
        form.add_error("otp" if exc.code in OTP_ERRORS else None, exc.detail)
        return render_refusal(request, pk, exc, vote_form=_without_code(form))
    messages.success(request, done)
    return redirect("request-detail", pk)


def _without_code(form):
    # A code is used once; showing it again would only invite a second try.
    form.data = form.data.copy()
    form.data["otp"] = ""
    return form


# Enrolling an authenticator


@login_required
@require_GET
@never_cache
def otp_devices(request):
    return _render_devices(request)


@login_required
@require_POST
@never_cache
@sensitive_post_parameters("password", "current_code")
def otp_add(request):
    form = AddDeviceForm(request.POST, user=request.user, request=request)
    if not form.is_valid():
        return _render_devices(request, add_form=form, status=400)
    devices.start_enrolment(request.user, name=form.cleaned_data["name"])
    return redirect("otp-devices")


@login_required
@require_POST
@never_cache
@sensitive_post_parameters("code")
def otp_confirm(request):
    form = ConfirmDeviceForm(request.POST)
    if not form.is_valid():
        return _render_devices(request, confirm_form=form, status=400)
    try:
        device = devices.confirm_enrolment(request.user, code=form.cleaned_data["code"])
    except BreakglassError as exc:
        form.add_error("code", exc.detail)
        response = _render_devices(request, confirm_form=form, status=exc.status)
        if isinstance(exc, Throttled):
            response["Retry-After"] = str(exc.retry_after)
        return response
    messages.success(
        request, f"Authenticator {device.name} is ready to confirm your decisions."
    )
    return redirect("otp-devices")


@login_required
@require_POST
def otp_discard(request):
    devices.discard_enrolment(request.user)
    return redirect("otp-devices")


def _render_devices(request, *, add_form=None, confirm_form=None, status=200):
    pending = devices.pending_device(request.user)
    context = {
        "devices": devices.confirmed_devices(request.user),
        "pending": pending,
        "add_form": add_form or AddDeviceForm(user=request.user),
        "confirm_form": confirm_form or ConfirmDeviceForm(),
    }
    if pending is not None:
        context["qr_svg"] = _qr_svg(pending.config_url)
        secret = b32encode(pending.bin_key).decode()
        context["secret"] = " ".join(
            secret[i : i + 4] for i in range(0, len(secret), 4)
        )
    return render(request, "approvals/otp_devices.html", context, status=status)


def _qr_svg(text):
    image = qrcode.make(
        text, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=2
    )
    svg = image.to_string(encoding="unicode")
    # Inline in HTML: drop the XML declaration and label the image.
    svg = svg[svg.index("<svg") :]
    svg = svg.replace(
        "<svg", '<svg role="img" aria-label="QR code for your authenticator app"', 1
    )
    return mark_safe(svg)  # noqa: S308 - made here by qrcode from our own data
