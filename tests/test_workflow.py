"""The rules of signup.workflow, called directly (no worker: deliveries are called too)."""

import time
from datetime import timedelta

import psycopg
import pytest
from django.core import signing
from django.db import IntegrityError, connection
from django.utils import timezone

from signup import emails, tokens, workflow
from signup.models import OutboundEmail, Signup
from tests.helpers import emailed, probes_taken, signed_up, signup_data

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def _deliver_all() -> int:
    pending = OutboundEmail.objects.filter(status="queued").values_list("id", flat=True)
    return sum(workflow.deliver(workflow.EMAIL, i) for i in list(pending))


def test_start_records_the_signup_its_timeline_and_its_first_email(settings):
    settings.SIGNUP_REMINDER_INTERVAL = 600
    before = timezone.now()
    signup = signed_up(**signup_data())
    assert signup.status == "pending"
    assert signup.reminders_sent == 0
    assert before + timedelta(seconds=600) <= signup.next_reminder_at
    assert signup.expires_at >= before + timedelta(seconds=settings.SIGNUP_EXPIRES_AFTER)
    assert list(signup.events.values_list("kind", flat=True)) == ["submitted"]
    (email,) = signup.emails.all()
    assert (email.kind, email.sequence, email.status) == ("verification", 1, "queued")


def test_start_and_the_first_contact_enqueue_only_after_commit(
    django_capture_on_commit_callbacks, settings
):
    settings.SIGNUP_REMINDER_INTERVAL = settings.SIGNUP_SCHEDULE_AHEAD
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        signup = workflow.start_signup(**signup_data())
    assert len(callbacks) == 2  # the signup.started announcement and the first contact
    assert not signup.emails.exists()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        workflow.contact_address(signup_id=signup.pk)
    assert len(callbacks) == 2  # the verification email and the first reminder
    signup.refresh_from_db()
    assert signup.reminder_enqueued_at is not None


def test_a_reminder_out_of_reach_waits_in_the_database_until_the_sweep_hands_it_over(
    django_capture_on_commit_callbacks, settings
):
    settings.SIGNUP_REMINDER_INTERVAL = 3600
    settings.SIGNUP_SCHEDULE_AHEAD = 300
    signup = workflow.start_signup(**signup_data())
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        workflow.contact_address(signup_id=signup.pk)
    assert len(callbacks) == 1  # the verification email only
    signup.refresh_from_db()
    assert signup.reminder_enqueued_at is None
    assert workflow.sweep()["reminders_enqueued"] == 0  # still out of reach

    due = timezone.now() + timedelta(seconds=200)
    Signup.objects.filter(pk=signup.pk).update(next_reminder_at=due)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        counts = workflow.sweep()
    assert (counts["reminders_enqueued"], counts["reminders_requeued"]) == (1, 0)
    assert len(callbacks) == 2  # the reminder's task, and the sweep's probes
    signup.refresh_from_db()
    assert signup.reminder_enqueued_at is not None
    assert signup.next_reminder_at == due  # the plan stays as it was
    assert not signup.events.filter(kind="chain_repaired").exists()
    assert workflow.sweep()["reminders_enqueued"] == 0  # handed over once


def test_the_last_step_enqueues_the_expiry_only_when_it_is_within_reach(
    django_capture_on_commit_callbacks, settings
):
    settings.SIGNUP_MAX_REMINDERS = 0
    settings.SIGNUP_SCHEDULE_AHEAD = 300
    settings.SIGNUP_EXPIRES_AFTER = 3600
    first = workflow.start_signup(**signup_data())
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        workflow.contact_address(signup_id=first.pk)
    assert len(callbacks) == 1  # the verification email; no expiry yet
    settings.SIGNUP_EXPIRES_AFTER = 300
    second = workflow.start_signup(**signup_data(username="bob", email="bob@example.com"))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        workflow.contact_address(signup_id=second.pk)
    assert len(callbacks) == 2  # and the expiry


def test_username_is_unique_among_pending_and_verified_in_any_case():
    workflow.start_signup(**signup_data())
    with pytest.raises(workflow.UsernameTaken):
        workflow.start_signup(**signup_data(username="ALICE"))
    with pytest.raises(IntegrityError):  # the database holds the rule too
        Signup.objects.create(
            username="Alice",
            email="a@example.com",
            first_name="A",
            expires_at=timezone.now(),
        )


def test_expired_or_cancelled_usernames_can_sign_up_again_and_keep_history():
    first = workflow.start_signup(**signup_data())
    workflow.cancel_signup(signup_id=first.pk, reason="test")
    second = workflow.start_signup(**signup_data())
    Signup.objects.filter(pk=second.pk).update(expires_at=timezone.now())
    assert workflow.expire_signup(signup_id=second.pk)
    third = workflow.start_signup(**signup_data())
    assert [s.status for s in Signup.objects.order_by("id")] == [
        "cancelled",
        "expired",
        "pending",
    ]
    assert list(first.events.values_list("kind", flat=True)) == ["submitted", "cancelled"]
    workflow.verify_signup_by_operator(signup_id=third.pk)
    with pytest.raises(workflow.UsernameTaken):
        workflow.start_signup(**signup_data())


def test_reminder_n_is_acted_on_once_and_stale_numbers_are_dropped():
    signup = emailed(**signup_data())
    assert workflow.take_reminder(signup_id=signup.pk, number=2) is None  # too early
    assert workflow.take_reminder(signup_id=signup.pk, number=1) is not None
    assert workflow.take_reminder(signup_id=signup.pk, number=1) is None  # duplicate
    signup.refresh_from_db()
    assert signup.reminders_sent == 1
    assert signup.emails.filter(kind="reminder").count() == 1
    assert workflow.take_reminder(signup_id=999_999, number=1) is None


def test_a_reminder_never_overtakes_the_email_before_it(settings, mailoutbox):
    settings.SIGNUP_REMINDER_INTERVAL = 600
    signup = signed_up(**signup_data())
    verification = signup.emails.get(kind="verification")
    # Its send is in flight on a worker host that died: the row stays "sending" until the
    # sweeper re-drives it. Reminder 1 comes due meanwhile, and waits one more interval.
    OutboundEmail.objects.filter(pk=verification.pk).update(status="sending")
    before = timezone.now()
    assert workflow.take_reminder(signup_id=signup.pk, number=1) is None
    signup.refresh_from_db()
    assert signup.reminders_sent == 0
    assert signup.next_reminder_at >= before + timedelta(seconds=600)
    assert not signup.emails.filter(kind="reminder").exists()
    # Once it went, the reminder goes when its task comes back.
    OutboundEmail.objects.filter(pk=verification.pk).update(status="queued")
    assert workflow.deliver(workflow.EMAIL, verification.pk)
    assert workflow.take_reminder(signup_id=signup.pk, number=1) is not None
    assert [m.subject.split()[0] for m in mailoutbox] == ["Verify"]


def test_the_last_reminder_plans_the_expiry_instead_of_another(settings):
    settings.SIGNUP_MAX_REMINDERS = 1
    signup = emailed(**signup_data())
    workflow.take_reminder(signup_id=signup.pk, number=1)
    signup.refresh_from_db()
    assert signup.next_reminder_at is None
    assert workflow.take_reminder(signup_id=signup.pk, number=2) is None


def test_a_reminder_due_after_expiry_expires_the_signup():
    signup = signed_up(**signup_data())
    Signup.objects.filter(pk=signup.pk).update(expires_at=timezone.now())
    assert workflow.take_reminder(signup_id=signup.pk, number=1) is None
    signup.refresh_from_db()
    assert signup.status == "expired"
    assert signup.emails.get().status == "skipped"


def test_expiry_before_its_time_does_nothing():
    signup = signed_up(**signup_data())
    assert workflow.expire_signup(signup_id=signup.pk) is False
    signup.refresh_from_db()
    assert signup.status == "pending"


def test_verify_is_idempotent_and_welcomes_once():
    signup = signed_up(**signup_data())
    token = tokens.make_token(signup)
    assert workflow.verify_signup(token=token, source="verification").message == "done"
    assert workflow.verify_signup(token=token, source="reminder-1").message == "already verified"
    signup.refresh_from_db()
    assert signup.verified_source == "verification"
    assert signup.emails.filter(kind="welcome").count() == 1
    assert signup.events.filter(kind="verified").count() == 1


def test_verify_rejects_tampered_foreign_and_recycled_tokens():
    signup = signed_up(**signup_data())
    token = tokens.make_token(signup)
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), "x", "", token + ":x"):
        with pytest.raises(tokens.InvalidToken):
            workflow.verify_signup(token=bad, source="verification")
    with pytest.raises(tokens.InvalidToken):
        workflow.verify_signup(token=token, source="newsletter")
    # An old-style link (id and creation time) still verifies its own record, but not a
    # record that replaced it (same id, another creation time).
    old = signing.dumps([signup.pk, int(signup.created_at.timestamp())], salt=tokens.SALT)
    Signup.objects.filter(pk=signup.pk).update(created_at=signup.created_at - timedelta(days=1))
    with pytest.raises(tokens.InvalidToken):
        workflow.verify_signup(token=old, source="verification")
    # A link whose signup is gone.
    Signup.objects.filter(pk=signup.pk).delete()
    with pytest.raises(tokens.InvalidToken):
        workflow.verify_signup(token=token, source="verification")


def test_an_old_style_link_still_verifies_its_signup():
    signup = signed_up(**signup_data())
    old = signing.dumps([signup.pk, int(signup.created_at.timestamp())], salt=tokens.SALT)
    assert workflow.verify_signup(token=old, source="verification").signup.pk == signup.pk


def test_verify_after_expiry_expires_and_sends_nothing():
    signup = signed_up(**signup_data())
    Signup.objects.filter(pk=signup.pk).update(expires_at=timezone.now())
    with pytest.raises(workflow.SignupClosed):
        workflow.verify_signup(token=tokens.make_token(signup), source="verification")
    signup.refresh_from_db()
    assert signup.status == "expired"
    assert not signup.emails.filter(kind="welcome").exists()


def test_emails_are_sent_once_and_only_while_wanted(mailoutbox):
    signup = signed_up(**signup_data())
    verification = signup.emails.get(kind="verification")
    assert workflow.deliver(workflow.EMAIL, verification.pk) is True
    assert workflow.deliver(workflow.EMAIL, verification.pk) is False
    assert [m.subject for m in mailoutbox] == ["Verify your email address for testserver"]

    # A reminder is taken and claimed at once; its task sends it.
    reminder_id = workflow.take_reminder(signup_id=signup.pk, number=1)
    assert workflow.deliver(workflow.EMAIL, reminder_id, claimed=True) is True
    assert workflow.deliver(workflow.EMAIL, reminder_id, claimed=True) is False
    assert workflow.deliver(workflow.EMAIL, reminder_id) is False

    workflow.verify_signup_by_operator(signup_id=signup.pk)
    assert _deliver_all() == 1  # the welcome email
    assert [m.subject.split()[0] for m in mailoutbox] == ["Verify", "Reminder:", "Welcome,"]
    assert signup.events.filter(kind="welcome_sent").count() == 1


def test_a_queued_verification_email_is_skipped_once_the_signup_is_verified(mailoutbox):
    signup = signed_up(**signup_data())
    workflow.verify_signup_by_operator(signup_id=signup.pk)
    verification = signup.emails.get(kind="verification")
    assert verification.status == "skipped"
    assert workflow.deliver(workflow.EMAIL, verification.pk) is False
    assert _deliver_all() == 1
    assert [m.subject.split()[0] for m in mailoutbox] == ["Welcome,"]


def test_a_reminder_whose_attempt_died_is_not_sent_after_verification(mailoutbox):
    signup = emailed(**signup_data())
    workflow.take_reminder(signup_id=signup.pk, number=1)
    reminder = signup.emails.get(kind="reminder")
    # Its worker died with the reminder claimed; the lease is over when the person verifies.
    OutboundEmail.objects.filter(pk=reminder.pk).update(in_flight_until=timezone.now())
    workflow.verify_signup_by_operator(signup_id=signup.pk)
    assert workflow.deliver(workflow.EMAIL, reminder.pk) is False
    reminder.refresh_from_db()
    assert reminder.status == "skipped"
    assert [m.subject.split()[0] for m in mailoutbox] == ["Verify"]  # the reminder: none


def test_email_links_carry_their_source_and_a_working_token(mailoutbox, settings):
    settings.SITE_URL = "https://accounts.example.org"
    signup = signed_up(**signup_data())
    _deliver_all()
    reminder_id = workflow.take_reminder(signup_id=signup.pk, number=1)
    workflow.deliver(workflow.EMAIL, reminder_id, claimed=True)
    verification, reminder = mailoutbox
    assert "https://accounts.example.org/signup/verify/" in verification.body
    assert "?source=verification" in verification.body
    assert "?source=reminder-1" in reminder.body
    assert "Reminder" in reminder.subject
    html = reminder.alternatives[0][0]
    assert "?source=reminder-1" in html


def test_a_failing_email_is_dead_lettered_after_too_many_attempts(mailoutbox, settings):
    signup = signed_up(**signup_data())
    email = signup.emails.get()
    OutboundEmail.objects.filter(pk=email.pk).update(attempts=settings.SIGNUP_EMAIL_MAX_ATTEMPTS)
    assert workflow.deliver(workflow.EMAIL, email.pk) is False
    email.refresh_from_db()
    assert email.status == "failed"
    assert signup.events.filter(kind="email_failed").exists()
    assert workflow.redrive(workflow.EMAIL, email.pk) is True
    assert workflow.deliver(workflow.EMAIL, email.pk) is True
    assert len(mailoutbox) == 1


def test_sweep_expires_overdue_signups_and_finds_lost_reminders(settings):
    settings.SIGNUP_LOST_TASK_GRACE = 5
    overdue = signed_up(**signup_data())
    Signup.objects.filter(pk=overdue.pk).update(expires_at=timezone.now())
    # Both reminders were handed to the broker an hour ago, and both are now due.
    handed_over = timezone.now() - timedelta(seconds=3600)
    late = signed_up(**signup_data(username="bob", email="bob@example.com"))
    Signup.objects.filter(pk=late.pk).update(
        next_reminder_at=timezone.now() - timedelta(seconds=6), reminder_enqueued_at=handed_over
    )
    on_time = signed_up(**signup_data(username="carol", email="c@example.com"))
    Signup.objects.filter(pk=on_time.pk).update(
        next_reminder_at=timezone.now() - timedelta(seconds=1), reminder_enqueued_at=handed_over
    )
    # The email queue's workers took, 5.5 s ago, everything enqueued before then: the late
    # reminder, due before that, is lost; the other may be waiting its turn.
    probes_taken(ago=5.5)
    counts = workflow.sweep()
    assert counts["expired"] == 1
    assert (counts["reminders_requeued"], counts["reminders_enqueued"]) == (1, 0)
    overdue.refresh_from_db()
    assert overdue.status == "expired"
    assert late.events.filter(kind="chain_repaired", number=1).count() == 1
    # The re-enqueued reminder is given the grace again before it counts as lost.
    assert workflow.sweep()["reminders_requeued"] == 0


def test_undeliverable_stops_the_signup():
    signup = signed_up(**signup_data())
    assert workflow.mark_undeliverable(signup_id=signup.pk, reason="hard bounce")
    signup.refresh_from_db()
    assert signup.status == "undeliverable"
    assert workflow.take_reminder(signup_id=signup.pk, number=1) is None
    with pytest.raises(workflow.SignupClosed):
        workflow.verify_signup(token=tokens.make_token(signup), source="verification")


def test_plain_text_emails_show_names_as_typed_and_html_escapes_them(mailoutbox):
    signup = signed_up(**signup_data(first_name="Zoë O'Brien & Co"))
    workflow.verify_signup_by_operator(signup_id=signup.pk)
    _deliver_all()
    (message,) = mailoutbox  # the welcome: the first to name the person
    assert "Zoë O'Brien & Co" in message.body
    assert "&#x27;" not in message.subject + message.body
    assert "O&#x27;Brien &amp; Co" in message.alternatives[0][0]


def test_every_attempt_at_an_email_carries_the_same_message_id(mailoutbox):
    signup = signed_up(**signup_data())
    email = signup.emails.get()
    workflow.deliver(workflow.EMAIL, email.pk)
    # As if the worker died after the provider took it: the ledger still says "sending".
    OutboundEmail.objects.filter(pk=email.pk).update(status="sending")
    workflow.deliver(workflow.EMAIL, email.pk)
    first, second = mailoutbox
    assert first.extra_headers["Message-ID"] == second.extra_headers["Message-ID"]
    assert first.extra_headers["Message-ID"] == emails.message_id(email)


@pytest.mark.django_db(transaction=True)
def test_an_email_sent_as_the_database_connection_dies_is_recorded_not_sent_again(
    mailoutbox, settings
):
    signup = signed_up(**signup_data())
    email = signup.emails.get()
    settings.EMAIL_BACKEND = "tests.helpers.ConnectionKillingBackend"
    with pytest.raises(workflow.SentButNotRecorded) as raised:
        workflow.deliver(workflow.EMAIL, email.pk)
    connection.close()
    assert len(mailoutbox) == 1
    assert OutboundEmail.objects.get().status == "sending"

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    message_id = raised.value.answer
    # What the task's next attempt does: record the provider's answer, send nothing.
    assert workflow.attempt(workflow.EMAIL, email.pk, answer=message_id) is None
    assert workflow.deliver(workflow.EMAIL, email.pk) is False
    email.refresh_from_db()
    assert (email.status, email.provider_message_id) == ("sent", message_id)
    assert len(mailoutbox) == 1
    assert signup.events.filter(kind="verification_sent").count() == 1


# --- The first contact, after the answer --------------------------------------------------


def test_a_new_signup_is_sent_its_verification_email_and_reminders_by_its_first_contact():
    signup = workflow.start_signup(**signup_data())
    assert not signup.emails.exists() and signup.next_reminder_at is None
    assert workflow.contact_address(signup_id=signup.pk)
    assert not workflow.contact_address(signup_id=signup.pk)  # a duplicate task: nothing more
    signup.refresh_from_db()
    assert signup.contacted_at is not None and signup.next_reminder_at is not None
    assert list(signup.emails.values_list("kind", "sequence")) == [("verification", 1)]


def test_an_operators_resend_before_the_first_contact_is_not_doubled_by_it():
    signup = workflow.start_signup(**signup_data())
    assert workflow.resend_verification(signup_id=signup.pk)
    assert workflow.contact_address(signup_id=signup.pk)
    signup.refresh_from_db()
    assert signup.emails.filter(kind="verification").count() == 1
    assert signup.contacted_at is not None and signup.next_reminder_at is not None  # its chain


def test_a_first_contact_that_comes_after_the_expiry_sends_nothing():
    signup = workflow.start_signup(**signup_data())
    Signup.objects.filter(pk=signup.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not workflow.contact_address(signup_id=signup.pk)
    assert not OutboundEmail.objects.exists()


def test_a_reminder_task_early_by_the_databases_clock_is_put_back(settings):
    # What send_reminder asks when its countdown fires (a worker whose clock is ahead fires
    # it early): how long before the reminder's due time it still is.
    settings.SIGNUP_REMINDER_INTERVAL = 30
    signup = emailed(**signup_data())
    assert 28 < workflow.reminder_early_by(signup.pk) <= 30
    Signup.objects.filter(pk=signup.pk).update(
        next_reminder_at=timezone.now() + timedelta(seconds=0.5)
    )
    assert workflow.reminder_early_by(signup.pk) == 0  # on time
    Signup.objects.filter(pk=signup.pk).update(next_reminder_at=timezone.now())
    assert workflow.reminder_early_by(signup.pk) == 0
    assert workflow.reminder_early_by(999_999) == 0


@pytest.mark.django_db(transaction=True)
def test_a_session_left_inside_a_transaction_is_ended_by_the_server(settings):
    # What frees the row locks of a host that died mid-transaction (its connection closes
    # nothing): the server ends the session after DATABASE_IDLE_IN_TRANSACTION_TIMEOUT, and
    # probes a silent client's connection.
    with connection.cursor() as cursor:
        cursor.execute("SHOW idle_in_transaction_session_timeout")
        assert cursor.fetchone()[0] == f"{settings.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT // 60}min"
        cursor.execute("SHOW tcp_keepalives_idle")
        assert cursor.fetchone()[0] == "30"
    params = connection.get_connection_params()
    params["options"] = params["options"].replace(
        f"idle_in_transaction_session_timeout={settings.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT}s",
        "idle_in_transaction_session_timeout=1s",
    )
    dying = psycopg.connect(**params)
    try:
        dying.execute("SELECT 1")  # a transaction begins, then its client goes silent
        time.sleep(1.5)
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            dying.execute("SELECT 1")
    finally:
        dying.close()
