"""Starting: a new pending signup, and greeting its address: what the address may be sent."""

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from signup import tasks
from signup.models import Address, Signup
from signup.workflow.addresses import (
    _ADDRESS_FIELDS,
    _held_back,
    _lock_address,
    _lock_address_of,
    _mute,
    _mute_unsent,
    _spend,
    _take_over_chain,
    _tell_account_exists,
)
from signup.workflow.common import (
    _PLAN_FIELDS,
    EmailKind,
    Event,
    Status,
    UsernameTaken,
    _add_event,
    _after_commit,
    _lock,
)
from signup.workflow.events import STARTED, _announce
from signup.workflow.ledger import _queue_email
from signup.workflow.reminders import _schedule_next_step


def start_signup(
    *,
    username: str,
    email: str,
    first_name: str,
    last_name: str = "",
    language: str = "",
    time_zone: str = "",
    client_network: str = "",
    greet_later: bool = False,
) -> Signup:
    """Record a new pending signup and greet its address: send it what it may be sent.

    That is the verification email, unless the address's budget is spent for now (the
    signup stays mute; the resend page reaches it later) or the address already has an
    account (its owner is told so instead). Its emails are written in `language` (one of
    LANGUAGES, else the default) and give times in `time_zone` (an IANA name the caller has
    checked, else the site's). `client_network` is the network it came from
    (limits.client_network), which the address's daily budget counts. Raise UsernameTaken
    if a pending or verified signup holds the username (in any case).

    With `greet_later` (the form and the API), the transaction records the signup only, the
    same work whatever its address, and the task greet_signup greets the address after
    commit: how long the answer takes does not tell whether the address was known. The
    sweeper re-enqueues a greeting whose task was lost.
    """
    now = timezone.now()
    signup = Signup(
        username=username,
        email=email,
        first_name=first_name,
        last_name=last_name,
        # Its emails are written in it (a language not offered: the default one).
        language=language if language in _offered_languages() else settings.LANGUAGE_CODE,
        time_zone=time_zone,
        client_network=client_network,
        expires_at=now + timedelta(seconds=settings.SIGNUP_EXPIRES_AFTER),
    )
    try:
        with transaction.atomic():
            # The address before the signup, the order every transaction takes them in.
            address = None if greet_later else _lock_address(email)
            # The database's unique constraint decides who gets a username, race or not.
            signup.save(force_insert=True)
            _add_event(signup, Event.SUBMITTED)
            _announce(signup, STARTED)
            if address is None:
                signup_id = signup.pk
                _after_commit(lambda: tasks.greet_signup.delay(signup_id))
            else:
                _greet(signup, address, now=now)
    except IntegrityError as exc:
        if _violated(exc, "signup_username_taken_once"):
            raise UsernameTaken(username) from exc
        raise
    return signup


def greet_signup(*, signup_id: int) -> bool:
    """Greet the address of a signup started with `greet_later`: queue its verification
    email, or hold the signup back within the address's budget, or tell the owner of the
    address's account. Return whether it greeted; False for a signup greeted already (a
    duplicate task), closed meanwhile, or gone.
    """
    now = timezone.now()
    with transaction.atomic():
        address = _lock_address_of(signup_id)
        signup = _lock(signup_id) if address is not None else None
        if signup is None or signup.greeted_at is not None or signup.status != Status.PENDING:
            return False
        if signup.expires_at <= now:
            return False  # the sweeper expires it
        if _greeted_unmarked(signup, address):
            signup.greeted_at, signup.address = now, address
            signup.save(update_fields=["greeted_at", "address", "updated_at"])
            return False
        # An operator may have sent it a verification email already: not a second one.
        emailed = signup.emails.filter(kind=EmailKind.VERIFICATION).exists()
        _greet(signup, address, now=now, emailed=emailed)
    return True


def _greeted_unmarked(signup: Signup, address: Address) -> bool:
    """Whether the signup was greeted without being marked: started by a process of a release
    that greeted in the signup's own transaction (while a deployment rolls over). Its
    address's live signup, or its timeline, says so."""
    return (
        address.live_signup_id == signup.pk
        or signup.events.filter(kind__in=(Event.VERIFICATION_HELD, Event.SUPERSEDED)).exists()
    )


def _greet(signup: Signup, address: Address, *, now, emailed: bool = False) -> None:
    """Decide what the address of this new, saved signup is sent (both locked by the caller);
    `emailed`: its verification email went out already (an operator's resend)."""
    network = signup.client_network
    held = _held_back(address, network=network, now=now)
    greets = not held and address.verified_signup_id is None
    previous = _take_over_chain(address, signup, now=now) if greets else None
    if not greets and emailed:
        _mute(signup)  # its link is out already: it keeps its time
    elif not greets:
        _mute_unsent(signup, now=now)
    signup.greeted_at, signup.address = now, address
    fields = [*_PLAN_FIELDS, "reminders_sent", "expires_at", "greeted_at", "address", "updated_at"]
    signup.save(update_fields=fields)
    if not greets and held:
        _add_event(signup, Event.VERIFICATION_HELD, detail=held)
    elif not greets:
        _tell_account_exists(address, network=network, now=now, asked_by=signup)
    else:
        if not emailed:
            _queue_email(signup, EmailKind.VERIFICATION, sequence=1)
        _spend(address, network=network, now=now)
        address.live_signup = signup
        if previous is not None:
            _add_event(previous, Event.SUPERSEDED, detail=f"by signup {signup.pk}")
    address.save(update_fields=_ADDRESS_FIELDS)
    _schedule_next_step(signup, now=now)


def _offered_languages() -> set[str]:
    return {code for code, _ in settings.LANGUAGES}


def _violated(exc: IntegrityError, constraint: str) -> bool:
    diag = getattr(exc.__cause__, "diag", None)  # PostgreSQL names it; SQLite only says it
    return constraint == getattr(diag, "constraint_name", None) or constraint in str(exc)
