import sys

from django.core.management.base import BaseCommand

from breakglass import audit
from breakglass.models import AuditEvent


class Command(BaseCommand):
    help = "Check the audit trail's hash chain; exit 1 naming the first broken event."

    def handle(self, *args, **options):
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
