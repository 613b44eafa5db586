"""What a pending signup's address is sent on request, and the address itself: the resend
page's request for an address, the "sent" page's request for a new code, and a mistyped
address fixed; all within the mailbox's budget (internal.budget)."""

import uuid

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Value, When
from django.utils import timezone

from signup import tasks
from signup.models import Address, Signup
from signup.workflow.internal.announce import ADDRESS_CHANGED, announce
from signup.workflow.internal.budget import (
    ADDRESS_FIELDS,
    address_digest,
    held_back,
    lock_address,
    lock_address_of,
    restore_expiry,
    spend,
    take_chain,
    tell_account_exists,
    when_no_email_is_out,
)
from signup.workflow.internal.codes import renew_void_code
from signup.workflow.internal.endings import expire_if_due
from signup.workflow.internal.ledger import PENDING_KINDS, next_sequence, queue_email, skip_unsent
from signup.workflow.internal.rows import (
    NOT_PENDING,
    EmailKind,
    Event,
    Status,
    add_event,
    after_commit,
    lock,
)
from signup.workflow.internal.timers import PLAN_FIELDS, mute, schedule_next_step

# What request_new_code and change_address did.
SENT = "sent"
HELD = "held"
CHANGED = "changed"
SAME_ADDRESS = "same address"
NO_CHANGES_LEFT = "no changes left"


def request_verification_email(*, email: str, network: str = "") -> str:
    """Answer the resend page for an address, asked from `network`, within its budget: a
    fresh verification email for its newest pending signup (which takes the reminder chain
    over; one made from `network` first, so that others' newer signups do not come before the
    owner's own), else a "you already have an account" email if it has one. Return what was
    done, for the logs only: the page says the same whatever happened.
    """
    now = timezone.now()
    with transaction.atomic():
        address = lock_address(email)
        held = held_back(address, network=network, now=now)
        if held:
            return "held back: " + held
        if address.verified_signup_id is not None:
            tell_account_exists(address, network=network, now=now)
            address.save(update_fields=ADDRESS_FIELDS)
            return "account exists email queued"
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
        if newest is None:
            return "nothing pending"
        _send_again(address, newest, network=network, now=now)
    return "verification email queued"


def request_new_code(*, signup_id: int, network: str | None = None) -> str:
    """Send a pending signup another verification email, asked from `network` (the browser
    that made it; None: the network the signup was made from, as the API's caller named it),
    within its mailbox's budget: SENT, HELD (the budget says not now) or NOT_PENDING. A
    code void after its wrong tries is replaced by a new one. For an address
    that has an account, its owner is told so instead, as the resend page does (SENT too:
    the page must not tell whether the address has an account).
    """
    now = timezone.now()
    with transaction.atomic():
        address = lock_address_of(signup_id)
        signup = lock(signup_id) if address is not None else None
        if signup is None or signup.status != Status.PENDING:
            return NOT_PENDING
        network = signup.client_network if network is None else network
        if held_back(address, network=network, now=now):
            return HELD
        if address.verified_signup_id not in (None, signup.pk):
            tell_account_exists(address, network=network, now=now, asked_by=signup)
            address.save(update_fields=ADDRESS_FIELDS)
            return SENT
        _send_again(address, signup, network=network, now=now)
    return SENT


def _send_again(address: Address, signup: Signup, *, network: str, now) -> None:
    """Queue another verification email for a pending signup of the address (both locked),
    which takes the mailbox's reminder chain if it had not; spend the budget."""
    fields = ["expires_at", "updated_at", *renew_void_code(signup)]
    restore_expiry(signup)  # a mute signup's link goes out now
    if address.live_signup_id != signup.pk:
        take_chain(address, signup, now=now)
        fields += [*PLAN_FIELDS, "reminders_sent"]
        schedule_next_step(signup, now=now)
    signup.save(update_fields=fields)
    sequence = next_sequence(signup, EmailKind.VERIFICATION)
    add_event(signup.pk, Event.VERIFICATION_REQUESTED, number=sequence)
    queue_email(signup, EmailKind.VERIFICATION, sequence=sequence)
    spend(address, network=network, now=now)
    address.save(update_fields=ADDRESS_FIELDS)


def change_address(*, signup_id: int, email: str) -> str:
    """Give a pending signup another address (`email`, canonical, checked by the caller), at
    most SIGNUP_MAX_ADDRESS_CHANGES times: CHANGED, SAME_ADDRESS, NO_CHANGES_LEFT or
    NOT_PENDING.

    Nothing more goes to the old address: what was queued for it is skipped, an email with
    the provider is waited for (as a verification waits), and the signup gets a new public
    id, so every link and code sent to the old address stops working. The new address is
    then contacted as a new signup's is (contact_address, after commit): within its own
    budget, and for an address with an account its owner is told instead. The signup keeps
    its username, its expiry and the reminders it had; the old address is not kept in the
    timeline, only that it changed.
    """

    def act(signup: Signup | None, address: Address | None) -> str:
        if signup is None or signup.status != Status.PENDING or expire_if_due(signup):
            return NOT_PENDING
        if address_digest(email) == address.digest:
            return SAME_ADDRESS
        if signup.address_changes >= settings.SIGNUP_MAX_ADDRESS_CHANGES:
            return NO_CHANGES_LEFT
        if address.live_signup_id == signup.pk:
            address.live_signup = None  # the old mailbox's chain ends with this signup
            address.save(update_fields=["live_signup"])
        mute(signup)
        skip_unsent(signup, kinds=PENDING_KINDS)
        signup.email = email
        signup.public_id = uuid.uuid4()
        signup.code_attempts = 0
        signup.address_changes += 1
        signup.contacted_at = signup.address = None
        signup.save(
            update_fields=[
                *PLAN_FIELDS,
                *("email", "public_id", "code_attempts", "address_changes"),
                *("contacted_at", "address", "updated_at"),
            ]
        )
        detail = f"{signup.address_changes} of {settings.SIGNUP_MAX_ADDRESS_CHANGES} changes"
        add_event(signup.pk, Event.ADDRESS_CHANGED, number=signup.address_changes, detail=detail)
        announce(signup, ADDRESS_CHANGED)
        after_commit(lambda: tasks.contact_address.delay(signup_id))
        return CHANGED

    return when_no_email_is_out(signup_id, act)
