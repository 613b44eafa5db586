"""Starting: a new pending signup, and its first contact: what its address is sent first."""

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from signup import languages, tasks
from signup.models import Signup
from signup.workflow.internal.announce import STARTED, announce
from signup.workflow.internal.budget import contact, lock_address_of
from signup.workflow.internal.clock import database_now
from signup.workflow.internal.rows import (
    EmailKind,
    Event,
    Status,
    UsernameTaken,
    add_event,
    after_commit,
    lock,
)


def start_signup(
    *,
    username: str,
    email: str,
    first_name: str,
    last_name: str = "",
    language: str = "",
    time_zone: str = "",
    client_network: str = "",
) -> Signup:
    """Record a new pending signup; its address is contacted after commit (contact_address).

    The transaction records the signup only, the same work whatever its address, so how long
    the answer takes does not tell whether the address was known; the sweeper re-enqueues a
    first contact whose task was lost. Its emails are written in `language` (the offered
    language closest to it, else the default) and give times in `time_zone` (an IANA name the
    caller has checked, else the site's). `client_network` is the network it came from
    (limits.client_network), which the address's daily budget counts. Raise UsernameTaken
    if a pending or verified signup holds the username (in any case).
    """
    signup = Signup(
        username=username,
        email=email,
        first_name=first_name,
        last_name=last_name,
        language=languages.offered(language),
        time_zone=time_zone,
        client_network=client_network,
        expires_at=timezone.now() + timedelta(seconds=settings.SIGNUP_EXPIRES_AFTER),
    )
    try:
        with transaction.atomic():
            # The database's unique constraint decides who gets a username, race or not.
            signup.save(force_insert=True)
            add_event(signup.pk, Event.SUBMITTED)
            announce(signup, STARTED)
            signup_id = signup.pk
            after_commit(lambda: tasks.contact_address.delay(signup_id))
    except IntegrityError as exc:
        if _violated(exc, "signup_username_taken_once"):
            raise UsernameTaken(username) from exc
        raise
    return signup


def contact_address(*, signup_id: int) -> bool:
    """Decide what a new signup's address (or a changed one) is sent first, within its
    mailbox's budget: its
    verification email, or nothing for now (a mute signup the resend page reaches later), or
    "you already have an account" to the owner of the address's account. Return whether it
    did; False for a signup contacted already (a duplicate task), closed meanwhile, or gone.
    Its first reminder is planned on the database's clock (internal.clock).
    """
    with transaction.atomic():
        now = database_now()
        address = lock_address_of(signup_id)
        signup = lock(signup_id) if address is not None else None
        if signup is None or signup.contacted_at is not None or signup.status != Status.PENDING:
            return False
        if signup.expires_at <= now:
            return False  # the sweeper expires it
        # An operator may have sent it a verification email already: not a second one. (One
        # to the address it had before a change does not count.)
        emailed = signup.emails.filter(kind=EmailKind.VERIFICATION, to_email=signup.email).exists()
        contact(signup, address, now=now, emailed=emailed)
    return True


def _violated(exc: IntegrityError, constraint: str) -> bool:
    diag = getattr(exc.__cause__, "diag", None)  # PostgreSQL names it; SQLite only says it
    return constraint == getattr(diag, "constraint_name", None) or constraint in str(exc)
