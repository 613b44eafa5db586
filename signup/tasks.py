"""Thin Celery tasks: each loads ids and calls signup.workflow; the retry policy lives here.

signup.workflow imports this module to enqueue tasks, so this one imports the workflow inside
each function (HackSoft's rule for the task/service cycle): importing either module first is
safe, and a name added to the top of this module can't reach a half-initialised workflow.
"""

import logging
import random
import smtplib
from dataclasses import dataclass

from anymail.exceptions import AnymailAPIError, AnymailError
from celery import shared_task
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from signup.logs import ids
from signup.redaction import redact

logger = logging.getLogger(__name__)


def is_permanent(exc: Exception) -> bool:
    """Return whether a provider error will fail the same way however often it is retried."""
    if isinstance(exc, AnymailAPIError):
        status = exc.status_code
        return status is not None and 400 <= status < 500 and status not in (408, 409, 429)
    if isinstance(exc, AnymailError):
        # Refused recipients, invalid addresses, unsupported features, bad configuration.
        return True
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(500 <= code < 600 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 500 <= exc.smtp_code < 600  # SMTP 5xx is permanent, 4xx is "try later"
    return False


def retry_delay(retries: int, exc: Exception | None = None) -> float:
    """Exponential backoff with equal jitter (half the delay fixed, half random), and never
    sooner than a rate-limited provider's Retry-After asks."""
    delay = min(
        settings.SIGNUP_EMAIL_RETRY_MAX_DELAY, settings.SIGNUP_EMAIL_RETRY_DELAY * 2**retries
    )
    delay = delay / 2 + random.uniform(0, delay / 2)
    return min(max(delay, _retry_after(exc)), settings.SIGNUP_EMAIL_RETRY_MAX_DELAY)


def _retry_after(exc: Exception | None) -> float:
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return 0.0  # absent, or an HTTP date: the backoff alone decides


@dataclass(frozen=True)
class NextAttempt:
    """What a failed attempt asks for: deliver_email again in `countdown` seconds, with the
    provider's message id if the email is known to have been accepted already."""

    countdown: float
    error: Exception
    provider_message_id: str | None = None

    def kwargs(self, email_id: int) -> dict:
        return {"email_id": email_id, "provider_message_id": self.provider_message_id}


def attempt_delivery(
    email_id: int,
    *,
    retries: int = 0,
    provider_message_id: str | None = None,
    claimed: bool = False,
) -> NextAttempt | None:
    """Make one attempt at a ledger email; return the next attempt if one is due.

    With provider_message_id, the email was accepted by the provider on an earlier attempt
    and only recording that is left to do; `claimed`, its attempt was claimed when it was
    created (a reminder). A permanent failure, or one that used up the email's attempts, is
    dead-lettered by the workflow and asks for nothing.
    """
    from signup import workflow

    try:
        if provider_message_id:
            workflow.record_email_sent(email_id=email_id, provider_message_id=provider_message_id)
        elif claimed:
            workflow.send_claimed_email(email_id=email_id)
        else:
            workflow.deliver_email(email_id=email_id)
    except workflow.EmailInFlight as in_flight:
        # Another attempt is with the provider (a duplicated or redelivered task): look again
        # when its lease ends; by then it has recorded the outcome, or its worker is gone.
        countdown = max((in_flight.until - timezone.now()).total_seconds(), 0) + 0.5
        return NextAttempt(countdown, in_flight, provider_message_id)
    except workflow.SentButNotRecorded as sent:
        # Soon and often: once the database is back, the sweeper would take a row still
        # "sending" after SIGNUP_EMAIL_REDRIVE_AFTER for a lost task and send it again.
        countdown = min(retry_delay(retries), settings.SIGNUP_EMAIL_REDRIVE_AFTER / 10)
        logger.warning("%s; recording it in %.1fs", sent, countdown, extra=ids(email_id=email_id))
        return NextAttempt(countdown, sent, sent.provider_message_id)
    except Exception as exc:
        # A provider's error often names the recipient: the ledger and the log get it without.
        error = redact(f"{type(exc).__name__}: {exc}")
        if is_permanent(exc):
            workflow.record_email_failure(email_id=email_id, error=error)
            return None
        countdown = retry_delay(retries, exc)
        try:
            retrying = workflow.record_email_error(
                email_id=email_id, error=error, retry_in=countdown
            )
        except DatabaseError:
            retrying = True  # the database is away too: the next attempt finds out more
        if not retrying:
            return None  # dead-lettered, or finished by another delivery
        logger.warning(
            "email %s failed (%s); retrying in %.1fs",
            email_id,
            error,
            countdown,
            extra=ids(email_id=email_id),
        )
        # An email already accepted stays so: the next attempt only records it.
        return NextAttempt(countdown, exc, provider_message_id)
    return None


@shared_task(bind=True, max_retries=None)
def deliver_email(self, email_id: int, provider_message_id: str | None = None) -> None:
    """Send one ledger email; the ledger's attempts count is the retry budget."""
    then = attempt_delivery(
        email_id, retries=self.request.retries, provider_message_id=provider_message_id
    )
    if then is not None:
        kwargs = then.kwargs(email_id)
        raise self.retry(args=(), kwargs=kwargs, countdown=then.countdown) from then.error


@shared_task
def send_reminder(signup_id: int, number: int) -> None:
    """Take reminder `number` and send its email in this same task, so that it leaves when
    the reminder is due; a send that fails goes on as a deliver_email task with retries."""
    from signup import workflow

    email_id = workflow.take_reminder(signup_id=signup_id, number=number)
    if email_id is None:
        return
    then = attempt_delivery(email_id, claimed=True)
    if then is not None:
        deliver_email.apply_async(kwargs=then.kwargs(email_id), countdown=then.countdown)


@shared_task
def greet_signup(signup_id: int) -> None:
    """Greet the address of a signup the form or the API started: done here so that their
    answer takes as long whatever the address (workflow.start_signup)."""
    from signup import workflow

    workflow.greet_signup(signup_id=signup_id)


@shared_task
def request_verification_email(email: str, network: str = "") -> None:
    """The resend page's request, done here so that the page answers alike for every address."""
    from signup import workflow

    outcome = workflow.request_verification_email(email=email, network=network)
    logger.info("resend request: %s", outcome)


@shared_task
def expire_signup(signup_id: int) -> None:
    from signup import workflow

    workflow.expire_signup(signup_id=signup_id)


@shared_task
def sweep() -> dict[str, int]:
    from signup import workflow

    return workflow.sweep()


@shared_task
def anonymise_closed_signups() -> int:
    """Personal data ends: closed signups past the retention period, and idle addresses."""
    from signup import workflow

    anonymised = workflow.anonymise_closed_signups()
    workflow.forget_idle_addresses()
    return anonymised


# --- Webhooks out ---------------------------------------------------------------------------


def webhook_retry_delay(retries: int, retry_after: str = "") -> float:
    """Exponential backoff with equal jitter, never sooner than the receiver's Retry-After
    (capped, like the backoff, at SIGNUP_WEBHOOK_RETRY_MAX_DELAY)."""
    delay = min(
        settings.SIGNUP_WEBHOOK_RETRY_MAX_DELAY, settings.SIGNUP_WEBHOOK_RETRY_DELAY * 2**retries
    )
    delay = delay / 2 + random.uniform(0, delay / 2)
    try:
        asked = max(float(retry_after), 0.0)
    except ValueError:
        asked = 0.0  # absent, or an HTTP date: the backoff alone decides
    return min(max(delay, asked), settings.SIGNUP_WEBHOOK_RETRY_MAX_DELAY)


@shared_task(bind=True, max_retries=None)
def deliver_webhook(self, delivery_id: int) -> None:
    """POST one event to one receiver; the ledger's attempts count is the retry budget.

    Timeouts, connection errors, 5xx, 408 and 429 (and any other error making the attempt)
    are retried with backoff, honouring Retry-After up to SIGNUP_WEBHOOK_RETRY_MAX_DELAY; any
    other answer below 200 or from 300 up is the receiver's final word and dead-letters the
    delivery at once.
    """
    from signup import hooks, workflow

    try:
        workflow.deliver_webhook(delivery_id=delivery_id)
    except workflow.WebhookInFlight as in_flight:
        countdown = max((in_flight.until - timezone.now()).total_seconds(), 0) + 0.5
        raise self.retry(countdown=countdown) from in_flight
    except hooks.ReceiverRefused as refused:
        status = refused.status
        if status not in (408, 429) and status < 500:
            error = f"the receiver answered {status}"
            workflow.record_webhook_failure(delivery_id=delivery_id, error=error, status=status)
            return
        countdown = webhook_retry_delay(self.request.retries, refused.retry_after)
        retrying = workflow.record_webhook_error(
            delivery_id=delivery_id, error=str(refused), retry_in=countdown, status=status
        )
        if retrying:
            raise self.retry(countdown=countdown) from refused
    except DatabaseError as exc:
        # The ledger is unreachable: nothing can be recorded; try again later (the lease
        # keeps a copy of this task from posting meanwhile).
        raise self.retry(countdown=webhook_retry_delay(self.request.retries)) from exc
    except Exception as exc:
        # A timeout or a refused connection (requests, OSError), or anything else that went
        # wrong making the attempt: recorded, and tried again after the backoff.
        countdown = webhook_retry_delay(self.request.retries)
        error = redact(f"{type(exc).__name__}: {exc}")
        retrying = workflow.record_webhook_error(
            delivery_id=delivery_id, error=error, retry_in=countdown
        )
        if retrying:
            raise self.retry(countdown=countdown) from exc
