"""Benchmark pages and API lists with many active grants and a long trail.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakglass_bench \\
        .venv/bin/python bench/scale.py [--grants 10000] [--events 1000000]

It fills the database with --grants active grants (bulk inserts: requests,
approvals and grants as the services would leave them) and extends the trail to
--events events with valid links (COPY, as bench/audit_chain.py does), then
times each page and API list --repeat times through Django's test client, in
this process, as an admin and as the requester, and prints the p95 and the
number of queries of each.
"""

import argparse
import time
from datetime import timedelta

from _harness import (
    SSH_CA_ENV,
    cores,
    fresh_database,
    make_people,
    make_target,
    percentile,
    ssh_ca,
)
from audit_chain import fill
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

BATCH = 2000


def seed_grants(count, requester, approver):
    """Insert `count` active grants on the SSH target, in batches."""
    from approvals.models import Approval
    from breakglass.models import AccessRequest, Grant, Scope, Target

    target = Target.objects.get(name="bastion")
    scope = Scope.objects.get(target=target, name="read")
    now = timezone.now()
    for start in range(0, count, BATCH):
        requests = AccessRequest.objects.bulk_create(
            AccessRequest(
                requester=requester,
                target=target,
                scope=scope,
                duration_minutes=600,
                reason="benchmark: scale",
                incident=f"INC-{n}",
                approvals_required=1,
                status=AccessRequest.Status.ACTIVE,
                created_at=now - timedelta(minutes=5),
                approval_deadline=now + timedelta(minutes=25),
                decided_at=now - timedelta(minutes=4),
            )
            for n in range(start, min(count, start + BATCH))
        )
        Approval.objects.bulk_create(
            Approval(
                request=r,
                approver=approver,
                decision=Approval.Decision.APPROVED,
                otp_device="otp_totp.totpdevice/1 (phone)",
                request_digest="0" * 64,
                at=now - timedelta(minutes=4),
            )
            for r in requests
        )
        Grant.objects.bulk_create(
            Grant(
                request=r,
                principal=f"bg_alice_{r.pk}_{r.pk:08x}",
                target_snapshot={"kind": "ssh", "name": "bastion", "grants": ["root"]},
                approved_at=now - timedelta(minutes=4),
                issued_at=now - timedelta(minutes=4),
                expires_at=now + timedelta(hours=10),
            )
            for r in requests
        )


def measure(client, url, repeat):
    timings, queries = [], []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            timings.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
        queries.append(len(captured))
    return timings, max(queries)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    options = parser.parse_args()

    from django.contrib.auth.models import User

    from breakglass import audit, roles
    from breakglass.models import AccessRequest

    fresh_database()
    print(f"cores: {cores()}")
    with ssh_ca():
        make_target("bastion", "ssh", grants=["root"], ca_env=SSH_CA_ENV)
        requester, (approver,) = make_people(1)
        admin = User.objects.create_user("ada", is_staff=True, is_superuser=True)
        compliance = User.objects.create_user("cora")
        compliance.groups.create(name=roles.COMPLIANCE)

        started = time.monotonic()
        seed_grants(options.grants, requester, approver)
        audit.record_event("config.applied", actor="ada", data={"bench": True})
        fill(options.events)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        # The worker verifies the whole trail every BREAKGLASS_VERIFY_SECONDS;
        # pages then check only the events appended since.
        verification = audit.verify_and_record()
        print(f"verified {verification.checked} events in {verification.seconds} s")
        print(
            f"seeded {options.grants} active grants and {options.events} events "
            f"in {time.monotonic() - started:.0f} s"
        )

        some = AccessRequest.objects.order_by("-pk").first().pk
        pages = [
            (admin, "/"),
            (admin, "/requests/"),
            (admin, f"/requests/{some}/"),
            (admin, "/operations/"),
            (compliance, "/trail/"),
            (requester, "/"),
            (admin, "/api/v1/requests/"),
            (admin, "/api/v1/requests/?status=active"),
            (compliance, "/api/v1/audit/"),
            (requester, "/api/v1/requests/"),
        ]
        for user, url in pages:
            # The test client names no host of its own that the settings allow.
            client = Client(HTTP_HOST="localhost")
            client.force_login(user)
            client.get(url)
            timings, queries = measure(client, url, options.repeat)
            print(
                f"{url} as {user.username}: p95 {percentile(timings, 0.95) * 1000:.0f}"
                f" ms, median {sorted(timings)[len(timings) // 2] * 1000:.0f} ms, "
                f"{queries} queries"
            )


if __name__ == "__main__":
    main()
