import os
from dataclasses import dataclass, field
from datetime import datetime

from ..errors import ProviderError

# Every credential the product creates on a target is named with this prefix.
PRINCIPAL_PREFIX = "bg_"


@dataclass(frozen=True)
class Session:
    """One session or login the target shows for a credential."""

    # Stable for the life of the session, so that each one is recorded once.
    key: str
    source_address: str
    used_at: datetime
    details: dict = field(default_factory=dict)


class Provider:
    """Create and remove per-grant credentials on one kind of target."""

    kind = None

    def issue(self, snapshot, *, principal, expires_at, key_id, public_key=""):
        """Create the credential and return it, secret included."""
        raise NotImplementedError

    def revoke(self, snapshot, *, principal):
        """Remove the credential and cut its sessions; succeed if already gone."""
        raise NotImplementedError

    def principals(self, snapshot):
        """Return the names of the `bg_` principals the target holds now."""
        return []

    def sessions(self, snapshot, *, principal):
        """Return the sessions or logins the target shows for the credential."""
        return []

    def sessions_of(self, snapshots):
        """Return the sessions of several credentials on one target, by principal.

        `snapshots` maps each principal to its grant's snapshot. A provider that
        can list a target's sessions at once asks it once for all of them.
        """
        return {
            principal: self.sessions(snapshot, principal=principal)
            for principal, snapshot in snapshots.items()
        }


def env_value(name, what):
    """Return the value of the environment variable the target names."""
    if not name:
        raise ProviderError(f"the target names no environment variable for its {what}")
    value = os.environ.get(name, "")
    if not value:
        raise ProviderError(f"environment variable {name} ({what}) is not set")
    return value
