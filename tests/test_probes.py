"""/healthz and /readyz: what a load balancer and an orchestrator ask each node.

The broker is a private Redis server that the tests stop; the worker's heartbeat
is recorded by the task the scheduler sends, run here in process.
"""

from datetime import timedelta

import pytest
import time_machine
from django.test import Client

from breakglass import health, tasks
from breakglass.models import WorkerHeartbeat


@pytest.fixture
def broker(redis_broker, settings):
    settings.CELERY_BROKER_URL = redis_broker.url
    return redis_broker


def _ready():
    response = Client().get("/readyz")
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    return response.status_code, response.json()


def test_healthz_answers_without_any_dependency(db, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"

    response = Client().get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_when_the_database_the_broker_and_a_worker_answer(db, broker):
    tasks.heartbeat.apply()

    status, body = _ready()

    assert status == 200, body
    assert body["status"] == "ok"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True,
        "broker": True,
        "worker": True,
    }
    assert body["checks"]["worker"]["heartbeat_age_seconds"] < 5


def test_not_ready_when_the_broker_is_down(db, broker):
    tasks.heartbeat.apply()
    assert _ready()[0] == 200

    broker.stop()
    status, body = _ready()

    assert status == 503
    assert body["status"] == "unavailable"
    assert body["checks"]["broker"] == {"ok": False, "error": "ConnectionError"}
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["worker"]["ok"] is True
    # The answer is public: it names no host or port.
    assert str(broker.port) not in str(body)

    broker.start()
    assert _ready()[0] == 200


def test_not_ready_before_any_worker_ran_the_heartbeat(db, broker):
    status, body = _ready()

    assert status == 503
    assert body["checks"]["worker"] == {
        "ok": False,
        "error": "no worker heartbeat yet",
    }


def test_not_ready_once_the_last_heartbeat_is_stale(db, broker, settings):
    settings.BREAKGLASS_HEARTBEAT_STALE_SECONDS = 60
    tasks.heartbeat.apply()
    seen_at = WorkerHeartbeat.objects.get().seen_at

    with time_machine.travel(seen_at + timedelta(seconds=59), tick=False):
        assert _ready()[0] == 200
    with time_machine.travel(seen_at + timedelta(seconds=61), tick=False):
        status, body = _ready()

    assert status == 503
    assert body["checks"]["worker"] == {
        "ok": False,
        "error": "the last worker heartbeat is 61 s old",
    }
    assert body["checks"]["broker"]["ok"] is True


def test_each_worker_keeps_one_heartbeat_row(db):
    for worker in ("w1@node-a", "w2@node-b", "w1@node-a"):
        health.record_heartbeat(worker)

    assert sorted(WorkerHeartbeat.objects.values_list("worker", flat=True)) == [
        "w1@node-a",
        "w2@node-b",
    ]


def test_probes_are_not_redirected_to_https(db, settings, broker):
    settings.SECURE_SSL_REDIRECT = True
    tasks.heartbeat.apply()

    assert Client().get("/healthz").status_code == 200
    assert Client().get("/readyz").status_code == 200
    assert Client().get("/metrics").status_code == 200
    assert Client().get("/login/").status_code == 301
