"""Thin Celery tasks: each loads ids and calls signup.workflow; the retry policy lives here."""

import logging
import smtplib

from anymail.exceptions import AnymailAPIError, AnymailRecipientsRefused
from celery import shared_task
from celery.utils.time import get_exponential_backoff_interval

from signup import workflow

logger = logging.getLogger(__name__)

EMAIL_MAX_RETRIES = 8
EMAIL_BACKOFF_FACTOR = 5  # seconds; then 10, 20, ... with full jitter
EMAIL_BACKOFF_MAX = 15 * 60


def is_permanent(exc: Exception) -> bool:
    """Return whether a provider error will fail the same way however often it is retried."""
    if isinstance(exc, AnymailRecipientsRefused | smtplib.SMTPRecipientsRefused):
        return True
    if isinstance(exc, smtplib.SMTPResponseException):
        return 500 <= exc.smtp_code < 600  # SMTP 5xx is permanent, 4xx is "try later"
    if isinstance(exc, AnymailAPIError):
        status = getattr(exc, "status_code", None)
        return status is not None and 400 <= status < 500 and status not in (408, 429)
    return False


TRANSIENT_ERRORS = (OSError, smtplib.SMTPException, AnymailAPIError)


@shared_task(bind=True, max_retries=EMAIL_MAX_RETRIES)
def deliver_email(self, email_id: int) -> None:
    try:
        workflow.deliver_email(email_id=email_id)
    except TRANSIENT_ERRORS as exc:
        error = f"{type(exc).__name__}: {exc}"
        if is_permanent(exc) or self.request.retries >= self.max_retries:
            workflow.record_email_failure(email_id=email_id, error=error)
            return
        countdown = get_exponential_backoff_interval(
            EMAIL_BACKOFF_FACTOR, self.request.retries, EMAIL_BACKOFF_MAX, full_jitter=True
        )
        workflow.record_email_error(email_id=email_id, error=error, retry_in=countdown)
        logger.warning("email %s failed (%s); retrying in %ss", email_id, error, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc


@shared_task
def send_reminder(signup_id: int, number: int) -> None:
    workflow.send_reminder(signup_id=signup_id, number=number)


@shared_task
def expire_signup(signup_id: int) -> None:
    workflow.expire_signup(signup_id=signup_id)


@shared_task
def sweep() -> dict[str, int]:
    return workflow.sweep()
