"""Where the client keeps the server's address and the user's API token."""

import json
import os
import stat
from pathlib import Path

import platformdirs

URL_ENV = "BREAKGLASS_URL"
TOKEN_ENV = "BREAKGLASS_TOKEN"


class ConfigError(Exception):
    """The configuration file is unreadable or holds something else than expected."""


def path():
    """Return the configuration file's path (~/.config/breakglass/config.json)."""
    return Path(platformdirs.user_config_dir("breakglass")) / "config.json"


def load():
    """Return the saved settings, or an empty mapping when nothing is saved."""
    file = path()
    try:
        text = file.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    try:
        saved = json.loads(text)
    except ValueError:
        raise ConfigError(f"{file} is not valid JSON") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{file} must hold a JSON object")
    return saved


def is_private(file):
    """Tell whether only the owner may read the file."""
    return not file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)


def save(settings):
    """Write the settings so that only the owner can read them, replacing any."""
    file = path()
    file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = file.with_name(f".{file.name}.{os.getpid()}")
    # Created 0600 from the start: the token is never readable by others, even
    # for the moment between writing and renaming.
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(settings, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(staged, file)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return file


def resolve(server_option=None):
    """Return (server URL, token) from the option, the environment and the file."""
    saved = load()
    saved_server = str(saved.get("server") or "").rstrip("/")
    server = (server_option or os.environ.get(URL_ENV) or saved_server).rstrip("/")
    token = os.environ.get(TOKEN_ENV, "")
    if not token and server == saved_server:
        # A saved token goes only to the server it was saved for, never to
        # another one named with --server or BREAKGLASS_URL.
        token = str(saved.get("token") or "")
    return server, token
