"""One mailbox, one signup's worth of mail.

However many signups name a mailbox, in whatever spelling (workflow.mailbox), it is sent at
most one verification (or "you already have an account") email per SIGNUP_ADDRESS_COOLDOWN,
SIGNUP_ADDRESS_DAILY_LIMIT a day, and SIGNUP_ADDRESS_NETWORK_DAILY_LIMIT a day for the
signups of any one network, so that one network's signups can't spend the budget of the
owner's; and one reminder chain: the newest signup whose verification email went out takes
the chain over where it stood, so the reminders add up to what one signup gets. A signup over
the budget stays mute (its link was never sent) and expires after SIGNUP_UNSENT_EXPIRES_AFTER
unless the resend page reaches it. Every function that changes what an address is sent locks
its Address row first, then the signups: the order every transaction takes them in.
"""

import hashlib
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Value, When
from django.utils import timezone

from signup.models import Address, Signup
from signup.workflow.common import (
    _PLAN_FIELDS,
    EmailKind,
    Event,
    Status,
    _add_event,
    _lock,
)
from signup.workflow.ledger import _queue_email, _skip_unsent
from signup.workflow.mailbox import mailbox
from signup.workflow.reminders import _plan_next_step, _plan_reminder, _schedule_next_step


def address_digest(email: str) -> str:
    """Return what an address is counted by: the digest of the mailbox it reaches, the same
    for every spelling of it."""
    return hashlib.sha256(mailbox(email).encode()).hexdigest()


def _lock_address(email: str) -> Address:
    """Return the address's row, locked: inserted if it is new, in one round trip (an
    upsert's DO UPDATE locks the row it meets, as SELECT ... FOR UPDATE would)."""
    (address,) = Address.objects.raw(_LOCK_ADDRESS, [address_digest(email)])
    return address


_LOCK_ADDRESS = (
    f"INSERT INTO {Address._meta.db_table} (digest, sent_today, sent_today_by_network)"
    " VALUES (%s, 0, '{}')"
    " ON CONFLICT (digest) DO UPDATE SET digest = EXCLUDED.digest RETURNING *"
)
# The fields of an Address the workflow changes.
_ADDRESS_FIELDS = [
    "live_signup",
    "verified_signup",
    "last_sent_at",
    "day_started_at",
    "sent_today",
    "sent_today_by_network",
]


def _lock_address_of(signup_id: int) -> Address | None:
    """Lock the address of a signup (before the signup itself); None if there is no such
    signup. A signup's address never changes while it can still be verified."""
    email = Signup.objects.filter(pk=signup_id).values_list("email", flat=True).first()
    return _lock_address(email) if email is not None else None


def _held_back(address: Address, *, network: str, now) -> str:
    """Why the address may not be sent another verification email now for a signup of
    `network`; "" if it may."""
    if address.last_sent_at is not None:
        wait = settings.SIGNUP_ADDRESS_COOLDOWN - (now - address.last_sent_at).total_seconds()
        if wait > 0:
            return f"the address was sent one less than {settings.SIGNUP_ADDRESS_COOLDOWN} s ago"
    if address.day_started_at is None or now - address.day_started_at >= timedelta(days=1):
        return ""
    if address.sent_today >= settings.SIGNUP_ADDRESS_DAILY_LIMIT:
        return f"the address was sent {address.sent_today} today"
    from_network = address.sent_today_by_network.get(network, 0)
    if from_network >= settings.SIGNUP_ADDRESS_NETWORK_DAILY_LIMIT:
        return f"the address was sent {from_network} today for this network's signups"
    return ""


def _spend(address: Address, *, network: str, now) -> None:
    if address.day_started_at is None or now - address.day_started_at >= timedelta(days=1):
        address.day_started_at, address.sent_today = now, 0
        address.sent_today_by_network = {}
    address.sent_today += 1
    by_network = address.sent_today_by_network
    by_network[network] = by_network.get(network, 0) + 1
    address.last_sent_at = now


def _take_over_chain(address: Address, signup: Signup, *, now) -> Signup | None:
    """Make `signup` the one whose reminders run, continuing the chain of the signup that
    had them (if it is still pending) where it stood. Return that previous signup."""
    previous = None
    if address.live_signup_id not in (None, signup.pk):
        previous = _lock(address.live_signup_id)
    if previous is None or previous.status != Status.PENDING:
        _plan_next_step(signup, now=now)
        return None
    signup.reminders_sent = max(signup.reminders_sent, previous.reminders_sent)
    _plan_reminder(signup, at=previous.next_reminder_at, now=now)
    _mute(previous)
    previous.save(update_fields=[*_PLAN_FIELDS, "updated_at"])
    _skip_unsent(previous, kinds=(EmailKind.REMINDER,))
    return previous


def _mute(signup: Signup) -> None:
    """Plan no reminder for this signup; it is still pending and its links still work."""
    signup.next_reminder_at = signup.reminder_enqueued_at = None


def _mute_unsent(signup: Signup, *, now) -> None:
    """Mute a signup whose address is sent nothing for it, and let it expire soon: nobody
    can verify it until the resend page reaches it, and meanwhile it holds its username."""
    _mute(signup)
    soon = now + timedelta(seconds=settings.SIGNUP_UNSENT_EXPIRES_AFTER)
    signup.expires_at = min(signup.expires_at, soon)


def _restore_expiry(signup: Signup) -> None:
    """Give a signup whose verification email goes out after all the time every signup has."""
    usual = signup.created_at + timedelta(seconds=settings.SIGNUP_EXPIRES_AFTER)
    signup.expires_at = max(signup.expires_at, usual)


def _tell_account_exists(
    address: Address, *, network: str, now, asked_by: Signup | None = None
) -> None:
    """Queue a "you already have an account" email to the owner of the address's verified
    signup, instead of another verification email."""
    account = _lock(address.verified_signup_id)
    last = account.emails.filter(kind=EmailKind.ACCOUNT_EXISTS).order_by("-sequence").first()
    _queue_email(account, EmailKind.ACCOUNT_EXISTS, sequence=last.sequence + 1 if last else 1)
    _spend(address, network=network, now=now)
    if asked_by is not None:
        _add_event(asked_by, Event.VERIFICATION_HELD, detail="the address already has an account")


def request_verification_email(*, email: str, network: str = "") -> str:
    """Answer the resend page for an address, asked from `network`, within its budget: a
    fresh verification email for its newest pending signup (which takes the reminder chain
    over; one made from `network` first, so that others' newer signups do not come before the
    owner's own), else a "you already have an account" email if it has one. Return what was
    done, for the logs only: the page says the same whatever happened.
    """
    now = timezone.now()
    with transaction.atomic():
        address = _lock_address(email)
        held = _held_back(address, network=network, now=now)
        if held:
            return "held back: " + held
        newest = (
            Signup.objects.select_for_update(no_key=True)
            .filter(address=address, status=Status.PENDING)
            .order_by(
                Case(When(client_network=network, then=Value(0)), default=Value(1)),
                "-created_at",
                "-id",
            )
            .first()
        )
        if address.verified_signup_id is not None:
            _tell_account_exists(address, network=network, now=now)
            outcome = "account exists email queued"
        elif newest is not None:
            if address.live_signup_id != newest.pk:
                _restore_expiry(newest)
                previous = _take_over_chain(address, newest, now=now)
                fields = [*_PLAN_FIELDS, "reminders_sent", "expires_at", "updated_at"]
                newest.save(update_fields=fields)
                if previous is not None:
                    _add_event(previous, Event.SUPERSEDED, detail=f"by signup {newest.pk}")
                address.live_signup = newest
                _schedule_next_step(newest, now=now)
            last = newest.emails.filter(kind=EmailKind.VERIFICATION).order_by("-sequence").first()
            sequence = last.sequence + 1 if last else 1
            _add_event(newest, Event.VERIFICATION_REQUESTED, number=sequence)
            _queue_email(newest, EmailKind.VERIFICATION, sequence=sequence)
            _spend(address, network=network, now=now)
            outcome = "verification email queued"
        else:
            return "nothing pending"
        address.save(update_fields=_ADDRESS_FIELDS)
    return outcome
