"""Two web nodes, two workers and one scheduler, as on separate machines.

Alice asks node 1 for read access to the orders database; Bob and Carol approve
through node 2 with codes from their phones; a worker creates the role; Alice
reveals the credential through node 2, reads the orders, and ends the grant
through node 1. Both nodes are ready, both workers beat, both nodes' metrics
tell the same figures, and no log line carries the secret.
"""

import json

import psycopg
import pytest
import requests
from knox.models import AuthToken
from prometheus_client.parser import text_string_to_metric_families

from breakglass.models import WorkerHeartbeat

from . import secret_scan
from .conftest import make_target, otp_code
from .fixtures.waiting import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

DSN_ENV = "BG_NODES_ORDERS_DB_DSN"
TIMEOUT_SECONDS = 30


def _token(user):
    return AuthToken.objects.create(user=user, expiry=None)[1]


def _status(session, node, request_id):
    response = session.get(f"{node.url}/api/v1/requests/{request_id}/", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["status"]


def _wait_for(session, node, request_id, status):
    wait_until(
        lambda: _status(session, node, request_id) == status,
        timeout=TIMEOUT_SECONDS,
        what=f"request {request_id} {status} on {node.name}",
        interval=0.25,
    )


def _metrics(node):
    response = node.session().get(f"{node.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.startswith("breakglass_")
        and not sample.name.startswith("breakglass_http_")
        and sample.name != "breakglass_worker_heartbeat_age_seconds"
    }


def test_the_flow_runs_through_two_web_nodes_and_two_workers(
    cluster, pg_target, alice, bob, carol, cora
):
    make_target("orders-db", "postgres", grants=["orders_read"], env_var=DSN_ENV)
    cluster.env[DSN_ENV] = pg_target.admin_dsn
    node1, node2 = cluster.start_web("web1"), cluster.start_web("web2")
    cluster.start_worker("worker1")
    cluster.start_worker("worker2")
    cluster.start_beat()
    cluster.wait_for_web(node1, node2)

    # Both workers take the scheduler's heartbeats from the one broker.
    wait_until(
        lambda: (
            {
                name.split("@")[0]
                for name in WorkerHeartbeat.objects.values_list("worker", flat=True)
            }
            == {"worker1", "worker2"}
        ),
        timeout=TIMEOUT_SECONDS,
        what="a heartbeat from each worker",
    )
    for node in (node1, node2):
        ready = node.session().get(f"{node.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ok"
    # Without the load balancer's header, the production profile sends to HTTPS.
    plain = node1.session().get(f"{node1.url}/login/", allow_redirects=False)
    assert plain.status_code == 200
    redirected = requests.get(f"{node1.url}/login/", allow_redirects=False, timeout=10)
    assert redirected.status_code == 301
    assert redirected.headers["Location"].startswith("https://")

    as_alice = node1.session(_token(alice))
    created = as_alice.post(
        f"{node1.url}/api/v1/requests/",
        json={
            "target": "orders-db",
            "scope": "read",
            "duration_minutes": 30,
            "reason": "orders stuck in checkout",
            "incident": "INC-4711",
        },
        timeout=10,
    )
    assert created.status_code == 201, created.text
    request_id = created.json()["id"]

    for approver in (bob, carol):
        approved = node2.session(_token(approver)).post(
            f"{node2.url}/api/v1/requests/{request_id}/approve/",
            json={"otp": otp_code(approver), "comment": "go"},
            timeout=10,
        )
        assert approved.status_code == 200, approved.text
    _wait_for(as_alice, node1, request_id, "active")

    alice_on_node2 = node2.session(_token(alice))
    revealed = alice_on_node2.post(
        f"{node2.url}/api/v1/requests/{request_id}/credential/", timeout=10
    )
    assert revealed.status_code == 200, revealed.text
    credential = revealed.json()
    secret_scan.remember(credential)
    with psycopg.connect(
        host=credential["host"],
        port=credential["port"],
        dbname=credential["dbname"],
        user=credential["username"],
        password=credential["password"],
        connect_timeout=5,
    ) as session:
        assert session.execute("SELECT count(*) FROM orders").fetchone() == (3,)

    revoked = as_alice.post(
        f"{node1.url}/api/v1/requests/{request_id}/revoke/",
        json={"reason": "fixed"},
        timeout=30,
    )
    assert revoked.status_code == 200, revoked.text
    _wait_for(alice_on_node2, node2, request_id, "revoked")
    assert pg_target.role(credential["username"]) is None

    # Any node tells the same figures: they are read from the database.
    figures = _metrics(node1)
    assert figures == _metrics(node2)
    assert figures[("breakglass_requests", (("status", "revoked"),))] == 1
    assert figures[("breakglass_approvals_total", (("decision", "approved"),))] == 2
    assert figures[("breakglass_active_grants", (("target", "orders-db"),))] == 0
    assert figures[("breakglass_time_to_issuance_seconds_count", ())] == 1
    assert figures[("breakglass_revocation_lag_seconds_count", ())] == 1
    as_cora = node2.session(_token(cora))
    events = as_cora.get(
        f"{node2.url}/api/v1/audit/", params={"request": request_id}, timeout=10
    ).json()
    head = as_cora.get(f"{node2.url}/api/v1/audit/", timeout=10).json()[-1]["seq"]
    assert figures[("breakglass_audit_head_seq", ())] >= head

    # One JSON line per change of this request, written by whichever process
    # made it, with its ids; no line holds the secret.
    logs = cluster.logs()
    lines = [
        json.loads(line)
        for log in logs.values()
        for line in log.splitlines()
        if line.startswith("{")
    ]
    logged = sorted(
        line["seq"]
        for line in lines
        if line.get("name") == "breakglass.audit"
        and line.get("request_id") == request_id
    )
    assert logged == [event["seq"] for event in events]
    grant_lines = [
        line
        for line in lines
        if line.get("event") in ("grant.issued", "credential.revealed", "grant.revoked")
        and line.get("request_id") == request_id
    ]
    assert len(grant_lines) == 3
    assert len({line["grant_id"] for line in grant_lines}) == 1
    assert (
        secret_scan.leaks(
            {credential["password"]}, [(name, log) for name, log in logs.items()]
        )
        == []
    )
