"""Health: /healthz, /readyz and `manage.py signup_doctor`, against a real database and broker,
and against the Procfile's processes with beat stopped and started again."""

import json
import os
import subprocess
import time
from datetime import timedelta

import pytest
import requests
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from harness.processes import BIN, ROOT, RedisServer, fresh_database
from harness.service import BEAT_SWEPT, Service
from signup import health, workflow
from signup.models import Heartbeat, OutboundEmail, Signup
from signup.workflow.sweeper import SWEEP_HEARTBEAT
from tests.helpers import API_KEY, probes_taken, signed_up, signup_data, wait_for


@pytest.fixture
def swept(db):
    """A sweep has just completed."""
    workflow.sweep()
    return Heartbeat.objects.get(name=SWEEP_HEARTBEAT)


def test_healthz_answers_without_touching_anything(client):
    # No database here: pytest-django fails any query this test would make.
    answer = client.get("/healthz")
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
    assert "no-cache" in answer["Cache-Control"]


@pytest.mark.redis
def test_readyz_is_ready_when_every_part_answers(client, broker, swept):
    answer = client.get("/readyz")
    assert answer.status_code == 200, answer.content
    assert answer.json() == {"database": "ok", "broker": "ok", "sweeper": "ok"}


@pytest.mark.redis
def test_readyz_names_a_late_sweeper(client, broker, swept, settings):
    limit = 3 * settings.SIGNUP_SWEEP_INTERVAL
    Heartbeat.objects.filter(name=SWEEP_HEARTBEAT).update(
        at=timezone.now() - timedelta(seconds=limit + 5)
    )
    answer = client.get("/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert (body["database"], body["broker"]) == ("ok", "ok")
    assert "the last sweep completed" in body["sweeper"] and "beat" in body["sweeper"]


@pytest.mark.django_db
def test_readyz_without_any_sweep_says_so(client, broker):
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["sweeper"] == "no sweep has completed yet: is beat running?"


@pytest.mark.redis
def test_readyz_names_an_unreachable_broker_without_its_address(client, swept, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    answer = client.get("/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert (body["database"], body["sweeper"]) == ("ok", "ok")
    assert body["broker"].startswith("not answering (")
    assert "127.0.0.1" not in answer.content.decode()


def test_readyz_and_healthz_take_only_get(client):
    assert client.post("/healthz").status_code == 405
    assert client.post("/readyz").status_code == 405


# --- signup_doctor ---------------------------------------------------------------------------


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "python"), "manage.py", "signup_doctor", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def doctor_env(transactional_db):
    """The environment of a manage.py command that sees the test database."""
    params = connection.settings_dict
    url = f"postgres://{params['USER']}@{params['HOST']}:{params['PORT']}/{params['NAME']}"
    return {**os.environ, "DATABASE_URL": url, "CONN_MAX_AGE": "0"}


@pytest.mark.redis
def test_doctor_is_well_and_exits_0_when_nothing_is_wrong(doctor_env, broker, swept):
    done = doctor(doctor_env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {
        "broker": "ok",
        "database": "ok",
        "sweeper": "ok",
        "contacts_overdue": 0,
        "reminders_overdue": 0,
        "emails_unsent": 0,
        "webhooks_unsent": 0,
        "dead_letters": 0,
        "webhook_dead_letters": 0,
        "ok": True,
    }


@pytest.mark.redis
def test_doctor_counts_stuck_work_and_exits_1(doctor_env, broker, swept, settings):
    long_ago = timezone.now() - timedelta(hours=2)
    stuck = signed_up(**signup_data(username="stuck", email="stuck@example.com"))
    Signup.objects.filter(pk=stuck.pk).update(next_reminder_at=long_ago)
    OutboundEmail.objects.filter(signup=stuck).update(status="queued", enqueued_at=long_ago)
    dead = signed_up(**signup_data(username="dead", email="dead@example.com"))
    OutboundEmail.objects.filter(signup=dead).update(status="failed")
    probes_taken(ago=3600)  # the workers passed them an hour ago, and they are still not done
    done = doctor(doctor_env)
    assert done.returncode == 1, done.stdout
    report = json.loads(done.stdout)
    assert (report["reminders_overdue"], report["emails_unsent"]) == (1, 1)
    assert (report["dead_letters"], report["ok"]) == (1, False)


@pytest.mark.redis
def test_dead_letters_alone_are_reported_but_not_a_failure(doctor_env, broker, swept):
    dead = signed_up(**signup_data(username="dead", email="dead@example.com"))
    OutboundEmail.objects.filter(signup=dead).update(status="failed")
    done = doctor(doctor_env)
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["dead_letters"] == 1


@pytest.mark.redis
def test_doctor_without_a_database_says_so_and_exits_1(broker):
    env = {**os.environ, "DATABASE_URL": "postgres://postgres@127.0.0.1:1/nothing"}
    done = doctor(env)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["database"].startswith("not answering (")
    assert report["ok"] is False


# --- Beat stopped and started again, with the Procfile's processes ----------------------------


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.redis
def test_readyz_turns_503_within_three_sweeps_of_beat_stopping_and_200_after_it_restarts(
    tmp_path, broker
):
    interval = 1
    with fresh_database(migrated=True) as database_url:
        service = Service(
            tmp=tmp_path,
            database_url=database_url,
            broker_url=django_settings.CELERY_BROKER_URL,
            api_key=API_KEY,
            startup_timeout=60,
            env={"SIGNUP_SWEEP_INTERVAL": str(interval), "EMAIL_BACKEND": "", "CONN_MAX_AGE": "0"},
        )
        try:
            service.start(beat_ready=BEAT_SWEPT)

            def answer(status: int) -> list[requests.Response]:
                response = requests.get(f"{service.url}/readyz", timeout=5)
                return [response] if response.status_code == status else []

            wait_for(lambda: answer(200), timeout=10, message="ready with beat running")
            service.beat.stop()
            stopped_at = time.monotonic()
            # Each web process looks again a second after its last look: the first 503.
            (unready,) = wait_for(lambda: answer(503), timeout=3 * interval + 5, message="503")
            turned = time.monotonic() - stopped_at
            body = unready.json()
            assert (body["database"], body["broker"]) == ("ok", "ok")
            assert "beat" in body["sweeper"]
            # Within 3 sweep intervals of the last sweep, which came at most one before the
            # stop, and the second a web process keeps its last look.
            assert turned <= 3 * interval + interval + health.READY_CACHE_SECONDS + 1, turned

            service.start_beat(ready=BEAT_SWEPT)
            wait_for(lambda: answer(200), timeout=10, message="ready again after beat restarts")
        finally:
            service.stop()


@pytest.mark.redis
def test_readyz_answers_a_loop_of_calls_on_one_kept_broker_connection(
    client, swept, settings, tmp_path
):
    """The audit: 200 calls opened 344 Redis connections. Each process keeps one for the
    check (and answers from its last look for a second, left out here). Counted on a Redis
    of the test's own, which nothing else connects to."""
    health.READY_CACHE_SECONDS, cached = 0.0, health.READY_CACHE_SECONDS
    with RedisServer(tmp_path).running() as own:
        settings.CELERY_BROKER_URL = own.url()
        try:
            assert client.get("/readyz").status_code == 200  # the kept connection is made
            before = own.client().info("stats")["total_connections_received"]
            for _ in range(50):
                assert client.get("/readyz").status_code == 200
            opened = own.client().info("stats")["total_connections_received"] - before
        finally:
            health.READY_CACHE_SECONDS = cached
    assert opened <= 2, opened  # the counting client's own


@pytest.mark.redis
def test_readyz_keeps_its_answer_for_a_moment(client, broker, swept):
    assert client.get("/readyz").status_code == 200
    Heartbeat.objects.all().delete()  # the sweeper's record gone: not ready once looked at
    assert client.get("/readyz").status_code == 200  # within the second: the last look
    time.sleep(1.05)
    assert client.get("/readyz").status_code == 503


@pytest.mark.usefixtures("one_window")
@pytest.mark.redis
def test_readyz_is_rate_limited_per_client(client, broker, swept, settings):
    settings.SIGNUP_RATE_LIMIT_PROBES = "5/m"
    statuses = [client.get("/readyz").status_code for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2
    assert client.get("/readyz", REMOTE_ADDR="192.0.2.44").status_code == 200


@pytest.mark.redis
def test_readyz_reconnects_after_the_broker_was_away(client, swept, settings, tmp_path):
    with RedisServer(tmp_path).running() as own:  # of its own: every client is cut
        settings.CELERY_BROKER_URL = own.url()
        assert client.get("/readyz").status_code == 200
        own.client().client_kill_filter(_type="normal", skipme=True)
        health.forget_readiness()
        answer = client.get("/readyz")
        # The kept connection was cut: this look may find it so, the next one reconnects.
        if answer.status_code == 503:
            health.forget_readiness()
            answer = client.get("/readyz")
        assert answer.status_code == 200, answer.content
