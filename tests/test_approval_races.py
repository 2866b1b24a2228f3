"""One-time codes used once, throttled per device, and votes that arrive together.

The threaded tests commit for real (`transaction=True`) so that each thread has its
own PostgreSQL connection and the row locks decide who wins, as in production.
"""

import threading
from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import User
from django.db import connection
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from approvals.models import Approval
from breakglass import roles, services
from breakglass.models import AccessRequest, AuditEvent, Grant

from .conftest import make_user, otp_code
from .flows import (
    actions,
    approve,
    issued_request,
    make_ssh_ca,
    make_ssh_target,
    open_request,
)

Status = AccessRequest.Status
THREAD_TIMEOUT_SECONDS = 60


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def erin(db):
    return make_user("erin", roles.APPROVER, groups=["sre-leads"], totp=True)


def _url(access_request, action="approve"):
    return f"/api/v1/requests/{access_request.pk}/{action}/"


def _code(device):
    """Return the code a device shows now."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{totp.token():0{device.digits}d}"


def _wrong(code):
    return f"{(int(code) + 1) % 1_000_000:06d}"


def _together(*calls):
    """Run the calls in threads released at the same instant; return their results."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(index, call):
        try:
            barrier.wait()
            results[index] = call()
        except Exception as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [
        threading.Thread(target=run, args=(index, call))
        for index, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT_SECONDS)
    assert not any(thread.is_alive() for thread in threads)
    return results


@pytest.fixture
def queued(monkeypatch):
    """Record the tasks handed to the broker after commit (they are still sent)."""
    handed = []
    send = services._queue

    def record_and_send(task_name, grant_id, **options):
        handed.append((task_name, grant_id))
        send(task_name, grant_id, **options)

    monkeypatch.setattr(services, "_queue", record_and_send)
    return handed


# A code is used once per device


def test_the_code_that_approved_one_request_is_refused_on_the_next(
    api, alice, bob, bastion
):
    first = open_request(alice, incident="INC-1")
    second = open_request(alice, incident="INC-2")
    client = api(bob)

    with time_machine.travel(first.created_at + timedelta(seconds=1), tick=False):
        code = otp_code(bob)
        accepted = client.post(_url(first), {"otp": code}, format="json")
        replayed = client.post(_url(second), {"otp": code}, format="json")

    assert accepted.status_code == 200
    assert replayed.status_code == 403
    assert replayed.json()["code"] == "otp_invalid"
    # Its owner is told to wait for the next code, not that it is wrong.
    assert replayed.json()["detail"] == (
        "This code was already used, for your login or another decision: "
        "wait for the next code from your authenticator."
    )
    second.refresh_from_db()
    assert (second.status, second.approvals.count()) == (Status.PENDING, 0)
    failed = AuditEvent.objects.get(action="otp.failed")
    assert (failed.actor, failed.request_id) == ("bob", second.pk)
    assert code not in str(failed.data)
    assert actions(first) == ["request.created", "approval.approved"]


@pytest.mark.django_db(transaction=True)
def test_one_code_sent_to_two_requests_at_once_is_accepted_once(
    api, alice, bob, tmp_path, monkeypatch
):
    # Without addresses no alert is queued on commit, so no broker is involved.
    User.objects.update(email="")
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target(approvals=1)
    requests = [open_request(alice, incident=f"INC-{n}") for n in (1, 2)]
    clients = [api(bob), api(bob)]
    code = otp_code(bob)

    responses = _together(
        *[
            lambda client=client, r=r: client.post(
                _url(r), {"otp": code}, format="json"
            )
            for client, r in zip(clients, requests, strict=True)
        ]
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 403], responses
    refused = next(r for r in responses if r.status_code == 403)
    assert refused.json()["code"] == "otp_invalid"
    assert Approval.objects.count() == 1
    assert AuditEvent.objects.filter(action="otp.failed").count() == 1
    assert AuditEvent.objects.filter(action="request.approved").count() == 1
    assert sorted(AccessRequest.objects.values_list("status", flat=True)) == [
        Status.APPROVED,
        Status.PENDING,
    ]


# Failed codes rest the device they were tried on


@pytest.fixture
def two_devices(bob):
    phone = TOTPDevice.objects.get(user=bob, name="phone")
    tablet = TOTPDevice.objects.create(user=bob, name="tablet", confirmed=True)
    return phone, tablet


@pytest.fixture
def pending(alice, bob, carol, bastion):
    return open_request(alice)


def test_a_throttled_device_answers_429_with_retry_after(
    api, pending, bob, two_devices
):
    phone, _ = two_devices
    client = api(bob)

    with time_machine.travel(pending.created_at + timedelta(seconds=1), tick=False):
        wrong = client.post(
            _url(pending),
            {"otp": _wrong(_code(phone)), "device": "phone"},
            format="json",
        )
        throttled = client.post(
            _url(pending), {"otp": _code(phone), "device": "phone"}, format="json"
        )

    assert wrong.status_code == 403
    assert wrong.json()["code"] == "otp_invalid"
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "otp_throttled"
    # One failure rests the device for one second (django-otp's 1, 2, 4, ...).
    assert throttled["Retry-After"] == "1"
    assert pending.approvals.count() == 0
    failed = AuditEvent.objects.filter(action="otp.failed").order_by("seq")
    # The code sent while the device rested is in the trail too.
    assert [e.data for e in failed] == [
        {"decision": "approved", "device": "phone", "throttled": False},
        {"decision": "approved", "device": "phone", "throttled": True},
    ]

    with time_machine.travel(pending.created_at + timedelta(seconds=3), tick=False):
        again = client.post(
            _url(pending), {"otp": _code(phone), "device": "phone"}, format="json"
        )
    assert again.status_code == 200, again.content
    assert pending.approvals.get().approver == bob


@pytest.mark.parametrize("name_the_device", [True, False])
def test_a_throttled_device_does_not_lock_out_the_other(
    api, pending, bob, two_devices, name_the_device
):
    phone, tablet = two_devices
    client = api(bob)

    with time_machine.travel(pending.created_at + timedelta(seconds=1), tick=False):
        client.post(
            _url(pending),
            {"otp": _wrong(_code(phone)), "device": "phone"},
            format="json",
        )
        assert (
            client.post(
                _url(pending), {"otp": _code(phone), "device": "phone"}, format="json"
            ).status_code
            == 429
        )
        body = {"otp": _code(tablet)}
        if name_the_device:
            body["device"] = "tablet"
        response = client.post(_url(pending), body, format="json")

    assert response.status_code == 200, response.content
    vote = pending.approvals.get()
    assert (vote.approver, vote.decision) == (bob, "approved")
    assert "tablet" in vote.otp_device
    tablet.refresh_from_db()
    assert tablet.throttling_failure_count == 0


# The last approvals arrive together


def _approvers(count):
    return [
        make_user(f"approver{n}", roles.APPROVER, groups=["sre-leads"], totp=True)
        for n in range(count)
    ]


@pytest.mark.django_db(transaction=True)
def test_the_last_two_of_three_approvals_together_issue_once(
    api, alice, queued, tmp_path, monkeypatch
):
    User.objects.update(email="")
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target(approvals=3)
    first, second, third = _approvers(3)
    access_request = open_request(alice)
    approve(access_request, first)
    clients = [api(second), api(third)]
    codes = [otp_code(second), otp_code(third)]

    responses = _together(
        *[
            lambda c=c, code=code: c.post(
                _url(access_request), {"otp": code}, format="json"
            )
            for c, code in zip(clients, codes, strict=True)
        ]
    )

    assert [r.status_code for r in responses] == [200, 200], responses
    access_request.refresh_from_db()
    assert access_request.status == Status.APPROVED
    assert access_request.approvals.count() == 3
    counts = sorted(
        AuditEvent.objects.filter(action="approval.approved").values_list(
            "data__approvals", flat=True
        )
    )
    assert counts == [1, 2, 3]
    assert AuditEvent.objects.filter(action="request.approved").count() == 1
    grant = Grant.objects.get()
    assert queued == [("issue_grant", grant.pk)]


@pytest.mark.django_db(transaction=True)
def test_two_last_approvals_together_one_wins_and_one_is_409(
    api, alice, queued, tmp_path, monkeypatch
):
    User.objects.update(email="")
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target(approvals=2)
    first, second, third = _approvers(3)
    access_request = open_request(alice)
    approve(access_request, first)
    clients = [api(second), api(third)]
    codes = [otp_code(second), otp_code(third)]

    responses = _together(
        *[
            lambda c=c, code=code: c.post(
                _url(access_request), {"otp": code}, format="json"
            )
            for c, code in zip(clients, codes, strict=True)
        ]
    )

    assert sorted(r.status_code for r in responses) == [200, 409], responses
    late = next(r for r in responses if r.status_code == 409)
    assert late.json()["code"] == "already_decided"
    assert access_request.approvals.count() == 2
    assert AuditEvent.objects.filter(action="request.approved").count() == 1
    grant = Grant.objects.get()
    assert queued == [("issue_grant", grant.pk)]

    # The issuance task delivered twice at once creates one credential.
    _together(
        lambda: services.issue_grant(grant.pk),
        lambda: services.issue_grant(grant.pk),
    )

    grant.refresh_from_db()
    access_request.refresh_from_db()
    assert access_request.status == Status.ACTIVE
    assert grant.issue_attempts == 1
    assert grant.sealed_credential is not None
    assert AuditEvent.objects.filter(action="grant.issued").count() == 1
    assert [name for name, _ in queued] == ["issue_grant", "end_grant"]


@pytest.mark.django_db(transaction=True)
def test_an_end_delivered_twice_at_once_revokes_and_records_once(
    alice, bob, carol, tmp_path, monkeypatch
):
    User.objects.update(email="")
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target()
    access_request = issued_request(alice, bob, carol)
    grant = access_request.grant

    with time_machine.travel(grant.expires_at + timedelta(seconds=1)):
        ended = _together(
            lambda: services.end_grant(grant.pk),
            lambda: services.end_grant(grant.pk),
        )

    assert sorted(ended) == [False, True]
    access_request.refresh_from_db()
    assert access_request.status == Status.EXPIRED
    assert AuditEvent.objects.filter(action="grant.expired").count() == 1


def test_a_wrong_code_without_a_device_rests_only_one_device(
    api, pending, bob, two_devices
):
    phone, tablet = two_devices
    client = api(bob)

    with time_machine.travel(pending.created_at + timedelta(seconds=1), tick=False):
        wrong = client.post(_url(pending), {"otp": _wrong(_code(phone))}, format="json")
        # Straight after, the other device still approves.
        right = client.post(_url(pending), {"otp": _code(tablet)}, format="json")

    assert wrong.status_code == 403
    assert right.status_code == 200, right.content
    phone.refresh_from_db()
    tablet.refresh_from_db()
    assert (phone.throttling_failure_count, tablet.throttling_failure_count) == (1, 0)
