"""Fixtures: real PostgreSQL (pytest-django's test database), a real Redis broker and a real
Celery worker consuming it in a thread of the test process, emails in Django's locmem outbox.

Tiers: a test that needs a service says so with a marker (postgres, redis, rabbitmq,
chromium, prometheus; processes for the slow ones that start the service's own processes). A
test that uses the database or a worker is marked from its fixtures as well, so it can't slip
into the fast tier (`make test-fast`: no marker). Before such a test runs, the service is
probed once; a missing one fails the test with what to start, never skips it.

Side by side (`make test` runs pytest-xdist): each process has its own test database
(pytest-django's `_gw<n>` suffix) and its own two Redis databases (below), the RabbitMQ tests
share one process (one vhost, one "celery" queue), and the tests of one deployment of the
process tests run in one process, which starts that deployment once.
"""

import os
import shutil
import socket
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from playwright.sync_api import sync_playwright

from config.celery import app as celery_app
from signup import health, remotes
from tests.helpers import API_KEY


def _own_redis_databases() -> None:
    """Give this xdist process its own Redis databases, two below the previous process's: the
    suite's broker (which tests flush) and, the one below it, the process tests' (which their
    deployments flush). Done at import, before anything reads the broker's URL."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    url = urlsplit(settings.CELERY_BROKER_URL)
    if not worker or url.scheme != "redis":
        return
    database = int(url.path.strip("/") or 0) - 2 * int(worker.removeprefix("gw"))
    own = urlunsplit(url._replace(path=f"/{database}"))
    settings.CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"] = own


_own_redis_databases()

# Fixtures that reach a service, and the marker each implies.
_FIXTURE_SERVICES = {
    "db": "postgres",
    "transactional_db": "postgres",
    "django_db_setup": "postgres",
    "live_server": "postgres",
    "admin_client": "postgres",
    "broker": "redis",
    "worker": "redis",
    "worker_factory": "redis",
    "page": "chromium",
}
SERVICES = ("postgres", "redis", "rabbitmq", "chromium", "prometheus", "gettext")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


# First: xdist's own hook reads the xdist_group marks (to keep a group in one process), and
# would not see marks added after it.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("rabbitmq"):
            item.add_marker(pytest.mark.xdist_group("rabbitmq"))
        elif "service" in getattr(getattr(item, "callspec", None), "params", {}):
            deployment = item.callspec.params["service"]
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}:{deployment}"))
        implied = {
            _FIXTURE_SERVICES[name] for name in item.fixturenames if name in _FIXTURE_SERVICES
        }
        if item.get_closest_marker("django_db"):
            implied.add("postgres")
        for service in sorted(implied - {mark.name for mark in item.iter_markers()}):
            item.add_marker(service)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Fail, before any fixture touches it, a test whose service is not there."""
    for service in SERVICES:
        if item.get_closest_marker(service):
            problem = _missing(service)
            if problem:
                pytest.fail(f"this test needs {problem}", pytrace=False)


@cache
def _missing(service: str) -> str | None:
    """Why `service` can't be reached (and how to get it), or None when it answers."""
    return _PROBES[service]()


def _postgres() -> str | None:
    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.postgresql":
        return (
            "PostgreSQL: run the tests with `make test`, or set DATABASE_URL to a postgres:// "
            f"URL (got {database['ENGINE']})."
        )
    where = f"{database['HOST']}:{database['PORT']}"
    try:
        psycopg.connect(
            dbname="postgres",
            host=database["HOST"] or None,
            port=database["PORT"] or None,
            user=database["USER"] or None,
            password=database["PASSWORD"] or None,
            connect_timeout=5,
        ).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {where} ({exc}): start it, or point TEST_DATABASE_URL at one."
    return None


def _redis() -> str | None:
    url = settings.CELERY_BROKER_URL
    if not url.startswith("redis://"):
        return f"a Redis broker: set CELERY_BROKER_URL=redis://... (got {url})."
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=5) as client:
            client.ping()
    except redis.RedisError as exc:
        where = urlsplit(url).netloc
        return f"Redis at {where} ({exc}): start it, or point TEST_BROKER_URL at one."
    if not shutil.which("redis-server"):
        return "the redis-server program (some tests start their own): apt-get install redis."
    return None


def _rabbitmq() -> str | None:
    address = urlsplit(RABBITMQ_URL)
    try:
        socket.create_connection((address.hostname, address.port or 5672), timeout=5).close()
    except OSError as exc:
        where = f"{address.hostname}:{address.port or 5672}"
        return f"RabbitMQ at {where} ({exc}): start it with `rabbitmq-server -detached`."
    return None


def _chromium() -> str | None:
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return None
    return "Debian's chromium: `make test` installs it (apt-get install chromium)."


def _gettext() -> str | None:
    if shutil.which("msgfmt") and shutil.which("xgettext"):
        return None
    return "GNU gettext (msgfmt, xgettext): `make test` installs it (apt-get install gettext)."


def _prometheus() -> str | None:
    missing = [program for program in ("prometheus", "promtool") if not shutil.which(program)]
    if missing:
        return (
            f"Debian's prometheus ({' and '.join(missing)} not found): `make test` installs it"
            " (apt-get install prometheus)."
        )
    return None


_PROBES = {
    "postgres": _postgres,
    "redis": _redis,
    "rabbitmq": _rabbitmq,
    "chromium": _chromium,
    "prometheus": _prometheus,
    "gettext": _gettext,
}


@pytest.fixture(autouse=True)
def workflow_settings(settings):
    """Short, test-sized intervals; a test overrides what it needs through `settings`."""
    settings.SIGNUP_REMINDER_INTERVAL = 3600
    settings.SIGNUP_EXPIRES_AFTER = 7 * 24 * 3600
    settings.SIGNUP_MAX_REMINDERS = 3
    settings.SIGNUP_SWEEP_INTERVAL = 60
    settings.SIGNUP_LOST_TASK_GRACE = 1
    settings.SIGNUP_REDRIVE_AFTER = 120
    settings.SIGNUP_SCHEDULE_AHEAD = 300
    # One address, one signup's worth of mail: tests that mean two people use two addresses.
    settings.SIGNUP_ADDRESS_COOLDOWN = 180
    settings.SIGNUP_ADDRESS_DAILY_LIMIT = 10
    settings.SIGNUP_ADDRESS_NETWORK_DAILY_LIMIT = 3
    settings.SIGNUP_UNSENT_EXPIRES_AFTER = 3600
    # Rate limits out of the way; the tests of the limits set their own.
    settings.SIGNUP_RATE_LIMIT_PAGES = settings.SIGNUP_RATE_LIMIT_BAD_LINKS = "100000/m"
    settings.SIGNUP_RATE_LIMIT_API = settings.SIGNUP_RATE_LIMIT_PROBES = "100000/m"
    settings.SIGNUP_API_KEY = API_KEY
    settings.SITE_URL = "http://testserver"
    # Admin logins hash their password quickly here (the real hasher costs half a second a
    # login, and the lockout tests log in many times).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return settings


@pytest.fixture
def one_window():
    """The rate limits count in fixed windows (a minute in the tests of the limits): a test that
    counts up to a limit starts far enough from its window's end for every post to fall in
    one window."""
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left + 0.05)


@pytest.fixture(autouse=True)
def _own_cache(request, settings):
    """Each test counts its rate limits in a cache of its own (tests of the shared Redis
    cache point CACHES there themselves)."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": request.node.nodeid,
        }
    }


@pytest.fixture(autouse=True)
def _fresh_readiness():
    """/readyz looks afresh in each test (it keeps its answer for a second), and a remote
    that did not answer in another test is asked again (signup.remotes)."""
    health.forget_readiness()
    remotes.unreachable.clear()


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where a test's screenshots go: SCREENSHOT_DIR (`make screenshots`: docs/screenshots/,
    which the README shows), else the test's own directory."""
    folder = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def broker():
    """The Redis database the broker uses, emptied before the test."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def worker_factory(transactional_db, broker):
    """Start (and stop) real Celery workers consuming the Redis broker, in this process."""

    @contextmanager
    def run_worker():
        with start_worker(
            celery_app,
            queues=["celery", "email", "webhooks"],
            pool="solo",
            concurrency=1,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=15,
        ) as worker:
            yield worker

    return run_worker


@pytest.fixture
def worker(worker_factory):
    with worker_factory() as running:
        yield running


@pytest.fixture
def api(client):
    """Django's test client speaking to the JSON API with the right key."""

    class Api:
        def post(self, path, data, **headers):
            return client.post(
                path,
                data,
                content_type="application/json",
                headers={"Authorization": f"Bearer {API_KEY}", **headers},
            )

        def get(self, path, **headers):
            return client.get(path, headers={"Authorization": f"Bearer {API_KEY}", **headers})

    return Api()


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page(live_server, monkeypatch, settings):
    """A headless Chromium page (Debian's chromium, driven by Playwright) on the live server."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "The browser tests need Debian's chromium (apt-get install chromium)."
    settings.SITE_URL = live_server.url
    # Playwright's sync API runs an event loop in this thread; the test's own ORM reads are
    # still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        context = browser.new_context(base_url=live_server.url)
        yield context.new_page()
        context.close()
        browser.close()
