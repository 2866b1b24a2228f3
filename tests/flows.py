"""Steps of the break-glass flow shared by the service, API and alert tests.

Issuance here uses an SSH target whose CA key lives in the test's temporary
directory, so that no worker or outside system is needed.
"""

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from approvals import services as approval_services
from breakglass import services
from breakglass.models import AccessRequest, AuditEvent

from .conftest import make_target, otp_code

CA_ENV = "BG_TEST_SSH_CA_KEY"


def make_ssh_ca(directory, monkeypatch, env=CA_ENV):
    """Write an OpenSSH CA private key and point the environment variable at it."""
    key = ed25519.Ed25519PrivateKey.generate()
    path = directory / "ca_key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    monkeypatch.setenv(env, str(path))
    return path


def make_ssh_target(name="bastion", **options):
    """Create an SSH target; its revocation list lives beside the CA key, if any."""
    options.setdefault("grants", ["root"])
    target = make_target(name, "ssh", ca_env=CA_ENV, **options)
    if os.environ.get(CA_ENV):
        target.revocation_list_path = str(Path(os.environ[CA_ENV]).parent / "krl")
        target.save(update_fields=["revocation_list_path"])
    return target


def open_request(requester, target="bastion", **fields):
    """Open a request with valid defaults through the service."""
    values = {
        "target": target,
        "scope": "read",
        "duration_minutes": 30,
        "reason": "disk full on the primary",
        "incident": "INC-42",
    }
    values.update(fields)
    return services.create_request(requester=requester, **values)


def approve(access_request, approver):
    return approval_services.approve_request(
        access_request.pk, approver=approver, code=otp_code(approver)
    )


def issued_request(requester, *approvers, target="bastion", **fields):
    """Open a request, have every approver approve it, issue it; return it fresh."""
    access_request = open_request(requester, target=target, **fields)
    for approver in approvers:
        approve(access_request, approver)
    access_request.refresh_from_db()
    assert access_request.status == AccessRequest.Status.APPROVED
    services.issue_grant(access_request.grant.pk)
    access_request.refresh_from_db()
    return access_request


def actions(access_request=None):
    """Return the trail's actions in order, for one request or for all."""
    events = AuditEvent.objects.order_by("seq")
    if access_request is not None:
        events = events.filter(request=access_request)
    return list(events.values_list("action", flat=True))


def last_event(action):
    return AuditEvent.objects.filter(action=action).order_by("-seq").first()
