"""Logging in to the web pages: a password, and a one-time code for device owners."""

import pytest
from django.test import Client
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from .conftest import otp_code
from .web_helpers import make_ssh_target, open_request


def _login(client, user, **extra):
    return client.post(
        "/login/",
        {"username": user.username, "password": f"pw-{user.username}", **extra},
    )


def test_the_login_form_asks_for_a_code_a_phone_can_fill(db):
    page = Client().get("/login/")

    assert page.status_code == 200
    assert 'autocomplete="one-time-code"' in page.text
    assert 'inputmode="numeric"' in page.text
    assert '<label for="id_otp">One-time code' in page.text


def test_an_approver_logs_in_with_password_and_code(bob):
    client = Client()

    response = _login(client, bob, otp=otp_code(bob))

    assert response.status_code == 302
    device = TOTPDevice.objects.get(user=bob)
    assert client.session[DEVICE_ID_SESSION_KEY] == device.persistent_id
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("code", ["", "12345x"])
def test_a_password_alone_does_not_log_in_a_device_owner(bob, code):
    client = Client()

    response = _login(client, bob, otp=code)

    assert response.status_code == 200
    assert "code" in response.context["form"].errors["otp"][0]
    assert client.get("/").status_code == 302


def test_a_wrong_code_is_refused(bob):
    wrong = "000000" if otp_code(bob) != "000000" else "111111"
    client = Client()

    response = _login(client, bob, otp=wrong)

    assert response.status_code == 200
    assert "not correct" in response.text
    assert client.get("/").status_code == 302


def test_a_code_logs_in_once(bob):
    code = otp_code(bob)
    assert _login(Client(), bob, otp=code).status_code == 302

    replay = _login(Client(), bob, otp=code)

    assert replay.status_code == 200
    assert "already used" in replay.text


def test_someone_without_an_authenticator_logs_in_with_the_password(alice):
    client = Client()

    assert _login(client, alice).status_code == 302
    assert client.get("/").status_code == 200
    assert DEVICE_ID_SESSION_KEY not in client.session


def test_a_wrong_password_says_nothing_about_the_code(bob):
    response = Client().post(
        "/login/", {"username": "bob", "password": "nope", "otp": otp_code(bob)}
    )

    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.text
    assert "otp" not in response.context["form"].errors


def test_the_code_that_logged_in_is_refused_for_a_vote_saying_to_wait(
    bob, alice, tmp_path, monkeypatch, time_machine
):
    make_ssh_target(tmp_path, monkeypatch)
    pending = open_request(alice)
    time_machine.move_to(timezone.now(), tick=False)
    code = otp_code(bob)
    client = Client()
    assert _login(client, bob, otp=code).status_code == 302

    refused = client.post(f"/requests/{pending.pk}/approve/", {"otp": code})

    assert "wait for the next code from your authenticator" in refused.text
    assert pending.approvals.count() == 0
