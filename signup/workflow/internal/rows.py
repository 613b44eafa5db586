"""The rows every stage works on: the names of states and events, the exceptions callers
catch, row locks, the timeline, and follow-up work after commit."""

import logging
import time
from dataclasses import dataclass
from functools import partial

from django.db import connection, transaction
from django.utils import timezone

from signup import remotes
from signup.logs import ids
from signup.models import Outbound, OutboundEmail, Signup, SignupEvent
from signup.redaction import redact

logger = logging.getLogger("signup.workflow")

Status = Signup.Status
Event = SignupEvent.Kind
EmailKind = OutboundEmail.Kind
LedgerState = Outbound.Status  # a ledger row's: queued, sending, sent, failed, skipped


# What an action answers when the signup it names is no longer pending.
NOT_PENDING = "not_pending"


class UsernameTaken(Exception):
    """A pending or verified signup already holds this username."""


class SignupClosed(Exception):
    """The signup is no longer pending (expired, cancelled or undeliverable)."""

    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


class CodeRejected(Exception):
    """The code typed is not the signup's (or its code is void): `tries_left` more before it
    is void; 0 once it is, until a new email brings a new code."""

    def __init__(self, tries_left: int):
        super().__init__(f"wrong code, {tries_left} tries left")
        self.tries_left = max(tries_left, 0)


class InFlight(Exception):
    """Not now: another attempt at this ledger row (an email, a webhook delivery) is out until
    `until` (its lease), or its next attempt is planned for `until`."""

    def __init__(self, row_id: int, until):
        super().__init__(f"{row_id} is out until {until.isoformat()}")
        self.row_id = row_id
        self.until = until


class SentButNotRecorded(Exception):
    """The far end accepted a ledger row (an email, a webhook delivery), then the database
    failed before its answer was recorded."""

    def __init__(self, row_id: int, answer):
        super().__init__(f"{row_id} sent ({answer}), not recorded")
        self.row_id = row_id
        self.answer = answer


@dataclass(frozen=True)
class VerifyResult:
    signup: Signup
    already_verified: bool

    @property
    def message(self) -> str:
        return "already verified" if self.already_verified else "done"


def lock(signup_id: int) -> Signup | None:
    # FOR NO KEY UPDATE: inserting a timeline event or ledger row for this signup (a foreign
    # key check) from another transaction must not wait on, or deadlock with, this lock.
    return Signup.objects.select_for_update(no_key=True).filter(pk=signup_id).first()


def after_commit(enqueue) -> None:
    """Run `enqueue` once the transaction commits; if the broker is unreachable then, log it
    and carry on (signup.remotes): the change is committed and the sweeper enqueues the lost
    work later."""
    transaction.on_commit(partial(remotes.broker.call, enqueue), robust=True)


def add_event(signup_id: int, kind: str, *, number: int | None = None, detail: str = "") -> None:
    """Add an event to a signup's timeline; its detail never holds an address or a token."""
    SignupEvent.objects.create(
        signup_id=signup_id, kind=kind, number=number, detail=redact(detail)[:500]
    )


def drop(what: str, signup_id: int, number: int | None, why: str) -> None:
    """Log a task that arrived stale (late, duplicated, superseded) and is dropped."""
    logger.info(
        "dropped stale %s task: signup %s, number %s (%s)",
        what,
        signup_id,
        number,
        why,
        extra=ids(signup_id=signup_id, reminder=number if what == "reminder" else None),
    )


def close_if_pooled() -> None:
    """Give this thread's database connection back to the pool, if connections are pooled;
    the next query takes one again. Without a pool, closing would only cost a reconnect."""
    if connection.settings_dict.get("OPTIONS", {}).get("pool") and not connection.in_atomic_block:
        connection.close()


def wait_for_lease(until) -> None:
    """Sleep a little, at most until `until`, before looking again (outside a transaction)."""
    time.sleep(max(min((until - timezone.now()).total_seconds(), 0.02), 0.001))
