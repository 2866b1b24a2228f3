"""Encryption of sealed shared credentials with keys that can be rotated.

BREAKGLASS_SEALING_KEYS lists Fernet keys, newest first: the newest seals, every
one of them opens. A key derived from SECRET_KEY is always accepted last, so that
credentials sealed before the variable was set can still be opened and resealed.
"""

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from .sealing import derived_fernet

__all__ = ["InvalidToken", "reseal", "seal", "unseal", "uses_newest_key"]


def _derived_key():
    return derived_fernet(b"breakglass-vault", b"sealed shared credential v1")


def _keys():
    return [Fernet(key) for key in settings.BREAKGLASS_SEALING_KEYS] + [_derived_key()]


@sensitive_variables("secret")
def seal(secret):
    """Encrypt a secret (text) with the newest key."""
    return MultiFernet(_keys()).encrypt(secret.encode())


def unseal(token):
    """Decrypt a sealed secret with whichever accepted key sealed it."""
    return MultiFernet(_keys()).decrypt(bytes(token)).decode()


def reseal(token):
    """Return the token encrypted again with the newest key."""
    return MultiFernet(_keys()).rotate(bytes(token))


def uses_newest_key(token):
    """Return whether the newest key opens the token."""
    try:
        _keys()[0].decrypt(bytes(token))
    except InvalidToken:
        return False
    return True
