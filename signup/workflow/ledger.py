"""Sending emails through the ledger: one row per email the workflow means to send, claimed,
sent, recorded, retried or dead-lettered, so that each is sent once."""

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from signup import emails, metrics, tasks
from signup.logs import ids
from signup.models import OutboundEmail, Signup
from signup.redaction import redact
from signup.workflow.common import (
    EmailInFlight,
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
    close_if_pooled,
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
    """Send one ledger email unless it was sent already or is no longer wanted; return
    whether it was sent now.

    Three short steps, so that no transaction or row lock is held while the provider takes
    its time: claim the email under its signup's lock (count the attempt, set its lease),
    call the provider, record what it answered. A verification waits for a verification email
    or a reminder of its signup whose lease runs, so neither leaves after a verification
    commits. Provider errors propagate to the caller (the task's retry policy) with the row
    still "sending"; EmailInFlight says another attempt holds the lease.
    """
    claimed = _claim(email_id)
    if claimed is None:
        return False
    signup, email = claimed
    _send_and_record(email, signup)
    return True


def send_claimed_email(*, email_id: int) -> bool:
    """Send an email whose attempt its creator claimed in the same transaction (a reminder
    is taken and claimed at once: take_reminder); return whether it was sent now. What
    deliver_email does after its claim, with the same errors."""
    email = (
        OutboundEmail.objects.select_related("signup")
        .filter(pk=email_id, status=EmailStatus.SENDING)
        .first()
    )
    if email is None:
        return False
    _send_and_record(email, email.signup)
    return True


def _send_and_record(email: OutboundEmail, signup: Signup) -> None:
    # The provider may take seconds: give the connection back (to the pool, when there is
    # one) rather than hold it idle.
    close_if_pooled()
    started = time.perf_counter()
    try:
        provider_message_id = emails.send(email, signup)
    except Exception:
        metrics.provider_call.labels("error").observe(time.perf_counter() - started)
        raise
    metrics.provider_call.labels("ok").observe(time.perf_counter() - started)
    try:
        recorded = _record_sent(email, provider_message_id)
    except DatabaseError as exc:
        raise SentButNotRecorded(email.pk, provider_message_id) from exc
    if recorded and email.kind == EmailKind.WELCOME and signup.verified_at is not None:
        waited = (timezone.now() - signup.verified_at).total_seconds()
        metrics.verify_to_welcome.observe(max(waited, 0.0))


def _claim(email_id: int) -> tuple[Signup, OutboundEmail] | None:
    """Count an attempt at the email and give it a lease, if it is still to be sent.

    Committed before the provider is called, so that an email that kills its worker every
    time still runs out of attempts, and under the signup's lock, so that a verification
    either sees the lease or is seen by the claim.
    """
    now = timezone.now()
    with transaction.atomic():
        signup, email = _lock_signup_and_email(email_id)
        if email is None or email.status not in (EmailStatus.QUEUED, EmailStatus.SENDING):
            return None
        if email.in_flight_until is not None and email.in_flight_until > now:
            raise EmailInFlight(email_id, email.in_flight_until)
        if email.enqueued_at is not None and email.enqueued_at > now:
            # Its next attempt is planned for later (the backoff, a Retry-After): a copy of
            # its task (redelivered, re-enqueued) waits for that time too.
            raise EmailInFlight(email_id, email.enqueued_at)
        if email.attempts >= settings.SIGNUP_EMAIL_MAX_ATTEMPTS:
            _fail(email, f"gave up after {email.attempts} attempts")
            return None
        if signup.status != _WANTED_WHILE[email.kind] or signup.anonymised_at is not None:
            email.status = EmailStatus.SKIPPED
            email.in_flight_until = None
            email.save(update_fields=["status", "in_flight_until", "updated_at"])
            why = "anonymised" if signup.anonymised_at is not None else signup.status
            detail = f"{email.kind} #{email.sequence}: the signup is {why}"
            _add_event(signup, Event.EMAIL_SKIPPED, number=_number(email), detail=detail)
            metrics.email_attempts.labels(email.kind, "skipped").inc()
            return None
        email.status = EmailStatus.SENDING
        email.attempts += 1
        email.in_flight_until = now + timedelta(seconds=lease_seconds())
        email.save(update_fields=["status", "attempts", "in_flight_until", "updated_at"])
    return signup, email


def lease_seconds() -> float:
    """How long an attempt may be with the provider: its own time limit, and a second."""
    return settings.EMAIL_TIMEOUT + 1


def record_email_sent(*, email_id: int, provider_message_id: str) -> bool:
    """Record an email the provider accepted while the database was unreachable, so that it
    is not sent a second time; return whether this recorded it."""
    email = OutboundEmail.objects.filter(pk=email_id).only("kind", "sequence", "signup").first()
    return email is not None and _record_sent(email, provider_message_id)


def _record_sent(email: OutboundEmail, provider_message_id: str) -> bool:
    """Mark the email sent (unless another delivery did) and put it on the timeline."""
    now = timezone.now()
    with transaction.atomic():
        if email.kind == EmailKind.VERIFICATION:
            # The signup's row before the email's, the order every lock here is taken in.
            Signup.objects.filter(pk=email.signup_id, verification_sent_at__isnull=True).update(
                verification_sent_at=now
            )
        recorded = OutboundEmail.objects.filter(pk=email.pk, status=EmailStatus.SENDING).update(
            provider_message_id=provider_message_id,
            status=EmailStatus.SENT,
            sent_at=now,
            last_error="",
            in_flight_until=None,
            updated_at=now,
        )
        if recorded:
            event = _SENT_EVENT[email.kind]
            detail = f"email {email.pk}"
            _add_event_for(email.signup_id, event, number=_number(email), detail=detail)
    if recorded:
        metrics.email_attempts.labels(email.kind, "sent").inc()
    return bool(recorded)


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
        email.in_flight_until = None
        email.save(update_fields=["last_error", "enqueued_at", "in_flight_until", "updated_at"])
    metrics.email_attempts.labels(email.kind, "retried").inc()
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
    email.in_flight_until = None
    email.save(update_fields=["status", "last_error", "in_flight_until", "updated_at"])
    _add_event_for(
        email.signup_id,
        Event.EMAIL_FAILED,
        number=_number(email),
        detail=f"{email.kind}: {error}"[:500],
    )
    metrics.email_attempts.labels(email.kind, "failed").inc()
    logger.error(
        "email %s (%s #%s) failed: %s",
        email.pk,
        email.kind,
        email.sequence,
        error,
        extra=ids(signup_id=email.signup_id, email_id=email.pk, reminder=_number(email)),
    )


def _queue_email(
    signup: Signup, kind: str, *, sequence: int, deliver: bool = True, claimed: bool = False
) -> OutboundEmail:
    """Add an email to the ledger and, unless the caller delivers it itself, enqueue its
    delivery after commit. Callers hold the signup's lock and pick a sequence number not
    used yet; the unique constraint backs that up. A `claimed` email starts with its first
    attempt counted and its lease running, for the caller to send (send_claimed_email)."""
    now = timezone.now()
    email = OutboundEmail(
        signup=signup, kind=kind, sequence=sequence, to_email=signup.email, enqueued_at=now
    )
    if claimed:
        email.status = EmailStatus.SENDING
        email.attempts = 1
        email.in_flight_until = now + timedelta(seconds=lease_seconds())
    email.save(force_insert=True)
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


# The emails only a pending signup wants: none of them may leave once it is closed.
_PENDING_KINDS = [kind for kind, status in _WANTED_WHILE.items() if status == Status.PENDING]


def _pending_email_out_until(signup: Signup):
    """When the lease ends of an email of this pending signup (a verification email or a
    reminder) that is with the provider."""
    if signup.status != Status.PENDING:
        return None
    return (
        signup.emails.filter(
            kind__in=_PENDING_KINDS,
            status=EmailStatus.SENDING,
            in_flight_until__gt=timezone.now(),
        )
        .order_by("-in_flight_until")
        .values_list("in_flight_until", flat=True)
        .first()
    )


def _wait_for_lease(until) -> None:
    """Sleep a little, at most until `until`, before looking again (outside a transaction)."""
    time.sleep(max(min((until - timezone.now()).total_seconds(), 0.02), 0.001))
