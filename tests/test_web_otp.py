"""Enrolling an authenticator from the web, and using it to decide."""

from base64 import b32encode
from datetime import timedelta
from html import unescape

import pytest
import time_machine
from django.test import Client
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from approvals.models import Approval
from breakglass import roles
from breakglass.models import Alert, AuditEvent

from .conftest import make_user, otp_code
from .web_helpers import login, make_ssh_target, open_request


@pytest.fixture
def erin(db):
    """An approver without any authenticator yet."""
    return make_user("erin", roles.APPROVER, groups=["sre-leads"])


def start(erin):
    client = login(erin)
    response = client.post(
        "/account/otp/add/", {"name": "pixel", "password": "pw-erin"}
    )
    assert response.status_code == 302
    return client, TOTPDevice.objects.get(user=erin)


def test_enrolment_needs_the_password(erin):
    client = login(erin)
    page = client.get("/account/otp/")
    assert page.status_code == 200
    assert "Add an authenticator" in page.text

    response = client.post("/account/otp/add/", {"name": "pixel", "password": "nope"})

    assert response.status_code == 400
    assert "The password is not correct." in response.text
    assert not TOTPDevice.objects.exists()


def test_enrolment_shows_qr_and_secret_then_confirms_with_a_code(erin, settings):
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]
    client, device = start(erin)
    assert not device.confirmed

    page = client.get("/account/otp/")
    assert "no-store" in page["Cache-Control"]
    assert "<svg" in page.text and "<?xml" not in page.text
    secret = b32encode(device.bin_key).decode()
    shown = unescape(page.text)
    assert " ".join(secret[i : i + 4] for i in range(0, len(secret), 4)) in shown
    assert 'autocomplete="one-time-code"' in page.text

    response = client.post("/account/otp/confirm/", {"code": otp_code(erin)})

    assert response.status_code == 302
    device.refresh_from_db()
    assert device.confirmed
    event = AuditEvent.objects.get(action="otp.device_added")
    assert event.actor == "erin"
    assert event.data == {"device": f"{device.persistent_id} (pixel)"}
    assert secret not in str(event.data)
    page = client.get("/account/otp/")
    assert "pixel" in page.text
    assert secret[:8] not in page.text
    assert "<svg" not in page.text
    # The configured channel, and erin herself in case it was not her.
    assert sorted(
        Alert.objects.filter(event=event, channel="email").values_list(
            "destination", flat=True
        )
    ) == ["erin@example.com", "security@example.com"]


def test_wrong_code_leaves_the_device_unconfirmed(erin):
    client, device = start(erin)
    wrong = "000000" if otp_code(erin) != "000000" else "111111"

    with time_machine.travel(timezone.now(), tick=False) as traveller:
        response = client.post("/account/otp/confirm/", {"code": wrong})

        assert response.status_code == 403
        assert "The code is wrong or expired" in response.text
        device.refresh_from_db()
        assert not device.confirmed
        assert device.throttling_failure_count == 1
        assert not AuditEvent.objects.filter(action="otp.device_added").exists()

        # A second try at once is throttled; a little later the right code works.
        response = client.post("/account/otp/confirm/", {"code": otp_code(erin)})
        assert response.status_code == 429
        assert "Retry-After" in response
        traveller.shift(5)
        response = client.post("/account/otp/confirm/", {"code": otp_code(erin)})
    assert response.status_code == 302
    device.refresh_from_db()
    assert device.confirmed


def test_starting_over_replaces_the_unconfirmed_device(erin):
    client, first = start(erin)
    client.post("/account/otp/discard/")
    assert not TOTPDevice.objects.exists()
    _, second = start(erin)
    assert second.key != first.key


def test_an_unconfirmed_device_cannot_confirm_a_decision(
    erin, alice, tmp_path, monkeypatch
):
    make_ssh_target(tmp_path, monkeypatch)
    pending = open_request(alice)
    client, _ = start(erin)

    response = client.post(f"/requests/{pending.pk}/approve/", {"otp": otp_code(erin)})

    assert response.status_code == 403
    assert not Approval.objects.exists()
    assert AuditEvent.objects.filter(action="otp.failed", actor="erin").exists()


def test_an_enrolled_device_confirms_a_decision(erin, alice, tmp_path, monkeypatch):
    make_ssh_target(tmp_path, monkeypatch)
    pending = open_request(alice)
    client, _ = start(erin)
    client.post("/account/otp/confirm/", {"code": otp_code(erin)})

    # The enrolment code is spent; the next time step brings a fresh one.
    with time_machine.travel(timedelta(seconds=30)):
        response = client.post(
            f"/requests/{pending.pk}/approve/", {"otp": otp_code(erin)}
        )

    assert response.status_code == 302
    assert Approval.objects.get().approver == erin


def test_enrolment_pages_need_a_login_and_post(erin):
    assert Client().get("/account/otp/").status_code == 302
    assert login(erin).get("/account/otp/confirm/").status_code == 405


def test_a_second_authenticator_needs_a_code_from_the_first(bob):
    client = login(bob)

    refused = client.post(
        "/account/otp/add/", {"name": "attacker phone", "password": "pw-bob"}
    )

    assert refused.status_code == 400
    assert "authenticator you already have" in refused.text
    assert not TOTPDevice.objects.filter(user=bob, name="attacker phone").exists()

    accepted = client.post(
        "/account/otp/add/",
        {"name": "tablet", "password": "pw-bob", "current_code": otp_code(bob)},
    )

    assert accepted.status_code in (200, 302)
    assert TOTPDevice.objects.filter(user=bob, name="tablet", confirmed=False).exists()
