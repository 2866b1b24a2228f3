"""The hash-chained trail: links, tampering, and concurrent writers."""

import threading
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from breakglass import audit
from breakglass.models import AuditEvent

from .flows import issued_request, make_ssh_ca, make_ssh_target
from .tampering import tamper


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def flow(alice, bob, carol, bastion):
    return issued_request(alice, bob, carol)


def _verify_audit():
    out, err = StringIO(), StringIO()
    try:
        call_command("verify_audit", stdout=out, stderr=err)
    except SystemExit as exit:
        return exit.code, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def _sql(statement, params):
    tamper(statement, params)


def test_events_form_a_gapless_linked_chain(flow):
    events = list(AuditEvent.objects.order_by("seq"))

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].prev_hash == audit.GENESIS_HASH
    for before, after in zip(events, events[1:], strict=False):
        assert after.prev_hash == before.hash
    for event in events:
        assert event.hash == audit.compute_hash(event)
    assert audit.verify_chain() == (len(events), None)


def test_tampered_data_is_found_by_seq(flow):
    tampered = AuditEvent.objects.get(action="request.created")
    _sql(
        "UPDATE breakglass_auditevent SET data = data || %s::jsonb WHERE id = %s",
        ['{"duration_minutes": 600}', tampered.pk],
    )

    code, _, err = _verify_audit()

    assert code == 1
    assert f"seq {tampered.seq}" in err
    assert "request.created" in err
    assert audit.verify_chain()[1] == tampered.seq


def test_rehashed_event_breaks_the_next_link(flow):
    tampered = AuditEvent.objects.get(action="request.approved")
    tampered.actor = "mallory"
    forged = audit.compute_hash(tampered)
    _sql(
        "UPDATE breakglass_auditevent SET actor = %s, hash = %s WHERE id = %s",
        ["mallory", forged, tampered.pk],
    )

    code, _, err = _verify_audit()

    assert code == 1
    assert f"seq {tampered.seq + 1}" in err


def test_deleted_event_leaves_a_gap_that_is_found(flow):
    removed = AuditEvent.objects.get(action="request.approved")
    _sql("DELETE FROM breakglass_alert WHERE event_id = %s", [removed.pk])
    _sql("DELETE FROM breakglass_auditevent WHERE id = %s", [removed.pk])

    code, _, err = _verify_audit()

    assert code == 1
    assert f"seq {removed.seq + 1}" in err


def test_an_event_rolled_back_with_its_change_leaves_no_gap(db):
    audit.record_event("config.applied", actor="ada", data={"n": 1})
    with pytest.raises(RuntimeError), transaction.atomic():
        audit.record_event("config.applied", actor="ada", data={"n": 2})
        raise RuntimeError("the state change failed")
    audit.record_event("config.applied", actor="ada", data={"n": 3})

    events = list(AuditEvent.objects.order_by("seq"))
    assert [(e.seq, e.data["n"]) for e in events] == [(1, 1), (2, 3)]
    assert audit.verify_chain() == (2, None)


def test_data_is_stored_as_it_is_hashed(db):
    event = audit.record_event(
        "config.applied",
        actor="ada",
        data={"b": [1, 2.5, None], "a": {"é": "ünïcode"}, "big": 2**40},
    )

    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.data == event.data
    assert audit.compute_hash(stored) == stored.hash


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_the_chain_gapless_and_valid():
    writers, per_writer = 6, 15
    barrier = threading.Barrier(writers)
    errors = []

    def write(number):
        try:
            barrier.wait()
            for index in range(per_writer):
                with transaction.atomic():
                    audit.record_event(
                        "config.applied",
                        actor=f"writer-{number}",
                        data={"index": index},
                    )
        except Exception as exc:  # reported below, from the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    total = writers * per_writer
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == (
        list(range(1, total + 1))
    )
    assert audit.verify_chain() == (total, None)
    for number in range(writers):
        indexes = AuditEvent.objects.filter(actor=f"writer-{number}").order_by("seq")
        assert [e.data["index"] for e in indexes] == list(range(per_writer))
