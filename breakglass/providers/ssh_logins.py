"""Logins with a grant's SSH certificate, read from the sshd log of the target."""

import hashlib
import re
from datetime import datetime

from .. import clock
from ..errors import ProviderError
from .base import Session

# sshd logs an accepted certificate as "Accepted publickey for USER from ADDR port
# PORT ssh2: TYPE-CERT FINGERPRINT ID KEY_ID (serial N) CA TYPE FINGERPRINT". The
# message starts the line (sshd -E) or follows the syslog tag ("sshd[42]: "), so
# that a user name quoted in another message cannot pass for a login.
_ACCEPTED = re.compile(
    r"(?:^|\]: )Accepted publickey for (?P<user>\S+) from (?P<host>\S+) "
    r"port (?P<port>\d+) ssh2: \S+-CERT\S* \S+ ID (?P<key_id>.*) "
    r"\(serial (?P<serial>\d+)\) CA "
)
# Syslog daemons that write RFC 3339 times (rsyslog's default on Debian).
_TIMESTAMP = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d))\s"
)


def accepted_logins(path, *, principal, serial=None):
    """Return the logins in the log with the grant's certificate.

    The certificate is known by its serial, or by its key id, which ends with
    "grant <principal>" (the principal's random tail names one grant).
    """
    if not path:
        return []
    names_grant = re.compile(rf"(?:^|\s)grant {re.escape(principal)}$")
    logins = []
    offset = 0
    try:
        with open(path, "rb") as log:
            for raw in log:
                start, offset = offset, offset + len(raw)
                if b"Accepted publickey" not in raw:
                    continue
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                match = _ACCEPTED.search(line)
                if match and (
                    names_grant.search(match["key_id"])
                    or (serial is not None and int(match["serial"]) == serial)
                ):
                    logins.append(_session(line, start, match))
    except OSError as exc:
        raise ProviderError(
            f"cannot read the sshd log {path}: {exc.strerror}"
        ) from None
    return logins


def _session(line, offset, match):
    host = match["host"]
    if ":" in host:
        host = f"[{host}]"
    digest = hashlib.sha256(f"{offset}:{line}".encode()).hexdigest()
    return Session(
        # The same line at the same place in the log is the same login.
        key=f"log line {digest[:32]}",
        source_address=f"{host}:{match['port']}",
        used_at=_logged_at(line) or clock.now(),
        details={"user": match["user"], "serial": int(match["serial"])},
    )


def _logged_at(line):
    found = _TIMESTAMP.match(line)
    if not found:
        return None
    try:
        value = datetime.fromisoformat(found[1])
    except ValueError:
        return None
    return value if value.tzinfo else None
