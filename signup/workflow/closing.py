"""How a pending signup ends other than by verifying or expiring: cancelled by an operator,
by the person its email reached ("not me"), or made undeliverable by what the email
provider reports (a hard bounce, a complaint)."""

from django.db import transaction

from signup import selectors
from signup.models import Address, Signup
from signup.workflow.internal.budget import when_no_email_is_out
from signup.workflow.internal.endings import BY_OPERATOR, BY_RECIPIENT, close
from signup.workflow.internal.rows import Status, lock

NOT_ME_SOURCE = "not-me"  # the timeline's word for a "not me" link


def cancel_signup(*, signup_id: int, reason: str = "", by: str = BY_OPERATOR) -> bool:
    """Cancel a pending signup (an operator's decision, in the admin or `by` the API); its
    username is free again.

    Like a verification, it waits (outside the transaction) for a verification email or a
    reminder of the signup that is with the provider, so nothing is sent after the
    cancellation commits.
    """

    def act(signup: Signup | None, address: Address | None) -> bool:
        if signup is None or signup.status != Status.PENDING:
            return False
        close(signup, Status.CANCELLED, detail=reason, by=by)
        return True

    return when_no_email_is_out(signup_id, act)


def disown_signup(*, token: str) -> str:
    """Cancel the pending signup a "not me" link names: the person its emails reached did
    not sign up, and no reminder follows. Return the signup's status afterwards (cancelled,
    or what it was already: a verified signup stays verified). Raise tokens.InvalidToken
    for a bad link, as a verification does; the answer concerns that signup only.
    """
    signup_id = selectors.signup_for_token(token).pk

    def act(signup: Signup | None, address: Address | None) -> str:
        if signup is None:
            return Status.CANCELLED  # gone (erased) since it was looked up: nothing is sent
        if signup.status == Status.PENDING:
            close(signup, Status.CANCELLED, detail=f"source: {NOT_ME_SOURCE}", by=BY_RECIPIENT)
        return signup.status

    return when_no_email_is_out(signup_id, act)


def mark_undeliverable(*, signup_id: int, reason: str) -> bool:
    """Stop a pending signup whose address bounced hard or complained."""
    with transaction.atomic():
        signup = lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return False
        close(signup, Status.UNDELIVERABLE, detail=reason)
    return True
