"""The sweeper (beat, every SIGNUP_SWEEP_INTERVAL): expire what is overdue, hand the broker the
reminders that came within reach, re-enqueue work whose task was lost; and what it has not
repaired yet (stuck_work)."""

import logging
import time

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from signup import metrics, tasks
from signup.models import Heartbeat, Signup, SignupEvent
from signup.workflow.internal import outage, queues
from signup.workflow.internal.clock import database_now
from signup.workflow.internal.ledger import EMAIL, WEBHOOK, Channel, unsent
from signup.workflow.internal.rows import Event, LedgerState, Status, after_commit
from signup.workflow.internal.timers import horizon
from signup.workflow.reminders import expire_signup

logger = logging.getLogger("signup.workflow")

SWEEP_HEARTBEAT = "sweep"


def sweep(*, batch_size: int = 1000) -> dict[str, int]:
    """Expire overdue signups, hand the broker the reminders that came within reach, and
    re-enqueue work whose task was lost.

    The database is the source of truth and the countdown chain the fast path. A task was
    lost (broker restart or flush, killed worker) when its queue's workers took a probe sent
    after it (queues) at least a grace ago and it is still not done: SIGNUP_LOST_TASK_GRACE
    for a first contact or a reminder (one that was due before that probe), and
    SIGNUP_REDRIVE_AFTER for an email or a webhook delivery (counted from its last
    enqueueing, attempt or planned retry). A task that only waits in a queue, however long,
    is not repaired: a repair is about one per loss. Duplicates a repair may still create are
    dropped by the reminder sequence check and the ledgers. The hand-overs and repairs
    leave rows another transaction holds for the next sweep; an expiry locks its one signup
    as any transition does, so the sweeper waits at most for one short transition at a time
    and never deadlocks with the workflow. Each step works in batches until it is done or
    half the sweep interval has passed.
    """
    # The database's clock, as the timers' (internal.clock): a sweep on a host whose clock is
    # off hands over and repairs on the same time as every other host.
    now = database_now()
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
            "held_emails_tried",
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

    grace, redrive_after = settings.SIGNUP_LOST_TASK_GRACE, settings.SIGNUP_REDRIVE_AFTER
    task_passed = queues.passed(now=now, settle=grace)
    row_passed = queues.passed(now=now, settle=redrive_after)
    in_batches(_expire_overdue)
    in_batches(_requeue_lost_contacts, task_passed)
    in_batches(_enqueue_due_reminders, task_passed)
    in_batches(_requeue_stuck, EMAIL, row_passed, "emails_requeued")
    in_batches(_requeue_stuck, WEBHOOK, row_passed, "webhooks_requeued")
    counts["held_emails_tried"] = _try_held_email()
    # stuck_work asks for the probes taken two sweeps before the longer grace.
    queues.prune(now=now, keep=max(grace, redrive_after) + 2 * settings.SIGNUP_SWEEP_INTERVAL)
    # Stamped after this sweep's enqueueing: the probes pass its repairs too.
    queues.send_probes(now=database_now())
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


def _uncontacted(passed_at, field: str):
    """Pending signups still not contacted whose first-contact task was last enqueued
    (updated_at) or that were made (created_at) before their queue's workers had passed."""
    return Signup.objects.filter(
        queues.enqueued_before(passed_at, tasks.contact_address, field),
        status=Status.PENDING,
        contacted_at__isnull=True,
    )


def _requeue_lost_contacts(passed_at, *, now, batch_size: int) -> tuple[int, dict[str, int]]:
    """Enqueue the first contact again of each pending signup whose task was lost. A
    duplicate finds the signup contacted and does nothing."""
    return _requeue(
        _uncontacted(passed_at, "updated_at"),
        now=now,
        batch_size=batch_size,
        mark="updated_at",
        event=lambda signup: SignupEvent(signup=signup, kind=Event.CONTACT_REPAIRED),
        task=tasks.contact_address,
        counted="contacts_requeued",
    )


def _enqueue_due_reminders(passed_at, *, now, batch_size: int) -> tuple[int, dict[str, int]]:
    """Enqueue the next reminder of each pending signup that is due within reach and not in
    the broker yet, or whose task was lost: enqueued and due before its queue's workers had
    passed, and not taken.

    reminder_enqueued_at moves to now, so a signup is enqueued again only if this task is
    lost too, never while its task waits its turn behind a backlog.
    """
    lost = queues.enqueued_before(
        passed_at, tasks.send_reminder, "reminder_enqueued_at", "next_reminder_at"
    )
    with transaction.atomic():
        due = list(
            Signup.objects.select_for_update(skip_locked=True, no_key=True)
            .filter(status=Status.PENDING, next_reminder_at__lte=horizon(now), expires_at__gt=now)
            .filter(Q(reminder_enqueued_at__isnull=True) | lost)
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


def _requeue_stuck(channel: Channel, passed_at, counted: str, *, now, batch_size: int):
    """Re-enqueue the ledger rows (emails, webhook deliveries) whose task was lost."""
    return _requeue(
        unsent(channel, now=now, passed_at=passed_at),
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


def _try_held_email() -> int:
    """Once an outage's time is up (internal.outage), bring the held emails back if an email
    was sent since they were held, else try one. Without this, held emails would wait for a
    new email to come."""
    return outage.try_held()


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

    Work the sweeper finds lost (its queue's workers passed it a grace ago) is repaired at
    the next sweep; still there two sweep intervals later, it is stuck. A first contact
    counts from the signup's creation, so one whose task keeps failing stays stuck however
    often it is re-enqueued; a reminder from its due time. Work that has waited in its queue
    since it was enqueued is not stuck: the queue's age (queues.oldest_waiting) tells that.
    Dead letters (emails' and webhooks') wait for an operator.
    """
    now = now or timezone.now()
    sweeps = 2 * settings.SIGNUP_SWEEP_INTERVAL
    task_late = queues.passed(now=now, settle=settings.SIGNUP_LOST_TASK_GRACE + sweeps)
    row_late = queues.passed(now=now, settle=settings.SIGNUP_REDRIVE_AFTER + sweeps)
    return {
        "contacts_overdue": _uncontacted(task_late, "created_at").count(),
        "reminders_overdue": Signup.objects.filter(
            queues.enqueued_before(task_late, tasks.send_reminder, "next_reminder_at"),
            status=Status.PENDING,
            expires_at__gt=now,
        ).count(),
        "emails_unsent": unsent(EMAIL, now=now, passed_at=row_late).count(),
        "webhooks_unsent": unsent(WEBHOOK, now=now, passed_at=row_late).count(),
        "dead_letters": EMAIL.model.objects.filter(status=LedgerState.FAILED).count(),
        "webhook_dead_letters": WEBHOOK.model.objects.filter(status=LedgerState.FAILED).count(),
    }
