"""Web forms for enrolling the TOTP devices that confirm decisions."""

from django import forms
from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.forms import AuthenticationForm
from django.views.decorators.debug import sensitive_variables

from breakglass.errors import Throttled

from . import otp


class AddDeviceForm(forms.Form):
    """Start enrolling an authenticator; the password guards against stolen sessions."""

    name = forms.CharField(
        max_length=64,
        initial="phone",
        help_text="A name to tell your devices apart, e.g. 'work phone'.",
    )
    password = forms.CharField(
        label="Your password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    current_code = forms.CharField(
        label="Code from an authenticator you already have",
        max_length=12,
        required=False,
        widget=forms.TextInput(
            attrs={
                "inputmode": "numeric",
                "autocomplete": "one-time-code",
                "pattern": "[0-9]{6}",
                "size": 8,
            }
        ),
    )

    def __init__(self, *args, user, request=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.request = request
        # With a second factor already, a password alone must not add another:
        # a stolen password would otherwise be a stolen second factor too.
        self.needs_current_code = otp.has_device(user)
        if not self.needs_current_code:
            del self.fields["current_code"]

    def clean_password(self):
        password = self.cleaned_data["password"]
        # Through the authentication backends, so that guessing the password here
        # is counted and locked out as on the login page.
        found = authenticate(
            self.request, username=self.user.get_username(), password=password
        )
        if getattr(self.request, "axes_locked_out", False):
            minutes = max(1, round(settings.AXES_COOLOFF_TIME.total_seconds() / 60))
            raise forms.ValidationError(
                f"Too many wrong passwords; try again in {minutes} minutes."
            )
        if found is None or found.pk != self.user.pk:
            raise forms.ValidationError("The password is not correct.")
        return password

    def clean_current_code(self):
        code = self.cleaned_data["current_code"].strip()
        if not code:
            raise forms.ValidationError(
                "Enter a current code from an authenticator you already have."
            )
        try:
            device = otp.verify(self.user, code)
        except Throttled as exc:
            raise forms.ValidationError(exc.detail) from None
        if device is None:
            raise forms.ValidationError(
                "Enter a current code from an authenticator you already have."
            )
        return code


class ConfirmDeviceForm(forms.Form):
    """Confirm a new authenticator with a code it shows."""

    code = forms.CharField(
        label="Code shown by the app",
        max_length=12,
        widget=forms.TextInput(
            attrs={
                "inputmode": "numeric",
                "autocomplete": "one-time-code",
                "pattern": "[0-9]{6}",
                "size": 8,
            }
        ),
    )


class LoginForm(AuthenticationForm):
    """Log in with a password and, for anyone with an authenticator, its code."""

    otp = forms.CharField(
        label="One-time code",
        max_length=12,
        required=False,
        help_text="From your authenticator app; leave empty if you have none.",
        widget=forms.TextInput(
            attrs={
                "inputmode": "numeric",
                "autocomplete": "one-time-code",
                "pattern": "[0-9]{6}",
                "size": 8,
            }
        ),
    )

    error_messages = {
        **AuthenticationForm.error_messages,
        "otp_required": "Enter the 6-digit code from your authenticator app.",
        "otp_invalid": "The one-time code is not correct, or was already used.",
    }

    device = None

    @sensitive_variables("code")
    def clean(self):
        cleaned = super().clean()
        user = self.get_user()
        if user is None or not otp.has_device(user):
            return cleaned
        code = (cleaned.get("otp") or "").strip()
        if not code:
            self.add_error("otp", self.error_messages["otp_required"])
            return cleaned
        try:
            self.device = otp.verify(user, code)
        except Throttled as exc:
            self.add_error("otp", exc.detail)
            return cleaned
        if self.device is None:
            self.add_error("otp", self.error_messages["otp_invalid"])
        return cleaned
