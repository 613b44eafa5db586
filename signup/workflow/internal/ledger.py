"""The ledgers: one row per thing the workflow means to send (an email, a webhook delivery),
and one mechanism for both. A row is claimed in a short transaction (an attempt counted, a
lease running), sent outside any transaction, and recorded; a failed attempt is retried
with backoff or dead-lettered, an operator re-drives a dead letter, and the sweeper finds
the rows whose task was lost. What differs between the ledgers (the model, the lease, the
attempts and backoff settings, how a row is sent and recorded, which failures are final,
how a row reads on the timeline) is a Channel's: EMAIL and WEBHOOK.
"""

import logging
import random
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from anymail.exceptions import AnymailAPIError, AnymailError
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from signup import emails, metrics, tasks, webhooks_out
from signup.logs import ids
from signup.models import Outbound, OutboundEmail, Signup, WebhookDelivery
from signup.redaction import redact
from signup.workflow.internal import queues
from signup.workflow.internal.rows import (
    EmailKind,
    Event,
    InFlight,
    LedgerState,
    Status,
    add_event,
    after_commit,
)

logger = logging.getLogger("signup.workflow")

UNSENT = (LedgerState.QUEUED, LedgerState.SENDING)


@dataclass(frozen=True)
class Channel:
    """One ledger: its rows, its settings (SIGNUP_<settings>_MAX_ATTEMPTS, _RETRY_DELAY,
    _RETRY_MAX_DELAY), its lease and its delivery task; how a row is sent and recorded, and
    which failures are final; how a row reads on the timeline and in the logs."""

    model: type[Outbound]
    settings: str
    lease: Callable[[], float]
    task: Callable[[], object]
    send: Callable[[Outbound, Signup], object]  # the far end's answer (a message id, a status)
    record: Callable[[Outbound, object], bool]  # mark it sent with that answer
    final: Callable[[Exception], bool]
    failed_event: str
    redriven_event: str
    describe: Callable[[Outbound], str]
    unwanted: Callable[[Outbound, Signup], str] = lambda row, signup: ""  # why not send it
    retry_after: Callable[[Exception], float] = lambda exc: 0.0  # what the far end asked
    answered: Callable[[Exception], dict] = lambda exc: {}  # what to record of a refusal
    number: Callable[[Outbound], int | None] = lambda row: None
    counted: Callable[[Outbound, str], None] = lambda row, result: None
    # Whether a far end down for everyone holds the rows (internal.outage) instead of
    # spending their attempts: the email provider; each webhook receiver is its own.
    outages: bool = False

    def setting(self, name: str):
        return getattr(settings, f"SIGNUP_{self.settings}_{name}")

    def lock(self, row_id: int) -> Outbound | None:
        return self.model.objects.select_for_update(no_key=True).filter(pk=row_id).first()


# --- The email ledger ------------------------------------------------------------------------

# Which emails still make sense in which state: no reminder after verification, no welcome
# without it.
WANTED_WHILE = {
    EmailKind.VERIFICATION: Status.PENDING,
    EmailKind.REMINDER: Status.PENDING,
    EmailKind.WELCOME: Status.VERIFIED,
    EmailKind.ACCOUNT_EXISTS: Status.VERIFIED,
}
# The emails only a pending signup wants: none of them may leave once it is closed.
PENDING_KINDS = [kind for kind, status in WANTED_WHILE.items() if status == Status.PENDING]
_SENT_EVENT = {
    EmailKind.VERIFICATION: Event.VERIFICATION_SENT,
    EmailKind.REMINDER: Event.REMINDER_SENT,
    EmailKind.WELCOME: Event.WELCOME_SENT,
    EmailKind.ACCOUNT_EXISTS: Event.ACCOUNT_EXISTS_SENT,
}


def email_number(email: OutboundEmail) -> int | None:
    """The number a timeline event about this email carries: reminders are numbered."""
    return email.sequence if email.kind == EmailKind.REMINDER else None


def _unwanted_email(email: OutboundEmail, signup: Signup) -> str:
    if signup.anonymised_at is not None:
        return "anonymised"
    if email.kind in PENDING_KINDS and email.to_email != signup.email:
        return "the address changed"  # an operator's re-drive of an old dead letter
    return signup.status if signup.status != WANTED_WHILE[email.kind] else ""


def _send_email(email: OutboundEmail, signup: Signup) -> str:
    started = time.perf_counter()
    try:
        provider_message_id = emails.send(email, signup)
    except Exception:
        metrics.provider_call.labels("error").observe(time.perf_counter() - started)
        raise
    metrics.provider_call.labels("ok").observe(time.perf_counter() - started)
    if email.kind == EmailKind.WELCOME and signup.verified_at is not None:
        waited = (timezone.now() - signup.verified_at).total_seconds()
        metrics.verify_to_welcome.observe(max(waited, 0.0))
    return provider_message_id


def _record_email(email: OutboundEmail, provider_message_id: str) -> bool:
    """Mark the email sent (unless another delivery did) and put it on the timeline."""
    with transaction.atomic():
        if email.kind == EmailKind.VERIFICATION:
            # The signup's row before the email's, the order every lock here is taken in.
            Signup.objects.filter(pk=email.signup_id, verification_sent_at__isnull=True).update(
                verification_sent_at=timezone.now()
            )
        recorded = record_sent(EMAIL, email.pk, provider_message_id=provider_message_id)
        if recorded:
            event, number = _SENT_EVENT[email.kind], email_number(email)
            add_event(email.signup_id, event, number=number, detail=f"email {email.pk}")
    if recorded:
        EMAIL.counted(email, "sent")
    return recorded


def email_error_is_final(exc: Exception) -> bool:
    """Whether a provider error will fail the same way however often it is retried."""
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


def retry_after_seconds(retry_after: str) -> float:
    """The seconds a Retry-After header asks for; 0 if it asks none, or gives a date."""
    try:
        return max(float(retry_after), 0.0)
    except ValueError:
        return 0.0


EMAIL = Channel(
    model=OutboundEmail,
    settings="EMAIL",
    # The provider's own time limit, and a second.
    lease=lambda: settings.EMAIL_TIMEOUT + 1,
    task=lambda: tasks.deliver_email,
    send=_send_email,
    record=_record_email,
    final=email_error_is_final,
    failed_event=Event.EMAIL_FAILED,
    redriven_event=Event.EMAIL_REDRIVEN,
    describe=lambda email: f"{email.kind} #{email.sequence}",
    unwanted=_unwanted_email,
    retry_after=lambda exc: retry_after_seconds(
        (getattr(getattr(exc, "response", None), "headers", None) or {}).get("Retry-After", "")
    ),
    number=email_number,
    counted=lambda email, result: metrics.email_attempts.labels(email.kind, result).inc(),
    outages=True,
)


# --- The webhook ledger ----------------------------------------------------------------------


def _refused_for_good(exc: Exception) -> bool:
    """A receiver's answer other than 2xx is its final word, but for 408, 429 and 5xx;
    timeouts and connection errors are tried again."""
    if isinstance(exc, webhooks_out.ReceiverRefused):
        return exc.status not in (408, 429) and exc.status < 500
    return False


WEBHOOK = Channel(
    model=WebhookDelivery,
    settings="WEBHOOK",
    # SIGNUP_WEBHOOK_TIMEOUT bounds the connection and each wait for the answer's next
    # bytes: twice that, and a second.
    lease=lambda: 2 * settings.SIGNUP_WEBHOOK_TIMEOUT + 1,
    task=lambda: tasks.deliver_webhook,
    send=webhooks_out.post,
    record=lambda delivery, status: record_sent(WEBHOOK, delivery.pk, response_status=status),
    final=_refused_for_good,
    failed_event=Event.WEBHOOK_FAILED,
    redriven_event=Event.WEBHOOK_REDRIVEN,
    describe=lambda delivery: f"{delivery.event_type} to {delivery.endpoint}",
    retry_after=lambda exc: retry_after_seconds(getattr(exc, "retry_after", "")),
    answered=lambda exc: {"response_status": getattr(exc, "status", None)},
)


def retry_delay(channel: Channel, attempt: int, *, retry_after: float = 0.0) -> float:
    """How long to wait after failed attempt number `attempt` (1 for the first): exponential
    backoff with equal jitter (half the delay fixed, half random, so that many rows failing
    at once come back spread out), never sooner than the far end's Retry-After, and at most
    the channel's RETRY_MAX_DELAY."""
    cap = channel.setting("RETRY_MAX_DELAY")
    delay = min(cap, channel.setting("RETRY_DELAY") * 2 ** max(attempt - 1, 0))
    delay = delay / 2 + random.uniform(0, delay / 2)
    return min(max(delay, retry_after), cap)


def claimable(channel: Channel, row: Outbound | None, *, now) -> bool:
    """Whether an attempt at this row (locked by the caller) may begin now: False once it was
    sent, dead-lettered or skipped, or when its attempts ran out (it is dead-lettered here);
    InFlight while another attempt holds its lease or its next attempt is planned for later
    (a backoff, a Retry-After), which a copy of its task (redelivered, re-enqueued) waits for."""
    if row is None or row.status not in UNSENT:
        return False
    for until in (row.in_flight_until, row.enqueued_at):
        if until is not None and until > now:
            raise InFlight(row.pk, until)
    if row.attempts >= channel.setting("MAX_ATTEMPTS"):
        fail(channel, row, f"gave up after {row.attempts} attempts")
        return False
    return True


def begin_attempt(channel: Channel, row: Outbound, *, now) -> None:
    """Count an attempt and give it its lease. Committed before the far end is called, so
    that a row that kills its worker every time still runs out of attempts; the sweeper
    measures a lost task from this attempt on."""
    row.status = LedgerState.SENDING
    row.attempts += 1
    row.in_flight_until = now + timedelta(seconds=channel.lease())
    row.enqueued_at = now
    row.save(update_fields=["status", "attempts", "in_flight_until", "enqueued_at", "updated_at"])


def record_sent(channel: Channel, row_id: int, **fields) -> bool:
    """Mark a row sent, unless another attempt did; return whether this one did."""
    now = timezone.now()
    finished = {
        "status": LedgerState.SENT,
        "sent_at": now,
        "last_error": "",
        "in_flight_until": None,
    }
    rows = channel.model.objects.filter(pk=row_id, status=LedgerState.SENDING)
    return bool(rows.update(**finished, updated_at=now, **fields))


def record_error(channel: Channel, row_id: int, *, error: str, retry_in: float, **fields) -> bool:
    """Note a failed attempt; return True if the row is to be tried again in `retry_in`
    seconds (False: its attempts ran out and it was dead-lettered, or another attempt
    finished it meanwhile). `fields` records what the far end answered."""
    with transaction.atomic():
        row = channel.lock(row_id)
        if row is None or row.status != LedgerState.SENDING:
            return False
        for name, value in fields.items():
            setattr(row, name, value)
        if row.attempts >= channel.setting("MAX_ATTEMPTS"):
            fail(channel, row, f"gave up after {row.attempts} attempts; last error: {error}")
            return False
        row.last_error = redact(error)[:2000]
        row.enqueued_at = timezone.now() + timedelta(seconds=retry_in)
        row.in_flight_until = None
        row.save(
            update_fields=["last_error", "enqueued_at", "in_flight_until", "updated_at", *fields]
        )
    channel.counted(row, "retried")
    return True


def record_failure(channel: Channel, row_id: int, *, error: str, **fields) -> None:
    """Dead-letter a row the far end refused for good."""
    with transaction.atomic():
        row = channel.lock(row_id)
        if row is not None and row.status in UNSENT:
            for name, value in fields.items():
                setattr(row, name, value)
            fail(channel, row, error)


def fail(channel: Channel, row: Outbound, error: str) -> None:
    """Dead-letter a row (locked by the caller): an operator sees it and may re-drive it."""
    error = redact(error)
    row.status = LedgerState.FAILED
    row.last_error = error[:2000]
    row.in_flight_until = None
    row.save()
    detail = f"{channel.describe(row)}: {error}"
    add_event(row.signup_id, channel.failed_event, number=channel.number(row), detail=detail)
    channel.counted(row, "failed")
    logger.error(
        "%s %s (%s) failed: %s",
        channel.settings.lower(),
        row.pk,
        channel.describe(row),
        error,
        extra=ids(
            signup_id=row.signup_id,
            email_id=row.pk if channel is EMAIL else None,
            reminder=channel.number(row),
        ),
    )


def redrive(channel: Channel, row_id: int) -> bool:
    """Give a dead letter another round of attempts (an operator's re-drive); it keeps its
    identity (an email its Message-ID, a delivery its webhook-id)."""
    with transaction.atomic():
        row = channel.lock(row_id)
        if row is None or row.status != LedgerState.FAILED:
            return False
        row.status = LedgerState.QUEUED
        row.attempts = 0
        row.enqueued_at = timezone.now()
        row.save(update_fields=["status", "attempts", "enqueued_at", "updated_at"])
        detail = f"{channel.describe(row)}: re-driven by an operator"
        add_event(row.signup_id, channel.redriven_event, number=channel.number(row), detail=detail)
        after_commit(lambda: channel.task().delay(row_id))
    return True


def unsent(channel: Channel, *, now, passed_at):
    """Rows still to be sent whose (re-)enqueueing or last attempt came before their queue's
    workers had passed (`passed_at`, from queues.passed) and whose lease has ended: their tasks
    were lost (the sweeper's business). A retry planned for later counts from its time."""
    return channel.model.objects.filter(
        queues.enqueued_before(passed_at, channel.task(), "enqueued_at"),
        Q(in_flight_until__isnull=True) | Q(in_flight_until__lte=now),
        status__in=UNSENT,
    )


# --- Emails queued and skipped --------------------------------------------------------------


def next_sequence(signup: Signup, kind: str) -> int:
    """The sequence number the signup's next email of this kind gets."""
    last = signup.emails.filter(kind=kind).order_by("-sequence").first()
    return last.sequence + 1 if last else 1


def queue_email(
    signup: Signup, kind: str, *, sequence: int | None = None, claimed: bool = False
) -> OutboundEmail:
    """Add an email to the ledger (the next of its kind unless `sequence` says) and enqueue
    its delivery after commit, unless it is `claimed`: then it starts with its first attempt
    counted and its lease running, for the caller to send (a reminder's task sends its own).
    Callers hold the signup's lock; the unique constraint backs the sequence up."""
    now = timezone.now()
    email = OutboundEmail(
        signup=signup,
        kind=kind,
        sequence=sequence or next_sequence(signup, kind),
        to_email=signup.email,
        enqueued_at=now,
    )
    if claimed:
        email.status = LedgerState.SENDING
        email.attempts = 1
        email.in_flight_until = now + timedelta(seconds=EMAIL.lease())
    email.save(force_insert=True)
    if not claimed:
        after_commit(lambda: tasks.deliver_email.delay(email.pk))
    return email


def skip_unsent(signup: Signup, *, kinds) -> None:
    signup.emails.filter(kind__in=kinds, status=LedgerState.QUEUED).update(
        status=LedgerState.SKIPPED, updated_at=timezone.now()
    )


def pending_email_out_until(signup: Signup):
    """When the lease ends of an email of this pending signup (a verification email or a
    reminder) that is with the provider; None if there is none."""
    if signup.status != Status.PENDING:
        return None
    return (
        signup.emails.filter(
            kind__in=PENDING_KINDS, status=LedgerState.SENDING, in_flight_until__gt=timezone.now()
        )
        .order_by("-in_flight_until")
        .values_list("in_flight_until", flat=True)
        .first()
    )
