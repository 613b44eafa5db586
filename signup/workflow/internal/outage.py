"""A provider down for everyone (an outage): emails wait for it instead of spending their
attempts, and all go out as soon as it is back.

Backoff is right for one email the provider refuses for a while; in an outage it is wrong
twice: every email uses up its attempts (dead letters after an outage of a few minutes or
hours), and once the provider is back each waits out its own backoff, up to
SIGNUP_EMAIL_RETRY_MAX_DELAY, instead of leaving. So failed attempts at
SIGNUP_EMAIL_OUTAGE_AFTER different emails, with no email sent between them, open an outage for
SIGNUP_EMAIL_OUTAGE_PROBE seconds. Meanwhile an email's task holds its row without calling
the provider (queued, and not enqueued: enqueued_at NULL), and an attempt that fails gives
its attempt back and holds its row too. When that time is up, the next attempt calls the
provider: a failure opens the outage again, a sent email ends it and re-enqueues every held
email, oldest first. With no email coming, the sweeper makes that attempt with the oldest
held one. One email the provider keeps refusing, alone, opens no outage: it is retried and
dead-lettered as before. Held rows are no lost work: the sweeper does not repair them, and a
signup that closes meanwhile skips its held emails as it skips its queued ones.

The count and the outage are kept in the cache (Redis in production, so every worker
process shares them; each process its own in the quickstart).
"""

import logging

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from signup import metrics, tasks
from signup.models import Outbound, OutboundEmail
from signup.workflow.internal.rows import LedgerState, after_commit

logger = logging.getLogger("signup.workflow")

_FAILURES = "signup:outage:email:failures"
_OPEN = "signup:outage:email:open"
_HELD = "signup:outage:email:held"  # some emails may be held
_RESUMING = "signup:outage:email:resuming"


def is_open() -> bool:
    """Whether the provider is taken to be out: emails are held, not sent."""
    return bool(cache.get(_OPEN))


def failed(email_id: int) -> bool:
    """Count a failed attempt at an email; return whether the provider is now taken to be
    out. (Read and written without a lock: two failures at once may count as one, which only
    opens the outage an attempt later.)"""
    failing = set(cache.get(_FAILURES) or ()) | {email_id}
    cache.set(_FAILURES, sorted(failing)[-100:], timeout=None)
    if len(failing) < settings.SIGNUP_EMAIL_OUTAGE_AFTER:
        return False
    if cache.add(_OPEN, True, timeout=settings.SIGNUP_EMAIL_OUTAGE_PROBE):
        logger.warning(
            "email provider: attempts at %d emails failed in a row; holding emails for %ds",
            len(failing),
            settings.SIGNUP_EMAIL_OUTAGE_PROBE,
        )
    return True


def sent() -> None:
    """An email was sent: the provider works. If emails were held, they go now. (One round
    trip to the cache when nothing was failing.)"""
    state = cache.get_many([_FAILURES, _HELD])
    if state.get(_FAILURES):
        cache.delete_many([_FAILURES, _OPEN])
    if state.get(_HELD) and cache.add(_RESUMING, True, timeout=settings.SIGNUP_EMAIL_OUTAGE_PROBE):
        cache.delete(_HELD)
        tasks.resume_held_emails.delay()


def held():
    """The emails held for the provider."""
    return OutboundEmail.objects.filter(status=LedgerState.QUEUED, enqueued_at__isnull=True)


def hold(row: Outbound) -> None:
    """Hold an email (locked by the caller) for the provider: queued, not enqueued, and the
    attempt it began, if any, given back."""
    row.attempts = max(row.attempts - (row.status == LedgerState.SENDING), 0)
    row.status = LedgerState.QUEUED
    row.enqueued_at = row.in_flight_until = None
    row.save(update_fields=["status", "attempts", "enqueued_at", "in_flight_until", "updated_at"])
    cache.set(_HELD, True, timeout=None)
    metrics.email_attempts.labels(row.kind, "held").inc()


def resume(*, batch_size: int = 1000, limit: int | None = None) -> int:
    """Enqueue the held emails, oldest first (at most `limit`), in batches; stop if the
    provider is taken to be out again. Return how many went."""
    resumed = 0
    while limit is None or resumed < limit:
        with transaction.atomic():
            rows = list(
                held()
                .select_for_update(skip_locked=True, no_key=True)
                .order_by("id")
                .values_list("id", flat=True)[: min(batch_size, (limit or batch_size) - resumed)]
            )
            if not rows:
                break
            OutboundEmail.objects.filter(pk__in=rows).update(
                enqueued_at=timezone.now(), updated_at=timezone.now()
            )
            after_commit(lambda rows=rows: [tasks.deliver_email.delay(row) for row in rows])
        resumed += len(rows)
        if is_open():
            break
    if held().exists():
        cache.set(_HELD, True, timeout=None)  # the next email sent brings the rest
    cache.delete(_RESUMING)
    if resumed:
        logger.info("email provider: %d held emails enqueued again", resumed)
    return resumed
