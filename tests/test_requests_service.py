"""Opening, cancelling and timing out requests (breakglass.services)."""

from datetime import timedelta

import pytest
import time_machine
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from breakglass import services
from breakglass.errors import InvalidInput, NotAllowed, WrongState
from breakglass.models import AccessRequest, Alert, AuditEvent

from .conftest import make_target, make_user
from .flows import actions, approve, make_ssh_ca, make_ssh_target, open_request

Status = AccessRequest.Status


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target(requester_groups=["oncall"])


def _nothing_created():
    assert AccessRequest.objects.count() == 0
    assert AuditEvent.objects.count() == 0


def test_create_request_records_the_policy_decision(alice, bob, carol, bastion):
    access_request = open_request(alice)

    assert access_request.status == Status.PENDING
    assert access_request.approvals_required == 2
    assert access_request.approval_deadline == access_request.created_at + timedelta(
        minutes=30
    )
    assert access_request.policy_rule == (
        "2 approvals: production (from sre-leads; at most 60 minutes)"
    )
    assert access_request.decision["summary"] == "2 approvals: production"
    assert access_request.decision["fired"] == []
    assert [g.name for g in access_request.approver_groups.all()] == ["sre-leads"]

    event = AuditEvent.objects.get()
    assert event.action == "request.created"
    assert event.actor == "alice"
    assert event.request_id == access_request.pk
    assert (event.incident, event.target, event.scope) == ("INC-42", "bastion", "read")
    assert event.data["approvals_required"] == 2
    assert event.data["approver_groups"] == ["sre-leads"]
    assert event.data["policy_rule"] == access_request.policy_rule


def test_create_request_alerts_eligible_approvers_by_email(
    alice, bob, carol, dave, bastion
):
    open_request(alice)

    alert = Alert.objects.get()
    assert alert.channel == Alert.Channel.EMAIL
    # Dave approves for another team; the requester is never told to approve.
    assert alert.destination == "bob@example.com,carol@example.com"


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"target": "nowhere"}, "target"),
        ({"scope": "admin"}, "scope"),
        ({"duration_minutes": 61}, "duration_minutes"),
        ({"duration_minutes": 0}, "duration_minutes"),
        ({"incident": "outage"}, "incident"),
        ({"incident": ""}, "incident"),
        ({"reason": "   "}, "reason"),
        ({"public_key": "not a key"}, "public_key"),
        ({"incident": "INC-" + "1" * 300}, "incident"),
        ({"duration_minutes": None}, "duration_minutes"),
        ({"duration_minutes": "30"}, "duration_minutes"),
        ({"duration_minutes": True}, "duration_minutes"),
    ],
)
def test_bad_input_is_refused_with_the_field_and_changes_nothing(
    alice, bastion, fields, field
):
    with pytest.raises(InvalidInput) as refused:
        open_request(alice, **fields)

    assert refused.value.status == 400
    assert field in refused.value.fields
    _nothing_created()


def test_inactive_scope_is_unknown(alice, bastion):
    bastion.scopes.update(is_active=False)

    with pytest.raises(InvalidInput) as refused:
        open_request(alice)

    assert "scope" in refused.value.fields
    _nothing_created()


def test_public_key_is_refused_for_a_database_target(alice, db):
    make_target("orders-db", "postgres", grants=["pg_read_all_data"], env_var="X")
    key = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        .decode()
    )

    with pytest.raises(InvalidInput) as refused:
        open_request(alice, target="orders-db", public_key=key)

    assert "public_key" in refused.value.fields
    _nothing_created()


def test_only_requesters_of_the_policy_groups_may_ask(bob, oscar, bastion):
    outsider_requester = make_user("rita", "requester", groups=["marketing"])

    for user in (oscar, bob, outsider_requester):
        with pytest.raises(NotAllowed) as refused:
            open_request(user)
        assert refused.value.code == "not_eligible"
    _nothing_created()


def test_cancel_by_the_requester(alice, bastion):
    access_request = open_request(alice)

    services.cancel_request(access_request.pk, actor=alice)

    access_request.refresh_from_db()
    assert access_request.status == Status.CANCELLED
    assert access_request.decided_at is not None
    assert actions(access_request) == ["request.created", "request.cancelled"]
    assert AuditEvent.objects.get(action="request.cancelled").actor == "alice"


def test_cancel_by_someone_else_is_refused(alice, bob, ada, bastion):
    access_request = open_request(alice)

    for user in (bob, ada):
        with pytest.raises(NotAllowed):
            services.cancel_request(access_request.pk, actor=user)

    access_request.refresh_from_db()
    assert access_request.status == Status.PENDING
    assert actions() == ["request.created"]


def test_cancel_after_a_decision_is_refused(alice, bob, carol, bastion):
    access_request = open_request(alice)
    approve(access_request, bob)
    approve(access_request, carol)

    with pytest.raises(WrongState) as refused:
        services.cancel_request(access_request.pk, actor=alice)

    assert refused.value.status == 409
    access_request.refresh_from_db()
    assert access_request.status == Status.APPROVED
    assert "request.cancelled" not in actions()


def test_sweep_times_out_a_request_after_its_window(alice, bastion):
    access_request = open_request(alice)

    with time_machine.travel(access_request.approval_deadline - timedelta(seconds=1)):
        assert services.sweep()["timed_out"] == 0
    access_request.refresh_from_db()
    assert access_request.status == Status.PENDING

    with time_machine.travel(access_request.approval_deadline + timedelta(seconds=1)):
        assert services.sweep()["timed_out"] == 1
        assert services.sweep()["timed_out"] == 0

    access_request.refresh_from_db()
    assert access_request.status == Status.TIMED_OUT
    assert actions(access_request) == ["request.created", "request.timed_out"]
    event = AuditEvent.objects.get(action="request.timed_out")
    assert event.actor == "system"
    assert (
        event.data["approval_deadline"] == access_request.approval_deadline.isoformat()
    )


def test_time_out_leaves_decided_requests_alone(alice, bastion):
    access_request = open_request(alice)
    services.cancel_request(access_request.pk, actor=alice)

    with time_machine.travel(access_request.approval_deadline + timedelta(minutes=1)):
        assert services.time_out_request(access_request.pk) is False

    access_request.refresh_from_db()
    assert access_request.status == Status.CANCELLED
    assert "request.timed_out" not in actions()
