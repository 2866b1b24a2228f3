"""Credential providers: one module per kind of target.

A provider knows targets, not requests or users. It takes the grant's snapshot of
the target and creates or removes one credential; both operations are idempotent.
"""

from .postgres import PostgresProvider
from .redis import RedisProvider
from .sealed import SealedProvider
from .ssh import SshProvider

PROVIDERS = {
    "postgres": PostgresProvider(),
    "redis": RedisProvider(),
    "ssh": SshProvider(),
    "sealed": SealedProvider(),
}


def provider_for(kind):
    return PROVIDERS[kind]
