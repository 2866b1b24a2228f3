"""Logs as JSON lines: one line per recorded change, with its ids, never a secret."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from pythonjsonlogger.json import JsonFormatter

from breakglass import services
from breakglass.models import AuditEvent

from .flows import issued_request, make_ssh_ca, make_ssh_target

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def json_lines():
    """Collect what the `breakglass` loggers write, formatted as the setting says."""
    options = dict(settings.LOGGING["formatters"]["json"])
    assert options.pop("()") == "pythonjsonlogger.json.JsonFormatter"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(**options))
    logger = logging.getLogger("breakglass")
    logger.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)


def test_each_change_is_one_json_line_with_its_ids_and_no_secret(
    alice, bob, carol, tmp_path, monkeypatch, json_lines
):
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target()

    access_request = issued_request(alice, bob, carol)
    credential = services.reveal_credential(access_request.pk, actor=alice)
    services.request_end(access_request.pk, actor=alice, reason="done")
    services.end_grant(access_request.grant.pk)

    lines = [line for line in json_lines() if line["name"] == "breakglass.audit"]
    events = list(AuditEvent.objects.order_by("seq"))
    assert [line["event"] for line in lines] == [event.action for event in events]
    assert [line["seq"] for line in lines] == [event.seq for event in events]
    grant_id = access_request.grant.pk
    for line, event in zip(lines, events, strict=True):
        assert line["level"] == "INFO"
        assert line["request_id"] == access_request.pk
        assert line["actor"] == event.actor
        assert (line["target"], line["scope"], line["incident"]) == (
            "bastion",
            "read",
            "INC-42",
        )
        assert "data" not in line
    by_event = {line["event"]: line for line in lines}
    assert by_event["request.created"]["grant_id"] is None
    for action in ("request.approved", "grant.issued", "credential.revealed"):
        assert by_event[action]["grant_id"] == grant_id
    assert by_event["grant.revoked"]["grant_id"] == grant_id
    text = "\n".join(json.dumps(line) for line in json_lines())
    assert credential["private_key"] not in text
    assert credential["certificate"].split()[1] not in text


def test_the_setting_makes_every_line_json(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "BREAKGLASS_", "DATABASE_"))
    }
    env.update(
        SECRET_KEY="json-logs-test",
        BREAKGLASS_VAR_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        BREAKGLASS_LOG_FORMAT="json",
    )
    script = (
        "import logging; logging.getLogger('breakglass.tasks')"
        ".warning('sweep: %s', {'ended': 1})"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines[-1]["message"] == "sweep: {'ended': 1}"
    assert lines[-1]["level"] == "WARNING"
    assert lines[-1]["name"] == "breakglass.tasks"
    assert "time" in lines[-1]
