import sys

from django.core.management.base import BaseCommand, CommandError

from breakglass import rotation
from breakglass.errors import BreakglassError


class Command(BaseCommand):
    help = (
        "Seal the shared secret of a sealed target, read from the first line of "
        "standard input, and rotate it at once so that the typed value stops working."
    )

    def add_arguments(self, parser):
        parser.add_argument("target", help="name of a target of kind sealed")
        parser.add_argument(
            "--actor", default="system", help="who sealed it, for the trail"
        )

    def handle(self, *args, **options):
        secret = sys.stdin.readline()
        try:
            credential = rotation.seal_credential(
                options["target"], secret, actor=options["actor"]
            )
        except BreakglassError as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(
            f"sealed the secret of {credential.target.name}; its rotation is queued"
        )
