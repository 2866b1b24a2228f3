"""Helpers shared by the web tests: a real SSH CA target, requests and logins."""

import subprocess

from django.test import Client

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
    return make_target(name, "ssh", grants=["root"], ca_env=env_name, **options)


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
    client = Client(**options)
    client.force_login(user)
    return client


def actions(**filters):
    return list(
        AuditEvent.objects.filter(**filters)
        .order_by("seq")
        .values_list("action", flat=True)
    )
