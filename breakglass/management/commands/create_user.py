import json
import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice
from knox.models import AuthToken

from breakglass import audit, roles, users

TOTP_DEVICE_NAME = "authenticator"


class Command(BaseCommand):
    help = "Create or update a user; print one JSON object (CONTRACT.md, section 2)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--role", action="append", required=True, choices=roles.ROLES
        )
        parser.add_argument("--group", action="append", default=[])
        parser.add_argument("--email", default=None)
        parser.add_argument("--password-stdin", action="store_true")
        parser.add_argument("--totp", action="store_true")
        parser.add_argument("--token", action="store_true")

    def handle(self, *args, **options):
        username = options["username"].strip()
        User = get_user_model()
        field = User._meta.get_field(User.USERNAME_FIELD)
        try:
            field.run_validators(username)
            if not username or len(username) > field.max_length:
                raise ValidationError(
                    f"must be 1 to {field.max_length} characters long"
                )
        except ValidationError as exc:
            raise CommandError(
                f"username {username!r}: {' '.join(exc.messages)}"
            ) from None
        clash = (
            User.objects.filter(username__iexact=username)
            .exclude(username=username)
            .first()
        )
        if clash is not None:
            # Names that differ only by case are too easy to mistake in a trail.
            raise CommandError(
                f"username {username!r}: {clash.username!r} exists already"
            )
        password = None
        if options["password_stdin"]:
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise CommandError("no password on standard input")
        if options["email"]:
            try:
                validate_email(options["email"])
            except ValidationError:
                raise CommandError(
                    f"--email: {options['email']!r} is not an address"
                ) from None

        with transaction.atomic():
            user, created = User.objects.get_or_create(username=username)
            before = None if created else users.access_of(user)
            if password is not None:
                try:
                    validate_password(password, user)
                except ValidationError as exc:
                    raise CommandError("password: " + " ".join(exc.messages)) from None
                user.set_password(password)
            elif created:
                user.set_unusable_password()
            if options["email"]:
                user.email = options["email"]
            wanted = set(options["role"])
            user.is_staff = user.is_superuser = roles.ADMIN in wanted
            user.save()

            role_groups = [r for r in roles.ROLES if r != roles.ADMIN]
            user.groups.remove(*Group.objects.filter(name__in=role_groups))
            for name in [r for r in wanted if r != roles.ADMIN] + options["group"]:
                user.groups.add(Group.objects.get_or_create(name=name)[0])
            users.record_access_change(user, before, actor=audit.SYSTEM)

            result = {"username": user.username}
            if options["totp"]:
                # One authenticator per user from this command: a new one replaces it.
                TOTPDevice.objects.filter(user=user, name=TOTP_DEVICE_NAME).delete()
                device = TOTPDevice.objects.create(
                    user=user, name=TOTP_DEVICE_NAME, confirmed=True
                )
                result["totp_uri"] = device.config_url
            if options["token"]:
                _, result["token"] = AuthToken.objects.create(user=user, expiry=None)

        self.stdout.write(json.dumps(result))
