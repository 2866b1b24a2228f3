"""Helpers shared by the web tests: a real SSH CA target, requests and logins."""

import subprocess

from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from approvals import services as approval_services
from breakglass import services
from breakglass.models import AuditEvent

from .conftest import make_target, otp_code


def make_ssh_target(tmp_path, monkeypatch, *, name="bastion", **options):
    """Create an SSH target whose CA key is a real key made by ssh-keygen."""
    key = tmp_path / f"{name}-ca"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ca", "-f", str(key)],
        check=True,
    )
    env_name = f"WEB_TEST_{name.upper().replace('-', '_')}_CA_KEY"
    monkeypatch.setenv(env_name, str(key))
    target = make_target(name, "ssh", grants=["root"], ca_env=env_name, **options)
    target.revocation_list_path = str(tmp_path / f"{name}.krl")
    target.save(update_fields=["revocation_list_path"])
    return target


def open_request(requester, target="bastion", *, incident="INC-1", **fields):
    values = {
        "scope": "read",
        "duration_minutes": 30,
        "reason": "Disk full on the primary",
    }
    values.update(fields)
    return services.create_request(
        requester=requester, target=target, incident=incident, **values
    )


def approve(access_request, *approvers):
    for approver in approvers:
        approval_services.approve_request(
            access_request.pk, approver=approver, code=otp_code(approver)
        )


def issue(access_request):
    """Issue the grant of an approved request, as the worker would."""
    access_request.refresh_from_db()
    return services.issue_grant(access_request.grant.pk)


def login(user, **options):
    """Return a client signed in as the user, with their second factor if any."""
    client = Client(**options)
    client.force_login(user)
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    if device is not None:
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
        session.save()
    return client


def actions(**filters):
    return list(
        AuditEvent.objects.filter(**filters)
        .order_by("seq")
        .values_list("action", flat=True)
    )
