"""SSH: a short-lived OpenSSH user certificate signed by the target's CA."""

import datetime
import secrets

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from django.conf import settings

from .. import clock
from ..errors import ProviderError
from . import krl, ssh_logins
from .base import Provider, env_value


class SshProvider(Provider):
    kind = "ssh"

    def issue(self, snapshot, *, principal, expires_at, key_id, public_key=""):
        ca_key = load_ca_key(snapshot)
        private_key = None
        if public_key:
            try:
                subject_key = serialization.load_ssh_public_key(public_key.encode())
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise ProviderError(f"the public key is not usable: {exc}") from None
        else:
            generated = ed25519.Ed25519PrivateKey.generate()
            subject_key = generated.public_key()
            private_key = generated.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ).decode()

        # Tolerate a server whose clock runs a little behind ours.
        backdate = datetime.timedelta(seconds=settings.BREAKGLASS_SSH_BACKDATE_SECONDS)
        now = clock.now()
        try:
            certificate = (
                serialization.SSHCertificateBuilder()
                .public_key(subject_key)
                .type(serialization.SSHCertificateType.USER)
                .serial(secrets.randbits(63))
                .key_id(key_id.encode())
                .valid_principals([p.encode() for p in snapshot["grants"]])
                .valid_after(int((now - backdate).timestamp()))
                .valid_before(int(expires_at.timestamp()))
                .add_extension(b"permit-pty", b"")
                .sign(ca_key)
            )
        except (ValueError, TypeError) as exc:
            raise ProviderError(f"the CA could not sign: {exc}") from None

        credential = {
            "kind": self.kind,
            "username": snapshot["grants"][0] if snapshot["grants"] else principal,
            "principals": list(snapshot["grants"]),
            "certificate": certificate.public_bytes().decode() + "\n",
            "key_id": key_id,
            "serial": certificate.serial,
            "ca_public_key": _openssh_public(ca_key.public_key()),
            "expires_at": expires_at.isoformat(),
        }
        if private_key:
            credential["private_key"] = private_key
        return credential

    def revoke(self, snapshot, *, principal):
        """Recall a certificate that is still valid through the target's KRL.

        A certificate carries its own end (valid_before) and nothing is kept on
        the server: before that end, only the revocation list can refuse it.
        """
        if not can_recall(snapshot):
            return None
        valid_until = datetime.datetime.fromisoformat(
            snapshot["certificate_expires_at"]
        )
        now = clock.now()
        if valid_until <= now:
            return None
        ca_public_key = snapshot.get("certificate_ca_public_key") or _openssh_public(
            load_ca_key(snapshot).public_key()
        )
        krl.recall(
            snapshot["revocation_list_path"],
            ca_public_key=ca_public_key,
            serial=snapshot["certificate_serial"],
            valid_until=valid_until,
            key_id=snapshot.get("certificate_key_id", principal),
            now=now,
        )
        return None

    def sessions(self, snapshot, *, principal):
        """Return the accepted logins with the certificate, from the sshd log."""
        return ssh_logins.accepted_logins(
            snapshot.get("auth_log_path"),
            principal=principal,
            serial=snapshot.get("certificate_serial"),
        )


def can_recall(snapshot):
    """Return whether the certificate issued for this snapshot can be recalled early.

    It needs the target's revocation list and the certificate's serial, which
    issuance adds to the grant's snapshot.
    """
    return bool(snapshot.get("revocation_list_path")) and (
        snapshot.get("certificate_serial") is not None
    )


def public_key_problem(text):
    """Return why the text is not one OpenSSH public key we certify, or None."""
    text = text.strip()
    if not text or "\n" in text:
        return "Paste one line such as ssh-ed25519 AAAA... ."
    if "-cert-v01@openssh.com" in text.split()[0]:
        return "Paste the public key, not a certificate."
    try:
        key = serialization.load_ssh_public_key(text.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "Not an OpenSSH public key: paste one line such as ssh-ed25519 AAAA... ."
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            # Shorter RSA keys are refused by current OpenSSH and breakable.
            return f"An RSA key must have at least 2048 bits, not {key.key_size}."
        return None
    if isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        return None
    # DSA above all: OpenSSH no longer accepts it, and it cannot be certified.
    return "Use an Ed25519, ECDSA or RSA key."


def _openssh_public(key):
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def load_ca_key(snapshot):
    """Load the CA private key from the file the target's environment variable names."""
    path = env_value(snapshot.get("ca_key_env"), "CA key file")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ProviderError(
            f"cannot read the CA key named by {snapshot['ca_key_env']}: {exc.strerror}"
        ) from None
    try:
        return serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ProviderError(
            f"the CA key named by {snapshot['ca_key_env']} is not an unencrypted "
            "OpenSSH private key"
        ) from None
