"""Web forms for enrolling the TOTP devices that confirm decisions."""

from django import forms


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

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_password(self):
        password = self.cleaned_data["password"]
        if not self.user.check_password(password):
            raise forms.ValidationError("The password is not correct.")
        return password


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
