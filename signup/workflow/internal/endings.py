"""How a pending signup ends other than by verifying: expired, cancelled, undeliverable. Its
reminders stop, its emails still queued are skipped, and the ending is announced."""

from django.utils import timezone

from signup.models import Signup
from signup.workflow.internal.announce import CANCELLED, EXPIRED, UNDELIVERABLE, announce
from signup.workflow.internal.ledger import PENDING_KINDS, skip_unsent
from signup.workflow.internal.rows import Event, Status, add_event
from signup.workflow.internal.timers import PLAN_FIELDS, mute

# Who cancelled a signup (Signup.closed_by).
BY_OPERATOR = "operator"
BY_API = "api"
BY_RECIPIENT = "recipient"

_ANNOUNCED = {
    Status.EXPIRED: (Event.EXPIRED, EXPIRED),
    Status.CANCELLED: (Event.CANCELLED, CANCELLED),
    Status.UNDELIVERABLE: (Event.UNDELIVERABLE, UNDELIVERABLE),
}


def close(signup: Signup, status: str, *, detail: str = "", by: str = "") -> None:
    """End a pending signup (locked by the caller) in `status`; `by` says who cancelled it
    (Signup.closed_by)."""
    event, event_type = _ANNOUNCED[status]
    signup.status = status
    signup.closed_at = timezone.now()
    signup.closed_by = by
    mute(signup)
    signup.save(update_fields=["status", "closed_at", "closed_by", *PLAN_FIELDS, "updated_at"])
    add_event(signup.pk, event, detail=detail)
    skip_unsent(signup, kinds=PENDING_KINDS)
    announce(signup, event_type)


def expire_if_due(signup: Signup, *, now=None) -> bool:
    """Expire a pending signup (locked by the caller) whose time is up; return whether it
    expired."""
    if signup.status == Status.PENDING and signup.expires_at <= (now or timezone.now()):
        close(signup, Status.EXPIRED)
        return True
    return False
