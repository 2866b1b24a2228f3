"""How a login refused for too many wrong passwords is answered (django-axes)."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.shortcuts import render


def attempted_username(request, credentials=None):
    """Return the username a login attempt names, as long as a username can be.

    The login forms pass any length on to authentication; a longer name is no
    user's, and cut to the longest one a user may have it still counts.
    """
    field = get_user_model().USERNAME_FIELD
    data = credentials or getattr(request, "data", request.POST)
    username = data.get(field)
    if not isinstance(username, str):
        return None
    return username[: get_user_model()._meta.get_field(field).max_length]


def client_address(request):
    """Return the address a login attempt came from, as the server saw it."""
    return request.META.get("REMOTE_ADDR")


def locked_out(request, original_response=None, credentials=None):
    """Answer 429 with the login page, saying how long to wait.

    A page that asks for the password again keeps its own answer, whose form
    already says so beside the password.
    """
    wait = int(settings.AXES_COOLOFF_TIME.total_seconds())
    match = request.resolver_match
    if original_response is not None and match and match.url_name == "otp-add":
        original_response.status_code = 429
        original_response["Retry-After"] = str(wait)
        return original_response
    context = {
        "form": AuthenticationForm(request),
        "locked_out_minutes": max(1, round(wait / 60)),
    }
    response = render(request, "registration/login.html", context, status=429)
    response["Retry-After"] = str(wait)
    return response
