"""The suite-wide scan for issued secrets finds a leak where it would happen."""

import logging

from breakglass import audit, services

from . import secret_scan
from .flows import issued_request, make_ssh_ca, make_ssh_target


def _issue_and_reveal(alice, bob, carol, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target()
    access_request = issued_request(alice, bob, carol)
    return services.reveal_credential(access_request.pk, actor=alice)


def test_a_revealed_secret_is_known_to_the_scan(
    alice, bob, carol, tmp_path, monkeypatch
):
    credential = _issue_and_reveal(alice, bob, carol, tmp_path, monkeypatch)

    assert credential["private_key"] in secret_scan.secrets_of_the_test()


def test_a_secret_in_an_event_or_a_log_line_is_found(
    alice, bob, carol, tmp_path, monkeypatch, caplog
):
    credential = _issue_and_reveal(alice, bob, carol, tmp_path, monkeypatch)
    secret = credential["private_key"]
    secrets = secret_scan.secrets_of_the_test()
    assert secret_scan.leaks(secrets, secret_scan.produced_texts()) == []

    logging.getLogger("breakglass").warning("oops: %s", secret)
    event = audit.record_event("config.applied", actor="ada", data={"oops": secret})

    found = secret_scan.leaks(secrets, secret_scan.produced_texts(log_text=caplog.text))
    assert found == [
        f"event {event.seq} holds an issued key",
        "log holds an issued key",
    ]
    # The leak was this test's own doing: forget it so the suite-wide check passes.
    secret_scan.issued.clear()
