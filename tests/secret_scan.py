"""Every test that issues a credential checks that its secrets went nowhere else.

Secrets are remembered when they are sealed or unsealed in this process, and read
back from any grant still holding one (a worker process issued it). At the end of
the test, every audit event, every alert, the alert bodies a webhook received,
every email, every log line of this process and of the test's worker are
searched for them.
"""

import json

from django.core import mail

from breakglass import sealing, vault
from breakglass.models import Alert, AuditEvent, Grant, SealedCredential

SECRET_FIELDS = ("password", "private_key")

issued = set()


def remember(credential):
    for field in SECRET_FIELDS:
        value = credential.get(field) if isinstance(credential, dict) else None
        if value:
            issued.add(value)


_seal, _unseal = sealing.seal, sealing.unseal


def _sealing(credential):
    remember(credential)
    return _seal(credential)


def _unsealing(token):
    credential = _unseal(token)
    remember(credential)
    return credential


sealing.seal, sealing.unseal = _sealing, _unsealing

_vault_seal, _vault_unseal = vault.seal, vault.unseal


def _vault_sealing(secret):
    issued.add(secret)
    return _vault_seal(secret)


def _vault_unsealing(token):
    secret = _vault_unseal(token)
    issued.add(secret)
    return secret


vault.seal, vault.unseal = _vault_sealing, _vault_unsealing


def secrets_of_the_test():
    for sealed in Grant.objects.exclude(sealed_credential=None).values_list(
        "sealed_credential", flat=True
    ):
        remember(_unseal(sealed))
    for row in SealedCredential.objects.values_list("secret", "pending_secret"):
        issued.update(_vault_unseal(token) for token in row if token is not None)
    return set(issued)


def produced_texts(*, log_text="", worker=None, receiver=None):
    """Yield (where, text) for everything the test produced that others can read."""
    for event in AuditEvent.objects.order_by("seq").values():
        yield f"event {event['seq']}", json.dumps(event, default=str)
    for alert in Alert.objects.values():
        yield f"alert {alert['id']}", json.dumps(alert, default=str)
    for message in getattr(mail, "outbox", []):
        yield "email", f"{message.subject}\n{message.body}"
    yield "log", log_text
    if worker is not None:
        yield "worker log", worker.log()
    if receiver is not None:
        for delivery in receiver.deliveries:
            yield "webhook delivery", delivery.body.decode(errors="replace")


def _forms(secret):
    """Return the ways a secret can appear: as is, JSON-escaped, a key's lines."""
    forms = {secret, json.dumps(secret)[1:-1]}
    forms.update(
        line for line in secret.splitlines() if len(line) >= 40 and "-----" not in line
    )
    return forms


def leaks(secrets, texts):
    found = []
    for where, text in texts:
        for secret in secrets:
            if any(form in text for form in _forms(secret)):
                kind = "key" if "PRIVATE KEY" in secret else "password"
                found.append(f"{where} holds an issued {kind}")
    return found
