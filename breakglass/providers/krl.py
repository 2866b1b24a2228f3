"""OpenSSH key revocation lists (KRL): the serials of recalled certificates.

The list is built by OpenSSH's own `ssh-keygen -k` from a state file kept beside
it (`<list>.json`) that remembers each recalled certificate, its CA and its end;
a certificate is dropped from the list once it would have expired anyway. Writers
hold a lock file (`<list>.lock`) so that two recalls at once both land, and each
file is replaced atomically so that sshd never reads half of one.
"""

import errno
import fcntl
import json
import os
import subprocess
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from ..errors import ProviderError

LOCK_TIMEOUT_SECONDS = 30


def recall(path, *, ca_public_key, serial, valid_until, key_id, now):
    """Put a certificate in the revocation list at `path` and publish the list.

    `ca_public_key` is the signing CA's public key in OpenSSH format. Entries of
    other certificates are kept until their `valid_until` has passed.
    """
    path = Path(path)
    entry = {
        "ca": ca_public_key,
        "serial": serial,
        "valid_until": valid_until.isoformat(),
        "key_id": key_id,
    }
    with _locked(path):
        entries = [
            e
            for e in _read_state(path)
            if _valid_until(e, path) > now
            and (e["ca"], e["serial"]) != (ca_public_key, serial)
        ]
        entries.append(entry)
        # The state first: if the list then fails, the retry rebuilds it with
        # this certificate; the other way round a retry could drop it.
        _replace(path, _state_path(path), _write_json(entries))
        _replace(path, path, _build_list(entries))


def recalled_serials(path):
    """Return the serials the state beside the list at `path` holds."""
    return [e["serial"] for e in _read_state(Path(path))]


def _state_path(path):
    return path.with_name(path.name + ".json")


def _read_state(path):
    state = _state_path(path)
    try:
        data = json.loads(state.read_text())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ProviderError(f"cannot read {state}: {exc.strerror}") from None
    except ValueError:
        raise ProviderError(f"{state} is not a revocation state file") from None
    entries = data.get("certificates") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ProviderError(f"{state} is not a revocation state file")
    return entries


def _valid_until(entry, path):
    try:
        return datetime.fromisoformat(entry["valid_until"])
    except (KeyError, TypeError, ValueError):
        raise ProviderError(
            f"{_state_path(path)} holds an entry without a valid end"
        ) from None


@contextmanager
def _locked(path):
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = open(lock_path, "a")
    except OSError as exc:
        raise ProviderError(
            f"cannot open the revocation list's lock {lock_path}: {exc.strerror}"
        ) from None
    with handle:
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise ProviderError(
                        f"{lock_path} stayed locked for {LOCK_TIMEOUT_SECONDS} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_json(entries):
    def write(temporary):
        text = json.dumps({"certificates": entries}, indent=1, sort_keys=True)
        temporary.write_text(text + "\n")

    return write


def _build_list(entries):
    def write(temporary):
        by_ca = {}
        for entry in entries:
            by_ca.setdefault(entry["ca"], []).append(entry["serial"])
        with tempfile.TemporaryDirectory(prefix="breakglass-krl-") as work:
            work = Path(work)
            # One section per CA: a serial means something only under its CA.
            for number, (ca, serials) in enumerate(by_ca.items()):
                ca_file = work / f"ca{number}.pub"
                ca_file.write_text(ca + "\n")
                spec = work / f"spec{number}"
                spec.write_text("".join(f"serial: {s}\n" for s in serials))
                update = ["-u"] if number else []
                _ssh_keygen(
                    "-k", *update, "-f", str(temporary), "-s", str(ca_file), str(spec)
                )

    return write


def _ssh_keygen(*args):
    try:
        result = subprocess.run(
            ["ssh-keygen", "-q", *args], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        raise ProviderError("ssh-keygen is not installed") from None
    except subprocess.TimeoutExpired:
        raise ProviderError("ssh-keygen took too long to build the list") from None
    if result.returncode != 0:
        first_line = (result.stderr.strip().splitlines() or ["no message"])[0]
        raise ProviderError(f"ssh-keygen could not build the list: {first_line}")


def _replace(path, destination, write):
    """Write through `write` into a file beside `path`, then move it into place."""
    try:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise ProviderError(
            f"cannot write the revocation list in {path.parent}: {exc.strerror}"
        ) from None
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        # mkstemp makes the file private; neither file is secret, and the tools
        # that copy the list to the servers must read it.
        os.chmod(temporary, 0o644)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, destination)
    except OSError as exc:
        raise ProviderError(f"cannot write {destination}: {exc.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
