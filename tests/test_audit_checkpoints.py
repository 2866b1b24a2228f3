"""Signed checkpoints and recorded verifications: a rewritten trail is still found."""

import json
from io import StringIO

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.core.management import call_command
from django.core.management.base import CommandError

from breakglass import alerts, audit, checkpoints
from breakglass.models import Alert, AuditEvent, ChainVerification

from .tampering import tamper


def _write_key(path):
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    return key


@pytest.fixture
def signing_key(tmp_path, settings):
    path = tmp_path / "checkpoint_key"
    key = _write_key(path)
    settings.BREAKGLASS_CHECKPOINT_KEY_FILE = str(path)
    return key


@pytest.fixture
def trail(db):
    for n in range(5):
        audit.record_event("config.applied", actor="ada", data={"n": n})


def _verify_audit(*args):
    out, err = StringIO(), StringIO()
    try:
        call_command("verify_audit", *args, stdout=out, stderr=err)
    except SystemExit as exit:
        return exit.code, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def _received(tmp_path, checkpoint_event):
    """Save the checkpoint as an auditor receives it: the webhook's JSON body."""
    path = tmp_path / f"checkpoint-{checkpoint_event.seq}.json"
    path.write_text(json.dumps(alerts.payload(checkpoint_event)))
    return path


def _rewrite_trail(events):
    """Replace the whole trail with a consistent chain of other events."""
    tamper("DELETE FROM breakglass_alert")
    tamper("TRUNCATE breakglass_auditevent CASCADE")
    for n in range(events):
        audit.record_event("config.applied", actor="mallory", data={"n": n})


def test_a_checkpoint_signs_the_head_and_goes_out_as_an_alert(
    trail, signing_key, settings
):
    settings.BREAKGLASS_ALERT_WEBHOOK_URLS = ["http://127.0.0.1:9/hook"]
    head = AuditEvent.objects.order_by("-seq").first()

    checkpoint = audit.sign_checkpoint()

    assert (checkpoint["seq"], checkpoint["hash"]) == (head.seq, head.hash)
    checkpoints.check_signature(checkpoint, signing_key.public_key())
    event = AuditEvent.objects.get(action="audit.checkpoint")
    assert event.seq == head.seq + 1
    assert event.data == checkpoint
    assert checkpoint["key"] == checkpoints.fingerprint(signing_key.public_key())
    assert Alert.objects.filter(event=event, channel="webhook").count() == 1
    assert audit.verify_chain() == (head.seq + 1, None)


def test_no_new_checkpoint_while_nothing_was_appended(trail, signing_key):
    assert audit.sign_checkpoint() is not None

    assert audit.sign_checkpoint() is None
    assert AuditEvent.objects.filter(action="audit.checkpoint").count() == 1


def test_signing_without_a_key_is_refused_clearly(trail, settings):
    settings.BREAKGLASS_CHECKPOINT_KEY_FILE = ""

    with pytest.raises(checkpoints.CheckpointError, match="not set"):
        audit.sign_checkpoint()
    with pytest.raises(CommandError, match="BREAKGLASS_CHECKPOINT_KEY_FILE"):
        call_command("audit_checkpoint")
    assert not AuditEvent.objects.filter(action="audit.checkpoint").exists()


def test_verify_audit_accepts_a_trail_that_holds_the_checkpoint(
    trail, signing_key, tmp_path
):
    audit.sign_checkpoint()
    received = _received(tmp_path, AuditEvent.objects.get(action="audit.checkpoint"))
    audit.record_event("config.applied", actor="ada", data={"n": "later"})

    code, out, err = _verify_audit("--checkpoint", str(received))

    assert (code, err) == (0, "")
    assert "7 events checked" in out
    assert "checkpoint at seq 5" in out and "matches" in out


def test_a_rewritten_trail_verifies_alone_but_not_against_the_checkpoint(
    trail, signing_key, tmp_path
):
    audit.sign_checkpoint()
    received = _received(tmp_path, AuditEvent.objects.get(action="audit.checkpoint"))

    _rewrite_trail(8)

    assert _verify_audit()[0] == 0
    code, _, err = _verify_audit("--checkpoint", str(received))
    assert code == 1
    assert "event seq 5" in err and "rewritten" in err


@pytest.mark.parametrize("kept", [0, 3])
def test_a_truncated_trail_is_found_by_the_checkpoint(
    trail, signing_key, tmp_path, kept
):
    audit.sign_checkpoint()
    received = _received(tmp_path, AuditEvent.objects.get(action="audit.checkpoint"))
    tamper("DELETE FROM breakglass_alert")
    if kept:
        tamper("DELETE FROM breakglass_auditevent WHERE seq > %s", [kept])
    else:
        tamper("TRUNCATE breakglass_auditevent CASCADE")

    code, _, err = _verify_audit("--checkpoint", str(received))

    assert code == 1
    assert f"ends at seq {kept}, before checkpoint seq 5" in err


def test_a_checkpoint_signed_by_another_key_is_refused(trail, signing_key, tmp_path):
    other = ed25519.Ed25519PrivateKey.generate()
    head = AuditEvent.objects.order_by("-seq").first()
    forged = checkpoints.sign(other, seq=head.seq, hash=head.hash, signed_at=head.at)
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))

    code, _, err = _verify_audit("--checkpoint", str(path))

    assert code == 1
    assert "signature does not verify" in err


def test_a_checkpoint_checks_against_a_given_public_key(trail, signing_key, tmp_path):
    audit.sign_checkpoint()
    received = _received(tmp_path, AuditEvent.objects.get(action="audit.checkpoint"))
    public = tmp_path / "checkpoint.pub"
    out = StringIO()
    call_command("audit_checkpoint", "--public-key", stdout=out)
    public.write_text(out.getvalue())

    code, out, _ = _verify_audit(
        "--checkpoint", str(received), "--public-key", str(public)
    )

    assert code == 0
    assert checkpoints.fingerprint(signing_key.public_key()) in out


@pytest.mark.parametrize(
    "content, problem",
    [
        ("not json", "not a JSON document"),
        ('{"seq": 5}', "no checkpoint found"),
        ("[1, 2]", "no checkpoint found"),
    ],
)
def test_a_bad_checkpoint_file_is_a_clear_error(
    trail, signing_key, tmp_path, content, problem
):
    path = tmp_path / "bad.json"
    path.write_text(content)

    with pytest.raises(CommandError, match=problem):
        call_command("verify_audit", "--checkpoint", str(path))


def test_a_tampered_checkpoint_is_refused(trail, signing_key, tmp_path):
    checkpoint = audit.sign_checkpoint()
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps({**checkpoint, "seq": 4}))

    code, _, err = _verify_audit("--checkpoint", str(path))

    assert code == 1
    assert "signature does not verify" in err


def test_swapped_events_are_found_at_the_first_moved_one(trail):
    tamper("UPDATE breakglass_auditevent SET seq = -seq WHERE seq IN (2, 4)")
    tamper("UPDATE breakglass_auditevent SET seq = 4 WHERE seq = -2")
    tamper("UPDATE breakglass_auditevent SET seq = 2 WHERE seq = -4")

    assert audit.verify_chain()[1] == 2
    code, _, err = _verify_audit()
    assert code == 1 and "seq 2" in err


def test_a_break_is_alerted_once_as_critical(trail, settings):
    settings.BREAKGLASS_ALERT_WEBHOOK_URLS = ["http://127.0.0.1:9/hook"]
    assert audit.verify_and_record().first_bad is None
    tamper("UPDATE breakglass_auditevent SET actor = 'mallory' WHERE seq = 3")

    first = audit.verify_and_record()
    again = audit.verify_and_record()

    assert (first.first_bad, again.first_bad) == (3, 3)
    broken = AuditEvent.objects.filter(action="audit.chain_broken")
    assert [e.data for e in broken] == [{"first_bad": 3, "checked": 3}]
    assert alerts.severity("audit.chain_broken") == "critical"
    assert Alert.objects.filter(event=broken.get()).count() == 1


def test_pages_check_only_what_was_appended_since_the_last_full_check(trail):
    verified = audit.verify_and_record()
    assert (verified.checked, verified.head_seq) == (5, 5)
    audit.record_event("config.applied", actor="ada", data={"n": 5})

    assert audit.chain_state()["checked"] == 6
    assert audit.chain_state()["first_bad"] is None

    tamper("UPDATE breakglass_auditevent SET actor = 'mallory' WHERE seq = 6")
    assert audit.chain_state()["first_bad"] == 6


def test_a_full_check_is_recorded_by_verify_audit(trail):
    _verify_audit()

    recorded = ChainVerification.objects.get()
    assert (recorded.checked, recorded.first_bad, recorded.head_seq) == (5, None, 5)


def test_the_canonical_content_is_compact_sorted_ascii_json(db):
    event = audit.record_event(
        "config.applied",
        actor='ad"a\\',
        subject={"incident": "INC-1\n", "target": "é", "requester": "\u2028"},
        data={"z": [1, 2.5, None, True], "a": {"ü": "\x01\t"}},
    )
    content = {
        "seq": event.seq,
        "at": event.at.isoformat(timespec="microseconds"),
        "actor": event.actor,
        "action": event.action,
        "request": None,
        "incident": event.incident,
        "target": event.target,
        "scope": event.scope,
        "requester": event.requester,
        "data": event.data,
        "prev_hash": event.prev_hash,
    }

    expected = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    assert audit.canonical_content(event) == expected
    stored = AuditEvent.objects.get(pk=event.pk)
    assert audit.canonical_content(stored) == expected
    assert audit.verify_chain() == (1, None)


@pytest.mark.parametrize("kept", [0, 3])
def test_a_trail_cut_after_a_recorded_verification_is_found(trail, kept):
    assert audit.verify_and_record().head_seq == 5
    tamper("DELETE FROM breakglass_alert")
    tamper("DELETE FROM breakglass_auditevent WHERE seq > %s", [kept])

    assert audit.chain_state()["first_bad"] == 5
    code, _, err = _verify_audit()
    # Found again, and alerted once, however many events follow.
    audit.record_event("config.applied", actor="ada", data={})
    again = audit.verify_and_record()

    assert code == 1
    assert "seq 5" in err and "an earlier verification saw" in err
    assert again.first_bad == 5
    broken = AuditEvent.objects.get(action="audit.chain_broken")
    assert broken.data["first_bad"] == 5


def test_a_trail_rewritten_after_a_recorded_verification_is_found(trail):
    audit.verify_and_record()

    _rewrite_trail(8)

    assert audit.chain_state()["first_bad"] == 5
    code, _, err = _verify_audit()
    assert code == 1
    assert "seq 5 (config.applied" in err
    assert "not the event an earlier verification saw" in err


def test_a_verification_records_the_head_it_checked(trail):
    verified = audit.verify_and_record()

    head = AuditEvent.objects.get(seq=5)
    assert (verified.head_seq, verified.head_hash) == (5, head.hash)


def test_a_verification_of_an_empty_trail_lets_the_trail_grow(db):
    assert audit.verify_and_record().head_seq == 0
    audit.record_event("config.applied", actor="ada", data={})

    assert audit.chain_state() == {
        "checked": 1,
        "first_bad": None,
        "full_check_at": ChainVerification.objects.get().checked_at,
    }
