"""Alerts survive a webhook that is down or failing for a long while.

The clock is moved through the outage: retry times are computed from `now`, so
ten minutes of a failing receiver take a few sweeps, not ten minutes.
"""

from collections import defaultdict
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from breakglass import services
from breakglass.models import Alert, AuditEvent

from .flows import issued_request, make_ssh_ca, make_ssh_target, open_request

OUTAGE = timedelta(minutes=10)
SWEEP_EVERY = timedelta(seconds=5)


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def hooked(settings, webhook_receiver):
    settings.BREAKGLASS_ALERT_WEBHOOK_URLS = [webhook_receiver.url]
    settings.BREAKGLASS_ALERT_WEBHOOK_SECRET = webhook_receiver.secret
    settings.BREAKGLASS_ALERT_EMAILS = []
    return webhook_receiver


def _sweep_through(start, duration):
    """Run the sweep every few seconds of a moved clock; return where it stopped."""
    moment = start
    while moment < start + duration:
        with time_machine.travel(moment, tick=False):
            services.sweep()
        moment += SWEEP_EVERY
    return moment


@pytest.mark.django_db(transaction=True)
def test_a_webhook_failing_for_ten_minutes_gets_every_alert_after_in_order(
    alice, bob, carol, bastion, hooked
):
    hooked.status = 500
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        first = issued_request(alice, bob, carol)
    # Later events of the same request, whose alerts start their backoff later
    # and so come due before the earlier ones once the receiver is back.
    moment = _sweep_through(start, OUTAGE / 2)
    with time_machine.travel(moment, tick=False):
        second = open_request(alice, incident="INC-43")
        services.request_end(first.pk, actor=alice, reason="done")
    moment = _sweep_through(moment, OUTAGE / 2)
    events = list(AuditEvent.objects.order_by("seq"))
    assert "grant.revoked" in [e.action for e in events]
    webhooks = Alert.objects.filter(channel=Alert.Channel.WEBHOOK)
    assert webhooks.filter(delivered_at__isnull=True).count() == len(events)
    assert hooked.deliveries == []
    assert len(hooked.attempts) > len(events)

    hooked.status = 200
    # The longest wait between two tries is ten minutes.
    _sweep_through(moment, timedelta(minutes=11))

    assert not Alert.objects.filter(delivered_at__isnull=True).exists()
    delivered = [d.json()["seq"] for d in hooked.deliveries]
    assert sorted(delivered) == [e.seq for e in events]
    for access_request in (first, second):
        seqs = [
            d.json()["seq"]
            for d in hooked.deliveries
            if d.json()["request"] == access_request.pk
        ]
        assert seqs == sorted(seqs)
        assert seqs
    ids_per_event = defaultdict(set)
    for _, attempt in hooked.attempts:
        ids_per_event[attempt.json()["seq"]].add(attempt.delivery_id)
    assert {seq: len(ids) for seq, ids in ids_per_event.items()} == {
        e.seq: 1 for e in events
    }
    assert {d.delivery_id for d in hooked.deliveries} == {
        str(a.delivery_id) for a in Alert.objects.filter(channel=Alert.Channel.WEBHOOK)
    }
    assert all(hooked.is_signed(d) for d in hooked.deliveries)
