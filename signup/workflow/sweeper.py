"""The sweeper (beat, every SIGNUP_SWEEP_INTERVAL): expire what is overdue, hand the broker the
reminders that came within reach, re-enqueue work whose task was lost; and what it has not
repaired yet (stuck_work)."""

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from signup import metrics, tasks
from signup.models import Heartbeat, Signup, SignupEvent
from signup.workflow.internal.ledger import EMAIL, WEBHOOK, Channel, unsent
from signup.workflow.internal.rows import Event, LedgerState, Status, after_commit
from signup.workflow.internal.timers import horizon
from signup.workflow.reminders import expire_signup

logger = logging.getLogger("signup.workflow")

SWEEP_HEARTBEAT = "sweep"


def sweep(*, batch_size: int = 1000) -> dict[str, int]:
    """Expire overdue signups, hand the broker the reminders that came within reach, and
    re-enqueue work whose task was lost.

    The database is the source of truth and the countdown chain the fast path: a pending
    signup whose next reminder is overdue by more than SIGNUP_LOST_TASK_GRACE lost its task
    (broker restart or flush, killed worker), and so did a first contact not made that long
    after its task was enqueued; an email or a webhook delivery unsent SIGNUP_REDRIVE_AFTER
    after its last enqueueing or attempt lost its own. Duplicates this may create are
    dropped by the reminder sequence check and the ledgers. The hand-overs and repairs
    leave rows another transaction holds for the next sweep; an expiry locks its one signup
    as any transition does, so the sweeper waits at most for one short transition at a time
    and never deadlocks with the workflow. Each step works in batches until it is done or
    half the sweep interval has passed.
    """
    now = timezone.now()
    started = time.monotonic()
    deadline = started + settings.SIGNUP_SWEEP_INTERVAL / 2
    counts = dict.fromkeys(
        (
            "expired",
            "contacts_requeued",
            "reminders_enqueued",
            "reminders_requeued",
            "emails_requeued",
            "webhooks_requeued",
        ),
        0,
    )

    def in_batches(step, *args) -> None:
        while True:
            found, done = step(*args, now=now, batch_size=batch_size)
            for name, number in done.items():
                counts[name] += number
            if found < batch_size or time.monotonic() > deadline:
                return

    in_batches(_expire_overdue)
    in_batches(_requeue_lost_contacts)
    in_batches(_enqueue_due_reminders)
    in_batches(_requeue_stuck, EMAIL, "emails_requeued")
    in_batches(_requeue_stuck, WEBHOOK, "webhooks_requeued")
    # Only a sweep that got through its work counts as one: /readyz and signup_doctor read it.
    Heartbeat.objects.update_or_create(name=SWEEP_HEARTBEAT, defaults={"at": timezone.now()})
    metrics.sweep_duration.observe(time.monotonic() - started)
    for kind in ("contact", "reminder", "email", "webhook"):
        metrics.sweep_repairs.labels(kind).inc(counts[f"{kind}s_requeued"])
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


def _lost(seconds: int, *, now):
    return now - timedelta(seconds=seconds)


def _uncontacted(**since):
    """Pending signups still not contacted, since a time: their first-contact task was last
    enqueued (updated_at) or they were made (created_at) before it."""
    return Signup.objects.filter(status=Status.PENDING, contacted_at__isnull=True, **since)


def _requeue_lost_contacts(*, now, batch_size: int) -> tuple[int, dict[str, int]]:
    """Enqueue the first contact again of each pending signup not contacted
    SIGNUP_LOST_TASK_GRACE after its task was enqueued: that task was lost. A duplicate finds
    the signup contacted and does nothing."""
    return _requeue(
        _uncontacted(updated_at__lte=_lost(settings.SIGNUP_LOST_TASK_GRACE, now=now)),
        now=now,
        batch_size=batch_size,
        mark="updated_at",
        event=lambda signup: SignupEvent(signup=signup, kind=Event.CONTACT_REPAIRED),
        task=tasks.contact_address,
        counted="contacts_requeued",
    )


def _enqueue_due_reminders(*, now, batch_size: int) -> tuple[int, dict[str, int]]:
    """Enqueue the next reminder of each pending signup that is due within reach and not in
    the broker yet, or that is overdue past the grace (its task was lost).

    reminder_enqueued_at moves to now, so a signup is enqueued again only if this task is
    lost too, not on every sweep while a busy worker works through its queue.
    """
    late = _lost(settings.SIGNUP_LOST_TASK_GRACE, now=now)
    with transaction.atomic():
        due = list(
            Signup.objects.select_for_update(skip_locked=True, no_key=True)
            .filter(status=Status.PENDING, next_reminder_at__lte=horizon(now), expires_at__gt=now)
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

        after_commit(enqueue)
    counts = {"reminders_enqueued": len(due) - len(lost), "reminders_requeued": len(lost)}
    return len(due), counts


def _requeue_stuck(channel: Channel, counted: str, *, now, batch_size: int):
    """Re-enqueue the ledger rows (emails, webhook deliveries) left unsent."""
    return _requeue(
        unsent(channel, now=now, stale=_lost(settings.SIGNUP_REDRIVE_AFTER, now=now)),
        now=now,
        batch_size=batch_size,
        event=lambda row: SignupEvent(
            signup_id=row.signup_id,
            kind=channel.redriven_event,
            number=channel.number(row),
            detail=f"{channel.describe(row)}: re-enqueued by the sweeper"[:500],
        ),
        task=channel.task(),
        counted=counted,
    )


def _requeue(
    lost,
    *,
    now,
    batch_size: int,
    event,
    task,
    counted: str,
    mark: str = "enqueued_at",
) -> tuple[int, dict[str, int]]:
    """Re-enqueue a batch of rows whose tasks were lost (ledger rows, signups to contact):
    their enqueueing (`mark`) moves to now, so they come back only if this task is lost too;
    each gets a timeline event (`event` of the row), and `task` is sent for each after
    commit."""
    with transaction.atomic():
        rows = list(
            lost.select_for_update(skip_locked=True, no_key=True).order_by(mark)[:batch_size]
        )
        if not rows:
            return 0, {}
        row_ids = [row.pk for row in rows]
        lost.model.objects.filter(pk__in=row_ids).update(**{mark: now, "updated_at": now})
        SignupEvent.objects.bulk_create(map(event, rows))

        def enqueue():
            for row_id in row_ids:
                task.delay(row_id)

        after_commit(enqueue)
    return len(rows), {counted: len(rows)}


# --- What the sweeper has not repaired -------------------------------------------------------


def last_sweep_at():
    """When the last sweep completed (None: never)."""
    return Heartbeat.objects.filter(name=SWEEP_HEARTBEAT).values_list("at", flat=True).first()


def stuck_work(*, now=None) -> dict[str, int]:
    """Work the sweeper should have repaired by now, and the dead letters.

    A first contact or a reminder overdue past SIGNUP_LOST_TASK_GRACE, or an email or a
    webhook delivery unsent SIGNUP_REDRIVE_AFTER after it was (re-)enqueued, is repaired at
    the next sweep; still there two sweep intervals later, it is stuck. A first contact
    counts from the signup's creation, so one whose task keeps failing stays stuck however
    often it is re-enqueued. Dead letters (emails' and webhooks') wait for an operator.
    """
    now = now or timezone.now()
    sweeps = timedelta(seconds=2 * settings.SIGNUP_SWEEP_INTERVAL)
    task_late = _lost(settings.SIGNUP_LOST_TASK_GRACE, now=now) - sweeps
    row_late = _lost(settings.SIGNUP_REDRIVE_AFTER, now=now) - sweeps
    return {
        "contacts_overdue": _uncontacted(created_at__lte=task_late).count(),
        "reminders_overdue": Signup.objects.filter(
            status=Status.PENDING, next_reminder_at__lt=task_late, expires_at__gt=now
        ).count(),
        "emails_unsent": unsent(EMAIL, now=now, stale=row_late).count(),
        "webhooks_unsent": unsent(WEBHOOK, now=now, stale=row_late).count(),
        "dead_letters": EMAIL.model.objects.filter(status=LedgerState.FAILED).count(),
        "webhook_dead_letters": WEBHOOK.model.objects.filter(status=LedgerState.FAILED).count(),
    }
