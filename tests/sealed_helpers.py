"""Helpers shared by the sealed-credential tests: targets, sealing, the secret."""

import io
import sys

from django.core.management import call_command

from breakglass import vault
from breakglass.models import SealedCredential

from .conftest import make_target

COMMAND_ENV = "BG_TEST_SEALED_COMMAND"


def make_sealed_target(name, rotator, **options):
    target = make_target(name, "sealed", grants=[], **options)
    target.rotator = rotator
    target.save(update_fields=["rotator"])
    return target


def make_appliance(tmp_path, monkeypatch, **options):
    """A sealed target whose command stores the secret it is given in a file."""
    stored = tmp_path / "secret"
    script = tmp_path / "set-secret"
    script.write_text(f'#!/bin/sh\nread -r secret\nprintf %s "$secret" > {stored}\n')
    script.chmod(0o700)
    monkeypatch.setenv(COMMAND_ENV, str(script))
    target = make_sealed_target(
        "appliance",
        {"kind": "command", "command_env": COMMAND_ENV, "username": "admin"},
        **options,
    )
    return target, stored


def seal(target_name, secret):
    """Seal a secret the way an operator does: typed into the command."""
    stdin, sys.stdin = sys.stdin, io.StringIO(secret + "\n")
    try:
        call_command("seal_credential", target_name, stdout=io.StringIO())
    finally:
        sys.stdin = stdin


def current_secret(target):
    return vault.unseal(SealedCredential.objects.get(target=target).secret)
