"""The whole flow for an SSH certificate, through the API, with a real worker.

Alice asks for the bastion, Bob approves with a code from his phone, the worker signs
a certificate with the bastion's CA, and `ssh-keygen -L` shows what it allows.
"""

import os
import re
import subprocess
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import make_target, otp_code
from tests.fixtures.e2e import (
    assert_no_secret,
    assert_one_signed_webhook_per_event,
    assert_trail_intact,
    event_texts,
    reveal,
    trail,
    wait_for_status,
)

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

CA_ENV = "BG_E2E_BASTION_CA_KEY_FILE"
PRINCIPALS = ["ops", "deploy"]


def _ssh_keygen(*args):
    # ssh-keygen prints validity in local time; ask for UTC.
    result = subprocess.run(
        ["ssh-keygen", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    )
    return result.stdout


def _new_key(path):
    _ssh_keygen("-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path))
    return path


def _fingerprint(path):
    return _ssh_keygen("-l", "-E", "sha256", "-f", str(path)).split()[1]


def _inspect(certificate_path):
    """Return the fields `ssh-keygen -L` shows for a certificate."""
    text = _ssh_keygen("-L", "-f", str(certificate_path))
    fields = dict(re.findall(r"^\s+([A-Za-z ]+): (.*)$", text, re.MULTILINE))
    principals = re.search(r"Principals:\s*\n((?:\s{16}\S.*\n)+)", text)
    fields["Principals"] = principals.group(1).split() if principals else []
    return fields


@pytest.fixture
def ca_key(tmp_path):
    return _new_key(tmp_path / "bastion_ca")


@pytest.fixture
def worker_env(ca_key):
    return {CA_ENV: str(ca_key)}


@pytest.fixture
def bastion(db, tmp_path):
    target = make_target(
        "bastion", "ssh", grants=PRINCIPALS, approvals=1, ca_env=CA_ENV
    )
    target.revocation_list_path = str(tmp_path / "revoked.krl")
    target.save(update_fields=["revocation_list_path"])
    return target


def _issued_certificate(api, alice, bob, public_key=""):
    as_alice = api(alice)
    body = {
        "target": "bastion",
        "scope": "read",
        "duration_minutes": 30,
        "reason": "deploy stuck on web-3",
        "incident": "INC-512",
    }
    if public_key:
        body["public_key"] = public_key
    created = as_alice.post("/api/v1/requests/", body, format="json")
    assert created.status_code == 201, created.data
    request_id = created.data["id"]
    approved = api(bob).post(
        f"/api/v1/requests/{request_id}/approve/",
        {"otp": otp_code(bob), "comment": "ok"},
        format="json",
    )
    assert approved.status_code == 200, approved.data

    detail = wait_for_status(as_alice, request_id, "active")
    return as_alice, request_id, detail, reveal(as_alice, request_id)


def _check_certificate(credential, detail, request_id, ca_key, tmp_path):
    """Check with ssh-keygen -L what the certificate allows; return its fields."""
    certificate_path = tmp_path / "id-cert.pub"
    certificate_path.write_text(credential["certificate"])
    fields = _inspect(certificate_path)

    assert fields["Type"].endswith("user certificate")
    assert fields["Signing CA"].split()[1] == _fingerprint(ca_key.with_suffix(".pub"))
    assert fields["Principals"] == PRINCIPALS
    key_id = fields["Key ID"].strip('"')
    assert f"request {request_id} " in key_id
    assert "alice" in key_id and "INC-512" in key_id
    valid_to = datetime.fromisoformat(fields["Valid"].split(" to ")[1]).replace(
        tzinfo=UTC
    )
    expires_at = datetime.fromisoformat(detail["expires_at"].replace("Z", "+00:00"))
    assert valid_to <= expires_at
    assert (expires_at - valid_to).total_seconds() < 1

    # ssh-keygen does not check the signature; check it against the CA's key.
    certificate = serialization.load_ssh_public_identity(
        credential["certificate"].encode()
    )
    certificate.verify_cert_signature()
    assert certificate.signature_key() == serialization.load_ssh_public_key(
        ca_key.with_suffix(".pub").read_bytes()
    )
    return fields


def _check_trail_and_alerts(api, cora, request_id, fields, worker, receiver, secrets):
    as_cora = api(cora)
    events = trail(as_cora, request_id)
    assert [(e["action"], e["actor"]) for e in events[:5]] == [
        ("request.created", "alice"),
        ("approval.approved", "bob"),
        ("request.approved", "bob"),
        ("grant.issued", "system"),
        ("credential.revealed", "alice"),
    ]
    issued = events[3]["data"]
    assert str(issued["certificate_serial"]) == fields["Serial"]
    assert issued["key_id"] == fields["Key ID"].strip('"')
    assert_trail_intact(as_cora, events)
    deliveries = assert_one_signed_webhook_per_event(receiver, events)
    assert_no_secret(secrets, *event_texts(events, deliveries, worker))
    return events


def test_a_certificate_for_the_requesters_own_key(
    api, alice, bob, cora, bastion, ca_key, worker, webhook_receiver, tmp_path
):
    user_key = _new_key(tmp_path / "alice_ed25519")

    _, request_id, detail, credential = _issued_certificate(
        api, alice, bob, public_key=user_key.with_suffix(".pub").read_text()
    )

    assert credential["kind"] == "ssh"
    assert "private_key" not in credential
    fields = _check_certificate(credential, detail, request_id, ca_key, tmp_path)
    assert fields["Public key"].split()[1] == _fingerprint(user_key)
    events = _check_trail_and_alerts(
        api,
        cora,
        request_id,
        fields,
        worker,
        webhook_receiver,
        [ca_key.read_text().splitlines()[1], user_key.read_text().splitlines()[1]],
    )
    assert len(events) == 5


def test_a_certificate_with_a_generated_key_then_revoked(
    api, alice, bob, cora, bastion, ca_key, worker, webhook_receiver, tmp_path
):
    as_alice, request_id, detail, credential = _issued_certificate(api, alice, bob)

    private_key = tmp_path / "generated"
    private_key.write_text(credential["private_key"])
    private_key.chmod(0o600)
    fields = _check_certificate(credential, detail, request_id, ca_key, tmp_path)
    assert fields["Public key"].split()[1] == _fingerprint(private_key)

    revoked = as_alice.post(
        f"/api/v1/requests/{request_id}/revoke/", {"reason": "done"}, format="json"
    )
    assert revoked.status_code == 200, revoked.data
    ended = wait_for_status(as_alice, request_id, "revoked", timeout=15)
    assert ended["ended_at"] is not None

    key_body = "".join(credential["private_key"].splitlines()[1:-1])
    events = _check_trail_and_alerts(
        api,
        cora,
        request_id,
        fields,
        worker,
        webhook_receiver,
        [key_body[:40], key_body[-40:], ca_key.read_text().splitlines()[1]],
    )
    assert [(e["action"], e["actor"]) for e in events[5:]] == [
        ("grant.revoked", "alice"),
        ("review.due", "system"),
    ]
    # The certificate is recalled: the target's revocation list names it.
    assert (
        events[5]["data"]["certificate_serial"]
        == events[3]["data"]["certificate_serial"]
    )
    checked = subprocess.run(
        [
            "ssh-keygen",
            "-Q",
            "-f",
            bastion.revocation_list_path,
            tmp_path / "id-cert.pub",
        ],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 1
    assert "REVOKED" in checked.stdout
