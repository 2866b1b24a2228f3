"""What the benchmarks share: a fresh database, private targets, a worker, people.

The targets are the tests' own private PostgreSQL cluster and Redis server
(tests/fixtures), started here outside pytest; the worker is a real
`celery -A breakglass worker -B` subprocess on the broker of CELERY_BROKER_URL.
"""

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "breakglass.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key")
os.environ.setdefault(
    "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/breakglass_bench"
)
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/13")

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django_otp.oath import TOTP  # noqa: E402
from django_otp.plugins.otp_totp.models import TOTPDevice  # noqa: E402

from tests.fixtures import pg_target as _pg_fixture  # noqa: E402
from tests.fixtures import redis_target as _redis_fixture  # noqa: E402

WORKER_START_SECONDS = 60
PG_ENV = "BG_BENCH_PG_DSN"
REDIS_ENV = "BG_BENCH_REDIS_URL"
SSH_CA_ENV = "BG_BENCH_SSH_CA_KEY"


def cores():
    return os.cpu_count()


def fresh_database():
    """Drop and recreate the benchmark database, then migrate it."""
    params = connection.get_connection_params()
    name = params["dbname"]
    admin = {k: params[k] for k in ("host", "port", "user") if k in params}
    connection.close()
    with psycopg.connect(**admin, dbname="postgres", autocommit=True) as pg:
        pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        pg.execute(f'CREATE DATABASE "{name}"')
    call_command("migrate", verbosity=0)


def empty_broker():
    """Drop tasks a previous run left on the benchmark's broker database."""
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


@contextlib.contextmanager
def private_postgres():
    """Start the tests' private PostgreSQL target cluster; yield it."""
    with contextlib.contextmanager(_pg_fixture.pg_target.__wrapped__)() as target:
        os.environ[PG_ENV] = target.admin_dsn
        yield target


@contextlib.contextmanager
def private_redis():
    """Start the tests' private Redis target server; yield it."""
    with contextlib.contextmanager(_redis_fixture.redis_target.__wrapped__)() as target:
        os.environ[REDIS_ENV] = target.admin_url
        yield target


@contextlib.contextmanager
def ssh_ca():
    """Write an OpenSSH CA key for an SSH target; yield its path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    with tempfile.TemporaryDirectory(prefix="breakglass-bench-ca-") as directory:
        path = Path(directory) / "ca_key"
        path.write_bytes(
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        os.environ[SSH_CA_ENV] = str(path)
        yield path


class Worker:
    """A `celery worker -B` subprocess, which a benchmark may kill and restart."""

    def __init__(self, *, pool="threads", concurrency=2, sweep_seconds=None):
        self.var_dir = Path(tempfile.mkdtemp(prefix="breakglass-bench-worker-"))
        self.log_path = self.var_dir / "worker.log"
        self.argv = [
            str(Path(sys.executable).with_name("celery")),
            "-A",
            "breakglass",
            "worker",
            "-B",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"bench-{uuid.uuid4().hex[:8]}@%h",
        ]
        self.env = dict(os.environ)
        self.env.update(
            {
                "BREAKGLASS_VAR_DIR": str(self.var_dir),
                "BREAKGLASS_RECONCILE_SECONDS": "3600",
                "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if sweep_seconds is not None:
            self.env["BREAKGLASS_SWEEP_SECONDS"] = str(sweep_seconds)
        self.process = None
        self.starts = 0

    def log(self):
        return self.log_path.read_text(errors="replace")

    def start(self):
        self.starts += 1
        schedule = self.var_dir / f"celerybeat-schedule-{self.starts}"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.argv, "--schedule", str(schedule)],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + WORKER_START_SECONDS
        while " ready." not in self.log()[offset:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def kill(self):
        """SIGKILL the worker, its pool and its scheduler at once, as a crash would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(20)

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def make_people(approvers):
    """Create a requester and `approvers` approvers with TOTP devices; return them."""
    from django.contrib.auth.models import Group, User

    from breakglass import roles

    requester_group = Group.objects.get_or_create(name=roles.REQUESTER)[0]
    approver_group = Group.objects.get_or_create(name=roles.APPROVER)[0]
    leads = Group.objects.get_or_create(name="sre-leads")[0]
    oncall = Group.objects.get_or_create(name="oncall")[0]

    requester = User.objects.create_user("alice", "alice@example.com")
    requester.groups.add(requester_group, oncall)
    users = User.objects.bulk_create(
        User(username=f"approver{n}", email=f"approver{n}@example.com")
        for n in range(approvers)
    )
    Membership = User.groups.through
    Membership.objects.bulk_create(
        Membership(user_id=u.pk, group_id=g.pk)
        for u in users
        for g in (approver_group, leads)
    )
    TOTPDevice.objects.bulk_create(
        TOTPDevice(user=u, name="phone", confirmed=True) for u in users
    )
    return requester, users


def make_target(name, kind, *, grants, env_var="", ca_env="", approvals=2):
    from tests.conftest import make_target as _make_target

    return _make_target(
        name,
        kind,
        grants=grants,
        env_var=env_var,
        ca_env=ca_env,
        approvals=approvals,
        requester_groups=("oncall",),
        max_minutes=24 * 60,
    )


def otp_code(device):
    """Return the code the device shows now."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{totp.token():0{device.digits}d}"


def percentile(values, fraction):
    """Return the value below which `fraction` of the values lie (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(values, unit="ms", scale=1000.0):
    """Return 'n=.. median .. p95 .. p99 .. max ..' for durations in seconds."""
    if not values:
        return "n=0"
    parts = [
        f"n={len(values)}",
        f"median {statistics.median(values) * scale:.0f} {unit}",
        f"p95 {percentile(values, 0.95) * scale:.0f} {unit}",
        f"p99 {percentile(values, 0.99) * scale:.0f} {unit}",
        f"max {max(values) * scale:.0f} {unit}",
    ]
    return ", ".join(parts)
