"""Sealed: a shared secret checked out by one grant at a time.

Nothing is created on the system for a grant: the grant reveals the sealed
secret, and its end makes a rotation due (see breakglass/rotation.py). This
provider only says how to reach the system and which sessions it shows.
"""

from .base import Provider
from .rotators import rotator_for, sessions_of


class SealedProvider(Provider):
    kind = "sealed"

    def issue(self, snapshot, *, principal, expires_at, key_id, public_key=""):
        rotator = snapshot["rotator"]
        # The secret itself is added at reveal, from the sealed credential.
        return {
            "kind": self.kind,
            "username": rotator.get("username", ""),
            **rotator_for(rotator).connection(rotator),
            "expires_at": expires_at.isoformat(),
        }

    def revoke(self, snapshot, *, principal):
        # The secret is replaced by the rotation the grant's end makes due.
        return None

    def sessions(self, snapshot, *, principal):
        return sessions_of(snapshot["rotator"])
