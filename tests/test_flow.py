"""The whole workflow through a real Celery worker consuming the Redis broker."""

import itertools
import time
from contextlib import ExitStack, contextmanager
from datetime import timedelta

import pytest
from celery.signals import task_postrun, task_prerun
from django.core import mail
from django.db import connection, transaction

from config.celery import app as celery_app
from signup import tasks, workflow
from signup.models import OutboundEmail, QueueProbe, Signup, SignupEvent
from tests.helpers import (
    kill_own_connection,
    queued,
    sent_to,
    signed_up,
    signup_data,
    swept_after_probes,
    verify_link,
    wait_for,
    wait_for_emails,
)


def _status(username: str) -> str:
    return Signup.objects.filter(username=username).order_by("-id").first().status


pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_happy_path_signup_verify_welcome(worker, api, client):
    response = api.post("/api/signups", signup_data())
    assert response.status_code == 201, response.content

    (verification,) = wait_for_emails("alice@example.com", "Verify")
    assert verification.alternatives[0][1] == "text/html"
    path, _token, source = verify_link(verification)
    assert source == "verification"

    page = client.get(f"{path}?source={source}")
    assert page.status_code == 200
    assert b"Verify my account" in page.content
    assert _status("alice") == "pending"  # a GET never verifies

    page = client.post(path, {"source": source})
    assert page.status_code == 200
    assert b"verified" in page.content

    (welcome,) = wait_for_emails("alice@example.com", "Welcome")
    assert "alice" in welcome.body
    signup = Signup.objects.get(username="alice")
    assert signup.status == "verified"
    assert signup.verified_source == "verification"
    kinds = list(signup.events.values_list("kind", flat=True))
    assert kinds == ["submitted", "verification_sent", "verified", "welcome_sent"]


def test_reminders_reschedule_themselves_at_the_interval(worker, settings):
    settings.SIGNUP_REMINDER_INTERVAL = 1
    settings.SIGNUP_MAX_REMINDERS = 3
    signed_up(**signup_data())

    reminders = wait_for_emails("alice@example.com", "Reminder", count=3, timeout=20)
    time.sleep(1.5)  # a fourth would be due by now
    assert len(sent_to("alice@example.com", "Reminder")) == 3
    assert [verify_link(m)[2] for m in reminders] == ["reminder-1", "reminder-2", "reminder-3"]
    sent_times = list(
        SignupEvent.objects.filter(kind="reminder_sent").values_list("created_at", flat=True)
    )
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(sent_times)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    assert Signup.objects.get().reminders_sent == 3


def test_reminders_out_of_reach_wait_in_the_database_and_are_handed_over_on_time(
    worker, broker, settings
):
    settings.SIGNUP_REMINDER_INTERVAL = 4
    settings.SIGNUP_SCHEDULE_AHEAD = 2
    settings.SIGNUP_MAX_REMINDERS = 2
    addresses = [f"user{n}@example.com" for n in range(3)]
    for n, address in enumerate(addresses):
        signed_up(**signup_data(username=f"user{n}", email=address))
    for address in addresses:
        wait_for_emails(address, "Verify")
    # Nothing of the pending signups is in the broker: no queued task, none held by the worker.
    wait_for(lambda: queued(broker) == 0 and broker.hlen("unacked") == 0, timeout=5)
    assert not Signup.objects.filter(reminder_enqueued_at__isnull=False).exists()

    def reminded() -> bool:
        tasks.sweep.delay()  # beat's job, twice a second
        time.sleep(0.5)
        return OutboundEmail.objects.filter(kind="reminder", status="sent").count() == 6

    wait_for(reminded, timeout=20, message="two reminders for each signup")
    for signup in Signup.objects.all():
        planned = signup.created_at
        for email in signup.emails.filter(kind="reminder").order_by("sequence"):
            planned += timedelta(seconds=settings.SIGNUP_REMINDER_INTERVAL)
            lateness = (email.created_at - planned).total_seconds()
            assert -0.1 < lateness < 1.5, (signup.username, email.sequence, lateness)
            planned = email.created_at
    assert not SignupEvent.objects.filter(kind="chain_repaired").exists()
    for address in addresses:
        assert len(sent_to(address, "Reminder")) == 2


def test_verify_stops_reminders(worker, settings, client):
    settings.SIGNUP_REMINDER_INTERVAL = 1
    settings.SIGNUP_MAX_REMINDERS = 10
    signed_up(**signup_data())
    (reminder,) = wait_for_emails("alice@example.com", "Reminder", timeout=10)[:1]
    path, _, source = verify_link(reminder)
    assert client.post(path, {"source": source}).status_code == 200
    reminders_at_verify = len(sent_to("alice@example.com", "Reminder"))

    wait_for_emails("alice@example.com", "Welcome")
    time.sleep(2.5)  # two more intervals: no reminder may follow the verification
    assert len(sent_to("alice@example.com", "Reminder")) == reminders_at_verify
    assert Signup.objects.get().verified_source == source


def test_verify_twice_welcomes_once(worker, client):
    signed_up(**signup_data())
    path, _, source = verify_link(wait_for_emails("alice@example.com", "Verify")[0])
    first = client.post(path, {"source": source})
    second = client.post(path, {"source": source})
    assert b"re verified" in first.content
    assert b"Already verified" in second.content
    wait_for_emails("alice@example.com", "Welcome")
    time.sleep(1)
    assert len(sent_to("alice@example.com", "Welcome")) == 1


def test_expiry_stops_reminders_and_frees_the_username(worker, settings, api):
    settings.SIGNUP_REMINDER_INTERVAL = 1
    settings.SIGNUP_EXPIRES_AFTER = 3
    settings.SIGNUP_MAX_REMINDERS = 10
    first = signed_up(**signup_data())
    wait_for(lambda: _status("alice") == "expired", timeout=10, message="expiry")
    reminders = len(sent_to("alice@example.com", "Reminder"))
    assert 1 <= reminders <= 2
    time.sleep(1.5)
    assert len(sent_to("alice@example.com", "Reminder")) == reminders

    response = api.post("/api/signups", signup_data(email="alice2@example.com"))
    assert response.status_code == 201
    wait_for_emails("alice2@example.com", "Verify")
    assert Signup.objects.filter(username="alice").count() == 2
    assert list(first.events.values_list("kind", flat=True))[-1] == "expired"


def test_sweeper_restores_a_chain_whose_task_was_deleted(worker_factory, broker, settings):
    settings.SIGNUP_REMINDER_INTERVAL = 1
    settings.SIGNUP_MAX_REMINDERS = 2
    settings.SIGNUP_REDRIVE_AFTER = 0
    signup = signed_up(**signup_data())
    # No worker yet: the verification email and reminder 1 wait in Redis. Then they are lost.
    wait_for(lambda: queued(broker) >= 2, message="two tasks queued")
    broker.flushdb()
    time.sleep(2.5)  # reminder 1 is now overdue by more than the grace

    with worker_factory():
        assert mail.outbox == []
        tasks.sweep.delay()  # sends its probes, which the worker takes
        wait_for(
            lambda: (
                QueueProbe.objects.exists()
                and not QueueProbe.objects.filter(taken_at=None).exists()
            ),
            message="the first sweep's probes, taken",
        )
        time.sleep(settings.SIGNUP_LOST_TASK_GRACE + 0.1)
        tasks.sweep.delay()  # the probes passed what was lost
        wait_for_emails("alice@example.com", "Verify")
        wait_for_emails("alice@example.com", "Reminder", count=2, timeout=10)
        time.sleep(1.5)
        tasks.sweep.delay()  # nothing is lost now: a second sweep sends nothing more
        time.sleep(1)

    assert len(sent_to("alice@example.com", "Verify")) == 1
    assert len(sent_to("alice@example.com", "Reminder")) == 2
    signup.refresh_from_db()
    assert signup.reminders_sent == 2


def test_rolled_back_signup_sends_nothing(worker, broker):
    with pytest.raises(RuntimeError), transaction.atomic():
        signed_up(**signup_data())
        raise RuntimeError("the caller's transaction fails after the signup")
    time.sleep(1.5)
    assert mail.outbox == []
    assert not Signup.objects.exists()
    assert queued(broker) == 0


def test_duplicated_tasks_send_each_email_once(worker, settings):
    settings.SIGNUP_REMINDER_INTERVAL = 3600
    signup = signed_up(**signup_data())
    wait_for_emails("alice@example.com", "Verify")
    verification = OutboundEmail.objects.get(kind="verification")
    for _ in range(3):
        tasks.deliver_email.delay(verification.pk)
        tasks.send_reminder.delay(signup.pk, 1)
    wait_for_emails("alice@example.com", "Reminder")
    time.sleep(1.5)
    assert len(sent_to("alice@example.com", "Verify")) == 1
    assert len(sent_to("alice@example.com", "Reminder")) == 1


@contextmanager
def broker_unreachable():
    """Point this process's producers at a port nothing listens on, then back."""

    def use(url):
        # kombu keeps one pool per broker URL: the working one is there again afterwards.
        celery_app.conf.broker_url = celery_app.conf.broker_write_url = url
        celery_app._pool = None
        celery_app.amqp._producer_pool = None

    working = celery_app.conf.broker_write_url
    use("redis://127.0.0.1:9/0")
    try:
        yield
    finally:
        use(working)


def test_a_signup_made_while_the_broker_is_down_is_kept_and_sent_by_the_sweeper(
    worker, api, settings
):
    settings.SIGNUP_REMINDER_INTERVAL = 1
    settings.SIGNUP_MAX_REMINDERS = 1
    settings.SIGNUP_LOST_TASK_GRACE = 1
    with broker_unreachable():
        response = api.post("/api/signups", signup_data())
    assert response.status_code == 201, response.content
    # Its first-contact task never reached the broker: nothing is decided or sent yet.
    signup = Signup.objects.get()
    assert signup.contacted_at is None and not signup.emails.exists()
    assert mail.outbox == []

    counts = swept_after_probes()
    assert counts["contacts_requeued"] == 1
    wait_for_emails("alice@example.com", "Verify")
    wait_for_emails("alice@example.com", "Reminder")
    time.sleep(1)
    assert len(sent_to("alice@example.com", "Verify")) == 1
    assert len(sent_to("alice@example.com", "Reminder")) == 1
    assert signup.events.filter(kind="contact_repaired").count() == 1
    assert workflow.sweep()["contacts_requeued"] == 0  # contacted: nothing more to repair


@contextmanager
def recording_fails_once_more():
    """In the worker, kill the database connection under the first try at recording an
    email the provider had accepted (a deliver_email retry carrying its message id); yield
    the statements that were struck."""
    struck = []

    def kill_the_first_recording(execute, sql, params, many, context):
        if not struck:
            struck.append(sql)
            kill_own_connection()  # the statement below then fails, as in a restart
        return execute(sql, params, many, context)

    @task_prerun.connect(weak=False)
    def fail_recording_once(sender=None, kwargs=None, **_):
        if sender.name == tasks.deliver_email.name and (kwargs or {}).get("provider_message_id"):
            connection.execute_wrappers.append(kill_the_first_recording)

    @task_postrun.connect(weak=False)
    def stop_failing(sender=None, **_):
        if kill_the_first_recording in connection.execute_wrappers:
            connection.execute_wrappers.remove(kill_the_first_recording)

    try:
        yield struck
    finally:
        task_prerun.disconnect(fail_recording_once)
        task_postrun.disconnect(stop_failing)


@pytest.mark.parametrize("recording_fails_again", [False, True])
def test_an_email_whose_recording_failed_is_recorded_by_a_retry_not_sent_again(
    worker, settings, recording_fails_again
):
    settings.EMAIL_BACKEND = "tests.helpers.ConnectionKillingBackend"
    settings.SIGNUP_EMAIL_RETRY_DELAY = 0.2
    with ExitStack() as faults:
        struck = faults.enter_context(recording_fails_once_more()) if recording_fails_again else []
        signup = signed_up(**signup_data())
        wait_for_emails("alice@example.com", "Verify")
        settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
        email = wait_for(
            lambda: OutboundEmail.objects.filter(signup=signup, status="sent").first(),
            message="a retry recorded the email as sent",
        )
    time.sleep(1)
    if recording_fails_again:
        assert struck, "the first try at recording it never ran"
    assert len(sent_to("alice@example.com", "Verify")) == 1
    assert email.attempts == 1
    assert signup.events.filter(kind="verification_sent").count() == 1
