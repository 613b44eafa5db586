"""Sending without holding the database: no lock or transaction while the provider answers,
and the guarantees kept all the same (no reminder after a verification, nothing twice)."""

import threading
import time

import pytest
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.db import connection, transaction
from django.db.utils import OperationalError

from signup import tokens, workflow
from signup.models import OutboundEmail, Signup
from tests.helpers import signup_data

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
    signup = workflow.start_signup(**signup_data())
    email = signup.emails.get()
    sender, outcome = in_thread(lambda: workflow.deliver_email(email_id=email.pk))
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


def test_a_verification_waits_for_a_reminder_that_is_with_the_provider(gated):
    signup = workflow.start_signup(**signup_data())
    reminder = _reminder_taken(signup)
    sender, sent = in_thread(lambda: workflow.send_claimed_email(email_id=reminder.pk))
    assert gated.entered.wait(10)
    token = tokens.make_token(signup)
    verifier, verified = in_thread(
        lambda: workflow.verify_signup(token=token, source="verification")
    )
    time.sleep(0.3)
    assert verifier.is_alive(), "the verification did not wait for the reminder"
    gated.release.set()
    sender.join(15)
    verifier.join(15)
    assert sent == {"value": True}
    assert verified["value"].signup.status == "verified"
    reminder.refresh_from_db()
    signup.refresh_from_db()
    assert reminder.sent_at <= signup.verified_at


def test_the_wait_ends_with_the_lease_even_if_the_provider_never_answers(gated, settings):
    settings.EMAIL_TIMEOUT = 1  # the lease: the provider's time limit and a second
    signup = workflow.start_signup(**signup_data())
    reminder = _reminder_taken(signup)
    sender, _ = in_thread(lambda: workflow.send_claimed_email(email_id=reminder.pk))
    assert gated.entered.wait(10)
    started = time.monotonic()
    result = workflow.verify_signup(token=tokens.make_token(signup), source="verification")
    waited = time.monotonic() - started
    gated.release.set()
    sender.join(15)
    assert result.signup.status == "verified"
    assert 1.5 <= waited < 4, waited


def test_a_second_delivery_while_one_is_out_comes_back_after_the_lease(gated, mailoutbox):
    signup = workflow.start_signup(**signup_data())
    email = signup.emails.get()
    sender, _ = in_thread(lambda: workflow.deliver_email(email_id=email.pk))
    assert gated.entered.wait(10)
    with pytest.raises(workflow.EmailInFlight) as out:
        workflow.deliver_email(email_id=email.pk)
    email.refresh_from_db()
    assert out.value.until == email.in_flight_until
    assert email.attempts == 1  # the second delivery counted no attempt
    gated.release.set()
    sender.join(15)
    assert workflow.deliver_email(email_id=email.pk) is False  # sent by the first
    assert len(mailoutbox) == 1
