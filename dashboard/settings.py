"""Settings for the fleet dashboard: one file, configured through the environment.

With nothing configured it runs on SQLite in `.run/` and expects `make run` to have started an
embedded Redis; `DATABASE_URL` and `REDIS_URL` switch to real servers.
"""

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(os.environ.get("RUN_DIR", BASE_DIR / ".run"))


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def database_from_url(url: str) -> dict:
    """postgres://user:pass@host:port/name or sqlite:///path (relative paths are under RUN_DIR)."""
    if not url:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": RUN_DIR / "db.sqlite3",
            "OPTIONS": {
                # Web server, worker and beat write concurrently: WAL plus IMMEDIATE transactions
                # turn "database is locked" into a short wait.
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # A file, not memory: integration tests run a Celery worker in another process.
            # Per process, so two test runs in one checkout never share a database.
            "TEST": {"NAME": RUN_DIR / f"test-{os.getpid()}.sqlite3"},
        }
    parts = urlsplit(url)
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 60),
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": options,
        }
    if parts.scheme == "sqlite":
        # sqlite:////abs/path.db is absolute; sqlite:///name.db lives in RUN_DIR.
        path = unquote(parts.path)
        name = Path("/" + path.lstrip("/")) if path.startswith("//") else RUN_DIR / path.lstrip("/")
        return database_from_url("") | {"NAME": name}
    raise ValueError(f"Unsupported DATABASE_URL scheme: {parts.scheme!r}")


# Device push secrets derive from it: `manage.py check --deploy` warns while it is this default.
SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-key-change-me-in-production-0123456789")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [
    h for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost,.localhost,testserver").split(",") if h
]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_filters",
    "guardian",
    "dashboard",
    "fleets",
    "devices",
]

MIDDLEWARE = [
    "devices.middleware.PublicDeviceUrlMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
WSGI_APPLICATION = "dashboard.wsgi.application"

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

DATABASES = {"default": database_from_url(env_str("DATABASE_URL"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
# Fleet roles use guardian's direct foreign-key tables, not the generic ones.
GUARDIAN_RAISE_403 = False
ANONYMOUS_USER_NAME = None

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 4}},
]
# A hand selection posts up to devices.views.MAX_SELECTED_IDS (1,000) ids plus the form's own fields,
# more than Django's default of 1,000 fields: above this the dashboard's 400 page answers.
DATA_UPLOAD_MAX_NUMBER_FIELDS = 2000

LOGIN_URL = "/accounts/login/"
LOGIN_MAX_FAILURES = env_int("LOGIN_MAX_FAILURES", 5)
LOGIN_LOCKOUT_S = env_int("LOGIN_LOCKOUT_S", 300)
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = RUN_DIR / "staticfiles"

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads it to send X-CSRFToken
X_FRAME_OPTIONS = "DENY"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "fleetdash"),
        # A page must not hang on a Redis that is gone: fail fast, callers fall back.
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 2},
    }
}

# Celery: late acks + idempotent deliveries so a killed worker never loses or doubles an action.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_VISIBILITY_TIMEOUT_S = env_int("CELERY_VISIBILITY_TIMEOUT_S", 300)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # A message a killed worker held comes back after this long (late acks).
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT_S,
    # kombu looks for such messages every interval x throttle seconds, 10 x 10 by default: up to 100 s
    # more before a killed worker's batches are sent again. Every tenth of the timeout instead.
    "unacked_restore_interval": max(1, min(10, CELERY_VISIBILITY_TIMEOUT_S // 10)),
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}
# Publishing from a web request gives up quickly when Redis is down: the action stays recorded as
# waiting for dispatch, and the sweeper sends it once Redis is back.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_DEFAULT_QUEUE", "dashboard")
CELERY_TIMEZONE = "UTC"
# Production (README, Deployment): one queue per kind of work, so a fleet-wide fan-out never waits
# behind, or holds up, the rest; each machine's workers consume the queues they are sized for. Off
# by default: `make run`, the tests and the benches run one worker on the default queue.
if env_bool("CELERY_QUEUE_PER_KIND", False):
    CELERY_TASK_ROUTES = {
        "devices.tasks.expand_action": {"queue": "expand"},
        "devices.tasks.deliver_batch": {"queue": "deliver"},
        "devices.tasks.deliver_waiting": {"queue": "deliver"},
        "devices.tasks.nudge_devices": {"queue": "deliver"},
        "devices.tasks.flush_agent_reports": {"queue": "ingest"},
    }
CELERY_BEAT_SCHEDULE = {
    "sweep-actions": {"task": "devices.tasks.sweep_actions", "schedule": env_float("SWEEP_INTERVAL_S", 5.0)},
    # A safety net: the flusher threads drain the agent buffer continuously; this catches any leftover.
    "flush-agent-reports": {"task": "devices.tasks.flush_agent_reports", "schedule": 10.0},
}

# The device agent protocol.
AGENT_REPORT_INTERVAL_S = env_int("AGENT_REPORT_INTERVAL_S", 10)
AGENT_POLL_INTERVAL_S = env_int("AGENT_POLL_INTERVAL_S", 15)
# A device is online while its last report is younger than this.
DEVICE_OFFLINE_AFTER_S = env_int("DEVICE_OFFLINE_AFTER_S", 30)
# How long a push to one agent may take before the delivery counts as failed.
AGENT_PUSH_TIMEOUT_S = env_float("AGENT_PUSH_TIMEOUT_S", 5.0)
# How many pushes one delivery task has in flight at once; the time limit above starts when a
# push's request starts, not while it waits for one of these.
AGENT_PUSH_CONCURRENCY = env_int("AGENT_PUSH_CONCURRENCY", 200)
# How many results a second a large action's devices send on top of their heartbeats: an action of
# more devices lets each hold its result for up to one report interval (PROTOCOL.md,
# report_within_s), so the results ride on the reports the devices send anyway. 0: always at once.
ACTION_RESULTS_PER_S = env_int("ACTION_RESULTS_PER_S", 1000)
# A sent action whose result never arrives is failed after this long.
ACTION_RESULT_TIMEOUT_S = env_int("ACTION_RESULT_TIMEOUT_S", 120)
# A host OS update the device has not reported done within this long fails (and is withdrawn).
OS_UPDATE_TIMEOUT_S = env_int("OS_UPDATE_TIMEOUT_S", 24 * 3600)
# A setting (move, local mode, lock override) a device has not polled within this long expires in
# the audit; it stays in the target state and the device still applies it when it polls.
SETTING_POLL_TIMEOUT_S = env_int("SETTING_POLL_TIMEOUT_S", 7 * 24 * 3600)
ACTION_BATCH_SIZE = env_int("ACTION_BATCH_SIZE", 500)
# Agent reports and results are buffered in Redis and written in bulk this often (devices.ingest),
# by a thread in each Celery worker unless turned off (then run `manage.py flush_agent_reports --loop`).
AGENT_FLUSH_INTERVAL_S = env_float("AGENT_FLUSH_INTERVAL_S", 0.5)
AGENT_FLUSH_IN_WORKER = env_bool("AGENT_FLUSH_IN_WORKER", True)
# The one-time fee charged when a device is deactivated, in cents.
DEACTIVATION_FEE_CENTS = env_int("DEACTIVATION_FEE_CENTS", 500)

# Public device URLs are served at http://<uuid>.<PUBLIC_URL_DOMAIN>[:port]/.
PUBLIC_URL_DOMAIN = env_str("PUBLIC_URL_DOMAIN", "devices.localhost")
PUBLIC_URL_TIMEOUT_S = env_float("PUBLIC_URL_TIMEOUT_S", 5.0)
PUBLIC_URL_MAX_BYTES = env_int("PUBLIC_URL_MAX_BYTES", 10 * 1024 * 1024)
# The only networks the server connects to on a device's behalf (public URL proxy, action pushes):
# device addresses must be IP literals inside one of these. Default: private ranges and loopback
# (not link-local: cloud metadata lives there). Production: the devices' network only, no loopback.
PRIVATE_AND_LOOPBACK = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7,127.0.0.0/8,::1/128"
DEVICE_ALLOWED_NETWORKS = [
    n for n in env_str("DEVICE_ALLOWED_NETWORKS", PRIVATE_AND_LOOPBACK).split(",") if n
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
