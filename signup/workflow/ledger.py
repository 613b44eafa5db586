"""Sending emails through the ledger: one row per email the workflow means to send, claimed,
sent, recorded, retried or dead-lettered, so that each is sent once."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from signup import emails, tasks
from signup.models import OutboundEmail, Signup
from signup.redaction import redact
from signup.workflow.common import (
    EmailKind,
    EmailStatus,
    Event,
    SentButNotRecorded,
    Status,
    _add_event,
    _add_event_for,
    _after_commit,
    _lock_email,
    _lock_signup_and_email,
)

logger = logging.getLogger("signup.workflow")

# Which emails still make sense in which state: no reminder after verification, no welcome
# without it.
_WANTED_WHILE = {
    EmailKind.VERIFICATION: Status.PENDING,
    EmailKind.REMINDER: Status.PENDING,
    EmailKind.WELCOME: Status.VERIFIED,
    EmailKind.ACCOUNT_EXISTS: Status.VERIFIED,
}


_SENT_EVENT = {
    EmailKind.VERIFICATION: Event.VERIFICATION_SENT,
    EmailKind.REMINDER: Event.REMINDER_SENT,
    EmailKind.WELCOME: Event.WELCOME_SENT,
    EmailKind.ACCOUNT_EXISTS: Event.ACCOUNT_EXISTS_SENT,
}


def deliver_email(*, email_id: int) -> bool:
    """Send one ledger email unless it was sent already or is no longer wanted.

    Return whether it was sent now. Provider errors propagate to the caller (the task's retry
    policy); the row stays "sending" so a later attempt or the sweeper finishes the job.
    The signup row stays locked while the provider is called, so a verify that commits after
    a reminder was checked still waits for that reminder to be recorded: no reminder is sent
    after a verification commits.
    """
    # The attempt is counted (committed) before the provider is called, so that an email
    # that kills its worker every time still runs out of attempts.
    claimed = OutboundEmail.objects.filter(
        pk=email_id,
        status__in=(EmailStatus.QUEUED, EmailStatus.SENDING),
        attempts__lt=settings.SIGNUP_EMAIL_MAX_ATTEMPTS,
    ).update(status=EmailStatus.SENDING, attempts=F("attempts") + 1, updated_at=timezone.now())
    if not claimed:
        _fail_if_exhausted(email_id)
        return False

    provider_message_id = None
    try:
        with transaction.atomic():
            signup, email = _lock_signup_and_email(email_id)
            if email is None or email.status != EmailStatus.SENDING:
                return False  # a concurrent delivery finished it while we waited for the lock
            if signup.status != _WANTED_WHILE[email.kind] or signup.anonymised_at is not None:
                email.status = EmailStatus.SKIPPED
                email.save(update_fields=["status", "updated_at"])
                why = "anonymised" if signup.anonymised_at is not None else signup.status
                detail = f"{email.kind} #{email.sequence}: the signup is {why}"
                _add_event(signup, Event.EMAIL_SKIPPED, number=_number(email), detail=detail)
                return False
            provider_message_id = emails.send(email, signup)
            _mark_sent(signup, email, provider_message_id)
    except DatabaseError as exc:
        if provider_message_id is None:
            raise
        raise SentButNotRecorded(email_id, provider_message_id) from exc
    return True


def _fail_if_exhausted(email_id: int) -> None:
    with transaction.atomic():
        email = _lock_email(email_id)
        unsent = email is not None and email.status in (EmailStatus.QUEUED, EmailStatus.SENDING)
        if unsent and email.attempts >= settings.SIGNUP_EMAIL_MAX_ATTEMPTS:
            _fail(email, f"gave up after {email.attempts} attempts")


def record_email_sent(*, email_id: int, provider_message_id: str) -> bool:
    """Record an email the provider accepted while the database was unreachable, so that it
    is not sent a second time; return whether this recorded it."""
    with transaction.atomic():
        signup, email = _lock_signup_and_email(email_id)
        if signup is None or email is None or email.status != EmailStatus.SENDING:
            return False
        _mark_sent(signup, email, provider_message_id)
    return True


def _mark_sent(signup: Signup, email: OutboundEmail, provider_message_id: str) -> None:
    email.provider_message_id = provider_message_id
    email.status = EmailStatus.SENT
    email.sent_at = timezone.now()
    email.last_error = ""
    email.save(
        update_fields=["provider_message_id", "status", "sent_at", "last_error", "updated_at"]
    )
    _add_event(signup, _SENT_EVENT[email.kind], number=_number(email), detail=f"email {email.pk}")


def _number(email: OutboundEmail) -> int | None:
    """The number a timeline event about this email carries: reminders are numbered."""
    return email.sequence if email.kind == EmailKind.REMINDER else None


def record_email_error(*, email_id: int, error: str, retry_in: float) -> bool:
    """Note a failed attempt; return True if it is to be retried in `retry_in` seconds.

    An email whose attempts reached SIGNUP_EMAIL_MAX_ATTEMPTS is dead-lettered instead, and
    one that another delivery finished meanwhile is left alone (both return False).
    """
    with transaction.atomic():
        email = _lock_email(email_id)
        if email is None or email.status != EmailStatus.SENDING:
            return False
        if email.attempts >= settings.SIGNUP_EMAIL_MAX_ATTEMPTS:
            _fail(email, f"gave up after {email.attempts} attempts; last error: {error}")
            return False
        email.last_error = redact(error)[:2000]
        email.enqueued_at = timezone.now() + timedelta(seconds=retry_in)
        email.save(update_fields=["last_error", "enqueued_at", "updated_at"])
    return True


def record_email_failure(*, email_id: int, error: str) -> None:
    """Dead-letter an email whose provider refused it for good or whose retries ran out."""
    with transaction.atomic():
        email = _lock_email(email_id)
        if email is not None and email.status in (EmailStatus.QUEUED, EmailStatus.SENDING):
            _fail(email, error)


def _fail(email: OutboundEmail, error: str) -> None:
    error = redact(error)
    email.status = EmailStatus.FAILED
    email.last_error = error[:2000]
    email.save(update_fields=["status", "last_error", "updated_at"])
    _add_event_for(
        email.signup_id,
        Event.EMAIL_FAILED,
        number=_number(email),
        detail=f"{email.kind}: {error}"[:500],
    )
    logger.error("email %s (%s #%s) failed: %s", email.pk, email.kind, email.sequence, error)


def _queue_email(
    signup: Signup, kind: str, *, sequence: int, deliver: bool = True
) -> OutboundEmail:
    """Add an email to the ledger and, unless the caller delivers it itself, enqueue its
    delivery after commit. Callers hold the signup's lock and pick a sequence number not
    used yet; the unique constraint backs that up."""
    email = OutboundEmail.objects.create(
        signup=signup,
        kind=kind,
        sequence=sequence,
        to_email=signup.email,
        enqueued_at=timezone.now(),
    )
    if deliver:
        _after_commit(lambda: tasks.deliver_email.delay(email.pk))
    return email


def _skip_unsent(signup: Signup, *, kinds) -> None:
    signup.emails.filter(kind__in=kinds, status=EmailStatus.QUEUED).update(
        status=EmailStatus.SKIPPED, updated_at=timezone.now()
    )


def redrive_email(*, email_id: int) -> bool:
    """Give a failed email another round of attempts (an operator's re-drive)."""
    with transaction.atomic():
        email = _lock_email(email_id)
        if email is None or email.status != EmailStatus.FAILED:
            return False
        email.status = EmailStatus.QUEUED
        email.attempts = 0
        email.enqueued_at = timezone.now()
        email.save(update_fields=["status", "attempts", "enqueued_at", "updated_at"])
        _add_event_for(
            email.signup_id,
            Event.EMAIL_REDRIVEN,
            number=email.sequence,
            detail=f"{email.kind} #{email.sequence}: re-driven by an operator",
        )
        _after_commit(lambda: tasks.deliver_email.delay(email_id))
    return True
