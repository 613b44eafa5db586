"""GET /metrics: the token, the figures counted in the database after a known sequence of
signups, verifications, an expiry, a bounce, a dead letter and a sweep, and what a real worker
measured while it sent, retried and gave up (read back with prometheus-client's parser)."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from signup import tasks, tokens, workflow
from signup.models import Heartbeat, OutboundEmail, Signup
from signup.workflow.sweeper import SWEEP_HEARTBEAT
from tests.helpers import probes_taken, signed_up, signup_data, wait_for

TOKEN = "metrics-token-for-tests"

pytestmark = pytest.mark.django_db


@pytest.fixture
def metrics_on(settings):
    settings.SIGNUP_METRICS_TOKEN = TOKEN


def scrape(client) -> dict[tuple, float]:
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.content
    assert answer["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.content.decode())
        for sample in family.samples
    }


def test_metrics_do_not_exist_without_a_token(client, settings):
    settings.SIGNUP_METRICS_TOKEN = ""
    assert client.get("/metrics", headers={"Authorization": "Bearer x"}).status_code == 404


def test_metrics_want_the_bearer_token(client, metrics_on):
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Basic eDp5"}).status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403
    assert b"signup_" not in wrong.content


@pytest.mark.usefixtures("one_window")
def test_guessing_the_metrics_token_is_slowed_per_client(client, metrics_on, settings):
    settings.SIGNUP_RATE_LIMIT_BAD_LINKS = "3/m"
    statuses = [
        client.get("/metrics", headers={"Authorization": f"Bearer guess{n}"}).status_code
        for n in range(5)
    ]
    assert statuses == [403, 403, 403, 429, 429]
    limited = client.get("/metrics", headers={"Authorization": "Bearer guess"})
    assert 1 <= int(limited["Retry-After"]) <= 60
    # The right token still scrapes: the pause is for guesses.
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_metrics_count_what_the_workflow_did(client, metrics_on, settings):
    started = [
        signed_up(**signup_data(username=f"m{n}", email=f"m{n}@example.com")) for n in range(5)
    ]
    OutboundEmail.objects.filter(kind="verification").update(status="sent", sent_at=timezone.now())
    verified, by_operator, expiring, bounced, _still_pending = started
    reminder = workflow.take_reminder(signup_id=verified.pk, number=1)
    OutboundEmail.objects.filter(pk=reminder).update(status="sent", sent_at=timezone.now())
    workflow.verify_signup(token=tokens.make_token(verified), source="reminder-1")
    workflow.verify_signup_by_operator(signup_id=by_operator.pk)
    Signup.objects.filter(pk=expiring.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    workflow.expire_signup(signup_id=expiring.pk)
    workflow.mark_undeliverable(signup_id=bounced.pk, reason="hard bounce")
    welcome = OutboundEmail.objects.get(signup=verified, kind="welcome")
    settings.EMAIL_BACKEND = "tests.helpers.RefusingBackend"  # 550: a dead letter at once
    assert workflow.attempt(workflow.EMAIL, welcome.pk) is None
    workflow.sweep()

    figures = scrape(client)

    def signups(status: str) -> float:
        return figures[("signup_signups", (("status", status),))]

    assert [signups(s) for s in ("pending", "verified", "expired", "cancelled")] == [1, 2, 1, 0]
    assert signups("undeliverable") == 1
    assert figures[("signup_verified", (("source", "reminder-1"),))] == 1
    assert figures[("signup_verified", (("source", "operator"),))] == 1
    assert figures[("signup_emails", (("kind", "verification"), ("status", "sent")))] == 5
    assert figures[("signup_emails", (("kind", "welcome"), ("status", "failed")))] == 1
    assert figures[("signup_emails", (("kind", "welcome"), ("status", "queued")))] == 1
    assert figures[("signup_dead_letters", ())] == 1
    assert figures[("signup_emails_waiting", ())] == 1
    assert figures[("signup_stuck_reminders", ())] == 0
    assert figures[("signup_stuck_emails", ())] == 0
    assert figures[("signup_stuck_webhooks", ())] == 0
    assert 0 <= figures[("signup_seconds_since_last_sweep", ())] < 5


@pytest.mark.django_db(transaction=True)
def test_each_queue_shows_its_depth_and_how_long_its_oldest_message_waited(
    client, metrics_on, broker, settings
):
    settings.SIGNUP_QUEUE_AGE_ALERT = 120
    workflow.start_signup(**signup_data())  # no worker: its first contact waits
    workflow.sweep()  # and a probe through each queue
    time.sleep(1.1)
    figures = scrape(client)

    def of(name: str, queue: str) -> float:
        return figures[(f"signup_queue_{name}", (("queue", queue),))]

    # No webhook receiver is configured: nothing, not even a probe, goes to their queue.
    assert [of("messages", queue) for queue in ("celery", "email", "webhooks")] == [2, 1, 0]
    assert all(of("oldest_message_seconds", queue) >= 1 for queue in ("celery", "email"))
    assert figures[("signup_queue_age_alert_seconds", ())] == 120


def test_seconds_since_the_last_sweep_grow_when_beat_stops(client, metrics_on):
    assert scrape(client)[("signup_seconds_since_last_sweep", ())] == float("inf")
    Heartbeat.objects.create(name=SWEEP_HEARTBEAT, at=timezone.now() - timedelta(minutes=10))
    assert 599 < scrape(client)[("signup_seconds_since_last_sweep", ())] < 605


def test_each_host_says_how_far_its_clock_is_from_the_databases(client, metrics_on):
    # Same machine, same clock: within the query's round trip (the skewed hosts are
    # tests.faults.test_hosts').
    assert abs(scrape(client)[("signup_clock_offset_seconds", ())]) < 0.5


def test_a_worker_measures_provider_calls_retries_lateness_welcomes_and_sweeps(
    client, metrics_on, worker, settings
):
    before = scrape(client)

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return scrape(client).get(key, 0) - before.get(key, 0)

    def sent(kind: str, count: int) -> None:
        wait_for(
            lambda: OutboundEmail.objects.filter(kind=kind, status="sent").count() == count,
            timeout=15,
            message=f"{count} {kind} email(s) sent",
        )

    welcomed, reminded = (
        signed_up(**signup_data(username=f"w{n}", email=f"w{n}@example.com")) for n in range(2)
    )
    sent("verification", 2)
    workflow.verify_signup_by_operator(signup_id=welcomed.pk)
    sent("welcome", 1)
    # Reminder 1, taken about 3 s after it was planned.
    Signup.objects.filter(pk=reminded.pk).update(
        next_reminder_at=timezone.now() - timedelta(seconds=3)
    )
    tasks.send_reminder.delay(reminded.pk, 1)
    sent("reminder", 1)

    assert grew("signup_email_attempts_total", kind="verification", result="sent") == 2
    assert grew("signup_email_attempts_total", kind="welcome", result="sent") == 1
    assert grew("signup_email_attempts_total", kind="reminder", result="sent") == 1
    assert grew("signup_provider_call_seconds_count", outcome="ok") == 4
    assert grew("signup_verify_to_welcome_seconds_count") == 1
    assert 0 < grew("signup_verify_to_welcome_seconds_sum") < 15
    assert grew("signup_reminder_lateness_seconds_count") == 1
    assert 3 <= grew("signup_reminder_lateness_seconds_sum") < 15
    assert grew("signup_reminder_lateness_seconds_bucket", le="2.5") == 0
    assert grew("signup_reminder_lateness_seconds_bucket", le="30.0") == 1

    # A provider that says "later" (retried, not before the test ends), then one that refuses
    # for good (dead letter).
    settings.SIGNUP_EMAIL_RETRY_DELAY = 600
    settings.EMAIL_BACKEND = "tests.helpers.TemporarilyRefusingBackend"
    signed_up(**signup_data(username="later", email="later@example.com"))
    wait_for(lambda: grew("signup_email_attempts_total", kind="verification", result="retried"))
    settings.EMAIL_BACKEND = "tests.helpers.RefusingBackend"
    signed_up(**signup_data(username="never", email="never@example.com"))
    wait_for(lambda: grew("signup_email_attempts_total", kind="verification", result="failed"))
    assert grew("signup_provider_call_seconds_count", outcome="error") == 2

    # A sweep that finds the next reminder's task lost and puts it back.
    Signup.objects.filter(pk=reminded.pk).update(
        next_reminder_at=timezone.now() - timedelta(minutes=5),
        reminder_enqueued_at=timezone.now() - timedelta(minutes=5),
    )
    probes_taken(ago=2)  # the email queue's workers passed it since
    workflow.sweep()
    assert grew("signup_sweep_duration_seconds_count") == 1
    assert grew("signup_sweep_repairs_total", kind="reminder") == 1
    assert grew("signup_sweep_repairs_total", kind="email") == 0


def test_metrics_answer_plain_http_inside_the_network_when_the_site_redirects_to_https(
    client, metrics_on, settings
):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/signup/").status_code == 301
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
