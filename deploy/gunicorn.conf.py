"""Gunicorn settings of a web node: `gunicorn -c deploy/gunicorn.conf.py ...`.

The node's gunicorn workers share their request counters for /metrics through
PROMETHEUS_MULTIPROC_DIR, which must be empty when the node starts.
"""

import os
from pathlib import Path

wsgi_app = "breakglass.wsgi:application"
# WEB_CONCURRENCY, read by gunicorn itself, overrides the number of workers.
workers = 2
# A request waits at most this long for the database or a target.
timeout = 60
graceful_timeout = 30
# The control socket's default path is one per user: two nodes on one machine
# would take it from each other, and a sandboxed service cannot write it.
control_socket_disable = True


def on_starting(server):
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        # Counts left by an earlier run would be added to this one's.
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):
            stale.unlink()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
