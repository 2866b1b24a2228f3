"""Several schedulers: the one holding the database lock sends, another waits.

A second `celery beat` started on another machine for redundancy sends nothing
while the first lives, and takes over when the first dies.
"""

import os
import signal

import pytest
from django.db import connection

from breakglass.scheduler import SchedulerLock

from .fixtures.waiting import wait_until

TAKEOVER_TIMEOUT_SECONDS = 30


def _sends(beat):
    return "Sending due task" in beat.log()


@pytest.mark.django_db(transaction=True)
def test_one_holder_at_a_time_and_the_next_takes_over_when_it_goes():
    first = SchedulerLock(connection.settings_dict)
    second = SchedulerLock(connection.settings_dict)
    try:
        assert first.hold() is True
        assert second.hold() is False
        assert first.hold() is True

        first.release()

        assert second.hold() is True
        assert first.hold() is False
    finally:
        first.release()
        second.release()


@pytest.mark.django_db(transaction=True)
def test_a_lost_session_loses_the_lock():
    holder = SchedulerLock(connection.settings_dict)
    other = SchedulerLock(connection.settings_dict)
    try:
        assert holder.hold() is True
        pid = holder.connection.info.backend_pid
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])

        assert other.hold() is True
        assert holder.hold() is False
    finally:
        holder.release()
        other.release()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_second_scheduler_waits_then_takes_over(cluster):
    cluster.start_worker("worker1")
    first = cluster.start_beat("beat1")
    wait_until(lambda: _sends(first), timeout=60, what="beat1 to send")
    second = cluster.start_beat("beat2")
    wait_until(
        lambda: "holds the lock; waiting" in second.log(),
        timeout=60,
        what="beat2 to wait",
    )
    assert not _sends(second)

    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(10)

    wait_until(
        lambda: _sends(second),
        timeout=TAKEOVER_TIMEOUT_SECONDS,
        what="beat2 to take over",
    )
