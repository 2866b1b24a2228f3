"""A wrong value in the environment stops the process, naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _check(tmp_path, **overrides):
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "BREAKGLASS_", "CELERY_", "DATABASE_"))
    }
    env.update(
        SECRET_KEY="settings-test",
        BREAKGLASS_VAR_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )
    env.update(overrides)
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_good_settings_pass(tmp_path):
    result = _check(tmp_path)

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "name, value",
    [
        ("DEBUG", "maybe"),
        ("BREAKGLASS_DEMO", "sometimes"),
        ("DATABASE_URL", "mysql://user:pw@host/db"),
        ("CELERY_BROKER_URL", "foo"),
        ("BREAKGLASS_ALERT_EMAILS", "notanemail"),
        ("BREAKGLASS_ALERT_WEBHOOK_URLS", "ftp://example.com/hook"),
        ("BREAKGLASS_ALERT_SLACK_URLS", "hooks.slack.com/services/T/B/x"),
        ("BREAKGLASS_ALERT_PAGERDUTY_URL", "events.pagerduty.com"),
        ("BREAKGLASS_SWEEP_SECONDS", "-1"),
        ("BREAKGLASS_SWEEP_SECONDS", "abc"),
        ("EMAIL_PORT", "x"),
        ("BREAKGLASS_REVIEW_DUE_HOURS", "0"),
        ("BREAKGLASS_REVIEW_DUE_HOURS", "inf"),
        ("BREAKGLASS_REVIEW_REMINDER_HOURS", "nan"),
        ("BREAKGLASS_REVIEW_REMINDER_HOURS", "100000"),
        ("BREAKGLASS_SEALING_KEYS", "not-a-fernet-key"),
        ("BREAKGLASS_ROTATOR_TIMEOUT_SECONDS", "0"),
    ],
)
def test_a_wrong_value_stops_the_process_naming_the_variable(tmp_path, name, value):
    result = _check(tmp_path, **{name: value})

    assert result.returncode != 0
    assert name in result.stderr.splitlines()[-1]


def test_webhooks_without_a_signing_secret_are_refused(tmp_path):
    result = _check(tmp_path, BREAKGLASS_ALERT_WEBHOOK_URLS="https://example.com/h")

    assert result.returncode != 0
    assert "BREAKGLASS_ALERT_WEBHOOK_SECRET" in result.stderr


def test_a_password_in_a_wrong_database_url_is_not_repeated(tmp_path):
    result = _check(tmp_path, DATABASE_URL="postgres://u:Sup3rSecret@h:notaport/db")

    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
    assert "Sup3rSecret" not in result.stderr


def test_a_wrong_slack_address_is_not_repeated(tmp_path):
    result = _check(
        tmp_path, BREAKGLASS_ALERT_SLACK_URLS="hooks.example.com/T1/B1/Sup3rSecret"
    )

    assert result.returncode != 0
    assert "BREAKGLASS_ALERT_SLACK_URLS" in result.stderr
    assert "Sup3rSecret" not in result.stderr


def test_without_a_secret_key_the_process_refuses_to_start(tmp_path):
    result = _check(tmp_path, SECRET_KEY="")

    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr.splitlines()[-1]
