"""The `breakglass` command, run as on a laptop, against a live server.

Alice asks for the bastion from her terminal, Bob and Carol approve with codes
from their phones, the worker signs a certificate, Alice reveals it into files
ssh reads, and revokes it when she is done. Oscar, an outsider, is refused.
"""

import json
import os
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from knox.models import AuthToken

from breakglass.models import Alert, AuditEvent
from tests.conftest import make_target, otp_code
from tests.fixtures.server import free_port
from tests.fixtures.waiting import wait_until
from tests.fixtures.webhook import WebhookReceiver
from tests.flows import CA_ENV, make_ssh_ca, open_request

pytestmark = pytest.mark.django_db(transaction=True)

CLI = Path(sys.executable).with_name("breakglass")
REASON = "deploy stuck on web-3"


class Terminal:
    """One person's shell: their own home directory and configuration."""

    def __init__(self, home, environment=None):
        self.home = home
        home.mkdir(exist_ok=True)
        self.environment = environment or {}

    @property
    def config_file(self):
        return self.home / ".config" / "breakglass" / "config.json"

    def run(self, *arguments, stdin=""):
        # No Django settings, no database: only what a laptop would have.
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            **self.environment,
        }
        return subprocess.run(
            [str(CLI), *arguments],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )


def _token(user):
    return AuthToken.objects.create(user=user, expiry=None)[1]


def _logged_in(tmp_path, name, user, server):
    terminal = Terminal(tmp_path / name)
    token = _token(user)
    done = terminal.run("login", "--server", server.url, "--token-stdin", stdin=token)
    assert done.returncode == 0, done.stderr
    assert token not in done.stdout + done.stderr
    return terminal


def _with_token(tmp_path, name, user, server):
    """A shell that names the server and token in its environment instead."""
    return Terminal(
        tmp_path / name,
        {"BREAKGLASS_URL": server.url, "BREAKGLASS_TOKEN": _token(user)},
    )


def _json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def ca_key(tmp_path, monkeypatch):
    return make_ssh_ca(tmp_path, monkeypatch)


@pytest.fixture
def slack_receiver():
    receiver = WebhookReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def worker_env(ca_key, slack_receiver):
    return {
        CA_ENV: str(ca_key),
        "BREAKGLASS_ALERT_SLACK_URLS": slack_receiver.url,
        "BREAKGLASS_BASE_URL": "https://breakglass.example.com",
    }


@pytest.fixture
def bastion(db, ca_key, tmp_path):
    target = make_target("bastion", "ssh", grants=["ops"], approvals=2, ca_env=CA_ENV)
    target.revocation_list_path = str(tmp_path / "revoked.krl")
    target.save(update_fields=["revocation_list_path"])
    return target


@pytest.mark.worker
def test_from_request_to_revocation_in_the_terminal(
    alice, bob, carol, bastion, worker, api_server, slack_receiver, tmp_path
):
    as_alice = _logged_in(tmp_path, "alice", alice, api_server)
    as_bob = _with_token(tmp_path, "bob", bob, api_server)
    as_carol = _with_token(tmp_path, "carol", carol, api_server)

    mode = as_alice.config_file.stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert json.loads(as_alice.config_file.read_text())["server"] == api_server.url

    created = _json(
        as_alice.run(
            "request", "bastion", "read", "--minutes", "30",
            "--incident", "INC-42", "--reason", REASON, "--json",
        )
    )  # fmt: skip
    request_id = created["id"]
    assert (created["status"], created["requester"]) == ("pending", "alice")

    first = as_bob.run("approve", str(request_id), "--otp", otp_code(bob))
    assert first.returncode == 0, first.stderr
    assert f"#{request_id} pending" in first.stdout
    assert "approvals 1/2" in first.stdout
    code = otp_code(carol)
    second = as_carol.run("--json", "approve", str(request_id), "--otp", code)
    assert _json(second)["status"] in ("approved", "active")

    wait_until(
        lambda: (
            _json(as_alice.run("status", str(request_id), "--json"))["status"]
            == "active"
        ),
        timeout=30,
        what="the request to become active",
    )
    listed = as_alice.run("status")
    assert listed.returncode == 0, listed.stderr
    assert f"#{request_id} active: bastion/read" in listed.stdout
    shown = as_alice.run("status", str(request_id))
    assert f"reason: {REASON}" in shown.stdout
    assert "approved by bob" in shown.stdout and "approved by carol" in shown.stdout

    # A file in the way is found before the credential is revealed.
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / f"breakglass-{request_id}-cert.pub").write_text("old")
    refused = as_alice.run("credential", str(request_id), "--save", str(blocked))
    assert refused.returncode == 2
    assert "nothing was revealed" in refused.stderr

    keys = tmp_path / "keys"
    revealed = as_alice.run("credential", str(request_id), "--save", str(keys))
    assert revealed.returncode == 0, revealed.stderr
    key = keys / f"breakglass-{request_id}"
    certificate = keys / f"breakglass-{request_id}-cert.pub"
    for path in (key, certificate):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert f"wrote {path}" in revealed.stdout
    assert "PRIVATE KEY" not in revealed.stdout
    assert "kind: ssh" in revealed.stdout
    inspected = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(certificate)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "ops" in inspected.stdout
    # The saved key is the one certified.
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(key)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    assert f"Public key: ED25519-CERT {fingerprint}" in inspected.stdout

    again = as_alice.run("--json", "credential", str(request_id))
    assert again.returncode == 1
    assert "(credential_already_revealed)" in again.stderr
    assert json.loads(again.stdout)["code"] == "credential_already_revealed"

    revoked = as_alice.run("revoke", str(request_id), "--reason", "done")
    assert revoked.returncode == 0, revoked.stderr
    wait_until(
        lambda: (
            _json(as_alice.run("status", str(request_id), "--json"))["status"]
            == "revoked"
        ),
        timeout=15,
        what="the request to be revoked",
    )

    trail = AuditEvent.objects.filter(request_id=request_id).order_by("seq")
    assert [(e.action, e.actor) for e in trail][:7] == [
        ("request.created", "alice"),
        ("approval.approved", "bob"),
        ("approval.approved", "carol"),
        ("request.approved", "carol"),
        ("grant.issued", "system"),
        ("credential.revealed", "alice"),
        ("grant.revoked", "alice"),
    ]

    # The chat hears of every step, with a link to the request.
    wait_until(
        lambda: not Alert.objects.filter(delivered_at__isnull=True).exists(),
        timeout=30,
        what="every alert to be delivered",
    )
    messages = [delivery.json() for delivery in slack_receiver.deliveries]
    assert sorted(m["text"].split(":")[0] for m in messages) == sorted(
        f"[breakglass] {event.action}" for event in AuditEvent.objects.all()
    )
    link = f"<https://breakglass.example.com/requests/{request_id}/|"
    assert all(link in m["blocks"][0]["text"]["text"] for m in messages)


@pytest.fixture
def pending(alice, bob, bastion):
    return open_request(alice, incident="INC-7")


def test_refusals_exit_with_their_codes(
    alice, bob, carol, oscar, pending, api_server, tmp_path
):
    as_alice = _logged_in(tmp_path, "alice", alice, api_server)
    as_bob = _with_token(tmp_path, "bob", bob, api_server)
    as_carol = _with_token(tmp_path, "carol", carol, api_server)
    as_oscar = _with_token(tmp_path, "oscar", oscar, api_server)

    own = as_alice.run("approve", str(pending.pk), "--otp", "123456")
    assert own.returncode == 1
    assert "(self_approval)" in own.stderr

    wrong_code = as_bob.run("--json", "approve", str(pending.pk), "--otp", "000000")
    assert wrong_code.returncode == 1
    assert json.loads(wrong_code.stdout)["code"] == "otp_invalid"

    hidden = as_oscar.run("status", str(pending.pk))
    assert hidden.returncode == 1
    assert "(not_found)" in hidden.stderr

    outsider = as_oscar.run(
        "request", "bastion", "read", "--minutes", "30",
        "--incident", "INC-7", "--reason", REASON,
    )  # fmt: skip
    assert outsider.returncode == 1
    assert "(not_eligible)" in outsider.stderr

    too_long = as_alice.run(
        "request", "bastion", "read", "--minutes", "0",
        "--incident", "INC-7", "--reason", REASON,
    )  # fmt: skip
    assert too_long.returncode == 1
    assert "(invalid)" in too_long.stderr
    assert "duration_minutes" in too_long.stderr

    # Without --otp, the code is asked for. Carol's: bob's wrong code rests his
    # device for a second, which a fast run would hit.
    denied = as_carol.run("deny", str(pending.pk), stdin=otp_code(carol) + "\n")
    assert denied.returncode == 0, denied.stderr
    assert f"#{pending.pk} denied" in denied.stdout
    late = as_alice.run("cancel", str(pending.pk))
    assert late.returncode == 1
    assert "(wrong_state)" in late.stderr or "(already_decided)" in late.stderr

    assert AuditEvent.objects.filter(
        request=pending, action="request.denied", actor="carol"
    ).exists()


def test_cancel_from_the_terminal(alice, pending, api_server, tmp_path):
    as_alice = _logged_in(tmp_path, "alice", alice, api_server)

    cancelled = _json(as_alice.run("cancel", str(pending.pk), "--json"))

    assert cancelled["status"] == "cancelled"
    assert AuditEvent.objects.filter(
        request=pending, action="request.cancelled", actor="alice"
    ).exists()


def test_without_a_valid_login_exit_3(alice, api_server, tmp_path):
    nobody = Terminal(tmp_path / "nobody")
    assert nobody.run("status").returncode == 3

    bad = Terminal(tmp_path / "bad")
    refused = bad.run(
        "login", "--server", api_server.url, "--token-stdin", stdin="not-a-token\n"
    )
    assert refused.returncode == 3
    assert "(not_authenticated)" in refused.stderr
    # A refused token is never saved.
    assert not bad.config_file.exists()

    stale = Terminal(
        tmp_path / "stale",
        {"BREAKGLASS_URL": api_server.url, "BREAKGLASS_TOKEN": "0" * 64},
    )
    assert stale.run("status").returncode == 3


def test_a_saved_token_goes_only_to_its_server(alice, api_server, tmp_path):
    as_alice = _logged_in(tmp_path, "alice", alice, api_server)
    elsewhere = _Recorder(200, b"[]")

    try:
        other = as_alice.run("status", "--server", elsewhere.url)
    finally:
        elsewhere.close()

    assert other.returncode == 3
    assert elsewhere.headers == []
    assert as_alice.run("status").returncode == 0


def test_logout_forgets_the_token(alice, api_server, tmp_path):
    as_alice = _logged_in(tmp_path, "alice", alice, api_server)

    assert as_alice.run("logout").returncode == 0

    assert "token" not in json.loads(as_alice.config_file.read_text())
    assert as_alice.run("status").returncode == 3


class _Recorder:
    """A server that records the headers it gets and answers one fixed reply."""

    def __init__(self, status, body):
        self.headers = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                recorder.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, format, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_an_unreachable_or_failing_server_exits_4(tmp_path):
    shell = Terminal(
        tmp_path / "alice",
        {"BREAKGLASS_URL": f"http://127.0.0.1:{free_port()}", "BREAKGLASS_TOKEN": "t"},
    )
    down = shell.run("status")
    assert down.returncode == 4
    assert "Connection refused" in down.stderr

    failing = _Recorder(502, b"<html>Bad Gateway</html>")
    try:
        answer = shell.run("status", "--server", failing.url)
    finally:
        failing.close()
    assert answer.returncode == 4
    assert "HTTP 502" in answer.stderr
    # The token goes only where it was sent on purpose.
    assert failing.headers[0]["Authorization"] == "Token t"


def test_usage_errors_exit_2(tmp_path):
    shell = Terminal(tmp_path / "alice")

    assert shell.run("approve").returncode == 2
    assert shell.run("request", "bastion").returncode == 2
    assert shell.run("status", "seventeen").returncode == 2
