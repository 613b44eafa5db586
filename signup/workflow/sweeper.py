"""The sweeper (beat, every SIGNUP_SWEEP_INTERVAL): expire what is overdue, hand the broker the
reminders that came within reach, re-enqueue work whose task was lost."""

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from signup import metrics, tasks
from signup.models import Heartbeat, OutboundEmail, Signup, SignupEvent, WebhookDelivery
from signup.workflow.common import (
    EmailStatus,
    Event,
    Status,
    _after_commit,
)
from signup.workflow.events import _unsent_webhooks
from signup.workflow.reminders import _horizon, expire_signup

logger = logging.getLogger("signup.workflow")

SWEEP_HEARTBEAT = "sweep"


def sweep(*, batch_size: int = 1000) -> dict[str, int]:
    """Expire overdue signups, hand the broker the reminders that came within reach, and
    re-enqueue work whose task was lost.

    The database is the source of truth and the countdown chain the fast path: a pending
    signup whose next reminder is overdue by more than SIGNUP_REMINDER_GRACE lost its task
    (broker restart or flush, killed worker), and so did a greeting not done that long after
    its task was enqueued, and an email or a webhook delivery stuck unsent for longer than
    SIGNUP_EMAIL_REDRIVE_AFTER. Duplicates this may create are dropped
    by the reminder sequence check and the ledgers. The hand-overs and repairs leave rows
    another transaction holds for the next sweep; an expiry locks its one signup as any
    transition does, so the sweeper waits at most for one short transition at a time and
    never deadlocks with the workflow. Each step works in batches until it is done or half
    the sweep interval has passed.
    """
    now = timezone.now()
    started = time.monotonic()
    deadline = started + settings.SIGNUP_SWEEP_INTERVAL / 2
    counts = {
        "expired": 0,
        "greetings_requeued": 0,
        "reminders_enqueued": 0,
        "reminders_requeued": 0,
        "emails_requeued": 0,
        "webhooks_requeued": 0,
    }

    def in_batches(step) -> None:
        while True:
            found, done = step(now=now, batch_size=batch_size)
            for name, number in done.items():
                counts[name] += number
            if found < batch_size or time.monotonic() > deadline:
                return

    in_batches(_expire_overdue)
    in_batches(_requeue_lost_greetings)
    in_batches(_enqueue_due_reminders)
    in_batches(_requeue_stuck_emails)
    in_batches(_requeue_stuck_webhooks)
    # Only a sweep that got through its work counts as one: /readyz and signup_doctor read it.
    Heartbeat.objects.update_or_create(name=SWEEP_HEARTBEAT, defaults={"at": timezone.now()})
    metrics.sweep_duration.observe(time.monotonic() - started)
    metrics.sweep_repairs.labels("greeting").inc(counts["greetings_requeued"])
    metrics.sweep_repairs.labels("reminder").inc(counts["reminders_requeued"])
    metrics.sweep_repairs.labels("email").inc(counts["emails_requeued"])
    metrics.sweep_repairs.labels("webhook").inc(counts["webhooks_requeued"])
    if any(counts.values()):
        logger.info("sweep: %s", counts)
    return counts


def _expire_overdue(*, now, batch_size: int) -> tuple[int, dict[str, int]]:
    overdue = list(
        Signup.objects.filter(status=Status.PENDING, expires_at__lte=now)
        .order_by("expires_at")
        .values_list("id", flat=True)[:batch_size]
    )
    expired = sum(expire_signup(signup_id=signup_id) for signup_id in overdue)
    return len(overdue), {"expired": expired}


def _requeue_lost_greetings(*, now, batch_size: int) -> tuple[int, dict[str, int]]:
    """Enqueue the greeting again of each pending signup of the form or the API still not
    greeted SIGNUP_REMINDER_GRACE after its task was enqueued (its updated_at): that task
    was lost. A duplicate finds the signup greeted and does nothing."""
    stale = now - timedelta(seconds=settings.SIGNUP_REMINDER_GRACE)
    return _requeue(
        Signup.objects.filter(
            status=Status.PENDING, greeted_at__isnull=True, updated_at__lte=stale
        ),
        now=now,
        batch_size=batch_size,
        mark="updated_at",
        owner="id",
        event=lambda signup_id: SignupEvent(signup_id=signup_id, kind=Event.GREETING_REPAIRED),
        task=tasks.greet_signup,
        counted="greetings_requeued",
    )


def _enqueue_due_reminders(*, now, batch_size: int) -> tuple[int, dict[str, int]]:
    """Enqueue the next reminder of each pending signup that is due within reach and not in
    the broker yet, or that is overdue past the grace (its task was lost).

    reminder_enqueued_at moves to now, so a signup is enqueued again only if this task is
    lost too, not on every sweep while a busy worker works through its queue.
    """
    late = now - timedelta(seconds=settings.SIGNUP_REMINDER_GRACE)
    with transaction.atomic():
        due = list(
            Signup.objects.select_for_update(skip_locked=True, no_key=True)
            .filter(status=Status.PENDING, next_reminder_at__lte=_horizon(now), expires_at__gt=now)
            .filter(
                Q(reminder_enqueued_at__isnull=True)
                | Q(next_reminder_at__lte=late, reminder_enqueued_at__lte=late)
            )
            .order_by("next_reminder_at")
            .values_list("id", "reminders_sent", "next_reminder_at", "reminder_enqueued_at")[
                :batch_size
            ]
        )
        if not due:
            return 0, {}
        Signup.objects.filter(pk__in=[signup_id for signup_id, *_ in due]).update(
            reminder_enqueued_at=now, updated_at=now
        )
        lost = [(signup_id, sent) for signup_id, sent, _, enqueued in due if enqueued is not None]
        SignupEvent.objects.bulk_create(
            SignupEvent(signup_id=signup_id, kind=Event.CHAIN_REPAIRED, number=sent + 1)
            for signup_id, sent in lost
        )

        def enqueue():
            for signup_id, sent, due_at, _ in due:
                tasks.send_reminder.apply_async((signup_id, sent + 1), eta=max(due_at, now))

        _after_commit(enqueue)
    counts = {"reminders_enqueued": len(due) - len(lost), "reminders_requeued": len(lost)}
    return len(due), counts


def _unsent_emails(*, now, stale):
    """Emails still to be sent whose (re-)enqueueing is older than `stale` and whose last
    attempt's lease has ended: their tasks were lost, or are about to be."""
    return OutboundEmail.objects.filter(
        Q(enqueued_at__lte=stale) | Q(enqueued_at__isnull=True),
        Q(in_flight_until__isnull=True) | Q(in_flight_until__lte=now),
        status__in=(EmailStatus.QUEUED, EmailStatus.SENDING),
    )


def _requeue_stuck_emails(*, now, batch_size: int) -> tuple[int, dict[str, int]]:
    stale = now - timedelta(seconds=settings.SIGNUP_EMAIL_REDRIVE_AFTER)
    return _requeue(
        _unsent_emails(now=now, stale=stale),
        now=now,
        batch_size=batch_size,
        columns=("kind", "sequence"),
        event=lambda signup_id, kind, sequence: SignupEvent(
            signup_id=signup_id,
            kind=Event.EMAIL_REDRIVEN,
            number=sequence,
            detail=f"{kind} #{sequence}: re-enqueued by the sweeper",
        ),
        task=tasks.deliver_email,
        counted="emails_requeued",
    )


def _requeue_stuck_webhooks(*, now, batch_size: int) -> tuple[int, dict[str, int]]:
    stale = now - timedelta(seconds=settings.SIGNUP_EMAIL_REDRIVE_AFTER)
    return _requeue(
        _unsent_webhooks(now=now, stale=stale),
        now=now,
        batch_size=batch_size,
        columns=("event_type", "endpoint"),
        event=lambda signup_id, event_type, endpoint: SignupEvent(
            signup_id=signup_id,
            kind=Event.WEBHOOK_REDRIVEN,
            detail=f"{event_type} to {endpoint}: re-enqueued by the sweeper"[:500],
        ),
        task=tasks.deliver_webhook,
        counted="webhooks_requeued",
    )


def _requeue(
    unsent,
    *,
    now,
    batch_size: int,
    event,
    task,
    counted: str,
    columns=(),
    mark: str = "enqueued_at",
    owner: str = "signup_id",
) -> tuple[int, dict[str, int]]:
    """Re-enqueue a batch of rows whose tasks were lost (emails, webhook deliveries, greetings):
    their enqueueing (`mark`) moves to now, so they come back only if this task is lost too;
    each gets a timeline event (`event`, from the row's signup id, its `owner` column, and
    `columns`), and `task` is sent for each after commit."""
    with transaction.atomic():
        stuck = list(
            unsent.select_for_update(skip_locked=True, no_key=True)
            .order_by(mark)
            .values_list("id", owner, *columns)[:batch_size]
        )
        if not stuck:
            return 0, {}
        row_ids = [row_id for row_id, *_ in stuck]
        unsent.model.objects.filter(pk__in=row_ids).update(**{mark: now, "updated_at": now})
        SignupEvent.objects.bulk_create(event(signup_id, *rest) for _, signup_id, *rest in stuck)

        def enqueue():
            for row_id in row_ids:
                task.delay(row_id)

        _after_commit(enqueue)
    return len(stuck), {counted: len(stuck)}


# --- What the sweeper has not repaired -------------------------------------------------------


def last_sweep_at():
    """When the last sweep completed (None: never)."""
    return Heartbeat.objects.filter(name=SWEEP_HEARTBEAT).values_list("at", flat=True).first()


def stuck_work(*, now=None) -> dict[str, int]:
    """Work the sweeper should have repaired by now, and the dead letters.

    A reminder overdue past SIGNUP_REMINDER_GRACE, or an email or a webhook delivery unsent
    SIGNUP_EMAIL_REDRIVE_AFTER after it was (re-)enqueued, is repaired at the next sweep; still
    there two sweep intervals later, it is stuck. Dead letters (emails' and webhooks') wait
    for an operator.
    """
    now = now or timezone.now()
    sweeps = timedelta(seconds=2 * settings.SIGNUP_SWEEP_INTERVAL)
    reminder_late = now - timedelta(seconds=settings.SIGNUP_REMINDER_GRACE) - sweeps
    email_late = now - timedelta(seconds=settings.SIGNUP_EMAIL_REDRIVE_AFTER) - sweeps
    return {
        "reminders_overdue": Signup.objects.filter(
            status=Status.PENDING, next_reminder_at__lt=reminder_late, expires_at__gt=now
        ).count(),
        "emails_unsent": _unsent_emails(now=now, stale=email_late).count(),
        "webhooks_unsent": _unsent_webhooks(now=now, stale=email_late).count(),
        "dead_letters": OutboundEmail.objects.filter(status=EmailStatus.FAILED).count(),
        "webhook_dead_letters": WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.FAILED
        ).count(),
    }
