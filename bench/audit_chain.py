"""Benchmark the audit trail on PostgreSQL: events appended and verified per second.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakglass_bench \\
        .venv/bin/python bench/audit_chain.py [--events 1000000] [--writers 4]

It creates (or empties) the database named in DATABASE_URL, appends events for a
few seconds through the product's own `record_event` from several threads, then
fills the trail up to --events with valid links and times a full verification.
Prints the figures and the machine's core count.
"""

import argparse
import hashlib
import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "breakglass.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key")
os.environ.setdefault(
    "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/breakglass_bench"
)

import django  # noqa: E402
import psycopg  # noqa: E402

django.setup()
# One log line per event is for operators, not for a run of a million events.
logging.getLogger("breakglass.audit").setLevel(logging.WARNING)

from django.core.management import call_command  # noqa: E402
from django.db import close_old_connections, connection  # noqa: E402

from breakglass import audit  # noqa: E402
from breakglass.models import AuditEvent  # noqa: E402


def fresh_database():
    params = connection.get_connection_params()
    name = params["dbname"]
    admin = {k: params[k] for k in ("host", "port", "user") if k in params}
    with psycopg.connect(**admin, dbname="postgres", autocommit=True) as pg:
        pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        pg.execute(f'CREATE DATABASE "{name}"')
    call_command("migrate", verbosity=0)


def append(seconds, writers):
    """Append through record_event from several threads; return events per second."""
    counts = [0] * writers
    deadline = time.monotonic() + seconds

    def writer(index):
        close_old_connections()
        while time.monotonic() < deadline:
            audit.record_event(
                "config.applied",
                actor=f"writer-{index}",
                subject={"incident": "INC-BENCH", "target": "orders-db"},
                data={"writer": index, "n": counts[index]},
            )
            counts[index] += 1
        connection.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts), time.monotonic() - started


def fill(total):
    """Extend the trail to `total` events with valid hashes, through COPY."""
    last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
    seq, prev = last
    at = datetime.now(UTC)
    columns = (
        "seq, at, actor, action, request_id, incident, target, scope, requester,"
        " data, prev_hash, hash"
    )
    with connection.cursor() as cursor:
        raw = cursor.connection
        with raw.cursor().copy(
            f"COPY breakglass_auditevent ({columns}) FROM STDIN"
        ) as copy:
            while seq < total:
                seq += 1
                at += timedelta(milliseconds=1)
                data = {"source": "10.0.0.7:51234", "principal": f"bg_alice_{seq}"}
                row = (
                    seq,
                    "system",
                    "credential.used",
                    None,
                    f"INC-{seq % 500}",
                    "orders-db",
                    "read",
                    "alice",
                    data,
                    prev,
                    at.isoformat(timespec="microseconds"),
                )
                digest = hashlib.sha256(audit._canonical(*row)).hexdigest()
                copy.write_row(
                    (seq, at, *row[1:8], psycopg.types.json.Jsonb(data), prev, digest)
                )
                prev = digest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    options = parser.parse_args()

    fresh_database()
    print(f"cores: {os.cpu_count()}")

    appended, took = append(options.seconds, options.writers)
    print(
        f"append: {appended} events from {options.writers} threads in {took:.1f} s"
        f" = {appended / took:.0f} events/s (record_event: chain lock, hash, alerts)"
    )
    ok = audit.verify_chain()
    assert ok == (appended, None), ok

    fill(options.events)
    started = time.monotonic()
    checked, first_bad = audit.verify_chain()
    took = time.monotonic() - started
    assert first_bad is None and checked == options.events, (checked, first_bad)
    print(f"verify: {checked} events in {took:.1f} s = {checked / took:.0f} events/s")


if __name__ == "__main__":
    main()
