"""Settings for Breakglass, read from the environment (see CONTRACT.md, section 1)."""

import re
import secrets
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import validate_email

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
VAR_DIR = Path(env.str("BREAKGLASS_VAR_DIR", default=str(BASE_DIR / "var")))


def _setting(name, parse, default):
    """Read one variable, stopping the process with its name if it is malformed."""
    try:
        return parse(name, default=default)
    except (ValueError, TypeError, ImproperlyConfigured):
        # Addresses may carry passwords: only other values are quoted back.
        shown = "" if name.endswith("_URL") else f" {env.str(name, default='')!r}"
        raise ImproperlyConfigured(f"{name} has an invalid value{shown}") from None


def _bool(name, default):
    """Read a yes/no variable; anything but a clear yes or no stops the process."""
    raw = env.str(name, default="")
    value = raw.strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def _positive(name, default):
    value = _setting(name, env.float, default)
    if not value > 0:
        raise ImproperlyConfigured(f"{name} must be a number of seconds above 0")
    return value


def _hours(name, default):
    """Read a number of hours above 0 and at most a year."""
    value = _setting(name, env.float, default)
    # The upper bound also refuses "inf", which no date can be moved by.
    if not 0 < value <= 366 * 24:
        raise ImproperlyConfigured(
            f"{name} must be a number of hours above 0 and at most {366 * 24}"
        )
    return value


def _url_list(name):
    urls = _setting(name, env.list, [])
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ImproperlyConfigured(
                f"{name} must hold http(s) addresses, not {url!r}"
            )
    return urls


DEMO = _bool("BREAKGLASS_DEMO", False)
DEBUG = _bool("DEBUG", False)
ALLOWED_HOSTS = _setting("ALLOWED_HOSTS", env.list, ["localhost", "127.0.0.1"])


def _secret_key():
    key = env.str("SECRET_KEY", default="")
    if key:
        return key
    if not DEMO:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set; set it, or use the demo run command, "
            "which keeps one under ./var/"
        )
    # The demo keeps its key on disk so sessions and sealed secrets survive restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "breakglass",
    "approvals",
    "axes",
]

MIDDLEWARE = [
    "breakglass.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so that it answers for a login refused anywhere above it.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "breakglass.urls"
WSGI_APPLICATION = "breakglass.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": _setting(
        "DATABASE_URL", env.db_url, f"sqlite:///{VAR_DIR / 'breakglass.sqlite3'}"
    )
}
if DATABASES["default"]["ENGINE"] not in (
    "django.db.backends.postgresql",
    "django.db.backends.sqlite3",
):
    raise ImproperlyConfigured(
        "DATABASE_URL must be a postgres:// (or postgresql://) or sqlite:/// address"
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A new PostgreSQL connection costs a backend process and an authentication:
    # each web worker keeps its own for a while (`?conn_max_age=` in DATABASE_URL
    # overrides), checked before reuse so a restarted database is not an error.
    DATABASES["default"].setdefault("CONN_MAX_AGE", 600)
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded database is shared by the web server, the worker and the
    # scheduler: wait for the write lock instead of failing at once.
    # IMMEDIATE transactions take the write lock at BEGIN, which serialises
    # writers of the audit chain the way the advisory lock does on PostgreSQL.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        }
    )
    if not str(DATABASES["default"]["NAME"]).startswith(":"):
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"

AUTHENTICATION_BACKENDS = [
    # First, so that a locked-out login is refused before its password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Password guessing, on the login pages and wherever a password is asked again:
# after this many wrong passwords for one username from one address, that pair is
# refused until the lockout has passed. Keyed on both, so that nobody can lock a
# user out from everywhere by guessing from one address.
AXES_FAILURE_LIMIT = _setting("BREAKGLASS_LOGIN_FAILURE_LIMIT", env.int, 5)
if AXES_FAILURE_LIMIT < 1:
    raise ImproperlyConfigured("BREAKGLASS_LOGIN_FAILURE_LIMIT must be at least 1")
_lockout_minutes = _setting("BREAKGLASS_LOGIN_LOCKOUT_MINUTES", env.float, 15.0)
if not 0 < _lockout_minutes <= 24 * 60:
    raise ImproperlyConfigured(
        "BREAKGLASS_LOGIN_LOCKOUT_MINUTES must be a number of minutes above 0 "
        "and at most a day"
    )
AXES_COOLOFF_TIME = timedelta(minutes=_lockout_minutes)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "breakglass.lockout.locked_out"
AXES_USERNAME_CALLABLE = "breakglass.lockout.attempted_username"
# A failed attempt keeps the form it came with: never its one-time codes.
AXES_SENSITIVE_PARAMETERS = [
    "username",
    "ip_address",
    "current_code",
    "otp",
    "code",
    "otp_token",
    "csrfmiddlewaretoken",
]
# The connecting address only: a forwarded-for header is whatever the client says.
AXES_CLIENT_IP_CALLABLE = "breakglass.lockout.client_address"

LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"

# Served over HTTPS unless told otherwise: the demo and DEBUG speak plain HTTP on
# the loopback, everything else gets secure cookies, a redirect and HSTS.
BREAKGLASS_HTTPS = _bool("BREAKGLASS_HTTPS", not (DEMO or DEBUG))
SECURE_SSL_REDIRECT = _bool("SECURE_SSL_REDIRECT", BREAKGLASS_HTTPS)
# Probes and scrapers ask each node directly, without TLS.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", BREAKGLASS_HTTPS)
CSRF_COOKIE_SECURE = _bool("CSRF_COOKIE_SECURE", BREAKGLASS_HTTPS)
SECURE_HSTS_SECONDS = _setting(
    "SECURE_HSTS_SECONDS", env.int, 365 * 24 * 3600 if BREAKGLASS_HTTPS else 0
)
if SECURE_HSTS_SECONDS < 0:
    raise ImproperlyConfigured("SECURE_HSTS_SECONDS must be 0 or more")
SECURE_HSTS_INCLUDE_SUBDOMAINS = _bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = _bool("SECURE_HSTS_PRELOAD", False)


def _proxy_ssl_header():
    """Read the header a TLS-terminating load balancer sets to `https`."""
    name = env.str("SECURE_PROXY_SSL_HEADER", default="").strip()
    if not name:
        return None
    if not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER must be a header name, not {name!r}"
        )
    return ("HTTP_" + name.upper().replace("-", "_"), "https")


# Trust it only behind a proxy that overwrites it: a client could send it too.
SECURE_PROXY_SSL_HEADER = _proxy_ssl_header()
CSRF_TRUSTED_ORIGINS = _url_list("CSRF_TRUSTED_ORIGINS")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "breakglass.api.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "breakglass.api.errors.handle_exception",
}
REST_KNOX = {"TOKEN_TTL": None, "AUTH_HEADER_PREFIX": "Token"}
SPECTACULAR_SETTINGS = {
    "TITLE": "Breakglass API",
    "DESCRIPTION": "Emergency access requests, approvals, grants and the audit trail.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # A review's status is its own enum; the request's keeps its name.
    "ENUM_NAME_OVERRIDES": {
        "StatusEnum": "breakglass.models.AccessRequest.Status",
        "ReviewStatusEnum": "breakglass.models.Review.Status",
    },
    # Blank text is refused on input: say so, so that clients and fuzzers know.
    "ENFORCE_NON_BLANK_FIELDS": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "breakglass.api.schema.empty_filters_are_absent",
    ],
}

# Celery: an embedded broker on disk unless CELERY_BROKER_URL names a real one.
CELERY_BROKER_URL = _setting("CELERY_BROKER_URL", env.str, "filesystem://")
if CELERY_BROKER_URL.split("://", 1)[0] not in (
    "filesystem",
    "redis",
    "rediss",
    "amqp",
    "amqps",
):
    raise ImproperlyConfigured(
        "CELERY_BROKER_URL must be a redis://, rediss:// or amqp:// address"
    )
CELERY_BROKER_TRANSPORT_OPTIONS = {}
if CELERY_BROKER_URL == "filesystem://":
    _queue_dir = VAR_DIR / "broker"
    _queue_dir.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "control_folder": str(_queue_dir / "control"),
    }
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Several schedulers may run: only the one holding the database lock sends.
CELERY_BEAT_SCHEDULER = "breakglass.scheduler:LockedScheduler"
BREAKGLASS_SWEEP_SECONDS = _positive("BREAKGLASS_SWEEP_SECONDS", 5.0)
# How long an API call that ends a grant waits for a worker to revoke it.
BREAKGLASS_REVOKE_WAIT_SECONDS = _setting(
    "BREAKGLASS_REVOKE_WAIT_SECONDS", env.float, 5.0
)
# How often every active grant's target is asked for new uses of its credential.
BREAKGLASS_DETECT_SECONDS = _positive("BREAKGLASS_DETECT_SECONDS", 2.0)
# How often every target is listed for `bg_` principals that no grant accounts for.
BREAKGLASS_RECONCILE_SECONDS = _positive("BREAKGLASS_RECONCILE_SECONDS", 60.0)

# Post-incident reviews: how long after a grant ends its review is due, and how
# often its requester is reminded once it is overdue.
BREAKGLASS_REVIEW_DUE_HOURS = _hours("BREAKGLASS_REVIEW_DUE_HOURS", 72.0)
BREAKGLASS_REVIEW_REMINDER_HOURS = _hours("BREAKGLASS_REVIEW_REMINDER_HOURS", 24.0)

# Alerts (CONTRACT.md, section 6).
BREAKGLASS_ALERT_WEBHOOK_URLS = _url_list("BREAKGLASS_ALERT_WEBHOOK_URLS")
BREAKGLASS_ALERT_WEBHOOK_SECRET = env.str("BREAKGLASS_ALERT_WEBHOOK_SECRET", default="")
if BREAKGLASS_ALERT_WEBHOOK_URLS and not BREAKGLASS_ALERT_WEBHOOK_SECRET:
    raise ImproperlyConfigured(
        "BREAKGLASS_ALERT_WEBHOOK_SECRET must be set when "
        "BREAKGLASS_ALERT_WEBHOOK_URLS is set: unsigned alerts could be forged"
    )
BREAKGLASS_ALERT_EMAILS = _setting("BREAKGLASS_ALERT_EMAILS", env.list, [])
for _address in BREAKGLASS_ALERT_EMAILS:
    try:
        validate_email(_address)
    except ValidationError:
        raise ImproperlyConfigured(
            f"BREAKGLASS_ALERT_EMAILS holds {_address!r}, which is not an address"
        ) from None
# Slack addresses and the PagerDuty key are secrets: a refusal never shows them.
BREAKGLASS_ALERT_SLACK_URLS = _setting("BREAKGLASS_ALERT_SLACK_URLS", env.list, [])
if not all(u.startswith(("http://", "https://")) for u in BREAKGLASS_ALERT_SLACK_URLS):
    raise ImproperlyConfigured(
        "BREAKGLASS_ALERT_SLACK_URLS must hold http(s) addresses only"
    )
BREAKGLASS_ALERT_PAGERDUTY_ROUTING_KEY = env.str(
    "BREAKGLASS_ALERT_PAGERDUTY_ROUTING_KEY", default=""
)
BREAKGLASS_ALERT_PAGERDUTY_URL = env.str(
    "BREAKGLASS_ALERT_PAGERDUTY_URL", default="https://events.pagerduty.com/v2/enqueue"
)
if not BREAKGLASS_ALERT_PAGERDUTY_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(
        "BREAKGLASS_ALERT_PAGERDUTY_URL must be an http(s) address, not "
        f"{BREAKGLASS_ALERT_PAGERDUTY_URL!r}"
    )
BREAKGLASS_ALERT_TIMEOUT_SECONDS = _setting(
    "BREAKGLASS_ALERT_TIMEOUT_SECONDS", env.float, 5.0
)
# The trail: a full verification this often, and a signed checkpoint of its head
# this often, with a key kept outside the database (the demo keeps one in ./var/).
BREAKGLASS_VERIFY_SECONDS = _positive("BREAKGLASS_VERIFY_SECONDS", 600.0)
BREAKGLASS_CHECKPOINT_SECONDS = _positive("BREAKGLASS_CHECKPOINT_SECONDS", 3600.0)
BREAKGLASS_CHECKPOINT_KEY_FILE = env.str(
    "BREAKGLASS_CHECKPOINT_KEY_FILE",
    default=str(VAR_DIR / "audit_checkpoint_key") if DEMO else "",
)
BREAKGLASS_CONFIG = env.str("BREAKGLASS_CONFIG", default="")
BREAKGLASS_BASE_URL = env.str("BREAKGLASS_BASE_URL", default="http://127.0.0.1:8000")
# SSH certificates start this long before their issuance, for servers whose clock
# runs behind ours.
BREAKGLASS_SSH_BACKDATE_SECONDS = _setting(
    "BREAKGLASS_SSH_BACKDATE_SECONDS", env.int, 60
)
if not 0 <= BREAKGLASS_SSH_BACKDATE_SECONDS <= 86400:
    raise ImproperlyConfigured(
        "BREAKGLASS_SSH_BACKDATE_SECONDS must be between 0 and 86400"
    )


def _sealing_keys():
    """Read the Fernet keys that seal shared credentials, newest first."""
    keys = _setting("BREAKGLASS_SEALING_KEYS", env.list, [])
    from cryptography.fernet import Fernet

    for index, key in enumerate(keys):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            # The keys are secrets: say which one is wrong, never what it holds.
            raise ImproperlyConfigured(
                f"BREAKGLASS_SEALING_KEYS: key {index + 1} is not a Fernet key "
                "(32 url-safe base64-encoded bytes)"
            ) from None
    return keys


# Sealed shared credentials: the keys they are encrypted with (comma-separated,
# newest first; older ones still open what they sealed until `manage.py reseal`),
# and how long a rotator may take before it counts as failed.
BREAKGLASS_SEALING_KEYS = _sealing_keys()
BREAKGLASS_ROTATOR_TIMEOUT_SECONDS = _positive(
    "BREAKGLASS_ROTATOR_TIMEOUT_SECONDS", 30.0
)

EMAIL_BACKEND = _setting(
    "EMAIL_BACKEND",
    env.str,
    "django.core.mail.backends.console.EmailBackend"
    if DEMO or DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = _setting("EMAIL_PORT", env.int, 25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = _bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="breakglass@localhost")

OTP_TOTP_ISSUER = "Breakglass"
# Device keys are second factors: not even admins get to read them back.
OTP_ADMIN_HIDE_SENSITIVE_DATA = True

# Operations: health, metrics and logs.
# The scheduler has a worker record a heartbeat this often; /readyz fails once
# the newest one is older than the staleness limit.
BREAKGLASS_HEARTBEAT_SECONDS = _positive("BREAKGLASS_HEARTBEAT_SECONDS", 15.0)
BREAKGLASS_HEARTBEAT_STALE_SECONDS = _positive(
    "BREAKGLASS_HEARTBEAT_STALE_SECONDS", 60.0
)
if BREAKGLASS_HEARTBEAT_STALE_SECONDS <= BREAKGLASS_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        "BREAKGLASS_HEARTBEAT_STALE_SECONDS must be longer than "
        "BREAKGLASS_HEARTBEAT_SECONDS"
    )
# How long /readyz waits for the database and the broker before calling them down.
BREAKGLASS_READY_TIMEOUT_SECONDS = _positive("BREAKGLASS_READY_TIMEOUT_SECONDS", 2.0)
# Empty: /metrics answers anyone who can reach it; set, only a scraper sending
# `Authorization: Bearer <token>`.
BREAKGLASS_METRICS_TOKEN = env.str("BREAKGLASS_METRICS_TOKEN", default="")
BREAKGLASS_LOG_FORMAT = env.str("BREAKGLASS_LOG_FORMAT", default="plain")
if BREAKGLASS_LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(
        f"BREAKGLASS_LOG_FORMAT must be plain or json, not {BREAKGLASS_LOG_FORMAT!r}"
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level"},
            "timestamp": False,
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": BREAKGLASS_LOG_FORMAT,
        }
    },
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
# Celery's own handlers would write its lines in its own format, not as JSON.
CELERY_WORKER_HIJACK_ROOT_LOGGER = BREAKGLASS_LOG_FORMAT != "json"
