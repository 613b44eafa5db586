"""Sending without holding the database: no lock or transaction while the provider answers,
and the guarantees kept all the same (no verification email or reminder after a verification
or a cancellation, nothing twice)."""

import smtplib
import threading
import time

import pytest
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.db import connection, transaction
from django.db.utils import OperationalError
from django.utils import timezone

from signup import tokens, workflow
from signup.models import OutboundEmail, Signup
from tests.helpers import signed_up, signup_data

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


class GatedBackend(LocmemBackend):
    """A provider that holds every message until the test lets it through."""

    entered = threading.Event()
    release = threading.Event()

    def send_messages(self, messages):
        GatedBackend.entered.set()
        assert GatedBackend.release.wait(15), "the test never let the message through"
        return super().send_messages(messages)


@pytest.fixture
def gated(settings, mailoutbox):
    settings.EMAIL_BACKEND = f"{__name__}.GatedBackend"
    GatedBackend.entered.clear()
    GatedBackend.release.clear()
    yield GatedBackend
    GatedBackend.release.set()


def in_thread(function):
    """Run `function` in a thread with its own database connection; return the thread and
    a dict that receives its value or its exception."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = function()
        except Exception as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _reminder_taken(signup: Signup) -> OutboundEmail:
    """Reminder 1, taken and claimed: its lease runs until its task has sent it."""
    signup.emails.filter(kind="verification").update(status="sent")
    return OutboundEmail.objects.get(pk=workflow.take_reminder(signup_id=signup.pk, number=1))


def test_no_row_is_locked_while_the_provider_takes_its_time(gated):
    signup = signed_up(**signup_data())
    email = signup.emails.get()
    sender, outcome = in_thread(lambda: workflow.deliver(workflow.EMAIL, email.pk))
    assert gated.entered.wait(10)
    try:
        with transaction.atomic():  # NOWAIT: an error, not a wait, if anything held them
            Signup.objects.select_for_update(nowait=True).get(pk=signup.pk)
            OutboundEmail.objects.select_for_update(nowait=True).get(pk=email.pk)
    except OperationalError as exc:
        pytest.fail(f"a row stayed locked during the provider call: {exc}")
    finally:
        gated.release.set()
        sender.join(15)
    assert outcome == {"value": True}
    email.refresh_from_db()
    assert (email.status, email.in_flight_until) == ("sent", None)


def _verification_email(signup: Signup) -> tuple[OutboundEmail, object]:
    """The first verification email, and how to send it."""
    email = signup.emails.get(kind="verification")
    return email, lambda: workflow.deliver(workflow.EMAIL, email.pk)


def _reminder(signup: Signup) -> tuple[OutboundEmail, object]:
    """Reminder 1, taken and claimed, and how its task sends it."""
    reminder = _reminder_taken(signup)
    return reminder, lambda: workflow.deliver(workflow.EMAIL, reminder.pk, claimed=True)


def _verify(signup: Signup):
    token = tokens.make_token(signup)
    return lambda: workflow.verify_signup(token=token, source="verification")


def _cancel(signup: Signup):
    return lambda: workflow.cancel_signup(signup_id=signup.pk, reason="test")


def _erase(signup: Signup):
    return lambda: workflow.erase_personal_data(signup_id=signup.pk, operator="test")


@pytest.mark.parametrize(
    "closing", [_verify, _cancel, _erase], ids=["verification", "cancellation", "erasure"]
)
@pytest.mark.parametrize("out", [_verification_email, _reminder], ids=["verify-email", "reminder"])
def test_closing_a_signup_waits_for_its_email_that_is_with_the_provider(gated, out, closing):
    signup = signed_up(**signup_data())
    email, send = out(signup)
    sender, sent = in_thread(send)
    assert gated.entered.wait(10)
    closer, closed = in_thread(closing(signup))
    time.sleep(0.3)
    assert closer.is_alive(), "the signup was closed while its email was with the provider"
    gated.release.set()
    sender.join(15)
    closer.join(15)
    assert sent == {"value": True}
    assert "error" not in closed, closed
    email.refresh_from_db()
    signup.refresh_from_db()
    assert signup.status in ("verified", "cancelled")
    assert email.sent_at <= (signup.verified_at or signup.updated_at)


def test_the_wait_ends_with_the_lease_even_if_the_provider_never_answers(gated, settings):
    settings.EMAIL_TIMEOUT = 1  # the lease: the provider's time limit and a second
    signup = signed_up(**signup_data())
    reminder = _reminder_taken(signup)
    sender, _ = in_thread(lambda: workflow.deliver(workflow.EMAIL, reminder.pk, claimed=True))
    assert gated.entered.wait(10)
    started = time.monotonic()
    result = workflow.verify_signup(token=tokens.make_token(signup), source="verification")
    waited = time.monotonic() - started
    gated.release.set()
    sender.join(15)
    assert result.signup.status == "verified"
    assert 1.5 <= waited < 4, waited


@pytest.mark.django_db
def test_a_copy_of_a_task_waits_for_the_planned_retry(settings, mailoutbox):
    settings.EMAIL_BACKEND = "tests.helpers.TemporarilyRefusingBackend"
    settings.SIGNUP_EMAIL_RETRY_DELAY = settings.SIGNUP_EMAIL_RETRY_MAX_DELAY = 900.0
    signup = signed_up(**signup_data())
    email = signup.emails.get()
    then = workflow.attempt(workflow.EMAIL, email.pk)  # the provider said 450: try again later
    assert isinstance(then.error, smtplib.SMTPRecipientsRefused)
    assert 450 <= then.countdown <= 900
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    # A redelivered or re-enqueued copy of its task: not before the backoff says.
    with pytest.raises(workflow.InFlight) as later:
        workflow.deliver(workflow.EMAIL, email.pk)
    assert (later.value.until - timezone.now()).total_seconds() > 400
    email.refresh_from_db()
    assert (email.attempts, len(mailoutbox)) == (1, 0)


def test_a_second_delivery_while_one_is_out_comes_back_after_the_lease(gated, mailoutbox):
    signup = signed_up(**signup_data())
    email = signup.emails.get()
    sender, _ = in_thread(lambda: workflow.deliver(workflow.EMAIL, email.pk))
    assert gated.entered.wait(10)
    with pytest.raises(workflow.InFlight) as out:
        workflow.deliver(workflow.EMAIL, email.pk)
    email.refresh_from_db()
    assert out.value.until == email.in_flight_until
    assert email.attempts == 1  # the second delivery counted no attempt
    gated.release.set()
    sender.join(15)
    assert workflow.deliver(workflow.EMAIL, email.pk) is False  # sent by the first
    assert len(mailoutbox) == 1
