"""Benchmark revocation lag: many grants ending within the same minute.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakglass_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/13 \\
        .venv/bin/python bench/revocation_lag.py [--grants 1000] [--kill-after 5]

It opens and approves --grants one-minute requests, half on a private PostgreSQL
cluster and half on a private Redis server, and issues them from --issuers
threads, so that they all end within the same minute. A real Celery worker
(threads pool, --concurrency threads, its scheduler embedded) revokes them. An
observer polls the targets every 50 ms and notes when each credential is gone;
the lag is that moment minus the grant's end. With --kill-after S the worker is
killed with SIGKILL S seconds after the first grant ends, and started again at
once, as a supervisor would.
"""

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from _harness import (
    PG_ENV,
    REDIS_ENV,
    Worker,
    cores,
    empty_broker,
    fresh_database,
    make_people,
    make_target,
    otp_code,
    private_postgres,
    private_redis,
    summary,
)
from django.db import connection
from django.utils import timezone

OBSERVE_SECONDS = 0.05


class Observer(threading.Thread):
    """Note when each credential is gone from its target."""

    def __init__(self, pg, rd):
        super().__init__(daemon=True)
        self.pg = pg
        self.rd = rd
        self.seen = set()
        self.gone = {}
        self.running = True

    def run(self):
        with self.pg.connect("postgres") as conn, self.rd.admin() as client:
            while self.running:
                roles = {
                    name
                    for (name,) in conn.execute(
                        "SELECT rolname FROM pg_roles WHERE rolname LIKE 'bg\\_%'"
                    )
                }
                present = roles | {u for u in client.acl_users() if u.startswith("bg_")}
                now = timezone.now()
                for name in self.seen - present:
                    self.gone.setdefault(name, now)
                self.seen |= present
                time.sleep(OBSERVE_SECONDS)


def open_and_approve(requester, approvers, grants):
    """Open and approve the requests without issuing them; return their grant ids."""
    from approvals import services as approval_services
    from breakglass import services

    grant_ids = []
    for n in range(grants):
        access_request = services.create_request(
            requester=requester,
            target="orders-db" if n % 2 == 0 else "cache",
            scope="read",
            duration_minutes=1,
            reason="benchmark: revocation lag",
            incident=f"INC-{n + 1}",
        )
        approver = approvers[n]
        approval_services.approve_request(
            access_request.pk,
            approver=approver,
            code=otp_code(approver.totpdevice_set.get()),
        )
        grant_ids.append(access_request.grant.pk)
    return grant_ids


def issue_all(grant_ids, threads):
    """Issue the grants from several threads, so that they end close together."""
    from breakglass import services

    def issue(chunk):
        try:
            for grant_id in chunk:
                services.issue_grant(grant_id)
        finally:
            connection.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(issue, [grant_ids[n::threads] for n in range(threads)]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=1000)
    parser.add_argument(
        "--kill-after",
        type=float,
        default=None,
        help="SIGKILL the worker this many seconds after the first grant ends",
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="the worker's threads"
    )
    parser.add_argument(
        "--issuers", type=int, default=4, help="threads issuing the grants"
    )
    options = parser.parse_args()

    from breakglass.models import AccessRequest, AuditEvent, Grant

    fresh_database()
    empty_broker()
    print(f"cores: {cores()}")
    with private_postgres() as pg, private_redis() as rd:
        make_target(
            "orders-db", "postgres", grants=["orders_read"], env_var=PG_ENV, approvals=1
        )
        make_target(
            "cache",
            "redis",
            grants=["~cache:*", "+get"],
            env_var=REDIS_ENV,
            approvals=1,
        )
        requester, approvers = make_people(options.grants)
        started = time.monotonic()
        grant_ids = open_and_approve(requester, approvers, options.grants)
        print(
            f"opened and approved {len(grant_ids)} requests in "
            f"{time.monotonic() - started:.1f} s"
        )
        # The issuance tasks queued by the approvals are done here instead, so
        # that every grant ends within the same minute.
        empty_broker()

        observer = Observer(pg, rd)
        observer.start()
        with Worker(concurrency=options.concurrency) as worker:
            started = time.monotonic()
            issue_all(grant_ids, options.issuers)
            print(
                f"issued {len(grant_ids)} grants in {time.monotonic() - started:.1f} s"
            )
            ends = dict(Grant.objects.values_list("principal", "expires_at"))
            first_end, last_end = min(ends.values()), max(ends.values())
            print(f"they end within {(last_end - first_end).total_seconds():.1f} s")

            if options.kill_after is not None:
                wait = (first_end - timezone.now()).total_seconds()
                time.sleep(max(0.0, wait + options.kill_after))
                worker.kill()
                print(f"killed the worker {options.kill_after:.0f} s into the ends")
                worker.start()

            deadline = time.monotonic() + 600
            while observer.gone.keys() < ends.keys() and time.monotonic() < deadline:
                time.sleep(0.5)
            observer.running = False
            observer.join()

        lags = [
            (observer.gone[name] - expires_at).total_seconds()
            for name, expires_at in ends.items()
            if name in observer.gone
        ]
        missing = len(ends) - len(lags)
        print(f"revocation lag (credential gone): {summary(lags)}; not gone: {missing}")
        for kind in ("postgres", "redis"):
            kind_lags = [
                (observer.gone[g.principal] - g.expires_at).total_seconds()
                for g in Grant.objects.filter(target_snapshot__kind=kind)
                if g.principal in observer.gone
            ]
            print(f"  {kind}: {summary(kind_lags)}")
        expired = AccessRequest.objects.filter(status=AccessRequest.Status.EXPIRED)
        events = AuditEvent.objects.filter(action="grant.expired")
        distinct = events.values("request").distinct().count()
        print(
            f"requests expired: {expired.count()} of {len(grant_ids)}, "
            f"grant.expired events: {events.count()} for {distinct} requests"
        )
    connection.close()


if __name__ == "__main__":
    main()
