from django.core.management.base import BaseCommand, CommandError

from breakglass.configfile import ConfigError, apply_file


class Command(BaseCommand):
    help = "Apply a targets-and-policies YAML file (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("path", help="the YAML file")

    def handle(self, *args, path, **options):
        try:
            names = apply_file(path)
        except ConfigError as exc:
            raise CommandError(f"{path}: {exc}") from None
        self.stdout.write(f"{path}: applied {len(names)} target(s): {', '.join(names)}")
