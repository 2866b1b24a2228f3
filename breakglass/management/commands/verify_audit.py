import json
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from breakglass import audit, checkpoints, offline
from breakglass.models import AuditEvent


class Command(BaseCommand):
    help = (
        "Check the audit trail's hash chain; exit 1 naming the first broken event. "
        "With --checkpoint, also check that the trail still holds a signed head; "
        "with --file, check an exported trail instead of the database."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--file",
            metavar="PATH",
            help="verify a CSV or JSON export of the trail instead of the database",
        )
        parser.add_argument(
            "--filtered",
            action="store_true",
            help="with --file: the CSV export was filtered, gaps are allowed",
        )
        parser.add_argument(
            "--checkpoint",
            metavar="FILE",
            help="a checkpoint as received: the alert's JSON body, or its data",
        )
        parser.add_argument(
            "--public-key",
            metavar="FILE",
            help="the OpenSSH public key that signs checkpoints (default: the "
            "public half of BREAKGLASS_CHECKPOINT_KEY_FILE)",
        )

    def handle(self, *args, checkpoint=None, public_key=None, **options):
        if options["file"]:
            self._verify_export(options["file"], filtered=options["filtered"])
            return
        signed = None
        if checkpoint:
            signed = _read_checkpoint(checkpoint)
            public = _public_key(public_key)

        verification = audit.verify_and_record()
        checked, first_bad = verification.checked, verification.first_bad
        if first_bad is not None:
            event = AuditEvent.objects.filter(seq=first_bad).first()
            if event is None:
                what = ""
                why = "it is missing, though an earlier verification saw it"
            else:
                what = f" ({event.action} at {event.at.isoformat()})"
                why = (
                    "its hash or its link to the previous event does not match, "
                    "or it is not the event an earlier verification saw there"
                )
            self.stderr.write(
                f"audit trail broken at event seq {first_bad}{what}: {why} "
                f"({checked} events checked)"
            )
            sys.exit(1)
        if signed is not None:
            try:
                audit.check_against_checkpoint(signed, public)
            except checkpoints.CheckpointError as exc:
                self.stderr.write(f"audit trail does not match its checkpoint: {exc}")
                sys.exit(1)
        self.stdout.write(f"audit trail intact: {checked} events checked")
        if signed is not None:
            self.stdout.write(
                f"checkpoint at seq {signed['seq']} signed at {signed['signed_at']} "
                f"matches (key {checkpoints.fingerprint(public)})"
            )

    def _verify_export(self, path, *, filtered):
        try:
            result = offline.verify_file(path, filtered=filtered)
        except offline.UnreadableExport as exc:
            raise CommandError(str(exc)) from None
        if not result.ok:
            self.stderr.write(offline.describe(result, path))
            sys.exit(1)
        self.stdout.write(offline.describe(result, path))


def _read_checkpoint(path):
    try:
        document = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise CommandError(f"{path}: not a JSON document") from None
    try:
        return checkpoints.read_checkpoint(document)
    except checkpoints.CheckpointError as exc:
        raise CommandError(f"{path}: {exc}") from None


def _public_key(path):
    try:
        if path:
            return checkpoints.load_public_key(Path(path).read_text())
        if not settings.BREAKGLASS_CHECKPOINT_KEY_FILE:
            raise CommandError(
                "give --public-key: BREAKGLASS_CHECKPOINT_KEY_FILE is not set"
            )
        return checkpoints.load_signing_key().public_key()
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror}") from None
    except checkpoints.CheckpointError as exc:
        raise CommandError(str(exc)) from None
