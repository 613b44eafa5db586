"""Fixtures: real PostgreSQL (pytest-django's test database), a real Redis broker and a real
Celery worker consuming it in a thread of the test process, emails in Django's locmem outbox.
"""

from contextlib import contextmanager

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from django.conf import settings

from config.celery import app as celery_app
from tests.helpers import API_KEY


@pytest.fixture(scope="session", autouse=True)
def _real_services():
    engine = settings.DATABASES["default"]["ENGINE"]
    assert engine == "django.db.backends.postgresql", (
        "The tests run against PostgreSQL: run them with `make test`, or set DATABASE_URL "
        f"to a postgres:// URL (got {engine})."
    )
    assert settings.CELERY_BROKER_URL.startswith("redis://"), (
        "The tests run against a Redis broker: set CELERY_BROKER_URL=redis://... "
        f"(got {settings.CELERY_BROKER_URL})."
    )


@pytest.fixture(autouse=True)
def workflow_settings(settings):
    """Short, test-sized intervals; a test overrides what it needs through `settings`."""
    settings.SIGNUP_REMINDER_INTERVAL = 3600
    settings.SIGNUP_EXPIRES_AFTER = 7 * 24 * 3600
    settings.SIGNUP_MAX_REMINDERS = 3
    settings.SIGNUP_SWEEP_INTERVAL = 60
    settings.SIGNUP_REMINDER_GRACE = 1
    settings.SIGNUP_EMAIL_REDRIVE_AFTER = 120
    settings.SIGNUP_SCHEDULE_AHEAD = 300
    settings.SIGNUP_RESENDS_PER_HOUR = 3
    settings.SIGNUP_API_KEY = API_KEY
    settings.SITE_URL = "http://testserver"
    return settings


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
