import hashlib
import io
import json
import os
import secrets
from base64 import b32encode
from dataclasses import dataclass
from pathlib import Path

import psycopg
import qrcode
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from breakglass import configfile, roles
from breakglass.models import Target

from .create_user import TOTP_DEVICE_NAME

CA_KEY_ENV = "BREAKGLASS_DEMO_CA_KEY_FILE"
PG_DSN_ENV = "BREAKGLASS_DEMO_PG_DSN"
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_CONNECT_TIMEOUT_SECONDS = 2
LOGINS_FILE = "demo-logins.json"


@dataclass(frozen=True)
class Person:
    username: str
    role: str
    groups: tuple = ()
    totp: bool = False


PEOPLE = (
    Person("alice", roles.REQUESTER, ("oncall",)),
    Person("bob", roles.APPROVER, ("sre-leads",), totp=True),
    Person("carol", roles.APPROVER, ("sre-leads",), totp=True),
    Person("cora", roles.COMPLIANCE),
    Person("ada", roles.ADMIN, totp=True),
)

POLICY = {
    "approvals_required": 2,
    "approver_groups": ["sre-leads"],
    "requester_groups": ["oncall"],
    "max_duration_minutes": 60,
    "approval_window_minutes": 30,
    "incident_pattern": "^INC-[0-9]+$",
}
BASTION = {
    "name": "bastion",
    "kind": "ssh",
    "environment": "production",
    "ca_key_env": CA_KEY_ENV,
    "scopes": [
        {"name": "root", "grants": ["root"]},
        {"name": "deploy", "grants": ["deploy"]},
    ],
    "policy": POLICY,
}
DEMO_DB = {
    "name": "demo-db",
    "kind": "postgres",
    "environment": "production",
    "connection_env": PG_DSN_ENV,
    "scopes": [{"name": "read", "grants": ["pg_read_all_data"]}],
    "policy": POLICY,
}


class Command(BaseCommand):
    help = (
        "Seed the demo (people, an SSH target with its CA, a PostgreSQL target when "
        "one is reachable) and print how to log in. Idempotent; demo mode only."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--qr",
            action="store_true",
            help="print the approvers' TOTP QR codes again",
        )

    def handle(self, *args, qr, **options):
        if not settings.DEMO:
            raise CommandError(
                "seed_demo creates users and prints their passwords; it runs only "
                "in demo mode (BREAKGLASS_DEMO=1)"
            )
        var_dir = Path(settings.VAR_DIR)
        logins_path = var_dir / LOGINS_FILE
        ca_key_path = Path(
            os.environ.get(CA_KEY_ENV) or var_dir / "ssh_ca" / "bastion_ca"
        )
        ca_created = _ensure_ca_key(ca_key_path)
        checkpoint_key = settings.BREAKGLASS_CHECKPOINT_KEY_FILE
        if checkpoint_key:
            _ensure_ed25519_key(Path(checkpoint_key), "breakglass-demo-checkpoints")
        pg_problem = _postgres_problem(os.environ.get(PG_DSN_ENV) or DEFAULT_PG_DSN)

        with transaction.atomic():
            logins = _read_logins(logins_path)
            people, new_devices, skipped = self._seed_people(logins)
            # The file is written before the users commit: a password in the file
            # without its user is harmless, a user whose password nobody knows is not.
            _write_logins(logins_path, logins)
            new_targets = self._seed_targets(
                with_postgres=pg_problem is None,
                revocation_list=ca_key_path.parent / "revoked_keys",
            )

        self._print_logins(people, skipped, logins, logins_path)
        self._print_devices(people, show_qr=qr, new_devices=new_devices)
        self._print_targets(new_targets, ca_key_path, ca_created, pg_problem)

    def _seed_people(self, logins):
        """Create the demo people that are missing; return them and what was new."""
        User = get_user_model()
        people, new_devices, skipped = [], set(), []
        for person in PEOPLE:
            user = User.objects.filter(username=person.username).first()
            if user is None:
                user = User(username=person.username)
                password = logins.get(person.username) or _new_password()
                user.set_password(password)
                logins[person.username] = password
            elif person.username not in logins:
                # Someone else's account of the same name: leave it alone.
                skipped.append(person.username)
                continue
            user.email = user.email or f"{person.username}@example.com"
            user.is_staff = user.is_superuser = person.role == roles.ADMIN
            user.save()

            names = list(person.groups)
            if person.role != roles.ADMIN:
                names.append(person.role)
            user.groups.add(*[Group.objects.get_or_create(name=n)[0] for n in names])

            device = None
            if person.totp:
                device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
                if device is None:
                    device = TOTPDevice.objects.create(
                        user=user, name=TOTP_DEVICE_NAME, confirmed=True
                    )
                    new_devices.add(person.username)
            people.append((person, user, device))
        return people, new_devices, skipped

    def _seed_targets(self, *, with_postgres, revocation_list):
        """Create the demo targets that do not exist yet; return their names."""
        # The demo's servers would read this list (RevokedKeys), so ending an
        # SSH grant early recalls its certificate.
        bastion = {**BASTION, "revocation_list_path": str(revocation_list.resolve())}
        wanted = [bastion] + ([DEMO_DB] if with_postgres else [])
        missing = [
            t for t in wanted if not Target.objects.filter(name=t["name"]).exists()
        ]
        if not missing:
            return []
        text = yaml.safe_dump({"targets": missing}, sort_keys=False)
        source = {
            "name": "seed_demo",
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        return configfile.apply(configfile.load(text), source=source)

    def _print_logins(self, people, skipped, logins, logins_path):
        write = self.stdout.write
        write(f"Demo logins (web passwords, also kept in {logins_path}):")
        for person, _, _ in people:
            what = person.role + (
                f" in {', '.join(person.groups)}" if person.groups else ""
            )
            write(
                f"  {person.username:<6} {what:<28} password: {logins[person.username]}"
            )
        for username in skipped:
            write(
                f"  {username:<6} already existed before the demo was seeded: "
                "left as it was"
            )

    def _print_devices(self, people, *, show_qr, new_devices):
        write = self.stdout.write
        with_devices = [(p, d) for p, _, d in people if d is not None]
        if not with_devices:
            return
        write("")
        write("TOTP authenticators (add the secret to an app to get the codes):")
        for person, device in with_devices:
            secret = b32encode(device.bin_key).decode()
            write(f"  {person.username:<6} secret: {secret}")
            write(f"         {device.config_url}")
            if show_qr or person.username in new_devices:
                if person.role == roles.APPROVER:
                    write(_qr_code(device.config_url, tty=self.stdout.isatty()))
        if not show_qr:
            write("  (manage.py seed_demo --qr prints the approvers' QR codes again)")

    def _print_targets(self, new_targets, ca_key_path, ca_created, pg_problem):
        write = self.stdout.write
        write("")
        for name in new_targets:
            write(f"Created target {name}.")
        if ca_created:
            write(
                f"Created the demo SSH CA key {ca_key_path} (kept private, mode 0600)."
            )
        write(
            f"SSH target bastion: servers that trust {ca_key_path}.pub "
            "(TrustedUserCAKeys) accept its certificates."
        )
        if pg_problem is None:
            write("PostgreSQL target demo-db: reachable.")
        elif Target.objects.filter(name=DEMO_DB["name"]).exists():
            write(f"PostgreSQL target demo-db: not reachable now ({pg_problem}).")
        else:
            write(f"No PostgreSQL target: {pg_problem}.")
        if pg_problem is None and not os.environ.get(PG_DSN_ENV):
            write(f"The worker needs {PG_DSN_ENV} set to issue for demo-db.")


def _new_password():
    return secrets.token_urlsafe(12)


def _read_logins(path):
    try:
        with open(path) as handle:
            logins = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: cannot read the demo logins: {exc}") from None
    if not isinstance(logins, dict):
        raise CommandError(f"{path}: the demo logins must be a JSON object")
    return logins


def _write_logins(path, logins):
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(logins, handle, indent=2)
        handle.write("\n")
    os.chmod(partial, 0o600)
    os.replace(partial, path)


def _ensure_ca_key(path):
    """Create the demo SSH CA key (ed25519) unless it exists; return if it did."""
    return _ensure_ed25519_key(path, "breakglass-demo-ca")


def _ensure_ed25519_key(path, comment):
    """Create an Ed25519 key pair at `path` unless it exists; return if it did."""
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private)
    Path(f"{path}.pub").write_bytes(public + f" {comment}\n".encode())
    return True


def _postgres_problem(dsn):
    """Return why the demo cannot use PostgreSQL at `dsn`, or None if it can."""
    try:
        with psycopg.connect(dsn, connect_timeout=PG_CONNECT_TIMEOUT_SECONDS) as conn:
            can_create, has_role = conn.execute(
                "SELECT rolsuper OR rolcreaterole, "
                "EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_read_all_data') "
                "FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            where = f"{conn.info.host}:{conn.info.port}"
    except psycopg.ProgrammingError:
        # Its message may quote the connection string, password included.
        return f"{PG_DSN_ENV} is not a valid connection string"
    except psycopg.Error as exc:
        # A connection failure names the host and port, never the password.
        reason = (str(exc).strip().splitlines() or ["unknown error"])[0]
        return f"no PostgreSQL server answered ({reason})"
    if not can_create:
        return f"the PostgreSQL user at {where} cannot create roles"
    if not has_role:
        return f"PostgreSQL at {where} is older than 14 (no pg_read_all_data)"
    return None


class _Terminal(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def _qr_code(uri, *, tty):
    code = qrcode.QRCode(border=2)
    code.add_data(uri)
    out = _Terminal(tty)
    # On a terminal, draw with explicit colours; elsewhere, light modules as blocks
    # (the usual dark background).
    code.print_ascii(out=out, tty=tty, invert=True)
    return out.getvalue().rstrip("\n")
