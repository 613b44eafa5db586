"""Settings, all read from the environment (12-factor) in this one module.

With DEBUG=true (which `make run` sets) and nothing else, the project runs as a zero-setup
quickstart: SQLite and a server-free filesystem broker under ./var/, emails printed to the
console. Production sets the URLs and a SECRET_KEY; DEBUG is off unless turned on.
"""

import base64
import os
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import environ
from celery.schedules import crontab
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SIGNUP_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)  # beat's schedule file lives here on every setup

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)

# SECRET_KEY signs the verification links. To rotate it, move the old key to
# SECRET_KEY_FALLBACKS (comma-separated): links signed with it keep working until it is
# dropped from there, at the latest SIGNUP_EXPIRES_AFTER later.
SECRET_KEY = env.str("SECRET_KEY", default="")
SECRET_KEY_FALLBACKS = [
    key.strip() for key in env.list("SECRET_KEY_FALLBACKS", default=[]) if key.strip()
]
# Words that mark a key anyone can read: the quickstart's, the old compose default, a
# placeholder from a template. Compared lower-cased with everything but letters and digits
# dropped; a random key of 50 characters contains none of them.
_PUBLIC_KEY_WORDS = ("changeme", "secret", "insecure", "placeholder", "example", "quickstart")
_MAKE_A_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(50))"'


def _refuse_weak_key(name: str, key: str) -> None:
    """Refuse to start with a key that would let anyone forge links (Django only warns)."""
    folded = re.sub(r"[^a-z0-9]", "", key.lower())
    if len(key) < 50:
        problem = "is shorter than 50 characters"
    elif len(set(key)) < 5:
        problem = "has fewer than 5 different characters"
    elif word := next((word for word in _PUBLIC_KEY_WORDS if word in folded), None):
        problem = f"looks like a placeholder or a published key (it contains {word!r})"
    else:
        return
    raise ImproperlyConfigured(
        f"{name} {problem}; with DEBUG off it must be random, at least 50 characters."
        f" Make one with: {_MAKE_A_KEY}"
    )


if DEBUG:
    SECRET_KEY = SECRET_KEY or "django-insecure-quickstart-key-do-not-use-in-production"
elif not SECRET_KEY:
    raise ImproperlyConfigured(
        f"SECRET_KEY must be set when DEBUG is off. Make one with: {_MAKE_A_KEY}"
    )
else:
    _refuse_weak_key("SECRET_KEY", SECRET_KEY)
    for _index, _key in enumerate(SECRET_KEY_FALLBACKS):
        _refuse_weak_key(f"SECRET_KEY_FALLBACKS[{_index}]", _key)

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])

SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")
_site = urlsplit(SITE_URL)
# How the emails name the site (the recipient recognises a signup by it); by default the host
# name of SITE_URL.
SIGNUP_SITE_NAME = env.str("SIGNUP_SITE_NAME", default="")
CSRF_TRUSTED_ORIGINS = env.list(
    "CSRF_TRUSTED_ORIGINS", default=[f"{_site.scheme}://{_site.netloc}"]
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "anymail",
    "axes",
    "ninja",  # the API's docs page (/api/docs): its Swagger UI, served from here
    "signup",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The language from the language cookie (the switcher), else Accept-Language.
    "django.middleware.locale.LocaleMiddleware",
    "signup.middleware.OperatorsInEnglish",
    "signup.middleware.ApiErrorsAsProblems",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out admin login into its lockout answer.
    "axes.middleware.AxesMiddleware",
]

# Django's database sessions (the admin's), with cookies Django never makes treated as none.
SESSION_ENGINE = "signup.sessions"

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
# A process keeps each thread's connection between requests and tasks for CONN_MAX_AGE
# seconds, health-checked before use: one connection per gunicorn worker, per prefork child,
# per thread of a threaded process (docs/OPERATIONS.md has the budget). The development
# server starts a thread per request, so the Procfile runs it with CONN_MAX_AGE=0: kept
# connections would pile up with the threads that made them.
# DATABASE_POOL_SIZE > 0 (PostgreSQL) shares a pool of that many per process instead; a
# thread then gives its connection back when its request or task ends, and while a provider
# answers.
DATABASE_POOL_SIZE = env.int("DATABASE_POOL_SIZE", default=0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DATABASE_POOL_SIZE > 0:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_SIZE,
        # A thread waits this long for a connection before its request or task fails (and
        # is retried): longer waits only pile up requests while the database is away.
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=3.0),
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # pooled: "closing" returns it to the pool
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Behind PgBouncer in transaction mode a session's state does not last beyond a transaction:
# no server-side cursors, no prepared statements (docs/OPERATIONS.md).
DATABASE_PGBOUNCER = env.bool("DATABASE_PGBOUNCER", default=False)
if DATABASE_PGBOUNCER:
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = None
# A host that dies mid-transaction closes nothing: its connection, and the row locks its
# transaction holds, would last until TCP gives up (two hours by default), and the sweeper
# skips locked rows. So PostgreSQL ends a session idle inside a transaction after
# DATABASE_IDLE_IN_TRANSACTION_TIMEOUT seconds (the service's transactions last
# milliseconds) and probes an idle client's connection every 10 s after 30 s of silence;
# each side probes the other (docs/OPERATIONS.md#several-hosts). Behind PgBouncer, set its
# idle_transaction_timeout instead: it does not pass these on.
DATABASE_IDLE_IN_TRANSACTION_TIMEOUT = env.int("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", default=60)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options.update(keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
    if not DATABASE_PGBOUNCER:
        _server = (
            " -c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"
        )
        if DATABASE_IDLE_IN_TRANSACTION_TIMEOUT > 0:
            _server += (
                f" -c idle_in_transaction_session_timeout={DATABASE_IDLE_IN_TRANSACTION_TIMEOUT}s"
            )
        _options["options"] = (_options.get("options", "") + _server).strip()
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The quickstart runs web, worker and beat against one file: wait for locks, don't fail.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Languages ----------------------------------------------------------------------------
# The languages the pages and emails are written in; SIGNUP_LANGUAGES picks the ones offered
# (the first is the default, for a browser that asks for none of them). A signup keeps the
# language it was made in, and every one of its emails uses it (signup.emails).
_WRITTEN_IN = {"en": "English", "de": "Deutsch", "fr": "Français", "es": "Español"}
SIGNUP_LANGUAGES = env.list("SIGNUP_LANGUAGES", default=list(_WRITTEN_IN))
if not SIGNUP_LANGUAGES or set(SIGNUP_LANGUAGES) - set(_WRITTEN_IN):
    raise ImproperlyConfigured(
        f"SIGNUP_LANGUAGES must name some of {', '.join(_WRITTEN_IN)}, comma-separated."
    )
LANGUAGES = [(code, _WRITTEN_IN[code]) for code in SIGNUP_LANGUAGES]
LANGUAGE_CODE = SIGNUP_LANGUAGES[0]
LOCALE_PATHS = [BASE_DIR / "locale"]
FORMAT_MODULE_PATH = ["config.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# Files a browser asks for at the site's root (/favicon.ico), served by WhiteNoise as well.
WHITENOISE_ROOT = BASE_DIR / "signup" / "public"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- HTTPS and browser policies -----------------------------------------------------------
# A site whose SITE_URL is https gets, in production, HTTPS only: the redirect, HSTS for a year
# and cookies that never travel over plain HTTP. Each can be overridden.
_https = _site.scheme == "https" and not DEBUG
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=_https)
# Probes and Prometheus speak plain HTTP to the process itself, behind whatever terminates
# TLS. (A redirect would not keep /metrics' token off plain HTTP anyway: it is in the first
# request.)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if _https else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# check --deploy warns until HSTS covers every subdomain (W005) and asks for preloading (W021).
# Both bind the whole domain, hosts this service doesn't run included, for a year or more: the
# domain owner turns them on with the two variables above; they are no default here.
# The funnel's covering index (signup_funnel_idx) is a plain index on SQLite, the quickstart's
# database, which has no INCLUDE columns (W040): the funnel reads the table there instead.
SILENCED_SYSTEM_CHECKS = ["security.W005", "security.W021", "models.W040"]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = LANGUAGE_COOKIE_SECURE = _https
# Trust X-Forwarded-Proto only when told to: behind a proxy that terminates TLS and sets the
# header on every request. Without such a proxy, any client could claim to be on HTTPS.
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# The pages load nothing from elsewhere and have no inline script or style; the admin runs
# its own static scripts and images. Emails are not pages and carry no policy.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [NONE],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
        "base-uri": [NONE],
    },
}

# --- Email ------------------------------------------------------------------------------
# EMAIL_URL picks a backend by URL (smtp://, consolemail://, ...); EMAIL_BACKEND, when set,
# names any backend instead (an anymail ESP such as anymail.backends.postmark.EmailBackend).
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
if env.str("EMAIL_BACKEND", default=""):
    EMAIL_BACKEND = env.str("EMAIL_BACKEND")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Signup <no-reply@example.com>")
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=20)
# Every ANYMAIL_<NAME> variable becomes ANYMAIL["<NAME>"] (API keys, WEBHOOK_SECRET, ...).
ANYMAIL = {
    name.removeprefix("ANYMAIL_"): value
    for name, value in os.environ.items()
    if name.startswith("ANYMAIL_")
}
# An ESP's HTTP API gets the same time limit as SMTP, well below a web request's.
ANYMAIL.setdefault("REQUESTS_TIMEOUT", float(EMAIL_TIMEOUT))
if isinstance(ANYMAIL["REQUESTS_TIMEOUT"], str):
    ANYMAIL["REQUESTS_TIMEOUT"] = float(ANYMAIL["REQUESTS_TIMEOUT"])

# --- The signup workflow (intervals in seconds) ------------------------------------------
SIGNUP_REMINDER_INTERVAL = env.int("SIGNUP_REMINDER_INTERVAL", default=24 * 3600)
SIGNUP_EXPIRES_AFTER = env.int("SIGNUP_EXPIRES_AFTER", default=7 * 24 * 3600)
# How much later than SIGNUP_EXPIRES_AFTER an operator may extend a signup's expiry at most
# (the links of the previous release are signed to last that long too).
SIGNUP_MAX_EXTENSION = env.int("SIGNUP_MAX_EXTENSION", default=30 * 24 * 3600)
# Wrong codes a signup's code survives (allauth's ACCOUNT_EMAIL_VERIFICATION_BY_CODE_MAX_ATTEMPTS
# default); then it is void until a new email brings a new one.
SIGNUP_CODE_MAX_ATTEMPTS = env.int("SIGNUP_CODE_MAX_ATTEMPTS", default=3)
# How long the API keeps what it answered to a request with an Idempotency-Key.
SIGNUP_IDEMPOTENCY_KEEP = env.int("SIGNUP_IDEMPOTENCY_KEEP", default=24 * 3600)
# How often a pending signup's address may be changed (a mistyped one fixed).
SIGNUP_MAX_ADDRESS_CHANGES = env.int("SIGNUP_MAX_ADDRESS_CHANGES", default=2)
SIGNUP_MAX_REMINDERS = env.int("SIGNUP_MAX_REMINDERS", default=6)
SIGNUP_SWEEP_INTERVAL = env.int("SIGNUP_SWEEP_INTERVAL", default=60)
# Settings renamed by this release: the old name still works, with a warning from the system
# checks (signup.W002), until the next release drops it.
SIGNUP_SETTINGS_UNDER_OLD_NAMES = {
    old: new
    for old, new in (
        ("SIGNUP_REMINDER_GRACE", "SIGNUP_LOST_TASK_GRACE"),
        ("SIGNUP_EMAIL_REDRIVE_AFTER", "SIGNUP_REDRIVE_AFTER"),
    )
    if old in os.environ
}
# A pending signup whose next reminder is this late lost its countdown task, and one still
# not contacted this long after its first-contact task was enqueued lost that task: the
# sweeper re-enqueues them.
SIGNUP_LOST_TASK_GRACE = env.int(
    "SIGNUP_LOST_TASK_GRACE", default=env.int("SIGNUP_REMINDER_GRACE", default=10)
)
# An email or a webhook delivery left unsent this long after it was (re-)enqueued, or after
# its last attempt began, lost its task: the sweeper re-enqueues it.
SIGNUP_REDRIVE_AFTER = env.int(
    "SIGNUP_REDRIVE_AFTER", default=env.int("SIGNUP_EMAIL_REDRIVE_AFTER", default=120)
)
# The SignupQueueBacklog alert fires when a queue's oldest waiting message is older than this
# (deploy/observability/alerts.yml reads it from /metrics).
SIGNUP_QUEUE_AGE_ALERT = env.int("SIGNUP_QUEUE_AGE_ALERT", default=300)
# The broker holds only the reminders and expiries due within this many seconds; the sweeper
# hands over the rest as they come this close. It must outlast a sweep interval comfortably.
SIGNUP_SCHEDULE_AHEAD = env.int("SIGNUP_SCHEDULE_AHEAD", default=300)
# Transient provider failures are retried after SIGNUP_EMAIL_RETRY_DELAY seconds, doubling
# (with jitter) up to SIGNUP_EMAIL_RETRY_MAX_DELAY; after SIGNUP_EMAIL_MAX_ATTEMPTS attempts
# the email is dead-lettered (state "failed") for an operator to re-drive.
SIGNUP_EMAIL_RETRY_DELAY = env.float("SIGNUP_EMAIL_RETRY_DELAY", default=5.0)
SIGNUP_EMAIL_RETRY_MAX_DELAY = env.float("SIGNUP_EMAIL_RETRY_MAX_DELAY", default=15 * 60.0)
SIGNUP_EMAIL_MAX_ATTEMPTS = env.int("SIGNUP_EMAIL_MAX_ATTEMPTS", default=10)
# Failed attempts at this many different emails in a row (none sent between them) mean the
# provider is out for everyone: emails are held, using no attempts, and the provider is tried
# again SIGNUP_EMAIL_OUTAGE_PROBE seconds later; the first one sent brings the others
# (signup/workflow/internal/outage.py).
SIGNUP_EMAIL_OUTAGE_AFTER = env.int("SIGNUP_EMAIL_OUTAGE_AFTER", default=5)
SIGNUP_EMAIL_OUTAGE_PROBE = env.int("SIGNUP_EMAIL_OUTAGE_PROBE", default=10)
if SIGNUP_EMAIL_OUTAGE_AFTER < 2:
    raise ImproperlyConfigured(
        "SIGNUP_EMAIL_OUTAGE_AFTER must be at least 2: with 1, any email the provider refuses"
        " once would hold every email."
    )
SIGNUP_API_KEY = env.str("SIGNUP_API_KEY", default="")
# Bearer token of GET /metrics (Prometheus); while empty, /metrics answers 404.
SIGNUP_METRICS_TOKEN = env.str("SIGNUP_METRICS_TOKEN", default="")
# --- Signed webhooks out (Standard Webhooks) -------------------------------------------------
# Each transition (signup.started, .verified, .expired, .cancelled, .undeliverable) is POSTed
# to every one of these URLs, signed with the secret (whsec_ and base64, as the spec has it).
SIGNUP_WEBHOOK_URLS = env.list("SIGNUP_WEBHOOK_URLS", default=[])
SIGNUP_WEBHOOK_SECRET = env.str("SIGNUP_WEBHOOK_SECRET", default="")
# Addresses and names stay out of the events unless this is on.
SIGNUP_WEBHOOK_INCLUDE_PII = env.bool("SIGNUP_WEBHOOK_INCLUDE_PII", default=False)
SIGNUP_WEBHOOK_TIMEOUT = env.float("SIGNUP_WEBHOOK_TIMEOUT", default=15.0)
SIGNUP_WEBHOOK_RETRY_DELAY = env.float("SIGNUP_WEBHOOK_RETRY_DELAY", default=5.0)
SIGNUP_WEBHOOK_RETRY_MAX_DELAY = env.float("SIGNUP_WEBHOOK_RETRY_MAX_DELAY", default=15 * 60.0)
# 20 attempts with that backoff span two to three hours: a receiver down for an hour loses none.
SIGNUP_WEBHOOK_MAX_ATTEMPTS = env.int("SIGNUP_WEBHOOK_MAX_ATTEMPTS", default=20)
for _url in SIGNUP_WEBHOOK_URLS:
    if urlsplit(_url).scheme not in ("http", "https") or not urlsplit(_url).hostname:
        raise ImproperlyConfigured(f"SIGNUP_WEBHOOK_URLS: {_url!r} is not an http(s) URL.")
if SIGNUP_WEBHOOK_URLS:
    try:
        _webhook_key = base64.b64decode(SIGNUP_WEBHOOK_SECRET.removeprefix("whsec_"), validate=True)
    except ValueError:
        _webhook_key = b""
    if not SIGNUP_WEBHOOK_SECRET.startswith("whsec_") or len(_webhook_key) < 24:
        raise ImproperlyConfigured(
            "SIGNUP_WEBHOOK_URLS needs SIGNUP_WEBHOOK_SECRET: 'whsec_' and the base64 of 24 or"
            ' more random bytes, e.g. python -c "import base64, secrets;'
            " print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
        )

# prometheus-client's own variable: the directory the processes of a host share their counters
# and histograms in (signup.metrics). It must exist before the first metric is written.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# --- Abuse limits -------------------------------------------------------------------------
# However many signups name one mailbox (in any spelling: signup.workflow.mailbox), it is sent
# at most one verification (or "you already have an account") email per
# SIGNUP_ADDRESS_COOLDOWN seconds, at most SIGNUP_ADDRESS_DAILY_LIMIT a day, and at most
# SIGNUP_ADDRESS_NETWORK_DAILY_LIMIT a day for the signups of one client network (an IPv4
# address, an IPv6 /64), so that a stranger's signups can't spend the owner's budget; counted
# in the database, so every process agrees.
SIGNUP_ADDRESS_COOLDOWN = env.int("SIGNUP_ADDRESS_COOLDOWN", default=180)
SIGNUP_ADDRESS_DAILY_LIMIT = env.int("SIGNUP_ADDRESS_DAILY_LIMIT", default=10)
SIGNUP_ADDRESS_NETWORK_DAILY_LIMIT = env.int("SIGNUP_ADDRESS_NETWORK_DAILY_LIMIT", default=3)
# A signup whose address is sent nothing (held back by that budget, or an address that has an
# account) expires this soon unless the resend page reaches it: until then it holds its
# username, and nobody can verify it.
SIGNUP_UNSENT_EXPIRES_AFTER = env.int("SIGNUP_UNSENT_EXPIRES_AFTER", default=3600)
# Rates as "<count>/<period>" (s, m, h or d; "5/10m" too), counted in the cache below.
# Form and resend posts per client address:
SIGNUP_RATE_LIMIT_PAGES = env.str("SIGNUP_RATE_LIMIT_PAGES", default="20/m")
# Invalid verification links (and wrong API keys) per client address, before a pause:
SIGNUP_RATE_LIMIT_BAD_LINKS = env.str("SIGNUP_RATE_LIMIT_BAD_LINKS", default="20/m")
# API calls per key: far above what a backend service sends in normal use (100/s).
SIGNUP_RATE_LIMIT_API = env.str("SIGNUP_RATE_LIMIT_API", default="6000/m")
# /readyz calls per client address: a probe every second, and some to spare.
SIGNUP_RATE_LIMIT_PROBES = env.str("SIGNUP_RATE_LIMIT_PROBES", default="120/m")
for _name in (
    "SIGNUP_RATE_LIMIT_PAGES",
    "SIGNUP_RATE_LIMIT_BAD_LINKS",
    "SIGNUP_RATE_LIMIT_API",
    "SIGNUP_RATE_LIMIT_PROBES",
):
    if not re.fullmatch(r"\s*\d+\s*/\s*\d*\s*[smhd]\s*", globals()[_name]):
        raise ImproperlyConfigured(f"{_name} must be a rate like 20/m (got {globals()[_name]!r}).")
# How many reverse proxies in front of the web add themselves to X-Forwarded-For. With 0
# (the default) the header is ignored: a client could write anything there.
SIGNUP_TRUSTED_PROXIES = env.int("SIGNUP_TRUSTED_PROXIES", default=0)
# Failed admin logins (django-axes): this many from one client address lock it out for
# SIGNUP_ADMIN_LOCKOUT seconds.
AXES_FAILURE_LIMIT = env.int("SIGNUP_ADMIN_LOGIN_FAILURES", default=5)
AXES_COOLOFF_TIME = timedelta(seconds=env.int("SIGNUP_ADMIN_LOCKOUT", default=900))
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_CLIENT_IP_CALLABLE = "signup.limits.admin_client_ip"
AXES_LOCKOUT_CALLABLE = "signup.limits.admin_lockout"
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

# --- Personal data --------------------------------------------------------------------------
# Expired, cancelled and undeliverable signups are anonymised this many days after they
# closed (hourly, by beat); verified and pending ones are not.
SIGNUP_RETENTION_DAYS = env.int("SIGNUP_RETENTION_DAYS", default=30)
if SIGNUP_RETENTION_DAYS < 0:
    raise ImproperlyConfigured("SIGNUP_RETENTION_DAYS must be zero or more days.")
for _name in ("SIGNUP_REMINDER_INTERVAL", "SIGNUP_EXPIRES_AFTER", "SIGNUP_SWEEP_INTERVAL"):
    if globals()[_name] <= 0:
        raise ImproperlyConfigured(f"{_name} must be a positive number of seconds.")
if SIGNUP_CODE_MAX_ATTEMPTS < 1 or SIGNUP_MAX_ADDRESS_CHANGES < 0:
    raise ImproperlyConfigured(
        "SIGNUP_CODE_MAX_ATTEMPTS must be 1 or more, SIGNUP_MAX_ADDRESS_CHANGES 0 or more."
    )
if SIGNUP_SCHEDULE_AHEAD < 2 * SIGNUP_SWEEP_INTERVAL:
    raise ImproperlyConfigured(
        "SIGNUP_SCHEDULE_AHEAD must be at least twice SIGNUP_SWEEP_INTERVAL, or a sweep could"
        " hand a reminder over after it was due."
    )

# --- Celery -----------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# The rate limits' counters must be shared by every web process: with a Redis broker and no
# CACHE_URL (unset or empty) they live on the broker's Redis (under their own key prefix);
# the quickstart keeps them in the web process's memory (check --deploy warns, signup.checks).
_CACHE_URL = env.str("CACHE_URL", default="") or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else "locmemcache://"
)
CACHES = {"default": environ.Env.cache_url_config(_CACHE_URL)}
CACHES["default"].setdefault("KEY_PREFIX", "signup")
if "redis" in CACHES["default"]["BACKEND"].lower():
    # A cache on another host can vanish without closing anything (a partition drops the
    # packets): without a timeout each request would wait minutes for TCP to give up. The
    # rate limits let a request through when the cache does not answer (signup.limits).
    CACHES["default"].setdefault("OPTIONS", {}).update(socket_connect_timeout=1, socket_timeout=1)
# A Redis broker hands a countdown task to a worker at once and redelivers it if it is not
# acknowledged within the visibility timeout; it must outlast the longest countdown the
# service uses, or a countdown would be delivered twice (the copy is dropped, but it is
# wasted work). SIGNUP_SCHEDULE_AHEAD bounds the workflow's countdowns and
# SIGNUP_EMAIL_RETRY_MAX_DELAY and SIGNUP_WEBHOOK_RETRY_MAX_DELAY the retries', whatever the
# reminder interval and expiry are. Tasks lost to a killed worker are repaired by the
# sweeper, not by this.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int(
        "CELERY_BROKER_VISIBILITY_TIMEOUT",
        default=int(
            max(SIGNUP_SCHEDULE_AHEAD, SIGNUP_EMAIL_RETRY_MAX_DELAY, SIGNUP_WEBHOOK_RETRY_MAX_DELAY)
        )
        + 3600,
    ),
}
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # The same across hosts for the broker: a publish (after a commit, in a web request) or
    # a consumer stalled by a partition gives up in seconds, and the sweeper enqueues the
    # work again (docs/OPERATIONS.md#several-hosts). Above the 1 s a consumer's BRPOP waits.
    CELERY_BROKER_TRANSPORT_OPTIONS.update(socket_connect_timeout=2, socket_timeout=3)
# A publish that fails is tried once more, not three times: the sweeper is the retry.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    _broker_dir.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        {
            "data_folder_in": str(_broker_dir),
            "data_folder_out": str(_broker_dir),
            "control_folder": str(_broker_dir / "control"),
            "store_processed": False,
        }
    )
# Sending email waits on the provider's network: deliver_email and send_reminder (which sends
# its email itself) go to the "email" queue, which the Procfile's two email workers serve
# from pools of threads, so a slow provider stalls neither the timers nor the sweeper. A worker
# started without -Q serves both queues.
CELERY_TASK_QUEUES = [Queue("celery"), Queue("email"), Queue("webhooks")]
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {
    "signup.tasks.deliver_email": {"queue": "email"},
    "signup.tasks.send_reminder": {"queue": "email"},
    # A slow or absent receiver waits on its own queue and workers, never before an email.
    "signup.tasks.deliver_webhook": {"queue": "webhooks"},
}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Celery's Django fixup closes the database connections after every task unless this is
# set; config/celery.py gives each task Django's request lifecycle instead (back to the
# pool, or kept for CONN_MAX_AGE without one), and this bounds how many tasks one
# unpooled connection serves.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
CELERY_TASK_IGNORE_RESULT = True  # nothing reads results: the database holds the outcome
CELERY_RESULT_BACKEND = None
# Flower follows each task from the events the workers send. A "task-sent" event from the
# web process as well would cost every enqueue a second message to the broker.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "sweep-signups": {
        "task": "signup.tasks.sweep",
        "schedule": float(SIGNUP_SWEEP_INTERVAL),
        "options": {"expires": float(SIGNUP_SWEEP_INTERVAL)},
    },
    # On the hour rather than 3600 s after beat starts: where beat's schedule file does not
    # survive a restart (a new container), a beat restarted hourly would never run it.
    "forget-personal-data": {
        "task": "signup.tasks.forget_personal_data",
        "schedule": crontab(minute=0),
        "options": {"expires": 3600.0},
    },
}

# Plain text for people (the quickstart), or one JSON object a line for a log shipper:
# signup/logs.py. JSON lines carry the ids a line is about and the Celery task that wrote it.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}.")

# Log lines carry ids, not personal data: signup.redaction masks email addresses and
# verification tokens in what these write. runserver's request lines (django.server) and
# Django's reports of 4xx and 5xx answers (django.request: one line for each 4xx, a 5xx
# with its traceback, whatever DEBUG is) name the link's path, token included. Celery's
# lines about task outcomes get the same filter in config/celery.py, which also puts
# Celery's own lines in LOG_FORMAT; gunicorn's logs are in config/gunicorn.py.
LOGGING_CONFIG = "signup.logs.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "redact": {"()": "signup.redaction.RedactingFilter"},
        "task": {"()": "signup.logs.TaskContextFilter"},
        "require_debug_true": {"()": "django.utils.log.RequireDebugTrue"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "signup.logs.JsonFormatter"},
        # Django's own format for runserver's request lines.
        "django.server": {
            "()": "django.utils.log.ServerFormatter",
            "format": "[{server_time}] {message}",
            "style": "{",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["redact", "task"],
        },
        "django.server": {
            "class": "logging.StreamHandler",
            "formatter": "django.server" if LOG_FORMAT == "plain" else "json",
            "filters": ["redact"],
        },
        # Django's other lines (security warnings, which repeat a 400's cause with its
        # traceback) are printed with DEBUG on only, as Django's default logging does, but in
        # LOG_FORMAT. This replaces its mail_admins handler too, which sends nothing here: no
        # ADMINS are configured.
        "django.console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["require_debug_true", "redact", "task"],
        },
    },
    "loggers": {
        "signup": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
        "django": {"handlers": ["django.console"], "level": "INFO"},
        "django.server": {"handlers": ["django.server"], "level": "INFO", "propagate": False},
        "django.request": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        # Python's warnings, logged by signup.logs.configure.
        "py.warnings": {"handlers": ["console"], "propagate": False},
    },
}
