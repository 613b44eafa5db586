"""Waiting for the person: the self-rescheduling reminder chain, and the expiry at its end.

Timers live in the database (next_reminder_at, expires_at); the broker holds only what is
due within SIGNUP_SCHEDULE_AHEAD, and the sweeper hands over the rest as it comes within
reach."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from signup import metrics, tasks
from signup.models import OutboundEmail
from signup.workflow.internal.budget import lock_address_of
from signup.workflow.internal.clock import database_now
from signup.workflow.internal.endings import expire_if_due
from signup.workflow.internal.ledger import PENDING_KINDS, UNSENT, queue_email
from signup.workflow.internal.rows import (
    NOT_PENDING,
    EmailKind,
    Event,
    Status,
    add_event,
    after_commit,
    drop,
    lock,
)
from signup.workflow.internal.timers import (
    PLAN_FIELDS,
    plan_next_step,
    plan_reminder,
    schedule_next_step,
)


def take_reminder(*, signup_id: int, number: int) -> int | None:
    """Take reminder `number`: add it to the ledger, claimed, and plan the next step. Return
    the reminder's ledger id for the caller to send (send_claimed_email), or None if the
    task is stale.

    A reminder task is acted on only while the signup is pending and `number` is the next
    reminder due, so late, duplicated and superseded tasks are dropped here. If the caller
    never sends the email (its worker died), the sweeper re-drives it once its lease ends.

    A reminder never overtakes the email before it: while the signup's verification email
    or an earlier reminder is still unsent (its send died with a worker host and waits for
    the sweeper's re-drive, or it waits for a retry or the end of a provider outage), this
    one is planned again one SIGNUP_REMINDER_INTERVAL later.

    The next step is planned on the database's clock (internal.clock).
    """
    with transaction.atomic():
        now = database_now()
        signup = lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return drop("reminder", signup_id, number, "signup is not pending")
        if signup.reminders_sent != number - 1:
            return drop("reminder", signup_id, number, f"{signup.reminders_sent} already sent")
        if signup.next_reminder_at is None:
            return drop("reminder", signup_id, number, "no reminder planned: its address moved on")
        if expire_if_due(signup, now=now):
            return None
        if number > settings.SIGNUP_MAX_REMINDERS:
            return drop("reminder", signup_id, number, "past SIGNUP_MAX_REMINDERS")
        if signup.emails.filter(kind__in=PENDING_KINDS, status__in=UNSENT).exists():
            plan_reminder(
                signup, at=now + timedelta(seconds=settings.SIGNUP_REMINDER_INTERVAL), now=now
            )
            signup.save(update_fields=[*PLAN_FIELDS, "updated_at"])
            schedule_next_step(signup, now=now)
            return drop("reminder", signup_id, number, "the email before it is not sent yet")
        planned = signup.next_reminder_at
        signup.reminders_sent = number
        # Claimed here, under the signup's lock: the task sends it next, without a second
        # transaction to claim it.
        email = queue_email(signup, EmailKind.REMINDER, sequence=number, claimed=True)
        plan_next_step(signup, now=now)
        signup.save(update_fields=[*PLAN_FIELDS, "reminders_sent", "updated_at"])
        schedule_next_step(signup, now=now)
    metrics.reminder_lateness.observe(max((now - planned).total_seconds(), 0.0))
    return email.pk


# --- An operator steering the timers -------------------------------------------------------

RUSHED = "rushed"  # the next reminder goes now
ALREADY_DUE = "already_due"  # it was due or rushed already: nothing more to do
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
        # The address first: the chain it moves is the mailbox's.
        signup = lock(signup_id) if lock_address_of(signup_id) is not None else None
        if signup is None or signup.status != Status.PENDING:
            return NOT_PENDING
        next_number = signup.reminders_sent + 1
        if number is not None and number != next_number:
            return NOT_NEXT
        if signup.next_reminder_at is None:
            return NO_REMINDER
        if signup.next_reminder_at <= now and signup.reminder_enqueued_at is not None:
            return ALREADY_DUE
        # Whichever of the mailbox's signups it went out for: one mailbox, one chain.
        cooldown = now - timedelta(seconds=settings.SIGNUP_ADDRESS_COOLDOWN)
        same_mailbox = {"signup__address": signup.address_id} if signup.address_id else {}
        reminders = OutboundEmail.objects.filter(kind=EmailKind.REMINDER, created_at__gt=cooldown)
        if reminders.filter(**(same_mailbox or {"signup": signup})).exists():
            return TOO_SOON
        signup.next_reminder_at = signup.reminder_enqueued_at = now
        signup.save(update_fields=[*PLAN_FIELDS, "updated_at"])
        add_event(signup.pk, Event.REMINDER_RUSHED, number=next_number, detail=f"by {operator}")
        after_commit(lambda: tasks.send_reminder.apply_async((signup_id, next_number)))
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
        # The address first: a chain that stopped may go on, and the chain is the mailbox's.
        address = lock_address_of(signup_id)
        signup = lock(signup_id) if address is not None else None
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
                and address.live_signup_id == signup.pk
            ):
                plan_next_step(signup, now=now)
                schedule_next_step(signup, now=now)
                fields += PLAN_FIELDS
            signup.save(update_fields=fields)
            detail = f"by {operator}: from {before:%Y-%m-%d %H:%M} to {wanted:%Y-%m-%d %H:%M} UTC"
            add_event(signup.pk, Event.EXPIRY_EXTENDED, detail=detail)
    return signup.expires_at


def expire_signup(*, signup_id: int) -> bool:
    """Expire a pending signup whose time is up; return whether it changed."""
    with transaction.atomic():
        signup = lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return False
        if expire_if_due(signup):
            return True
    drop("expiry", signup_id, None, "not due yet")
    return False
