"""What every stage of the workflow shares: the names of states and events, the exceptions
callers catch, and the helpers that lock rows, write the timeline and enqueue after commit."""

import logging
from dataclasses import dataclass

from django.db import connection, transaction

from signup.logs import ids
from signup.models import OutboundEmail, Signup, SignupEvent
from signup.redaction import redact

logger = logging.getLogger("signup.workflow")

Status = Signup.Status
Event = SignupEvent.Kind
EmailKind = OutboundEmail.Kind
EmailStatus = OutboundEmail.Status


class UsernameTaken(Exception):
    """A pending or verified signup already holds this username."""


class SentButNotRecorded(Exception):
    """The provider accepted an email, then the database failed before it was recorded."""

    def __init__(self, email_id: int, provider_message_id: str):
        super().__init__(f"email {email_id} sent as {provider_message_id}, not recorded")
        self.email_id = email_id
        self.provider_message_id = provider_message_id


class EmailInFlight(Exception):
    """Not now: another attempt at this email is with the provider until `until` (its
    lease), or its next attempt is planned for `until`."""

    def __init__(self, email_id: int, until):
        super().__init__(f"email {email_id} is with the provider until {until.isoformat()}")
        self.email_id = email_id
        self.until = until


class SignupClosed(Exception):
    """The signup is no longer pending (expired, cancelled or undeliverable)."""

    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class VerifyResult:
    signup: Signup
    already_verified: bool

    @property
    def message(self) -> str:
        return "already verified" if self.already_verified else "done"


# The fields _plan_reminder sets.
_PLAN_FIELDS = ["next_reminder_at", "reminder_enqueued_at"]


def _lock(signup_id: int) -> Signup | None:
    # FOR NO KEY UPDATE: inserting a timeline event or ledger row for this signup (a foreign
    # key check) from another transaction must not wait on, or deadlock with, this lock.
    return Signup.objects.select_for_update(no_key=True).filter(pk=signup_id).first()


def _lock_email(email_id: int) -> OutboundEmail | None:
    return OutboundEmail.objects.select_for_update(no_key=True).filter(pk=email_id).first()


def _lock_signup_and_email(email_id: int) -> tuple[Signup | None, OutboundEmail | None]:
    """Lock an email's signup, then the email: the order every transaction locks them in."""
    signup = (
        Signup.objects.select_for_update(no_key=True, of=("self",))
        .filter(emails__pk=email_id)
        .first()
    )
    return signup, _lock_email(email_id)


def _after_commit(enqueue) -> None:
    """Run `enqueue` once the transaction commits; if the broker is unreachable then, log it
    and carry on: the change is committed and the sweeper enqueues the lost work later."""
    transaction.on_commit(enqueue, robust=True)


def _add_event(signup: Signup, kind: str, *, number: int | None = None, detail: str = "") -> None:
    _add_event_for(signup.pk, kind, number=number, detail=detail)


def _add_event_for(
    signup_id: int, kind: str, *, number: int | None = None, detail: str = ""
) -> None:
    """Add an event to a signup's timeline; its detail never holds an address or a token."""
    SignupEvent.objects.create(signup_id=signup_id, kind=kind, number=number, detail=redact(detail))


def _drop(what: str, signup_id: int, number: int | None, why: str) -> None:
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
