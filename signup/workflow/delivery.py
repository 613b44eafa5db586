"""Sending what the ledgers hold (internal.ledger: EMAIL, WEBHOOK), the same way for both:
each attempt is claimed in a short transaction, made outside any transaction (the far end
may take seconds) and recorded; a failure is final or tried again after a backoff, as the
ledger's channel says. And what the provider reports about an email it took."""

import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from signup.logs import ids
from signup.models import Signup
from signup.redaction import redact
from signup.workflow.internal import ledger, outage
from signup.workflow.internal.endings import close
from signup.workflow.internal.ledger import EMAIL, Channel, email_number, retry_delay
from signup.workflow.internal.rows import (
    Event,
    InFlight,
    LedgerState,
    SentButNotRecorded,
    Status,
    add_event,
    close_if_pooled,
)

logger = logging.getLogger("signup.workflow")


@dataclass(frozen=True)
class NextAttempt:
    """What a failed attempt asks for: another in `countdown` seconds; for a row the far end
    accepted already, with its answer (a provider's message id: only recording it is left)."""

    countdown: float
    error: Exception
    answer: object = None


def attempt(
    channel: Channel, row_id: int, *, retries: int = 0, answer=None, claimed: bool = False
) -> NextAttempt | None:
    """Make one attempt at a ledger row (a delivery task's): send it, or, with the far end's
    `answer` to an earlier attempt, only record it; `claimed` when its creator claimed the
    attempt (a reminder). Return the next attempt if one is due; a failure that is final, or
    that used up the row's attempts, is dead-lettered here and asks for none."""
    try:
        if answer is not None:
            row = channel.model.objects.filter(pk=row_id).first()
            if row is not None:
                channel.record(row, answer)
        else:
            deliver(channel, row_id, claimed=claimed)
    except InFlight as in_flight:
        # Another attempt is out (a duplicated or redelivered task): look again when its
        # lease ends; by then it has recorded the outcome, or its worker is gone.
        countdown = max((in_flight.until - timezone.now()).total_seconds(), 0) + 0.5
        return NextAttempt(countdown, in_flight, answer)
    except SentButNotRecorded as sent:
        # Soon and often: once the database is back, the sweeper would take a row still
        # "sending" after SIGNUP_REDRIVE_AFTER for a lost task and send it again.
        countdown = min(retry_delay(channel, retries + 1), settings.SIGNUP_REDRIVE_AFTER / 10)
        logger.warning("%s; recording it in %.1fs", sent, countdown, extra=_ids(channel, row_id))
        return NextAttempt(countdown, sent, sent.answer)
    except Exception as exc:  # the far end's refusal, or anything that went wrong sending
        return _failed(channel, row_id, exc, retries, answer)
    return None


def deliver(channel: Channel, row_id: int, *, claimed: bool = False) -> bool:
    """Send one ledger row unless it was sent already or is no longer wanted; return whether
    it was sent now.

    Three short steps, so that no transaction or row lock is held while the far end takes
    its time: claim the row under its signup's lock (internal.ledger.claimable; `claimed`:
    its creator did, as take_reminder does), send it, record the answer. So a verification,
    which takes the signup's lock, either sees an email's lease or is seen by its claim. The
    far end's errors propagate with the row still "sending"; InFlight says another attempt
    holds the lease.
    """
    now = timezone.now()
    with transaction.atomic():
        # The signup's row before the ledger's, the order every lock here is taken in.
        signup = _lock_signup_of(channel, row_id)
        row = channel.lock(row_id)
        if claimed:
            if row is None or row.status != LedgerState.SENDING:
                return False
        elif not ledger.claimable(channel, row, now=now):
            return False
        elif why := channel.unwanted(row, signup):
            _skip(channel, row, why)
            return False
        if channel.outages and outage.is_open():
            outage.hold(row)
            return False
        if not claimed:
            ledger.begin_attempt(channel, row, now=now)
    close_if_pooled()  # the far end may take seconds: no idle connection meanwhile
    answer = channel.send(row, signup)
    try:
        channel.record(row, answer)
    except DatabaseError as exc:
        raise SentButNotRecorded(row.pk, answer) from exc
    if channel.outages:
        outage.sent()
    return True


def _lock_signup_of(channel: Channel, row_id: int) -> Signup | None:
    rows = channel.model._meta.get_field("signup").remote_field.related_name
    return (
        Signup.objects.select_for_update(no_key=True, of=("self",))
        .filter(**{f"{rows}__pk": row_id})
        .first()
    )


def _skip(channel: Channel, row, why: str) -> None:
    row.status = LedgerState.SKIPPED
    row.in_flight_until = None
    row.save(update_fields=["status", "in_flight_until", "updated_at"])
    detail = f"{channel.describe(row)}: the signup is {why}"
    add_event(row.signup_id, Event.EMAIL_SKIPPED, number=channel.number(row), detail=detail)
    channel.counted(row, "skipped")


def _failed(
    channel: Channel, row_id: int, exc: Exception, retries: int, answer
) -> NextAttempt | None:
    """Record a failed attempt (`retries` made before it): dead-lettered if the channel says
    the failure is final or the row is out of attempts, else tried again after the backoff,
    with the `answer` an earlier attempt had (the far end accepted it). The error is recorded
    and logged without the addresses a provider's errors often name."""
    error = redact(f"{type(exc).__name__}: {exc}")
    fields = channel.answered(exc)
    if channel.final(exc):
        ledger.record_failure(channel, row_id, error=error, **fields)
        return None
    if channel.outages and answer is None and outage.failed(row_id, exc):
        _hold(channel, row_id, error)
        return None
    countdown = retry_delay(channel, retries + 1, retry_after=channel.retry_after(exc))
    try:
        retrying = ledger.record_error(channel, row_id, error=error, retry_in=countdown, **fields)
    except DatabaseError:
        retrying = True  # the database is away too: the next attempt finds out more
    if not retrying:
        return None  # dead-lettered, or finished by another attempt
    logger.warning(
        "%s %s failed (%s); retrying in %.1fs",
        channel.settings.lower(),
        row_id,
        error,
        countdown,
        extra=_ids(channel, row_id),
    )
    return NextAttempt(countdown, exc, answer)


def _hold(channel: Channel, row_id: int, error: str) -> None:
    """Hold a row whose attempt failed in an outage (internal.outage): its attempt is given
    back, and its error kept for the operator to read."""
    with transaction.atomic():
        row = channel.lock(row_id)
        if row is not None and row.status == LedgerState.SENDING:
            row.last_error = error[:2000]
            row.save(update_fields=["last_error"])
            outage.hold(row)


def _ids(channel: Channel, row_id: int) -> dict:
    return ids(email_id=row_id) if channel is EMAIL else {}


# --- What the provider reports --------------------------------------------------------------

# What a provider's tracking event means for a signup: the timeline event it adds, and
# whether it closes a pending signup (a hard bounce or a complaint: stop writing to it).
_PROVIDER_EVENTS = {
    "delivered": (Event.EMAIL_DELIVERED, False),
    "opened": (Event.EMAIL_OPENED, False),
    "clicked": (Event.EMAIL_CLICKED, False),
    "deferred": (Event.EMAIL_DEFERRED, False),
    "bounced": (Event.EMAIL_BOUNCED, True),
    "rejected": (Event.EMAIL_BOUNCED, True),
    "complained": (Event.EMAIL_COMPLAINED, True),
}
# Providers' own types of bounce that are temporary, though anymail reports them as bounces.
SOFT_BOUNCE_TYPES = frozenset({"SoftBounce", "Transient", "DnsError"})


def record_provider_event(
    *, email_id: int, event_type: str, bounce_type: str = "", description: str = ""
) -> bool:
    """Put a provider's event about a sent email on its signup's timeline; return whether
    it was new.

    A hard bounce, a rejection or a spam complaint also makes a pending signup
    undeliverable, which stops its reminders; a soft bounce (`bounce_type`, the provider's
    own word for it, in SOFT_BOUNCE_TYPES) does not. A provider posting the same event again
    adds nothing; event types the workflow has no use for are ignored.
    """
    if event_type not in _PROVIDER_EVENTS:
        return False
    kind, closes = _PROVIDER_EVENTS[event_type]
    closes = closes and bounce_type not in SOFT_BOUNCE_TYPES
    description = redact(description)  # a bounce message often quotes the address
    with transaction.atomic():
        signup, email = _lock_signup_of(EMAIL, email_id), EMAIL.lock(email_id)
        if signup is None or email is None:
            return False
        detail = f"{email.kind} #{email.sequence}" + (f": {description}" if description else "")
        detail = detail[:500]
        if signup.events.filter(kind=kind, detail=detail).exists():
            return False
        add_event(signup.pk, kind, number=email_number(email), detail=detail)
        if closes and signup.status == Status.PENDING:
            reason = "spam complaint" if event_type == "complained" else f"email {event_type}"
            close(signup, Status.UNDELIVERABLE, detail=reason)
    return True
