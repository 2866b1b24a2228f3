"""Benchmark the time to access: last approval committed to a credential that works.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakglass_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/13 \\
        .venv/bin/python bench/time_to_access.py [--requests 50]

For each kind of target (a private PostgreSQL cluster, a private Redis server, an
SSH CA), it opens requests one after the other, approves each with two approvers'
TOTP codes through the approval service, and times from the return of the last
approval (its transaction committed) until the requester has revealed the
credential and logged in with it: on PostgreSQL and Redis a real login and
query; for SSH a certificate signed for the principal. A real Celery worker
(threads pool, 2 threads, its scheduler embedded) issues the grants.
"""

import argparse
import time

from _harness import (
    PG_ENV,
    REDIS_ENV,
    SSH_CA_ENV,
    Worker,
    cores,
    empty_broker,
    fresh_database,
    make_people,
    make_target,
    otp_code,
    private_postgres,
    private_redis,
    ssh_ca,
    summary,
)

POLL_SECONDS = 0.005
ISSUE_TIMEOUT_SECONDS = 30


def _wait_active(request_id):
    from breakglass.models import AccessRequest

    deadline = time.monotonic() + ISSUE_TIMEOUT_SECONDS
    while True:
        status = (
            AccessRequest.objects.filter(pk=request_id)
            .values_list("status", flat=True)
            .get()
        )
        if status == AccessRequest.Status.ACTIVE:
            return
        if status != AccessRequest.Status.APPROVED or time.monotonic() > deadline:
            raise RuntimeError(f"request {request_id} is {status}")
        time.sleep(POLL_SECONDS)


def _use(kind, credential, pg, rd):
    """Log in with the credential and run one command, as its requester would."""
    import psycopg
    import redis
    from cryptography.hazmat.primitives.serialization import ssh

    if kind == "postgres":
        with psycopg.connect(
            host=pg.host,
            port=pg.port,
            dbname="orders",
            user=credential["username"],
            password=credential["password"],
        ) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 3
    elif kind == "redis":
        with redis.Redis(
            host=rd.host,
            port=rd.port,
            username=credential["username"],
            password=credential["password"],
        ) as client:
            client.get("cache:probe")
    else:
        certificate = ssh.load_ssh_public_identity(credential["certificate"].encode())
        assert credential["username"].encode() in certificate.valid_principals


def measure(kind, target, requester, approvers, count, pg, rd):
    from approvals import services as approval_services
    from breakglass import services

    timings = []
    for n in range(count):
        first, second = approvers[2 * n], approvers[2 * n + 1]
        access_request = services.create_request(
            requester=requester,
            target=target,
            scope="read",
            duration_minutes=60,
            reason="benchmark: time to access",
            incident=f"INC-{n + 1}",
        )
        for approver in (first, second):
            device = approver.totpdevice_set.get()
            approval_services.approve_request(
                access_request.pk, approver=approver, code=otp_code(device)
            )
        started = time.perf_counter()
        _wait_active(access_request.pk)
        credential = services.reveal_credential(access_request.pk, actor=requester)
        _use(kind, credential, pg, rd)
        timings.append(time.perf_counter() - started)
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="per kind")
    options = parser.parse_args()

    fresh_database()
    empty_broker()
    print(f"cores: {cores()}")
    with private_postgres() as pg, private_redis() as rd, ssh_ca():
        make_target("orders-db", "postgres", grants=["orders_read"], env_var=PG_ENV)
        make_target("cache", "redis", grants=["~cache:*", "+get"], env_var=REDIS_ENV)
        make_target("bastion", "ssh", grants=["root"], ca_env=SSH_CA_ENV)
        requester, approvers = make_people(6 * options.requests)
        kinds = [("postgres", "orders-db"), ("redis", "cache"), ("ssh", "bastion")]
        with Worker():
            for index, (kind, target) in enumerate(kinds):
                share = approvers[index * 2 * options.requests :]
                timings = measure(
                    kind, target, requester, share, options.requests, pg, rd
                )
                print(f"time to access, {kind}: {summary(timings)}")


if __name__ == "__main__":
    main()
