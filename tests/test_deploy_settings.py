"""The production profile: `check --deploy` is quiet with deploy/breakglass.env.example.

The example's values are used as an operator would set them; only the secrets,
the database and the directories are replaced by throwaway ones.
"""

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "breakglass.env.example"


def _example_env():
    values = {}
    for line in EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def _manage(tmp_path, *args, **overrides):
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            ("DJANGO_", "BREAKGLASS_", "CELERY_", "DATABASE_", "SECURE_", "PROMETHEUS")
        )
    }
    env.update(_example_env())
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir(exist_ok=True)
    env.update(
        SECRET_KEY=secrets.token_urlsafe(50),
        BREAKGLASS_ALERT_WEBHOOK_SECRET=secrets.token_urlsafe(32),
        BREAKGLASS_METRICS_TOKEN=secrets.token_urlsafe(32),
        BREAKGLASS_VAR_DIR=str(tmp_path),
        BREAKGLASS_CHECKPOINT_KEY_FILE=str(tmp_path / "checkpoint_key"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    env.update(overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_documented_production_variables_pass_check_deploy(tmp_path):
    result = _manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_production_is_https_only_by_default(tmp_path):
    script = (
        "from django.conf import settings as s; print(s.SECURE_SSL_REDIRECT,"
        " s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS,"
        " s.SECURE_PROXY_SSL_HEADER)"
    )
    result = _manage(tmp_path, "shell", "--no-imports", "-c", script)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split(None, 4) == [
        "True",
        "True",
        "True",
        "31536000",
        "('HTTP_X_FORWARDED_PROTO', 'https')\n",
    ]


def test_the_demo_keeps_plain_http(tmp_path):
    script = "from django.conf import settings as s; print(s.SECURE_SSL_REDIRECT)"
    result = _manage(
        tmp_path, "shell", "--no-imports", "-c", script, BREAKGLASS_DEMO="1"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_weak_secret_key_fails_check_deploy(tmp_path):
    result = _manage(
        tmp_path, "check", "--deploy", "--fail-level", "WARNING", SECRET_KEY="short"
    )

    assert result.returncode != 0
    assert "security.W009" in result.stderr


def test_a_proxy_header_that_is_not_a_header_name_stops_the_process(tmp_path):
    result = _manage(tmp_path, "check", SECURE_PROXY_SSL_HEADER="X-Proto: https")

    assert result.returncode != 0
    assert "SECURE_PROXY_SSL_HEADER" in result.stderr.splitlines()[-1]


def test_an_unknown_log_format_stops_the_process(tmp_path):
    result = _manage(tmp_path, "check", BREAKGLASS_LOG_FORMAT="xml")

    assert result.returncode != 0
    assert "BREAKGLASS_LOG_FORMAT" in result.stderr.splitlines()[-1]


def test_a_staleness_limit_within_one_heartbeat_stops_the_process(tmp_path):
    result = _manage(
        tmp_path,
        "check",
        BREAKGLASS_HEARTBEAT_SECONDS="30",
        BREAKGLASS_HEARTBEAT_STALE_SECONDS="30",
    )

    assert result.returncode != 0
    assert "BREAKGLASS_HEARTBEAT_STALE_SECONDS" in result.stderr.splitlines()[-1]
