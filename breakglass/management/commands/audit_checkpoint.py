import json

from django.core.management.base import BaseCommand, CommandError

from breakglass import audit, checkpoints


class Command(BaseCommand):
    help = (
        "Sign the audit trail's head now and send it out as an audit.checkpoint "
        "alert; with --public-key, print the key auditors check checkpoints with."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--public-key",
            action="store_true",
            help="print the OpenSSH public key of BREAKGLASS_CHECKPOINT_KEY_FILE",
        )

    def handle(self, *args, public_key=False, **options):
        try:
            if public_key:
                key = checkpoints.load_signing_key().public_key()
                self.stdout.write(checkpoints.public_key_text(key))
                return
            checkpoint = audit.sign_checkpoint()
        except checkpoints.CheckpointError as exc:
            raise CommandError(str(exc)) from None
        if checkpoint is None:
            self.stdout.write("nothing appended since the last checkpoint")
            return
        self.stdout.write(json.dumps(checkpoint, sort_keys=True))
