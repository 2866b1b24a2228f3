"""Benchmark the REST API behind gunicorn on PostgreSQL: calls per second.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakglass_bench \\
        .venv/bin/python bench/api_throughput.py [--clients 50] [--seconds 10]

It starts gunicorn (sync workers) on a free port, then --clients threads, each
with its own httpx client and its own requester's token, create requests
(`POST /api/v1/requests/`) for --seconds; then the same number of threads approve
them (`POST /api/v1/requests/{id}/approve/`), each approval by another approver
whose TOTP code is checked under its device's lock and recorded in the trail.
The target needs two approvals, so requests stay pending and no worker is
involved. Prints requests per second and latency percentiles for each phase.
"""

import argparse
import logging
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _harness import (
    REPO,
    SSH_CA_ENV,
    cores,
    fresh_database,
    make_people,
    make_target,
    otp_code,
    ssh_ca,
    summary,
)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(workers, log_path):
    port = _free_port()
    env = dict(os.environ, ALLOWED_HOSTS="127.0.0.1,localhost", DEBUG="false")
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "breakglass.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--backlog",
            "512",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base}/login/", timeout=2)
            return process, base
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(Path(log_path).read_text()[-3000:]) from None
            time.sleep(0.2)


def worker_cpu_seconds(server):
    """Return the CPU time the gunicorn workers have used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text()
    total = 0
    for pid in children.split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # utime and stime, the 14th and 15th fields of the whole line.
        total += int(fields[11]) + int(fields[12])
    return total / tick


def token_for(user):
    from knox.models import AuthToken

    return AuthToken.objects.create(user=user, expiry=None)[1]


def run_phase(clients, work, seconds=None):
    """Run `work(client, index)` in --clients threads; return latencies and errors.

    `work` returns a latency in seconds, or None when it has nothing left to do.
    """
    latencies, errors = [], []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds if seconds else None

    def loop(index):
        with httpx.Client(timeout=30) as client:
            while deadline is None or time.monotonic() < deadline:
                try:
                    took = work(client, index)
                except AssertionError as exc:
                    with lock:
                        errors.append(str(exc))
                    continue
                if took is None:
                    return
                with lock:
                    latencies.append(took)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.monotonic() - started


def main():
    # A log line per call would cost the clients' share of the same two cores.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
    parser.add_argument(
        "--approvers", type=int, default=4000, help="one approval each, at most"
    )
    options = parser.parse_args()

    from django.contrib.auth.models import Group, User

    from breakglass import roles

    fresh_database()
    print(f"cores: {cores()}, gunicorn sync workers: {options.workers}")
    with ssh_ca():
        make_target("bastion", "ssh", grants=["root"], ca_env=SSH_CA_ENV, approvals=2)
        _, approvers = make_people(options.approvers)
        oncall = [Group.objects.get(name=n) for n in (roles.REQUESTER, "oncall")]
        requesters = []
        for n in range(options.clients):
            user = User.objects.create_user(f"oncall{n}")
            user.groups.add(*oncall)
            requesters.append(token_for(user))
        approver_tokens = [(token_for(a), a.totpdevice_set.get()) for a in approvers]

        log_path = Path(tempfile.mkdtemp(prefix="breakglass-bench-web-")) / "web.log"
        server, base = start_gunicorn(options.workers, log_path)
        try:
            created = queue.Queue()

            def create(client, index):
                started = time.perf_counter()
                response = client.post(
                    f"{base}/api/v1/requests/",
                    headers={"Authorization": f"Token {requesters[index]}"},
                    json={
                        "target": "bastion",
                        "scope": "read",
                        "duration_minutes": 30,
                        "reason": "benchmark: API throughput",
                        "incident": "INC-1",
                    },
                )
                took = time.perf_counter() - started
                assert response.status_code == 201, response.text[:200]
                created.put(response.json()["id"])
                return took

            cpu = worker_cpu_seconds(server)
            latencies, errors, took = run_phase(
                options.clients, create, options.seconds
            )
            cpu = worker_cpu_seconds(server) - cpu
            print(
                f"create request: {len(latencies) / took:.0f} requests/s at "
                f"{options.clients} clients; {summary(latencies)}; errors {len(errors)}"
                f"; web workers' CPU {cpu / max(1, len(latencies)) * 1000:.0f} ms each"
            )

            pending = queue.Queue()
            for pair in zip(list(created.queue), approver_tokens, strict=False):
                pending.put(pair)

            def approve(client, index):
                try:
                    request_id, (token, device) = pending.get_nowait()
                except queue.Empty:
                    return None
                code = otp_code(device)
                started = time.perf_counter()
                response = client.post(
                    f"{base}/api/v1/requests/{request_id}/approve/",
                    headers={"Authorization": f"Token {token}"},
                    json={"otp": code, "comment": "ok"},
                )
                took = time.perf_counter() - started
                assert response.status_code == 200, response.text[:200]
                return took

            cpu = worker_cpu_seconds(server)
            latencies, errors, took = run_phase(options.clients, approve)
            cpu = worker_cpu_seconds(server) - cpu
            print(
                f"approve with OTP: {len(latencies) / took:.0f} approvals/s at "
                f"{options.clients} clients; {summary(latencies)}; errors {len(errors)}"
                f"; web workers' CPU {cpu / max(1, len(latencies)) * 1000:.0f} ms each"
            )
            if errors:
                print(f"  first error: {errors[0]}")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
