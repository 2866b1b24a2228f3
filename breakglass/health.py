"""Whether this node can serve: the database, the broker and a worker's heartbeat.

/healthz only says the process answers; /readyz asks each dependency with a
short timeout and says which one failed, without naming hosts or addresses.
"""

import logging
import os
import time

import redis
from django.conf import settings
from django.db import connection, transaction
from kombu import Connection

from . import clock
from .models import WorkerHeartbeat

logger = logging.getLogger(__name__)


def record_heartbeat(worker):
    """Record that `worker` ran the heartbeat task now."""
    WorkerHeartbeat.objects.update_or_create(
        worker=worker, defaults={"seen_at": clock.now()}
    )


def latest_heartbeat():
    """Return the newest heartbeat's time, or None when no worker ever ran one."""
    return (
        WorkerHeartbeat.objects.order_by("-seen_at")
        .values_list("seen_at", flat=True)
        .first()
    )


def readiness():
    """Return (ready, checks): each check says ok, and why not when it is not."""
    checks = {
        "database": _check(_database),
        "broker": _check(_broker),
    }
    # Without the database the heartbeat cannot be read: it counts as failed.
    if checks["database"]["ok"]:
        checks["worker"] = _check(_worker)
    else:
        checks["worker"] = {"ok": False, "error": "database unavailable"}
    return all(check["ok"] for check in checks.values()), checks


def _check(probe):
    started = time.monotonic()
    try:
        result = probe() or {}
    except _Unready as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:
        # The exception may name hosts; the answer is public, the log is not.
        logger.warning("readiness: %s failed", probe.__name__.strip("_"), exc_info=True)
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "seconds": round(time.monotonic() - started, 3), **result}


class _Unready(Exception):
    """A dependency answered, but not as a ready one would."""


def _database():
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            timeout_ms = int(settings.BREAKGLASS_READY_TIMEOUT_SECONDS * 1000)
            cursor.execute("SET LOCAL statement_timeout = %s", [timeout_ms])
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _broker():
    url = settings.CELERY_BROKER_URL
    timeout = settings.BREAKGLASS_READY_TIMEOUT_SECONDS
    scheme = url.split("://", 1)[0]
    if scheme == "filesystem":
        folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]
        if not os.access(folder, os.W_OK):
            raise _Unready("the broker's folder cannot be written")
        return None
    if scheme in ("redis", "rediss"):
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        with client:
            client.ping()
        return None
    with Connection(url, connect_timeout=timeout) as broker:
        broker.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    return None


def _worker():
    seen_at = latest_heartbeat()
    if seen_at is None:
        raise _Unready("no worker heartbeat yet")
    age = (clock.now() - seen_at).total_seconds()
    if age > settings.BREAKGLASS_HEARTBEAT_STALE_SECONDS:
        raise _Unready(f"the last worker heartbeat is {round(age)} s old")
    return {"heartbeat_age_seconds": round(age, 3)}
