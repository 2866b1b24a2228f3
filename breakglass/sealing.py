"""Encryption at rest for credentials that wait to be revealed."""

import base64
import json

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings


def derived_fernet(salt, info):
    """Return a Fernet with a key of its own purpose, derived from SECRET_KEY.

    What it seals is useless without the process configuration, which is never
    stored in the database.
    """
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(
        settings.SECRET_KEY.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def _fernet():
    return derived_fernet(b"breakglass-sealing", b"credential at rest v1")


def seal(credential):
    """Encrypt a credential (a dict) for storage."""
    return _fernet().encrypt(json.dumps(credential).encode())


def unseal(token):
    """Decrypt a credential sealed by `seal`."""
    return json.loads(_fernet().decrypt(bytes(token)))
