"""How a pending signup ends other than by verifying or expiring: cancelled by an operator,
or made undeliverable by what the email provider reports (a hard bounce, a complaint)."""

from django.db import transaction

from signup.models import Address, Signup
from signup.workflow.internal.budget import when_no_email_is_out
from signup.workflow.internal.endings import close
from signup.workflow.internal.rows import Status, lock


def cancel_signup(*, signup_id: int, reason: str = "") -> bool:
    """Cancel a pending signup (an operator's decision); its username is free again.

    Like a verification, it waits (outside the transaction) for a verification email or a
    reminder of the signup that is with the provider, so nothing is sent after the
    cancellation commits.
    """

    def act(signup: Signup | None, address: Address | None) -> bool:
        if signup is None or signup.status != Status.PENDING:
            return False
        close(signup, Status.CANCELLED, detail=reason)
        return True

    return when_no_email_is_out(signup_id, act)


def mark_undeliverable(*, signup_id: int, reason: str) -> bool:
    """Stop a pending signup whose address bounced hard or complained."""
    with transaction.atomic():
        signup = lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return False
        close(signup, Status.UNDELIVERABLE, detail=reason)
    return True
