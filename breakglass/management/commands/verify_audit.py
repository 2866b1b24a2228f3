import sys

from django.core.management.base import BaseCommand, CommandError

from breakglass import audit, offline
from breakglass.models import AuditEvent


class Command(BaseCommand):
    help = "Check the audit trail's hash chain; exit 1 naming the first broken event."

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

    def handle(self, *args, **options):
        if options["file"]:
            self._verify_export(options["file"], filtered=options["filtered"])
            return
        checked, first_bad = audit.verify_chain()
        if first_bad is None:
            self.stdout.write(f"audit trail intact: {checked} events checked")
            return
        event = AuditEvent.objects.filter(seq=first_bad).first()
        what = f" ({event.action} at {event.at.isoformat()})" if event else ""
        self.stderr.write(
            f"audit trail broken at event seq {first_bad}{what}: its hash or its link "
            f"to the previous event does not match ({checked} events checked)"
        )
        sys.exit(1)

    def _verify_export(self, path, *, filtered):
        try:
            result = offline.verify_file(path, filtered=filtered)
        except offline.UnreadableExport as exc:
            raise CommandError(str(exc)) from None
        if not result.ok:
            self.stderr.write(offline.describe(result, path))
            sys.exit(1)
        self.stdout.write(offline.describe(result, path))
