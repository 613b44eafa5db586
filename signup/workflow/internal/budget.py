"""One mailbox, one signup's worth of mail, and a new signup's first contact.

However many signups name a mailbox, in whatever spelling (workflow.mailbox), it is sent at
most one verification (or "you already have an account") email per SIGNUP_ADDRESS_COOLDOWN,
SIGNUP_ADDRESS_DAILY_LIMIT a day, and SIGNUP_ADDRESS_NETWORK_DAILY_LIMIT a day for the
signups of any one network, so that one network's signups can't spend the budget of the
owner's; and it has one reminder chain: the newest signup whose verification email went out
takes the chain over where it stood, so the reminders add up to what one signup gets. A
signup over the budget stays mute (its link was never sent) and expires after
SIGNUP_UNSENT_EXPIRES_AFTER unless the resend page reaches it. Whatever changes what a
mailbox is sent locks its Address row first, then the signups: the order every transaction
takes them in.
"""

import hashlib
from datetime import timedelta

from django.conf import settings
from django.db import transaction

from signup.models import Address, Signup
from signup.workflow.internal.ledger import (
    pending_email_out_until,
    queue_email,
    skip_unsent,
)
from signup.workflow.internal.rows import EmailKind, Event, Status, add_event, lock, wait_for_lease
from signup.workflow.internal.timers import (
    PLAN_FIELDS,
    mute,
    plan_next_step,
    plan_reminder,
    schedule_next_step,
)
from signup.workflow.mailbox import mailbox

# The fields of an Address the workflow changes.
ADDRESS_FIELDS = [
    "live_signup",
    "verified_signup",
    "last_sent_at",
    "day_started_at",
    "sent_today",
    "sent_today_by_network",
]
_LOCK_ADDRESS = (
    f"INSERT INTO {Address._meta.db_table} (digest, sent_today, sent_today_by_network)"
    " VALUES (%s, 0, '{}')"
    " ON CONFLICT (digest) DO UPDATE SET digest = EXCLUDED.digest RETURNING *"
)


def address_digest(email: str) -> str:
    """Return what an address is counted by: the digest of the mailbox it reaches, the same
    for every spelling of it."""
    return hashlib.sha256(mailbox(email).encode()).hexdigest()


def lock_address(email: str) -> Address:
    """Return the address's row, locked: inserted if it is new, in one round trip (an
    upsert's DO UPDATE locks the row it meets, as SELECT ... FOR UPDATE would)."""
    (address,) = Address.objects.raw(_LOCK_ADDRESS, [address_digest(email)])
    return address


def lock_address_of(signup_id: int) -> Address | None:
    """Lock the address of a signup (before the signup itself); None if there is no such
    signup.

    An address changes (addresses.change_address) only under the lock of the old one, so
    once the address read is locked and is still the signup's, it stays the signup's until
    the transaction ends; if it changed in between, the new one is locked instead.
    """
    signups = Signup.objects.filter(pk=signup_id).values_list("email", flat=True)
    email = signups.first()
    while email is not None:
        address = lock_address(email)
        now_email = signups.first()
        if now_email == email:
            return address
        email = now_email
    return None


def when_no_email_is_out(signup_id: int, act):
    """Return act(signup, address), called in a transaction that holds the signup's address
    and the signup locked (None and None if there is no such signup), once no verification
    email or reminder of the signup is with the provider.

    Such an email, claimed before, is out until its lease ends (the provider's own time
    limit): the wait is outside the transaction, so that the email can record itself, and at
    most one lease; usually none. A claim made after act commits sees what it did. So
    nothing for a pending signup leaves after a verification, a cancellation or an erasure.
    """
    while True:
        with transaction.atomic():
            address = lock_address_of(signup_id)
            signup = lock(signup_id) if address is not None else None
            out_until = pending_email_out_until(signup) if signup is not None else None
            if out_until is None:
                return act(signup, address)
        wait_for_lease(out_until)


def held_back(address: Address, *, network: str, now) -> str:
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


def spend(address: Address, *, network: str, now) -> None:
    if address.day_started_at is None or now - address.day_started_at >= timedelta(days=1):
        address.day_started_at, address.sent_today = now, 0
        address.sent_today_by_network = {}
    address.sent_today += 1
    by_network = address.sent_today_by_network
    by_network[network] = by_network.get(network, 0) + 1
    address.last_sent_at = now


def take_chain(address: Address, signup: Signup, *, now) -> None:
    """Make `signup` the mailbox's live signup, whose reminders run: it continues the chain
    of the signup that had it (if that is still pending) where it stood, and that one is
    muted. The caller saves the signup's plan and the address."""
    previous = None
    if address.live_signup_id not in (None, signup.pk):
        previous = lock(address.live_signup_id)
    address.live_signup = signup
    if previous is None or previous.status != Status.PENDING:
        plan_next_step(signup, now=now)
        return
    signup.reminders_sent = max(signup.reminders_sent, previous.reminders_sent)
    plan_reminder(signup, at=previous.next_reminder_at, now=now)
    mute(previous)
    previous.save(update_fields=[*PLAN_FIELDS, "updated_at"])
    skip_unsent(previous, kinds=(EmailKind.REMINDER,))
    add_event(previous.pk, Event.SUPERSEDED, detail=f"by signup {signup.pk}")


def restore_expiry(signup: Signup) -> None:
    """Give a signup whose verification email goes out after all the time every signup has."""
    usual = signup.created_at + timedelta(seconds=settings.SIGNUP_EXPIRES_AFTER)
    signup.expires_at = max(signup.expires_at, usual)


def tell_account_exists(
    address: Address, *, network: str, now, asked_by: Signup | None = None
) -> None:
    """Queue a "you already have an account" email to the owner of the address's verified
    signup, instead of another verification email."""
    queue_email(lock(address.verified_signup_id), EmailKind.ACCOUNT_EXISTS)
    spend(address, network=network, now=now)
    if asked_by is not None:
        detail = "the address already has an account"
        add_event(asked_by.pk, Event.VERIFICATION_HELD, detail=detail)


def contact(signup: Signup, address: Address, *, now, emailed: bool = False) -> None:
    """Decide what the address of a new signup is sent first (both locked by the caller): its
    verification email (the signup takes the mailbox's reminder chain), or nothing within the
    budget (the signup stays mute and expires soon: nobody can verify it, and it holds its
    username), or for an address with an account, "you already have an account" to its
    owner. `emailed`: an operator's resend sent its verification email already."""
    network = signup.client_network
    held = held_back(address, network=network, now=now)
    sends = not held and address.verified_signup_id is None
    if sends:
        take_chain(address, signup, now=now)
    elif emailed:
        mute(signup)  # its link is out already: it keeps its time
    else:
        mute(signup)
        soon = now + timedelta(seconds=settings.SIGNUP_UNSENT_EXPIRES_AFTER)
        signup.expires_at = min(signup.expires_at, soon)
    signup.contacted_at, signup.address = now, address
    fields = [*PLAN_FIELDS, "reminders_sent", "expires_at", "contacted_at", "address", "updated_at"]
    signup.save(update_fields=fields)
    if sends:
        if not emailed:
            queue_email(signup, EmailKind.VERIFICATION)
        spend(address, network=network, now=now)
    elif held:
        add_event(signup.pk, Event.VERIFICATION_HELD, detail=held)
    else:
        tell_account_exists(address, network=network, now=now, asked_by=signup)
    address.save(update_fields=ADDRESS_FIELDS)
    schedule_next_step(signup, now=now)
