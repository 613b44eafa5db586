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
provider (a new email's, or the sweeper's with the held email tried least recently): a
failure opens the outage again, a sent email ends it and re-enqueues every held email,
oldest first. The sweeper also re-enqueues them all once an email was sent after the last of
them was held, so that they go even when the cache lost its marks. One email the provider
keeps refusing, alone, opens no outage: it is retried and dead-lettered as before, and so is
an email refused with 429 (a rate limit is no outage: its Retry-After is honoured). Held rows
are no lost work: the sweeper does not repair them, and a signup that closes meanwhile skips
its held emails as it skips its queued ones.

The count and the outage are kept in the cache (Redis in production, so every worker
process shares them; each process its own in the quickstart, where the sweeper brings held
emails back). A cache that does not answer is taken as no outage: emails are sent and
retried as without this module.
"""

import logging
from functools import wraps

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from signup import metrics, remotes, tasks
from signup.models import Outbound, OutboundEmail
from signup.workflow.internal.rows import LedgerState, after_commit

logger = logging.getLogger("signup.workflow")

_FAILURES = "signup:outage:email:failures"
_OPEN = "signup:outage:email:open"
_HELD = "signup:outage:email:held"  # some emails may be held
_RESUMING = "signup:outage:email:resuming"


def _fail_open(default):
    """Run a function of the cache; if the cache does not answer, return `default` (no
    outage): signup.remotes logs it and skips the cache for a few seconds."""

    def wrap(function):
        @wraps(function)
        def guarded(*args, **kwargs):
            return remotes.cache.call(function, *args, default=default, **kwargs)

        return guarded

    return wrap


@_fail_open(False)
def is_open() -> bool:
    """Whether the provider is taken to be out: emails are held, not sent."""
    return bool(cache.get(_OPEN))


@_fail_open(False)
def failed(email_id: int, error: Exception) -> bool:
    """Count a failed attempt at an email (a 429 does not count); return whether the provider
    is now taken to be out. Read and written without a lock: two failures at once may count
    as one, and one counted just as a send ends the run may open an outage that the next
    send ends."""
    if getattr(error, "status_code", None) == 429:
        return False
    failing = set(cache.get(_FAILURES) or ()) | {email_id}
    # A run of failures with nothing since for ten probe intervals is forgotten.
    forget = 10 * settings.SIGNUP_EMAIL_OUTAGE_PROBE
    cache.set(_FAILURES, sorted(failing)[-100:], timeout=forget)
    if len(failing) < settings.SIGNUP_EMAIL_OUTAGE_AFTER:
        return False
    if cache.add(_OPEN, True, timeout=settings.SIGNUP_EMAIL_OUTAGE_PROBE):
        logger.warning(
            "email provider: attempts at %d emails failed in a row; holding emails for %ds",
            len(failing),
            settings.SIGNUP_EMAIL_OUTAGE_PROBE,
        )
    return True


@_fail_open(None)
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
    attempt this task began, if it began one (its lease runs), given back."""
    row.attempts = max(row.attempts - (row.in_flight_until is not None), 0)
    row.status = LedgerState.QUEUED
    row.enqueued_at = row.in_flight_until = None
    row.save(update_fields=["status", "attempts", "enqueued_at", "in_flight_until", "updated_at"])
    _mark_held()
    metrics.email_attempts.labels(row.kind, "held").inc()


@_fail_open(None)
def _mark_held() -> None:
    cache.set(_HELD, True, timeout=None)


def try_held() -> int:
    """The sweeper's turn, once an outage's time is up: every held email if an email was sent
    since the last was held, else the one tried least recently, which tells. Return how many
    were enqueued."""
    if is_open():
        return 0
    last_held = held().order_by("-updated_at").values_list("updated_at", flat=True).first()
    if last_held is None:
        return 0
    # The newest row sent (by id: the primary key's index, read backwards past held rows).
    sent = OutboundEmail.objects.filter(status=LedgerState.SENT).order_by("-id")
    sent_since = sent.values_list("sent_at", flat=True).first()
    if sent_since is not None and sent_since > last_held:
        return resume()
    return resume(limit=1, order="updated_at")


def resume(*, batch_size: int = 1000, limit: int | None = None, order: str = "id") -> int:
    """Enqueue the held emails, oldest first (or by `order`; at most `limit`), in batches;
    stop if the provider is taken to be out again. Return how many went."""
    resumed = 0
    while limit is None or resumed < limit:
        with transaction.atomic():
            rows = list(
                held()
                .select_for_update(skip_locked=True, no_key=True)
                .order_by(order, "id")
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
        _mark_held()  # the next email sent brings the rest
    _fail_open(None)(cache.delete)(_RESUMING)
    if resumed:
        logger.info("email provider: %d held emails enqueued again", resumed)
    return resumed
