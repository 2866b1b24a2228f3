"""Signed checkpoints of the trail's head, sent out so a rewrite cannot hide.

The hash chain shows any change to an event, but someone able to rewrite the
whole table could recompute every hash. Periodically the head of the chain
(its seq and hash) is signed with an Ed25519 key kept outside the database and
sent out as an `audit.checkpoint` alert; comparing the trail with the last
checkpoint anyone received then shows a rewrite or a truncation.

The signed message is, in ASCII, each on its own line:
`breakglass-checkpoint-v1`, the seq, the hash, and the signing time (UTC ISO 8601).
"""

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.conf import settings

from .errors import BreakglassError

MESSAGE_VERSION = "breakglass-checkpoint-v1"


class CheckpointError(BreakglassError):
    code = "checkpoint_invalid"


def message(checkpoint):
    """Return the bytes a checkpoint's signature covers."""
    return "\n".join(
        [
            MESSAGE_VERSION,
            str(int(checkpoint["seq"])),
            str(checkpoint["hash"]),
            str(checkpoint["signed_at"]),
        ]
    ).encode("ascii")


def load_signing_key(path=None):
    """Return the Ed25519 private key named by BREAKGLASS_CHECKPOINT_KEY_FILE."""
    path = path or settings.BREAKGLASS_CHECKPOINT_KEY_FILE
    if not path:
        raise CheckpointError(
            "BREAKGLASS_CHECKPOINT_KEY_FILE is not set: checkpoints cannot be signed"
        )
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(
            f"the checkpoint key {path} cannot be read: {exc.strerror}"
        ) from None
    try:
        if data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CheckpointError(
            f"the checkpoint key {path} is not an unencrypted private key"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise CheckpointError(f"the checkpoint key {path} is not an Ed25519 key")
    return key


def public_key_text(public_key):
    """Return the public key in OpenSSH's one-line form, for auditors to keep."""
    return public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def load_public_key(text):
    """Parse an OpenSSH one-line Ed25519 public key."""
    try:
        key = serialization.load_ssh_public_key(text.strip().encode())
    except (ValueError, UnsupportedAlgorithm):
        raise CheckpointError("the public key is not an OpenSSH public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise CheckpointError("the public key is not an Ed25519 key")
    return key


def fingerprint(public_key):
    """Return the key's SHA256 fingerprint as ssh-keygen -l prints it."""
    raw = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).split()[1]
    digest = hashlib.sha256(base64.b64decode(raw)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def sign(private_key, *, seq, hash, signed_at):
    """Return a checkpoint of the head (seq, hash), signed by `private_key`."""
    checkpoint = {
        "seq": seq,
        "hash": hash,
        "signed_at": signed_at.isoformat().replace("+00:00", "Z"),
        "key": fingerprint(private_key.public_key()),
    }
    signature = private_key.sign(message(checkpoint))
    checkpoint["signature"] = base64.b64encode(signature).decode()
    return checkpoint


def check_signature(checkpoint, public_key):
    """Raise CheckpointError unless `public_key` signed this checkpoint."""
    try:
        signature = base64.b64decode(checkpoint["signature"], validate=True)
        public_key.verify(signature, message(checkpoint))
    except (KeyError, TypeError, ValueError, UnicodeEncodeError):
        raise CheckpointError(
            "the checkpoint needs seq, hash, signed_at and a base64 signature"
        ) from None
    except InvalidSignature:
        raise CheckpointError(
            f"the checkpoint's signature does not verify with key "
            f"{fingerprint(public_key)}"
        ) from None


def read_checkpoint(document):
    """Return the checkpoint inside a received alert, an event or the bare object.

    Auditors keep what they received: the webhook body (`data` holds the
    checkpoint), an event from the API, or the checkpoint itself.
    """
    if isinstance(document, dict) and isinstance(document.get("data"), dict):
        document = document["data"]
    if not isinstance(document, dict) or not {"seq", "hash", "signature"} <= set(
        document
    ):
        raise CheckpointError(
            "no checkpoint found: expected seq, hash, signed_at and signature"
        )
    return document
