"""The API for sealed targets: one checkout at a time, the secret revealed once."""

import secrets

import pytest
from cryptography.fernet import Fernet

from breakglass import rotation, services
from breakglass.models import AccessRequest, SealedCredential

from .flows import approve
from .sealed_helpers import current_secret, make_appliance, seal

REQUEST = {
    "target": "appliance",
    "scope": "read",
    "duration_minutes": 30,
    "reason": "the array is read-only",
    "incident": "INC-7",
}


@pytest.fixture
def appliance(db, tmp_path, monkeypatch):
    target = make_appliance(tmp_path, monkeypatch, approvals=1)[0]
    seal("appliance", secrets.token_urlsafe(16))
    rotation.rotate_due()
    return target


def test_the_requester_gets_the_shared_secret_once(api, appliance, alice, bob):
    as_alice = api(alice)
    created = as_alice.post("/api/v1/requests/", REQUEST, format="json")
    assert created.status_code == 201, created.data
    access_request = AccessRequest.objects.get(pk=created.data["id"])
    approve(access_request, bob)
    services.issue_grant(access_request.grant.pk)

    url = f"/api/v1/requests/{access_request.pk}/credential/"
    revealed = as_alice.post(url)

    assert revealed.status_code == 200
    assert revealed.data["kind"] == "sealed"
    assert revealed.data["username"] == "admin"
    assert revealed.data["password"] == current_secret(appliance)
    assert as_alice.post(url).status_code == 410


def test_a_second_request_is_refused_with_409_checked_out(api, appliance, alice, bob):
    first = api(alice).post("/api/v1/requests/", REQUEST, format="json")
    assert first.status_code == 201

    second = api(alice).post(
        "/api/v1/requests/", {**REQUEST, "incident": "INC-8"}, format="json"
    )

    assert second.status_code == 409
    assert second.data["code"] == "checked_out"
    assert f"request {first.data['id']}" in second.data["detail"]


def test_a_secret_no_configured_key_opens_is_a_409_and_stays_unrevealed(
    api, appliance, alice, bob
):
    created = api(alice).post("/api/v1/requests/", REQUEST, format="json")
    access_request = AccessRequest.objects.get(pk=created.data["id"])
    approve(access_request, bob)
    services.issue_grant(access_request.grant.pk)
    url = f"/api/v1/requests/{access_request.pk}/credential/"
    # As if sealed under a key since dropped from BREAKGLASS_SEALING_KEYS.
    sealed = SealedCredential.objects.filter(target=appliance)
    kept = sealed.get().secret
    sealed.update(secret=Fernet(Fernet.generate_key()).encrypt(b"lost"))

    refused = api(alice).post(url)

    assert refused.status_code == 409
    assert refused.data["code"] == "sealing_key_missing"
    assert "BREAKGLASS_SEALING_KEYS" in refused.data["detail"]
    sealed.update(secret=kept)
    assert api(alice).post(url).status_code == 200
