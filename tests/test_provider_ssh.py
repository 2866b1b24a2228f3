"""The SSH provider: CA-signed certificates, and clear errors without secrets."""

import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from breakglass.errors import ProviderError
from breakglass.providers import provider_for

ENV = "BG_TEST_SSH_PROVIDER_CA"
provider = provider_for("ssh")


def _snapshot(ca_env=ENV, grants=("ops", "deploy")):
    return {
        "kind": "ssh",
        "name": "bastion",
        "ca_key_env": ca_env,
        "grants": list(grants),
    }


def _issue(snapshot=None, public_key=""):
    return provider.issue(
        snapshot or _snapshot(),
        principal="bg_alice_7_0a1b2c3d",
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
        key_id="breakglass request 7",
        public_key=public_key,
    )


def _keygen(path, passphrase=""):
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            passphrase,
            "-C",
            "",
            "-f",
            str(path),
        ],
        check=True,
    )
    return path


@pytest.fixture
def ca_key(tmp_path, monkeypatch):
    path = _keygen(tmp_path / "ca")
    monkeypatch.setenv(ENV, str(path))
    return path


def test_issue_signs_a_user_certificate_for_the_scope_principals(ca_key):
    expires_at = datetime.now(UTC) + timedelta(minutes=30)

    credential = provider.issue(
        _snapshot(),
        principal="bg_alice_7_0a1b2c3d",
        expires_at=expires_at,
        key_id="breakglass request 7",
    )

    certificate = serialization.load_ssh_public_identity(
        credential["certificate"].encode()
    )
    ca_public = (ca_key.parent / "ca.pub").read_bytes().split()[1]
    assert (
        certificate.signature_key()
        .public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        .split()[1]
        == ca_public
    )
    certificate.verify_cert_signature()
    assert certificate.type == serialization.SSHCertificateType.USER
    assert certificate.valid_principals == [b"ops", b"deploy"]
    assert certificate.key_id == b"breakglass request 7"
    assert certificate.valid_before == int(expires_at.timestamp())
    assert certificate.serial == credential["serial"]
    private_key = serialization.load_ssh_private_key(
        credential["private_key"].encode(), password=None
    )
    assert private_key.public_key() == certificate.public_key()


def test_a_supplied_public_key_is_certified_and_no_private_key_is_made(
    ca_key, tmp_path
):
    user_pub = (_keygen(tmp_path / "user").with_suffix(".pub")).read_text()

    credential = _issue(public_key=user_pub)

    certificate = serialization.load_ssh_public_identity(
        credential["certificate"].encode()
    )
    assert "private_key" not in credential
    assert certificate.public_key() == serialization.load_ssh_public_key(
        user_pub.encode()
    )


def test_revoke_has_nothing_to_remove(ca_key):
    assert provider.revoke(_snapshot(), principal="bg_alice_7_0a1b2c3d") is None


def test_an_unset_ca_variable_is_named(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)

    with pytest.raises(ProviderError, match=f"{ENV} .*is not set"):
        _issue()


def test_a_target_without_a_ca_variable_is_refused():
    with pytest.raises(ProviderError, match="names no environment variable"):
        _issue(_snapshot(ca_env=""))


def test_an_unreadable_ca_key_is_a_provider_error(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "missing"))
    with pytest.raises(ProviderError, match=f"cannot read the CA key named by {ENV}"):
        _issue()

    monkeypatch.setenv(ENV, str(tmp_path))
    with pytest.raises(ProviderError, match=f"cannot read the CA key named by {ENV}"):
        _issue()


def test_a_ca_file_that_is_not_a_key_is_refused_without_its_content(
    tmp_path, monkeypatch
):
    path = tmp_path / "not-a-key"
    path.write_text("password=hunter2-very-secret\n")
    monkeypatch.setenv(ENV, str(path))

    with pytest.raises(
        ProviderError, match="not an unencrypted OpenSSH private key"
    ) as failure:
        _issue()

    assert "hunter2" not in str(failure.value)


def test_an_encrypted_ca_key_is_refused_without_its_passphrase(tmp_path, monkeypatch):
    path = _keygen(tmp_path / "locked", passphrase="correct horse battery")
    monkeypatch.setenv(ENV, str(path))

    with pytest.raises(ProviderError, match="not an unencrypted") as failure:
        _issue()

    assert "correct horse" not in str(failure.value)
    assert path.read_text().splitlines()[1] not in str(failure.value)


def test_an_unusable_public_key_is_a_provider_error(ca_key):
    with pytest.raises(ProviderError, match="public key is not usable"):
        _issue(public_key="ssh-ed25519 not-base64 alice@laptop")
