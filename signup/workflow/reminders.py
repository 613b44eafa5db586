"""Waiting for the person: the self-rescheduling reminder chain, and the expiry at its end.

Timers live in the database (next_reminder_at, expires_at); the broker holds only what is
due within SIGNUP_SCHEDULE_AHEAD, and the sweeper hands over the rest as it comes within
reach."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from signup import metrics, tasks
from signup.models import Address, OutboundEmail, Signup
from signup.workflow.closing import _close
from signup.workflow.common import (
    _PLAN_FIELDS,
    EmailKind,
    Event,
    Status,
    _add_event,
    _after_commit,
    _drop,
    _lock,
)
from signup.workflow.ledger import _queue_email


def take_reminder(*, signup_id: int, number: int) -> int | None:
    """Take reminder `number`: add it to the ledger, claimed, and plan the next step. Return
    the reminder's ledger id for the caller to send (send_claimed_email), or None if the
    task is stale.

    A reminder task is acted on only while the signup is pending and `number` is the next
    reminder due, so late, duplicated and superseded tasks are dropped here. If the caller
    never sends the email (its worker died), the sweeper re-drives it once its lease ends.
    """
    now = timezone.now()
    with transaction.atomic():
        signup = _lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return _drop("reminder", signup_id, number, "signup is not pending")
        if signup.reminders_sent != number - 1:
            return _drop("reminder", signup_id, number, f"{signup.reminders_sent} already sent")
        if signup.next_reminder_at is None:
            return _drop("reminder", signup_id, number, "no reminder planned: its address moved on")
        if signup.expires_at <= now:
            _expire(signup)
            return None
        if number > settings.SIGNUP_MAX_REMINDERS:
            return _drop("reminder", signup_id, number, "past SIGNUP_MAX_REMINDERS")
        planned = signup.next_reminder_at
        signup.reminders_sent = number
        # Claimed here, under the signup's lock: the task sends it next, without a second
        # transaction to claim it.
        email = _queue_email(
            signup, EmailKind.REMINDER, sequence=number, deliver=False, claimed=True
        )
        _plan_next_step(signup, now=now)
        signup.save(update_fields=[*_PLAN_FIELDS, "reminders_sent", "updated_at"])
        _schedule_next_step(signup, now=now)
    metrics.reminder_lateness.observe(max((now - planned).total_seconds(), 0.0))
    return email.pk


# --- An operator steering the timers -------------------------------------------------------

RUSHED = "rushed"  # the next reminder goes now
ALREADY_DUE = "already_due"  # it was due or rushed already: nothing more to do
NOT_PENDING = "not_pending"
NO_REMINDER = "no_reminder"  # none planned: all sent, the next would fall after the expiry,
# or the address's chain belongs to another signup
NOT_NEXT = "not_next"  # the caller named another reminder than the next one
TOO_SOON = "too_soon"  # a reminder left less than SIGNUP_ADDRESS_COOLDOWN ago


def rush_next_reminder(*, signup_id: int, operator: str, number: int | None = None) -> str:
    """Skip the timer of the next planned reminder: it is taken and sent now, and the chain
    goes on from there (the one after it one SIGNUP_REMINDER_INTERVAL later). Return RUSHED,
    or why not.

    Safe to repeat: a reminder already due is not rushed again, none is rushed within
    SIGNUP_ADDRESS_COOLDOWN of the last one (a second click never sends two at once), and a
    caller that names the reminder it means (`number`) never rushes the one after it. The
    task already in the broker for the old due time is dropped when it arrives (its reminder
    was sent).
    """
    now = timezone.now()
    with transaction.atomic():
        signup = _lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return NOT_PENDING
        next_number = signup.reminders_sent + 1
        if number is not None and number != next_number:
            return NOT_NEXT
        if signup.next_reminder_at is None:
            return NO_REMINDER
        if signup.next_reminder_at <= now and signup.reminder_enqueued_at is not None:
            return ALREADY_DUE
        # Whichever of the address's signups it went out for: one address, one chain.
        cooldown = now - timedelta(seconds=settings.SIGNUP_ADDRESS_COOLDOWN)
        if OutboundEmail.objects.filter(
            kind=EmailKind.REMINDER, to_email__iexact=signup.email, created_at__gt=cooldown
        ).exists():
            return TOO_SOON
        signup.next_reminder_at = signup.reminder_enqueued_at = now
        signup.save(update_fields=[*_PLAN_FIELDS, "updated_at"])
        _add_event(signup, Event.REMINDER_RUSHED, number=next_number, detail=f"by {operator}")
        _after_commit(lambda: tasks.send_reminder.apply_async((signup_id, next_number)))
    return RUSHED


def extend_expiry(*, signup_id: int, by: timedelta, operator: str):
    """Give a pending signup `by` more time from now: it expires at now + `by` unless it
    already expires later. Return the new expiry, or None if the signup is not pending.

    Never shortens: a repeat sets `by` from its own now (a double click, a moment later), and
    bounded: a signup never expires later than SIGNUP_MAX_EXTENSION after its first expiry
    (the links of earlier releases are signed to outlive that: signup.tokens). A reminder
    chain that had stopped at the old expiry goes on, one SIGNUP_REMINDER_INTERVAL from now.
    """
    now = timezone.now()
    with transaction.atomic():
        signup = _lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return None
        latest = signup.created_at + timedelta(
            seconds=settings.SIGNUP_EXPIRES_AFTER + settings.SIGNUP_MAX_EXTENSION
        )
        wanted = min(now + by, latest)
        if wanted > signup.expires_at:
            before = signup.expires_at
            signup.expires_at = wanted
            fields = ["expires_at", "updated_at"]
            # A chain that stopped because its next reminder fell after the old expiry goes
            # on (not one the address's newer signup took over, nor one that ran out).
            if (
                signup.next_reminder_at is None
                and signup.reminders_sent < settings.SIGNUP_MAX_REMINDERS
                and Address.objects.filter(live_signup_id=signup.pk).exists()
            ):
                _plan_next_step(signup, now=now)
                _schedule_next_step(signup, now=now)
                fields += _PLAN_FIELDS
            signup.save(update_fields=fields)
            detail = f"by {operator}: from {before:%Y-%m-%d %H:%M} to {wanted:%Y-%m-%d %H:%M} UTC"
            _add_event(signup, Event.EXPIRY_EXTENDED, detail=detail)
    return signup.expires_at


def expire_signup(*, signup_id: int) -> bool:
    """Expire a pending signup whose time is up; return whether it changed."""
    with transaction.atomic():
        signup = _lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return False
        if signup.expires_at > timezone.now():
            _drop("expiry", signup_id, None, "not due yet")
            return False
        _expire(signup)
    return True


def _expire(signup: Signup) -> None:
    _close(signup, Status.EXPIRED, Event.EXPIRED)


def _plan_next_step(signup: Signup, *, now) -> None:
    """Plan the reminder after the one just sent (or the first): SIGNUP_REMINDER_INTERVAL
    from now.

    This is the self-rescheduling chain: each reminder plans the next. The broker holds only
    what is due soon, so its memory and the workers' do not grow with the number of pending
    signups; the sweeper hands over each later step as it comes within reach, and repairs a
    chain whose task was lost.
    """
    _plan_reminder(signup, at=now + timedelta(seconds=settings.SIGNUP_REMINDER_INTERVAL), now=now)


def _plan_reminder(signup: Signup, *, at, now) -> None:
    """Set when the next reminder is due (None if there is no next one before the signup
    expires), and whether its task goes to the broker now: only one due within
    SIGNUP_SCHEDULE_AHEAD does."""
    if (
        at is not None
        and signup.reminders_sent < settings.SIGNUP_MAX_REMINDERS
        and at < signup.expires_at
    ):
        signup.next_reminder_at = at
    else:
        signup.next_reminder_at = None
    within_reach = signup.next_reminder_at is not None and signup.next_reminder_at <= _horizon(now)
    signup.reminder_enqueued_at = now if within_reach else None


def _schedule_next_step(signup: Signup, *, now) -> None:
    """After commit, enqueue the task _plan_next_step planned: the next reminder if it is
    within reach, else the expiry if that is; the sweeper takes care of later ones."""
    signup_id = signup.pk
    if signup.reminder_enqueued_at is not None:
        number, due = signup.reminders_sent + 1, signup.next_reminder_at
        _after_commit(lambda: tasks.send_reminder.apply_async((signup_id, number), eta=due))
    elif signup.next_reminder_at is None and signup.expires_at <= _horizon(now):
        due = signup.expires_at
        _after_commit(lambda: tasks.expire_signup.apply_async((signup_id,), eta=due))


def _horizon(now):
    return now + timedelta(seconds=settings.SIGNUP_SCHEDULE_AHEAD)
