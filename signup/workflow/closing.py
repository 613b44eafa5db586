"""How a pending signup ends other than by verifying: cancelled by an operator, or made
undeliverable by what the email provider reports (a hard bounce, a complaint)."""

from django.db import transaction
from django.utils import timezone

from signup.models import Signup
from signup.redaction import redact
from signup.workflow.common import (
    _PLAN_FIELDS,
    EmailKind,
    Event,
    Status,
    _add_event,
    _lock,
    _lock_signup_and_email,
)
from signup.workflow.events import CANCELLED, EXPIRED, UNDELIVERABLE, _announce
from signup.workflow.ledger import _number, _pending_email_out_until, _skip_unsent, _wait_for_lease


def cancel_signup(*, signup_id: int, reason: str = "") -> bool:
    """Cancel a pending signup (an operator's decision); its username is free again.

    Like a verification, it waits (outside the transaction) for a verification email or a
    reminder of the signup that is with the provider, so nothing is sent after the
    cancellation commits.
    """
    while True:
        with transaction.atomic():
            signup = _lock(signup_id)
            if signup is None or signup.status != Status.PENDING:
                return False
            out_until = _pending_email_out_until(signup)
            if out_until is None:
                _close(signup, Status.CANCELLED, Event.CANCELLED, detail=reason)
                return True
        _wait_for_lease(out_until)


def mark_undeliverable(*, signup_id: int, reason: str) -> bool:
    """Stop a pending signup whose address bounced hard or complained."""
    with transaction.atomic():
        signup = _lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return False
        _close(signup, Status.UNDELIVERABLE, Event.UNDELIVERABLE, detail=reason)
    return True


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


def record_provider_event(
    *, email_id: int, event_type: str, permanent: bool = True, description: str = ""
) -> bool:
    """Put a provider's event about a sent email on its signup's timeline; return whether
    it was new.

    A hard bounce, a rejection or a spam complaint also makes a pending signup
    undeliverable, which stops its reminders. A provider posting the same event again adds
    nothing; event types the workflow has no use for are ignored.
    """
    if event_type not in _PROVIDER_EVENTS:
        return False
    kind, closes = _PROVIDER_EVENTS[event_type]
    closes = closes and permanent
    description = redact(description)  # a bounce message often quotes the address
    with transaction.atomic():
        signup, email = _lock_signup_and_email(email_id)
        if signup is None or email is None:
            return False
        detail = f"{email.kind} #{email.sequence}" + (f": {description}" if description else "")
        if signup.events.filter(kind=kind, detail=detail[:500]).exists():
            return False
        _add_event(signup, kind, number=_number(email), detail=detail[:500])
        if closes and signup.status == Status.PENDING:
            reason = "spam complaint" if event_type == "complained" else f"email {event_type}"
            _close(signup, Status.UNDELIVERABLE, Event.UNDELIVERABLE, detail=reason)
    return True


def _close(signup: Signup, status: str, event: str, detail: str = "") -> None:
    signup.status = status
    signup.closed_at = timezone.now()
    signup.next_reminder_at = signup.reminder_enqueued_at = None
    signup.save(update_fields=["status", "closed_at", *_PLAN_FIELDS, "updated_at"])
    _add_event(signup, event, detail=detail)
    _skip_unsent(signup, kinds=(EmailKind.VERIFICATION, EmailKind.REMINDER))
    _announce(signup, _CLOSED_EVENT[status])


_CLOSED_EVENT = {
    Status.EXPIRED: EXPIRED,
    Status.CANCELLED: CANCELLED,
    Status.UNDELIVERABLE: UNDELIVERABLE,
}
