"""Password guessing on the login pages and on the page that asks for it again.

Alice logs in; someone guesses her password from one address. The fifth wrong
password locks that username from that address for fifteen minutes: a 429 that
says how long to wait, from then on even for the right password. Alice from
elsewhere, and Bob from the same address, are not locked out.
"""

from datetime import timedelta

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from .conftest import otp_code
from .web_helpers import login

ATTACKER = "203.0.113.7"
OFFICE = "198.51.100.20"


def _log_in(username, password, *, address=ATTACKER, path="/login/", otp=""):
    client = Client(REMOTE_ADDR=address)
    form = {"username": username, "password": password, "otp": otp}
    response = client.post(path, form)
    return client, response


def _guess(username, times, **where):
    """Send wrong passwords; return the answer to the last one."""
    for _ in range(times - 1):
        _, response = _log_in(username, "wrong-guess", **where)
        assert response.status_code == 200
        assert "Please enter a correct username and password" in response.text
    return _log_in(username, "wrong-guess", **where)[1]


def _logged_in_as(client):
    return client.get("/").status_code == 200


def test_the_right_password_logs_in(alice):
    client, response = _log_in("alice", "pw-alice")

    assert response.status_code == 302
    assert _logged_in_as(client)


def test_five_wrong_passwords_lock_the_username_at_that_address(alice):
    fifth = _guess("alice", 5)

    client, response = _log_in("alice", "pw-alice")

    assert fifth.status_code == 429
    assert response.status_code == 429
    assert response["Retry-After"] == "900"
    assert "Too many wrong passwords" in response.text
    assert "Try again in 15 minutes" in response.text
    assert not _logged_in_as(client)


def test_four_wrong_passwords_do_not_lock(alice):
    assert _guess("alice", 4).status_code == 200

    client, response = _log_in("alice", "pw-alice")

    assert response.status_code == 302
    assert _logged_in_as(client)


def test_a_lockout_is_neither_global_nor_for_every_user(alice, bob):
    _guess("alice", 5)

    elsewhere, from_the_office = _log_in("alice", "pw-alice", address=OFFICE)
    # Bob has an authenticator: the login asks for its code too.
    bob_client, bob_response = _log_in("bob", "pw-bob", otp=otp_code(bob))

    assert from_the_office.status_code == 302
    assert _logged_in_as(elsewhere)
    assert bob_response.status_code == 302
    assert _logged_in_as(bob_client)


def test_the_lockout_ends_after_its_time(alice):
    _guess("alice", 5)
    assert _log_in("alice", "pw-alice")[1].status_code == 429

    with time_machine.travel(timezone.now() + timedelta(minutes=16)):
        client, response = _log_in("alice", "pw-alice")

    assert response.status_code == 302
    assert _logged_in_as(client)


def test_a_successful_login_forgets_earlier_failures(alice):
    _guess("alice", 4)
    assert _log_in("alice", "pw-alice")[1].status_code == 302

    _guess("alice", 4)
    client, response = _log_in("alice", "pw-alice")

    assert response.status_code == 302


def test_an_unknown_username_is_locked_like_a_known_one(db):
    _guess("nobody", 5)

    _, response = _log_in("nobody", "anything")

    assert response.status_code == 429


def test_the_admin_login_counts_and_locks_too(ada):
    for _ in range(4):
        _, response = _log_in("ada", "wrong-guess", path="/admin/login/")
        assert response.status_code == 200
    assert _log_in("ada", "wrong-guess", path="/admin/login/")[1].status_code == 429

    client, response = _log_in("ada", "pw-ada", path="/admin/login/")

    assert response.status_code == 429
    assert client.get("/admin/").status_code == 302


def test_the_limit_and_lockout_come_from_the_environment(alice, settings):
    settings.AXES_FAILURE_LIMIT = 2
    settings.AXES_COOLOFF_TIME = timedelta(minutes=1)
    assert _guess("alice", 1).status_code == 200
    assert _guess("alice", 1).status_code == 429

    _, response = _log_in("alice", "pw-alice")

    assert response.status_code == 429
    assert response["Retry-After"] == "60"
    assert "Try again in 1 minute," in response.text


# The password asked again before adding an authenticator


@pytest.fixture
def erin(db):
    from .conftest import make_user

    return make_user("erin", "approver", groups=["sre-leads"])


def _add_device(client, password):
    return client.post(
        "/account/otp/add/",
        {"name": "pixel", "password": password},
        REMOTE_ADDR=ATTACKER,
    )


def test_guessing_the_password_to_add_an_authenticator_is_locked_out(erin):
    client = login(erin)
    for _ in range(4):
        response = _add_device(client, "wrong-guess")
        assert response.status_code == 400
        assert "The password is not correct." in response.text
    fifth = _add_device(client, "wrong-guess")

    response = _add_device(client, "pw-erin")

    assert fifth.status_code == 429
    assert fifth["Retry-After"] == "900"
    assert "Too many wrong passwords; try again in 15 minutes." in fifth.text
    assert response.status_code == 429
    assert "Too many wrong passwords" in response.text
    assert not erin.totpdevice_set.exists()
    # The same pair is locked on the login page too.
    assert _log_in("erin", "pw-erin")[1].status_code == 429


def test_the_right_password_still_adds_an_authenticator(erin):
    response = _add_device(login(erin), "pw-erin")

    assert response.status_code == 302
    assert erin.totpdevice_set.get().confirmed is False


# Guessing the code that confirms a decision


def test_guessing_approval_codes_on_the_web_is_throttled(
    db, tmp_path, monkeypatch, alice, bob
):
    from .flows import actions, make_ssh_ca, make_ssh_target, open_request

    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target()
    pending = open_request(alice)
    client = login(bob)
    wrong = otp_code(bob, offset_steps=20)

    first = client.post(f"/requests/{pending.pk}/approve/", {"otp": wrong})
    second = client.post(f"/requests/{pending.pk}/approve/", {"otp": wrong})

    assert first.status_code == 403
    assert second.status_code == 429
    assert int(second["Retry-After"]) >= 1
    assert "Too many wrong codes" in second.text
    pending.refresh_from_db()
    assert pending.status == "pending"
    assert actions(pending) == ["request.created", "otp.failed", "otp.failed"]


def test_a_failed_attempt_keeps_no_password_or_code(bob):
    from axes.models import AccessAttempt

    code = otp_code(bob)
    response = login(bob).post(
        "/account/otp/add/",
        {"name": "tablet", "password": "pw-bob-guess", "current_code": code},
        REMOTE_ADDR=ATTACKER,
    )
    admin_code = otp_code(bob, offset_steps=1)
    Client(REMOTE_ADDR=ATTACKER).post(
        "/admin/login/",
        {"username": "bob", "password": "pw-bob-other-guess", "otp_token": admin_code},
    )

    assert response.status_code == 400
    kept = " ".join(AccessAttempt.objects.values_list("post_data", flat=True))
    assert "tablet" in kept
    assert kept.count("otp_token") == 1
    for secret in ("pw-bob-guess", "pw-bob-other-guess", code, admin_code):
        assert secret not in kept
