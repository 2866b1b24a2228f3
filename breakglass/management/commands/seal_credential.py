import sys
import termios

from django.core.management.base import BaseCommand, CommandError
from django.views.decorators.debug import sensitive_variables

from breakglass import rotation
from breakglass.errors import BreakglassError


@sensitive_variables("secret")
def _read_secret(stdin, prompt):
    """Read the first line of stdin; typed at a terminal, without echoing it."""
    if not stdin.isatty():
        return stdin.readline()
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    quiet = termios.tcgetattr(fd)
    quiet[3] &= ~termios.ECHO
    # Echo goes off before the prompt invites typing, and comes back even if
    # reading is interrupted.
    termios.tcsetattr(fd, termios.TCSADRAIN, quiet)
    try:
        prompt.write("Secret (not shown): ")
        prompt.flush()
        return stdin.readline()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        prompt.write("\n")


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

    @sensitive_variables("secret")
    def handle(self, *args, **options):
        secret = _read_secret(sys.stdin, self.stderr)
        try:
            credential = rotation.seal_credential(
                options["target"], secret, actor=options["actor"]
            )
        except BreakglassError as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(
            f"sealed the secret of {credential.target.name}; its rotation is queued"
        )
