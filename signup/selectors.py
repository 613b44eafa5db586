"""Named reads for views, the API and the admin."""

from signup import tokens
from signup.models import Signup


def signup_by_username(username: str) -> Signup | None:
    """Return the signup that holds this username now, else its most recent one."""
    signups = Signup.objects.filter(username__iexact=username)
    return (
        signups.filter(status__in=Signup.HOLDING_STATUSES).first()
        or signups.order_by("-created_at", "-id").first()
    )


def signup_for_token(token: str) -> Signup:
    """Return the signup a verification token names; raise tokens.InvalidToken if none."""
    signup_id, created_ts = tokens.read_token(token)
    signup = Signup.objects.filter(pk=signup_id).first()
    if signup is None or int(signup.created_at.timestamp()) != created_ts:
        raise tokens.InvalidToken("no such signup")
    return signup
