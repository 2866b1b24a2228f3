"""The target page: what a target is, and the state of a sealed one's secret."""

import secrets

import pytest

from breakglass import rotation, services

from .sealed_helpers import COMMAND_ENV, make_appliance, seal
from .web_helpers import approve, issue, login, open_request


@pytest.fixture
def appliance(db, tmp_path, monkeypatch):
    return make_appliance(tmp_path, monkeypatch, approvals=1)[0]


def test_an_unsealed_target_says_how_to_seal_it(appliance, alice):
    page = login(alice).get("/targets/appliance/")

    assert page.status_code == 200
    assert "No secret is sealed yet" in page.content.decode()


def test_the_page_shows_the_last_rotation_and_the_checkout(appliance, alice, bob):
    seal("appliance", secrets.token_urlsafe(16))
    rotation.rotate_due()
    access_request = open_request(alice, target="appliance")

    text = login(bob).get("/targets/appliance/").content.decode()

    assert "Last rotated</dt><dd>never" not in text
    assert f"request {access_request.pk}</a> of alice (pending)" in text
    assert "Compromised" not in text


def test_a_compromised_secret_is_said_on_the_page(appliance, alice, bob, monkeypatch):
    seal("appliance", secrets.token_urlsafe(16))
    rotation.rotate_due()
    access_request = open_request(alice, target="appliance")
    approve(access_request, bob)
    issue(access_request)
    services.reveal_credential(access_request.pk, actor=alice)
    monkeypatch.setenv(COMMAND_ENV, "false")
    services.request_end(access_request.pk, actor=alice, reason="done")
    services.end_grant(access_request.grant.pk)
    rotation.rotate_due()

    page = login(alice).get("/targets/appliance/")

    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="compromised"' in text
    assert "rotation command exited with status 1" in text


def test_an_unknown_target_is_404_and_strangers_log_in_first(appliance, client, oscar):
    assert client.get("/targets/appliance/").status_code == 302

    assert login(oscar).get("/targets/nothing-here/").status_code == 404
