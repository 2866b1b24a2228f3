from django.core.management.base import BaseCommand

from breakglass import rotation


class Command(BaseCommand):
    help = (
        "Encrypt every sealed secret again with the newest of "
        "BREAKGLASS_SEALING_KEYS, after which older keys can be removed."
    )

    def handle(self, *args, **options):
        count = rotation.reseal_all()
        self.stdout.write(f"resealed {count} sealed credential(s)")
