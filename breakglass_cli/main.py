"""The `breakglass` command: parse, call the API, print, exit with a stable code."""

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from . import config
from .client import (
    NOT_AUTHENTICATED,
    OK,
    REFUSED,
    UNAVAILABLE,
    USAGE,
    Client,
    Failure,
)

EPILOG = """\
exit codes: 0 done; 1 refused by the server (its code is printed); 2 bad usage;
3 not logged in, or the token is refused; 4 server unreachable or failing.
environment: BREAKGLASS_URL and BREAKGLASS_TOKEN override the saved login.
"""


def main(argv=None):
    parser = _parser()
    arguments = parser.parse_args(argv)
    try:
        return arguments.run(arguments)
    except Failure as failure:
        if arguments.json and failure.body is not None:
            _print_json(failure.body)
        code = f" ({failure.code})" if failure.code else ""
        print(f"breakglass: {failure.detail}{code}", file=sys.stderr)
        return failure.exit_code
    except config.ConfigError as exc:
        print(f"breakglass: {exc}", file=sys.stderr)
        return NOT_AUTHENTICATED
    except KeyboardInterrupt:
        return 130


def _options(default):
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--server",
        default=default(None),
        help="the Breakglass address (default: the saved login)",
    )
    options.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the API's JSON answer as it is",
    )
    return options


def _parser():
    # Accepted before and after the command; after it, an option left out must
    # not reset what was given before it.
    common = _options(lambda value: argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="breakglass",
        description="Ask for, approve and use emergency access to production.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_options(lambda value: value)],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, run, help_text):
        sub = commands.add_parser(
            name, help=help_text, description=help_text, parents=[common]
        )
        sub.set_defaults(run=run)
        return sub

    login = command("login", _login, "save the server's address and your API token")
    login.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the token from the first line of standard input",
    )
    command("logout", _logout, "forget the saved token")

    request = command("request", _request, "ask for access to a target's scope")
    request.add_argument("target")
    request.add_argument("scope")
    request.add_argument("--minutes", type=int, required=True)
    request.add_argument("--incident", required=True)
    request.add_argument("--reason", required=True)
    request.add_argument(
        "--public-key",
        type=Path,
        metavar="FILE",
        help="ssh: certify this public key instead of a generated one",
    )

    for name, run, verb in (
        ("approve", _approve, "approve"),
        ("deny", _deny, "deny"),
    ):
        vote = command(name, run, f"{verb} a request with a code from your device")
        vote.add_argument("id", type=int)
        vote.add_argument("--otp", help="the 6-digit code (asked for when left out)")
        vote.add_argument("--comment", default="")

    status = command("status", _status, "show a request, or the requests you can see")
    status.add_argument("id", type=int, nargs="?")
    status.add_argument("--status", dest="status_filter", metavar="STATUS")
    status.add_argument("--target")
    status.add_argument("--incident")

    credential = command(
        "credential", _credential, "reveal a request's credential (only once)"
    )
    credential.add_argument("id", type=int)
    credential.add_argument(
        "--save",
        type=Path,
        metavar="DIR",
        help="ssh: write the certificate (and generated key) into DIR",
    )

    revoke = command("revoke", _revoke, "end a request's access now")
    revoke.add_argument("id", type=int)
    revoke.add_argument("--reason", default="")

    cancel = command("cancel", _cancel, "withdraw a request before it is issued")
    cancel.add_argument("id", type=int)
    return parser


def _client(arguments):
    server, token = config.resolve(arguments.server)
    if server and not token:
        raise Failure(
            NOT_AUTHENTICATED,
            f"not logged in to {server}: run `breakglass login` or set "
            "BREAKGLASS_TOKEN",
            code="not_configured",
        )
    return Client(server, token)


def _login(arguments):
    server, _ = config.resolve(arguments.server)
    if not server:
        raise Failure(
            USAGE, "name the server: breakglass login --server https://...", code=""
        )
    if arguments.token_stdin:
        token = sys.stdin.readline().strip()
    else:
        token = getpass.getpass(f"API token for {server}: ").strip()
    if not token:
        raise Failure(USAGE, "no token given")

    # Checked before it is saved, so that a typo is not found at 3 a.m.
    Client(server, token).get("requests/", params={"limit": 1})
    saved = config.save({"server": server, "token": token})
    _say(arguments, {"server": server, "config": str(saved)}, f"Logged in to {server}.")
    return OK


def _logout(arguments):
    saved = config.load()
    saved.pop("token", None)
    file = config.save(saved)
    _say(arguments, {"config": str(file)}, "Logged out.")
    return OK


def _request(arguments):
    body = {
        "target": arguments.target,
        "scope": arguments.scope,
        "duration_minutes": arguments.minutes,
        "incident": arguments.incident,
        "reason": arguments.reason,
    }
    if arguments.public_key:
        try:
            body["public_key"] = arguments.public_key.read_text().strip()
        except OSError as exc:
            raise Failure(
                USAGE, f"cannot read {arguments.public_key}: {exc.strerror}"
            ) from None
    created = _client(arguments).post("requests/", body)
    _say(arguments, created, _describe(created))
    return OK


def _approve(arguments):
    return _vote(arguments, "approve")


def _deny(arguments):
    return _vote(arguments, "deny")


def _vote(arguments, verb):
    client = _client(arguments)
    code = arguments.otp or getpass.getpass("Code from your device: ").strip()
    answer = client.post(
        f"requests/{arguments.id}/{verb}/",
        {"otp": code, "comment": arguments.comment},
    )
    _say(arguments, answer, _describe(answer))
    return OK


def _status(arguments):
    client = _client(arguments)
    if arguments.id is not None:
        found = client.get(f"requests/{arguments.id}/")
        _say(arguments, found, _describe(found, full=True))
        return OK

    filters = {
        "status": arguments.status_filter,
        "target": arguments.target,
        "incident": arguments.incident,
    }
    found = client.get(
        "requests/", params={k: v for k, v in filters.items() if v is not None}
    )
    text = "\n".join(_describe(item) for item in found) or "No requests."
    _say(arguments, found, text)
    return OK


def _credential(arguments):
    client = _client(arguments)
    files = None
    if arguments.save is not None:
        # Checked before the reveal: the credential is shown only once, so a
        # file in the way must not cost it.
        files = _ssh_files(arguments.save, arguments.id)
    credential = client.post(f"requests/{arguments.id}/credential/")
    saved = []
    if files is not None:
        if credential.get("kind") != "ssh":
            print(
                "breakglass: --save writes ssh certificates only; printing instead",
                file=sys.stderr,
            )
        else:
            try:
                saved = _save_ssh(credential, *files)
            except OSError as exc:
                # Revealed already: printing it is the only way left to keep it.
                print(f"breakglass: cannot write: {exc}; printing", file=sys.stderr)
    if arguments.json:
        _print_json(credential)
        return OK

    for name, value in credential.items():
        if saved and name in ("certificate", "private_key"):
            continue
        if isinstance(value, list):
            value = ", ".join(value)
        if "\n" in str(value).strip():
            print(f"{name}:\n{str(value).rstrip()}")
        else:
            print(f"{name}: {value}")
    for path in saved:
        print(f"wrote {path}")
    return OK


def _ssh_files(directory, request_id):
    """Return the key and certificate paths in `directory`, which must be free."""
    key = directory / f"breakglass-{request_id}"
    certificate = directory / f"breakglass-{request_id}-cert.pub"
    for path in (key, certificate):
        if path.exists():
            raise Failure(USAGE, f"{path} exists already; nothing was revealed")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise Failure(USAGE, f"cannot create {directory}: {exc.strerror}") from None
    return key, certificate


def _save_ssh(credential, key, certificate):
    """Write the key (when generated) and its certificate as ssh expects them."""
    written = []
    if credential.get("private_key"):
        _write_private(key, credential["private_key"])
        written.append(key)
    _write_private(certificate, credential["certificate"])
    written.append(certificate)
    return written


def _write_private(path, text):
    text = text if text.endswith("\n") else text + "\n"
    # Never readable by others, not even between creating and writing.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _revoke(arguments):
    answer = _client(arguments).post(
        f"requests/{arguments.id}/revoke/", {"reason": arguments.reason}
    )
    _say(arguments, answer, _describe(answer))
    return OK


def _cancel(arguments):
    answer = _client(arguments).post(f"requests/{arguments.id}/cancel/")
    _say(arguments, answer, _describe(answer))
    return OK


def _describe(found, *, full=False):
    approvals = [a for a in found.get("approvals", []) if a["decision"] == "approved"]
    line = (
        f"#{found['id']} {found['status']}: {found['target']}/{found['scope']} "
        f"for {found['duration_minutes']} min, {found['incident']}, "
        f"by {found['requester']}, "
        f"approvals {len(approvals)}/{found['approvals_required']}"
    )
    if found.get("expires_at"):
        line += f", expires {found['expires_at']}"
    if not full:
        return line
    lines = [line, f"  reason: {found['reason']}"]
    for approval in found.get("approvals", []):
        comment = f": {approval['comment']}" if approval.get("comment") else ""
        lines.append(
            f"  {approval['decision']} by {approval['approver']} "
            f"at {approval['at']}{comment}"
        )
    for name in ("created_at", "approval_deadline", "issued_at", "ended_at"):
        if found.get(name):
            lines.append(f"  {name.replace('_', ' ')}: {found[name]}")
    return "\n".join(lines)


def _say(arguments, answer, text):
    if arguments.json:
        _print_json(answer)
    else:
        print(text)


def _print_json(answer):
    json.dump(answer, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


__all__ = ["main", "OK", "REFUSED", "USAGE", "NOT_AUTHENTICATED", "UNAVAILABLE"]
