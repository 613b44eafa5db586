"""Personal data ends: closed signups are anonymised after SIGNUP_RETENTION_DAYS, an operator
erases one at once, and the budget rows of addresses nobody has written to for a day are
forgotten."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from signup.models import Address, OutboundEmail, Signup, SignupEvent
from signup.redaction import redact
from signup.workflow.internal.budget import when_no_email_is_out
from signup.workflow.internal.endings import BY_OPERATOR, close
from signup.workflow.internal.rows import Event, LedgerState, Status

logger = logging.getLogger("signup.workflow")

# Placeholders unique to each signup. No form accepts the username (":" is not a username
# character), so no signup can clash with it, and the address is a valid one at a domain
# reserved to receive no mail (.invalid), so it is nobody's.
_ANONYMOUS_USERNAME = "anonymised:{id}"
_ANONYMOUS_DOMAIN = "@anonymised.invalid"
_ANONYMOUS_ADDRESS = "signup-{id}" + _ANONYMOUS_DOMAIN
_ANONYMOUS_NAME = "Anonymised"


def anonymise_closed_signups(*, batch_size: int = 500) -> int:
    """Anonymise the expired, cancelled and undeliverable signups that closed more than
    SIGNUP_RETENTION_DAYS ago; return how many were.

    Verified signups are the product's accounts and pending ones are still under way:
    neither is touched. Works in batches like the sweeper, each one short transaction that
    skips the rows others hold (the next run takes them); an anonymised signup is not
    looked at again.
    """
    now = timezone.now()
    cutoff = now - timedelta(days=settings.SIGNUP_RETENTION_DAYS)
    anonymised = 0
    while True:
        with transaction.atomic():
            batch = list(
                Signup.objects.select_for_update(skip_locked=True, no_key=True)
                .filter(
                    status__in=Signup.CLOSED_STATUSES,
                    anonymised_at__isnull=True,
                    closed_at__lte=cutoff,
                )
                .order_by("closed_at")[:batch_size]
            )
            _anonymise(batch, now=now, detail="retention period over")
        anonymised += len(batch)
        if len(batch) < batch_size:
            break
    if anonymised:
        logger.info("anonymised %s closed signups", anonymised)
    return anonymised


def erase_personal_data(*, signup_id: int, operator: str) -> bool:
    """Anonymise one signup now, at the request of the person it is about; return whether
    it was anonymised (False if it was already, or does not exist).

    Any signup can be erased. A pending one is cancelled first, so nothing more is sent to
    it: like a cancellation, the erasure waits (outside its transaction) for a verification
    email or reminder of the signup that is with the provider. A verified one stays
    verified, so the counts keep it, and its username is free again, as an erased account's
    is.
    """

    def erase(signup: Signup | None, address: Address | None) -> bool:
        if signup is None or signup.anonymised_at is not None:
            return False
        if signup.status == Status.PENDING:
            close(signup, Status.CANCELLED, detail="to erase personal data", by=BY_OPERATOR)
        # The address keeps its budget, but no longer has this account or this chain.
        if address.verified_signup_id == signup.pk:
            address.verified_signup = None
        if address.live_signup_id == signup.pk:
            address.live_signup = None
        address.save(update_fields=["verified_signup", "live_signup"])
        _anonymise([signup], now=timezone.now(), detail=f"erased by an operator ({operator})")
        return True

    return when_no_email_is_out(signup_id, erase)


def forget_idle_addresses(*, batch_size: int = 500) -> int:
    """Delete the rows of addresses that were sent nothing for a day (the budget's window: its
    cooldown and daily counts) and hold no pending or verified signup; return how many were.

    A digest of an address is still about a person: it is kept only while the budget needs
    it, or while the address has a signup under way or an account. An erased or anonymised
    signup's address is forgotten that way within a day and an hour (this runs hourly).
    """
    idle_since = timezone.now() - timedelta(days=1)
    forgotten = 0
    while True:
        with transaction.atomic():
            idle = list(
                Address.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(Q(last_sent_at__lt=idle_since) | Q(last_sent_at__isnull=True))
                .filter(verified_signup__isnull=True)
                .exclude(signups__status=Status.PENDING)
                .exclude(live_signup__status=Status.PENDING)
                .values_list("id", flat=True)[:batch_size]
            )
            Address.objects.filter(pk__in=idle).delete()
        forgotten += len(idle)
        if len(idle) < batch_size:
            return forgotten


def _anonymise(signups: list[Signup], *, now, detail: str) -> None:
    """Replace the personal data of these signups (locked by the caller) with placeholders:
    their names, username and address, the address in their ledger rows, and addresses in
    their ledger errors and timeline details; and drop what was derived from their address
    and client (their budget row's link, their network's digest).

    What the counts need stays: statuses and times, reminders sent, the verified source,
    event kinds and numbers, the ledger's kinds, states and attempts. Emails still queued
    are skipped, and deliver_email skips any other one, so nothing goes to a placeholder.
    """
    if not signups:
        return
    for signup in signups:
        signup.username = _ANONYMOUS_USERNAME.format(id=signup.pk)
        signup.email = _ANONYMOUS_ADDRESS.format(id=signup.pk)
        signup.first_name = _ANONYMOUS_NAME
        signup.last_name = signup.client_network = ""
        signup.address = None
        signup.anonymised_at = signup.updated_at = now
    Signup.objects.bulk_update(
        signups,
        [
            *("username", "email", "first_name", "last_name", "client_network", "address"),
            *("anonymised_at", "updated_at"),
        ],
    )
    signup_ids = [signup.pk for signup in signups]
    ledger_rows = list(
        OutboundEmail.objects.select_for_update(no_key=True).filter(signup_id__in=signup_ids)
    )
    for email in ledger_rows:
        email.to_email = _ANONYMOUS_ADDRESS.format(id=email.signup_id)
        email.last_error = redact(email.last_error)
        if email.status == LedgerState.QUEUED:
            email.status = LedgerState.SKIPPED
        email.updated_at = now
    OutboundEmail.objects.bulk_update(
        ledger_rows, ["to_email", "last_error", "status", "updated_at"], batch_size=1000
    )
    # Details written before they were redacted on the way in.
    events = list(SignupEvent.objects.filter(signup_id__in=signup_ids, detail__contains="@"))
    for event in events:
        event.detail = redact(event.detail)
    SignupEvent.objects.bulk_update(events, ["detail"], batch_size=1000)
    SignupEvent.objects.bulk_create(
        SignupEvent(signup_id=signup_id, kind=Event.ANONYMISED, detail=redact(detail))
        for signup_id in signup_ids
    )


def forget_former_addresses(*, batch_size: int = 1000) -> int:
    """Replace the address in the ledger rows of emails sent to an address their signup no
    longer has (it was changed: a mistyped one, a stranger's), once they are older than
    SIGNUP_RETENTION_DAYS, whatever became of the signup; return how many rows.

    The timeline never held that address (the change's event says only that it changed),
    so this is the last of it. Only rows that are done are touched: a row still queued or
    sending to it is skipped by its delivery anyway (ledger: the address changed).
    """
    cutoff = timezone.now() - timedelta(days=settings.SIGNUP_RETENTION_DAYS)
    forgotten = 0
    while True:
        with transaction.atomic():
            rows = list(
                OutboundEmail.objects.select_for_update(skip_locked=True, no_key=True)
                .filter(created_at__lte=cutoff, signup__address_changes__gt=0)
                .exclude(to_email=F("signup__email"))
                .exclude(to_email__endswith=_ANONYMOUS_DOMAIN)
                .exclude(status__in=[LedgerState.QUEUED, LedgerState.SENDING])
                .order_by("id")[:batch_size]
            )
            for email in rows:
                email.to_email = _ANONYMOUS_ADDRESS.format(id=email.signup_id)
                email.last_error = redact(email.last_error)
            OutboundEmail.objects.bulk_update(rows, ["to_email", "last_error"])
        forgotten += len(rows)
        if len(rows) < batch_size:
            break
    if forgotten:
        logger.info("forgot the former address in %s ledger rows", forgotten)
    return forgotten


def forget_personal_data() -> dict[str, int]:
    """The hourly work (beat): anonymise the closed signups past their retention, forget
    former addresses past it, and the budget rows of addresses idle for a day."""
    return {
        "anonymised": anonymise_closed_signups(),
        "former_addresses_forgotten": forget_former_addresses(),
        "addresses_forgotten": forget_idle_addresses(),
    }
