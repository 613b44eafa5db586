"""Named reads for views, the API and the admin."""

import uuid

from django.db.models import Count

from signup import tokens
from signup.models import OutboundEmail, Signup, WebhookDelivery

WEBHOOK_STATES = [state for state in WebhookDelivery.Status.values if state != "skipped"]


def signup_by_username(username: str) -> Signup | None:
    """Return the signup that holds this username now, else its most recent one."""
    signups = Signup.objects.filter(username__iexact=username)
    return (
        signups.filter(status__in=Signup.HOLDING_STATUSES).first()
        or signups.order_by("-created_at", "-id").first()
    )


def signup_by_public_id(public_id: str) -> Signup | None:
    """Return the signup with this public id (hex), or None for none or a malformed one."""
    try:
        return Signup.objects.filter(public_id=uuid.UUID(hex=public_id)).first()
    except (ValueError, TypeError):
        return None


def signup_for_token(token: str) -> Signup:
    """Return the signup a verification token names; raise tokens.InvalidToken if none."""
    named = tokens.read_token(token)
    signup = Signup.objects.filter(**named.lookup()).first()
    if signup is None or not named.names(signup):
        raise tokens.InvalidToken("no such signup")
    return signup


def next_step(signup: Signup) -> dict | None:
    """What happens next to a pending signup if nobody acts: reminder n at a time, or the
    expiry; None once it is closed or verified."""
    if signup.status != Signup.Status.PENDING:
        return None
    if signup.next_reminder_at is not None and signup.next_reminder_at < signup.expires_at:
        return {
            "step": "reminder",
            "number": signup.reminders_sent + 1,
            "at": signup.next_reminder_at,
        }
    return {"step": "expiry", "number": None, "at": signup.expires_at}


def count_by(rows, *columns: str) -> dict:
    """How many rows have each value of `columns` (a tuple of them for several), in one
    GROUP BY; a value no row has is missing."""
    counted = rows.order_by().values_list(*columns).annotate(n=Count("id"))
    if len(columns) == 1:
        return dict(counted.values_list(columns[0], "n"))
    return {tuple(row[:-1]): row[-1] for row in counted.values_list(*columns, "n")}


def email_counts(signup: Signup) -> dict[str, int]:
    """The signup's ledger emails by state (queued, sending, sent, failed, skipped)."""
    counted = count_by(signup.emails, "status")
    return {status: counted.get(status, 0) for status in OutboundEmail.Status.values}


def webhook_counts(signup: Signup) -> dict[str, int]:
    """The signup's webhook deliveries by state (queued, sending, sent, failed: a delivery
    is never skipped)."""
    counted = count_by(signup.webhooks, "status")
    return {status: counted.get(status, 0) for status in WEBHOOK_STATES}
