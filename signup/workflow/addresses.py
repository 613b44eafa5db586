"""The resend page: another verification email for an address, within its mailbox's budget
(internal.budget)."""

from django.db import transaction
from django.db.models import Case, Value, When
from django.utils import timezone

from signup.models import Signup
from signup.workflow.internal.budget import (
    ADDRESS_FIELDS,
    held_back,
    lock_address,
    restore_expiry,
    spend,
    take_chain,
    tell_account_exists,
)
from signup.workflow.internal.ledger import next_sequence, queue_email
from signup.workflow.internal.rows import EmailKind, Event, Status, add_event
from signup.workflow.internal.timers import PLAN_FIELDS, schedule_next_step


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
        if address.live_signup_id != newest.pk:
            restore_expiry(newest)  # a mute signup's link goes out now
            take_chain(address, newest, now=now)
            newest.save(update_fields=[*PLAN_FIELDS, "reminders_sent", "expires_at", "updated_at"])
            schedule_next_step(newest, now=now)
        sequence = next_sequence(newest, EmailKind.VERIFICATION)
        add_event(newest.pk, Event.VERIFICATION_REQUESTED, number=sequence)
        queue_email(newest, EmailKind.VERIFICATION, sequence=sequence)
        spend(address, network=network, now=now)
        address.save(update_fields=ADDRESS_FIELDS)
    return "verification email queued"
