"""The signup workflow: every rule and transition of a signup's life, in one module.

pending -> verified | expired | cancelled | undeliverable; only a pending signup moves.
A transition is one transaction that holds the signup's row lock; the ledger's functions
lock the email's row (after its signup's, when both change), and the sweeper works in short
batches that skip rows others hold. Every function is safe to call twice and enqueues
follow-up work only after its transaction commits. Views, the API, admin actions, tasks and
webhooks call these functions and never change a signup themselves.
"""

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q
from django.db.models.functions import Lower
from django.db.models.lookups import Exact
from django.utils import timezone

# The one module-level direction of the workflow/tasks cycle: signup.tasks imports this
# module inside its functions, so either can be imported first.
from signup import emails, tasks, tokens
from signup.forms import canonical_email
from signup.models import Address, OutboundEmail, Signup, SignupEvent
from signup.redaction import redact

logger = logging.getLogger(__name__)

Status = Signup.Status
Event = SignupEvent.Kind
EmailKind = OutboundEmail.Kind
EmailStatus = OutboundEmail.Status


class UsernameTaken(Exception):
    """A pending or verified signup already holds this username."""


class SentButNotRecorded(Exception):
    """The provider accepted an email, then the database failed before it was recorded."""

    def __init__(self, email_id: int, provider_message_id: str):
        super().__init__(f"email {email_id} sent as {provider_message_id}, not recorded")
        self.email_id = email_id
        self.provider_message_id = provider_message_id


class SignupClosed(Exception):
    """The signup is no longer pending (expired, cancelled or undeliverable)."""

    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class VerifyResult:
    signup: Signup
    already_verified: bool

    @property
    def message(self) -> str:
        return "already verified" if self.already_verified else "done"


# --- Starting ----------------------------------------------------------------------------


def start_signup(*, username: str, email: str, first_name: str, last_name: str = "") -> Signup:
    """Record a new pending signup and, once committed, send what its address may be sent.

    That is the verification email, unless the address's budget is spent for now (the
    signup stays mute; the resend page reaches it later) or the address already has an
    account (its owner is told so instead). Raise UsernameTaken if a pending or verified
    signup holds the username (in any case).
    """
    now = timezone.now()
    signup = Signup(
        username=username,
        email=email,
        first_name=first_name,
        last_name=last_name,
        expires_at=now + timedelta(seconds=settings.SIGNUP_EXPIRES_AFTER),
    )
    try:
        with transaction.atomic():
            address = _lock_address(email)
            held = _held_back(address, now=now)
            greets = not held and address.verified_signup_id is None
            previous = _take_over_chain(address, signup, now=now) if greets else None
            if not greets:
                _mute(signup)
            # The database's unique constraint decides who gets a username, race or not.
            signup.save(force_insert=True)
            _add_event(signup, Event.SUBMITTED)
            if held:
                _add_event(signup, Event.VERIFICATION_HELD, detail=held)
            elif not greets:
                _tell_account_exists(address, now=now, asked_by=signup)
            else:
                _queue_email(signup, EmailKind.VERIFICATION, sequence=1)
                _spend(address, now=now)
                address.live_signup = signup
                if previous is not None:
                    _add_event(previous, Event.SUPERSEDED, detail=f"by signup {signup.pk}")
            address.save()
            _schedule_next_step(signup, now=now)
    except IntegrityError as exc:
        if _violated(exc, "signup_username_taken_once"):
            raise UsernameTaken(username) from exc
        raise
    return signup


def _violated(exc: IntegrityError, constraint: str) -> bool:
    diag = getattr(exc.__cause__, "diag", None)  # PostgreSQL names it; SQLite only says it
    return constraint == getattr(diag, "constraint_name", None) or constraint in str(exc)


# --- One address, one signup's worth of mail --------------------------------------------
#
# However many signups name an address, it is sent at most one verification (or "you
# already have an account") email per SIGNUP_ADDRESS_COOLDOWN and SIGNUP_ADDRESS_DAILY_LIMIT
# a day, and one reminder chain: the newest signup whose verification email went out takes
# the chain over where it stood, so the reminders add up to what one signup gets. A signup
# over the budget stays mute (its link was never sent); the resend page reaches it later.
# Every function that changes what an address is sent locks its Address row first, then the
# signups: the order every transaction takes them in.


def address_digest(email: str) -> str:
    """Return what an address is counted by: the same for every case and form of it (an
    international domain and its punycode are one)."""
    return hashlib.sha256(_address_key(email).encode()).hexdigest()


def _address_key(email: str) -> str:
    return canonical_email(email.strip()).lower()


def _same_address(email: str) -> Exact:
    """A filter for the signups whose address is `email`, in any case (signups store it in
    its canonical form)."""
    return Exact(Lower("email"), _address_key(email))


def _lock_address(email: str) -> Address:
    digest = address_digest(email)
    while True:
        Address.objects.bulk_create([Address(digest=digest)], ignore_conflicts=True)
        address = Address.objects.select_for_update(no_key=True).filter(digest=digest).first()
        if address is not None:  # else forget_idle_addresses deleted it in between
            return address


def _held_back(address: Address, *, now) -> str:
    """Why the address may not be sent another verification email now; "" if it may."""
    if address.last_sent_at is not None:
        wait = settings.SIGNUP_ADDRESS_COOLDOWN - (now - address.last_sent_at).total_seconds()
        if wait > 0:
            return f"the address was sent one less than {settings.SIGNUP_ADDRESS_COOLDOWN} s ago"
    if (
        address.day_started_at is not None
        and now - address.day_started_at < timedelta(days=1)
        and address.sent_today >= settings.SIGNUP_ADDRESS_DAILY_LIMIT
    ):
        return f"the address was sent {address.sent_today} today"
    return ""


def _spend(address: Address, *, now) -> None:
    if address.day_started_at is None or now - address.day_started_at >= timedelta(days=1):
        address.day_started_at, address.sent_today = now, 0
    address.sent_today += 1
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


def _tell_account_exists(address: Address, *, now, asked_by: Signup | None = None) -> None:
    """Queue a "you already have an account" email to the owner of the address's verified
    signup, instead of another verification email."""
    account = _lock(address.verified_signup_id)
    last = account.emails.filter(kind=EmailKind.ACCOUNT_EXISTS).order_by("-sequence").first()
    _queue_email(account, EmailKind.ACCOUNT_EXISTS, sequence=last.sequence + 1 if last else 1)
    _spend(address, now=now)
    if asked_by is not None:
        _add_event(asked_by, Event.VERIFICATION_HELD, detail="the address already has an account")


def request_verification_email(*, email: str) -> str:
    """Answer the resend page for an address, within its budget: a fresh verification email
    for its newest pending signup (which takes the reminder chain over), else a "you already
    have an account" email if it has one. Return what was done, for the logs only: the page
    says the same whatever happened.
    """
    now = timezone.now()
    with transaction.atomic():
        address = _lock_address(email)
        held = _held_back(address, now=now)
        if held:
            return "held back: " + held
        newest = (
            Signup.objects.select_for_update(no_key=True)
            .filter(_same_address(email), status=Status.PENDING)
            .order_by("-created_at", "-id")
            .first()
        )
        if address.verified_signup_id is not None:
            _tell_account_exists(address, now=now)
            outcome = "account exists email queued"
        elif newest is not None:
            if address.live_signup_id != newest.pk:
                previous = _take_over_chain(address, newest, now=now)
                newest.save(update_fields=[*_PLAN_FIELDS, "reminders_sent", "updated_at"])
                if previous is not None:
                    _add_event(previous, Event.SUPERSEDED, detail=f"by signup {newest.pk}")
                address.live_signup = newest
                _schedule_next_step(newest, now=now)
            last = newest.emails.filter(kind=EmailKind.VERIFICATION).order_by("-sequence").first()
            sequence = last.sequence + 1 if last else 1
            _add_event(newest, Event.VERIFICATION_REQUESTED, number=sequence)
            _queue_email(newest, EmailKind.VERIFICATION, sequence=sequence)
            _spend(address, now=now)
            outcome = "verification email queued"
        else:
            return "nothing pending"
        address.save()
    return outcome


# --- Reminders and expiry ----------------------------------------------------------------


def take_reminder(*, signup_id: int, number: int) -> int | None:
    """Take reminder `number`: add it to the ledger and plan the next step. Return the
    reminder's ledger id for the caller to deliver, or None if the task is stale.

    A reminder task is acted on only while the signup is pending and `number` is the next
    reminder due, so late, duplicated and superseded tasks are dropped here. If the caller
    never delivers the email (its worker died), the sweeper re-drives it.
    """
    now = timezone.now()
    with transaction.atomic():
        signup = _lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return _drop("reminder", signup_id, number, "signup is not pending")
        if signup.reminders_sent != number - 1:
            return _drop("reminder", signup_id, number, f"{signup.reminders_sent} already sent")
        if signup.next_reminder_at is None:
            return _drop("reminder", signup_id, number, "no reminder planned: its address moved on")
        if signup.expires_at <= now:
            _expire(signup)
            return None
        if number > settings.SIGNUP_MAX_REMINDERS:
            return _drop("reminder", signup_id, number, "past SIGNUP_MAX_REMINDERS")
        signup.reminders_sent = number
        email = _queue_email(signup, EmailKind.REMINDER, sequence=number, deliver=False)
        _plan_next_step(signup, now=now)
        signup.save(update_fields=[*_PLAN_FIELDS, "reminders_sent", "updated_at"])
        _schedule_next_step(signup, now=now)
    return email.pk


def expire_signup(*, signup_id: int) -> bool:
    """Expire a pending signup whose time is up; return whether it changed."""
    with transaction.atomic():
        signup = _lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return False
        if signup.expires_at > timezone.now():
            _drop("expiry", signup_id, None, "not due yet")
            return False
        _expire(signup)
    return True


def _expire(signup: Signup) -> None:
    _close(signup, Status.EXPIRED, Event.EXPIRED)


# The fields _plan_reminder sets.
_PLAN_FIELDS = ["next_reminder_at", "reminder_enqueued_at"]


def _plan_next_step(signup: Signup, *, now) -> None:
    """Plan the reminder after the one just sent (or the first): SIGNUP_REMINDER_INTERVAL
    from now.

    This is the self-rescheduling chain: each reminder plans the next. The broker holds only
    what is due soon, so its memory and the workers' do not grow with the number of pending
    signups; the sweeper hands over each later step as it comes within reach, and repairs a
    chain whose task was lost.
    """
    _plan_reminder(signup, at=now + timedelta(seconds=settings.SIGNUP_REMINDER_INTERVAL), now=now)


def _plan_reminder(signup: Signup, *, at, now) -> None:
    """Set when the next reminder is due (None if there is no next one before the signup
    expires), and whether its task goes to the broker now: only one due within
    SIGNUP_SCHEDULE_AHEAD does."""
    if (
        at is not None
        and signup.reminders_sent < settings.SIGNUP_MAX_REMINDERS
        and at < signup.expires_at
    ):
        signup.next_reminder_at = at
    else:
        signup.next_reminder_at = None
    within_reach = signup.next_reminder_at is not None and signup.next_reminder_at <= _horizon(now)
    signup.reminder_enqueued_at = now if within_reach else None


def _schedule_next_step(signup: Signup, *, now) -> None:
    """After commit, enqueue the task _plan_next_step planned: the next reminder if it is
    within reach, else the expiry if that is; the sweeper takes care of later ones."""
    signup_id = signup.pk
    if signup.reminder_enqueued_at is not None:
        number, due = signup.reminders_sent + 1, signup.next_reminder_at
        _after_commit(lambda: tasks.send_reminder.apply_async((signup_id, number), eta=due))
    elif signup.next_reminder_at is None and signup.expires_at <= _horizon(now):
        due = signup.expires_at
        _after_commit(lambda: tasks.expire_signup.apply_async((signup_id,), eta=due))


def _horizon(now):
    return now + timedelta(seconds=settings.SIGNUP_SCHEDULE_AHEAD)


# --- Verification ------------------------------------------------------------------------


def verify_signup(*, token: str, source: str) -> VerifyResult:
    """Verify the signup a link's token names, crediting `source` (which email it came from).

    Raise tokens.InvalidToken (or ExpiredToken) for a bad link, SignupClosed if the signup
    expired or was cancelled. Verifying twice answers already_verified and sends nothing.
    """
    if not tokens.is_token_source(source):
        raise tokens.InvalidToken("unknown source")
    signup_id, created_ts = tokens.read_token(token)
    with transaction.atomic():
        address = _lock_address_of(signup_id)
        signup = _lock(signup_id) if address is not None else None
        if signup is None or int(signup.created_at.timestamp()) != created_ts:
            raise tokens.InvalidToken("no such signup")
        if not _expire_if_due(signup):
            return _verify(signup, address, source=source)
    raise SignupClosed(Status.EXPIRED)  # after the expiry above has committed


def verify_signup_by_operator(*, signup_id: int) -> VerifyResult:
    """Mark a pending signup verified on an operator's word (source "operator")."""
    with transaction.atomic():
        address = _lock_address_of(signup_id)
        signup = _lock(signup_id) if address is not None else None
        if signup is None:
            raise Signup.DoesNotExist(signup_id)
        if not _expire_if_due(signup):
            return _verify(signup, address, source="operator")
    raise SignupClosed(Status.EXPIRED)


def _lock_address_of(signup_id: int) -> Address | None:
    """Lock the address of a signup (before the signup itself); None if there is no such
    signup. A signup's address never changes while it can still be verified."""
    email = Signup.objects.filter(pk=signup_id).values_list("email", flat=True).first()
    return _lock_address(email) if email is not None else None


def _expire_if_due(signup: Signup) -> bool:
    if signup.status == Status.PENDING and signup.expires_at <= timezone.now():
        _expire(signup)
        return True
    return False


def _verify(signup: Signup, address: Address, *, source: str) -> VerifyResult:
    if signup.status == Status.VERIFIED:
        return VerifyResult(signup, already_verified=True)
    if signup.status != Status.PENDING:
        raise SignupClosed(signup.status)
    signup.status = Status.VERIFIED
    signup.verified_at = timezone.now()
    signup.verified_source = source
    signup.next_reminder_at = signup.reminder_enqueued_at = None
    signup.save(
        update_fields=["status", "verified_at", "verified_source", *_PLAN_FIELDS, "updated_at"]
    )
    _add_event(signup, Event.VERIFIED, detail=f"source: {source}")
    _skip_unsent(signup, kinds=(EmailKind.VERIFICATION, EmailKind.REMINDER))
    _queue_email(signup, EmailKind.WELCOME, sequence=1)
    # The address has an account now: another signup's reminders would only nag its owner.
    if address.live_signup_id not in (None, signup.pk):
        live = _lock(address.live_signup_id)
        if live is not None and live.status == Status.PENDING:
            _mute(live)
            live.save(update_fields=[*_PLAN_FIELDS, "updated_at"])
            _skip_unsent(live, kinds=(EmailKind.REMINDER,))
            _add_event(live, Event.SUPERSEDED, detail=f"the address verified signup {signup.pk}")
    address.live_signup = address.verified_signup = signup
    address.save(update_fields=["live_signup", "verified_signup"])
    return VerifyResult(signup, already_verified=False)


# --- Resending the verification email ----------------------------------------------------


def resend_verification(*, signup_id: int) -> bool:
    """Queue another verification email for a pending signup; return whether one was queued."""
    with transaction.atomic():
        signup = _lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return False
        last = signup.emails.filter(kind=EmailKind.VERIFICATION).order_by("-sequence").first()
        sequence = last.sequence + 1 if last else 1
        _add_event(signup, Event.VERIFICATION_REQUESTED, number=sequence)
        _queue_email(signup, EmailKind.VERIFICATION, sequence=sequence)
    return True


# --- Cancelling and undeliverable addresses ----------------------------------------------


def cancel_signup(*, signup_id: int, reason: str = "") -> bool:
    """Cancel a pending signup (an operator's decision); its username is free again."""
    with transaction.atomic():
        signup = _lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return False
        _close(signup, Status.CANCELLED, Event.CANCELLED, detail=reason)
    return True


def mark_undeliverable(*, signup_id: int, reason: str) -> bool:
    """Stop a pending signup whose address bounced hard or complained."""
    with transaction.atomic():
        signup = _lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return False
        _close(signup, Status.UNDELIVERABLE, Event.UNDELIVERABLE, detail=reason)
    return True


# What a provider's tracking event means for a signup: the timeline event it adds, and
# whether it closes a pending signup (a hard bounce or a complaint: stop writing to it).
_PROVIDER_EVENTS = {
    "delivered": (Event.EMAIL_DELIVERED, False),
    "opened": (Event.EMAIL_OPENED, False),
    "clicked": (Event.EMAIL_CLICKED, False),
    "deferred": (Event.EMAIL_DEFERRED, False),
    "bounced": (Event.EMAIL_BOUNCED, True),
    "rejected": (Event.EMAIL_BOUNCED, True),
    "complained": (Event.EMAIL_COMPLAINED, True),
}


def record_provider_event(
    *, email_id: int, event_type: str, permanent: bool = True, description: str = ""
) -> bool:
    """Put a provider's event about a sent email on its signup's timeline; return whether
    it was new.

    A hard bounce, a rejection or a spam complaint also makes a pending signup
    undeliverable, which stops its reminders. A provider posting the same event again adds
    nothing; event types the workflow has no use for are ignored.
    """
    if event_type not in _PROVIDER_EVENTS:
        return False
    kind, closes = _PROVIDER_EVENTS[event_type]
    closes = closes and permanent
    description = redact(description)  # a bounce message often quotes the address
    with transaction.atomic():
        signup, email = _lock_signup_and_email(email_id)
        if signup is None or email is None:
            return False
        detail = f"{email.kind} #{email.sequence}" + (f": {description}" if description else "")
        if signup.events.filter(kind=kind, detail=detail[:500]).exists():
            return False
        _add_event(signup, kind, number=_number(email), detail=detail[:500])
        if closes and signup.status == Status.PENDING:
            reason = "spam complaint" if event_type == "complained" else f"email {event_type}"
            _close(signup, Status.UNDELIVERABLE, Event.UNDELIVERABLE, detail=reason)
    return True


def _close(signup: Signup, status: str, event: str, detail: str = "") -> None:
    signup.status = status
    signup.closed_at = timezone.now()
    signup.next_reminder_at = signup.reminder_enqueued_at = None
    signup.save(update_fields=["status", "closed_at", *_PLAN_FIELDS, "updated_at"])
    _add_event(signup, event, detail=detail)
    _skip_unsent(signup, kinds=(EmailKind.VERIFICATION, EmailKind.REMINDER))


# --- Personal data -----------------------------------------------------------------------

# Placeholders unique to each signup. No form accepts the username (":" is not a username
# character), so no signup can clash with it, and the address is a valid one at a domain
# reserved to receive no mail (.invalid), so it is nobody's.
_ANONYMOUS_USERNAME = "anonymised:{id}"
_ANONYMOUS_ADDRESS = "signup-{id}@anonymised.invalid"
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
    it. A verified one stays verified, so the counts keep it, and its username is free
    again, as an erased account's is.
    """
    with transaction.atomic():
        address = _lock_address_of(signup_id)
        signup = _lock(signup_id) if address is not None else None
        if signup is None or signup.anonymised_at is not None:
            return False
        if signup.status == Status.PENDING:
            _close(signup, Status.CANCELLED, Event.CANCELLED, detail="to erase personal data")
        # The address keeps its budget, but no longer has this account or this chain.
        if address.verified_signup_id == signup.pk:
            address.verified_signup = None
        if address.live_signup_id == signup.pk:
            address.live_signup = None
        address.save(update_fields=["verified_signup", "live_signup"])
        _anonymise([signup], now=timezone.now(), detail=f"erased by an operator ({operator})")
    return True


def forget_idle_addresses(*, batch_size: int = 500) -> int:
    """Delete the rows of addresses that were sent nothing for SIGNUP_RETENTION_DAYS (and at
    least a day, the budget's own memory) and hold no pending or verified signup; return how
    many were. A digest of an address is still about a person."""
    idle_since = timezone.now() - timedelta(days=max(settings.SIGNUP_RETENTION_DAYS, 1))
    forgotten = 0
    while True:
        with transaction.atomic():
            idle = list(
                Address.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(Q(last_sent_at__lt=idle_since) | Q(last_sent_at__isnull=True))
                .filter(verified_signup__isnull=True)
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
    their ledger errors and timeline details.

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
        signup.last_name = ""
        signup.anonymised_at = signup.updated_at = now
    Signup.objects.bulk_update(
        signups,
        ["username", "email", "first_name", "last_name", "anonymised_at", "updated_at"],
    )
    signup_ids = [signup.pk for signup in signups]
    ledger_rows = list(
        OutboundEmail.objects.select_for_update(no_key=True).filter(signup_id__in=signup_ids)
    )
    for email in ledger_rows:
        email.to_email = _ANONYMOUS_ADDRESS.format(id=email.signup_id)
        email.last_error = redact(email.last_error)
        if email.status == EmailStatus.QUEUED:
            email.status = EmailStatus.SKIPPED
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


# --- Sending emails through the ledger ---------------------------------------------------

# Which emails still make sense in which state: no reminder after verification, no welcome
# without it.
_WANTED_WHILE = {
    EmailKind.VERIFICATION: Status.PENDING,
    EmailKind.REMINDER: Status.PENDING,
    EmailKind.WELCOME: Status.VERIFIED,
    EmailKind.ACCOUNT_EXISTS: Status.VERIFIED,
}
_SENT_EVENT = {
    EmailKind.VERIFICATION: Event.VERIFICATION_SENT,
    EmailKind.REMINDER: Event.REMINDER_SENT,
    EmailKind.WELCOME: Event.WELCOME_SENT,
    EmailKind.ACCOUNT_EXISTS: Event.ACCOUNT_EXISTS_SENT,
}


def deliver_email(*, email_id: int) -> bool:
    """Send one ledger email unless it was sent already or is no longer wanted.

    Return whether it was sent now. Provider errors propagate to the caller (the task's retry
    policy); the row stays "sending" so a later attempt or the sweeper finishes the job.
    The signup row stays locked while the provider is called, so a verify that commits after
    a reminder was checked still waits for that reminder to be recorded: no reminder is sent
    after a verification commits.
    """
    # The attempt is counted (committed) before the provider is called, so that an email
    # that kills its worker every time still runs out of attempts.
    claimed = OutboundEmail.objects.filter(
        pk=email_id,
        status__in=(EmailStatus.QUEUED, EmailStatus.SENDING),
        attempts__lt=settings.SIGNUP_EMAIL_MAX_ATTEMPTS,
    ).update(status=EmailStatus.SENDING, attempts=F("attempts") + 1, updated_at=timezone.now())
    if not claimed:
        _fail_if_exhausted(email_id)
        return False

    provider_message_id = None
    try:
        with transaction.atomic():
            signup, email = _lock_signup_and_email(email_id)
            if email is None or email.status != EmailStatus.SENDING:
                return False  # a concurrent delivery finished it while we waited for the lock
            if signup.status != _WANTED_WHILE[email.kind] or signup.anonymised_at is not None:
                email.status = EmailStatus.SKIPPED
                email.save(update_fields=["status", "updated_at"])
                why = "anonymised" if signup.anonymised_at is not None else signup.status
                detail = f"{email.kind} #{email.sequence}: the signup is {why}"
                _add_event(signup, Event.EMAIL_SKIPPED, number=_number(email), detail=detail)
                return False
            provider_message_id = emails.send(email, signup)
            _mark_sent(signup, email, provider_message_id)
    except DatabaseError as exc:
        if provider_message_id is None:
            raise
        raise SentButNotRecorded(email_id, provider_message_id) from exc
    return True


def _fail_if_exhausted(email_id: int) -> None:
    with transaction.atomic():
        email = _lock_email(email_id)
        unsent = email is not None and email.status in (EmailStatus.QUEUED, EmailStatus.SENDING)
        if unsent and email.attempts >= settings.SIGNUP_EMAIL_MAX_ATTEMPTS:
            _fail(email, f"gave up after {email.attempts} attempts")


def record_email_sent(*, email_id: int, provider_message_id: str) -> bool:
    """Record an email the provider accepted while the database was unreachable, so that it
    is not sent a second time; return whether this recorded it."""
    with transaction.atomic():
        signup, email = _lock_signup_and_email(email_id)
        if signup is None or email is None or email.status != EmailStatus.SENDING:
            return False
        _mark_sent(signup, email, provider_message_id)
    return True


def _mark_sent(signup: Signup, email: OutboundEmail, provider_message_id: str) -> None:
    email.provider_message_id = provider_message_id
    email.status = EmailStatus.SENT
    email.sent_at = timezone.now()
    email.last_error = ""
    email.save(
        update_fields=["provider_message_id", "status", "sent_at", "last_error", "updated_at"]
    )
    _add_event(signup, _SENT_EVENT[email.kind], number=_number(email), detail=f"email {email.pk}")


def _number(email: OutboundEmail) -> int | None:
    """The number a timeline event about this email carries: reminders are numbered."""
    return email.sequence if email.kind == EmailKind.REMINDER else None


def record_email_error(*, email_id: int, error: str, retry_in: float) -> bool:
    """Note a failed attempt; return True if it is to be retried in `retry_in` seconds.

    An email whose attempts reached SIGNUP_EMAIL_MAX_ATTEMPTS is dead-lettered instead, and
    one that another delivery finished meanwhile is left alone (both return False).
    """
    with transaction.atomic():
        email = _lock_email(email_id)
        if email is None or email.status != EmailStatus.SENDING:
            return False
        if email.attempts >= settings.SIGNUP_EMAIL_MAX_ATTEMPTS:
            _fail(email, f"gave up after {email.attempts} attempts; last error: {error}")
            return False
        email.last_error = redact(error)[:2000]
        email.enqueued_at = timezone.now() + timedelta(seconds=retry_in)
        email.save(update_fields=["last_error", "enqueued_at", "updated_at"])
    return True


def record_email_failure(*, email_id: int, error: str) -> None:
    """Dead-letter an email whose provider refused it for good or whose retries ran out."""
    with transaction.atomic():
        email = _lock_email(email_id)
        if email is not None and email.status in (EmailStatus.QUEUED, EmailStatus.SENDING):
            _fail(email, error)


def _fail(email: OutboundEmail, error: str) -> None:
    error = redact(error)
    email.status = EmailStatus.FAILED
    email.last_error = error[:2000]
    email.save(update_fields=["status", "last_error", "updated_at"])
    _add_event_for(
        email.signup_id,
        Event.EMAIL_FAILED,
        number=_number(email),
        detail=f"{email.kind}: {error}"[:500],
    )
    logger.error("email %s (%s #%s) failed: %s", email.pk, email.kind, email.sequence, error)


def _queue_email(
    signup: Signup, kind: str, *, sequence: int, deliver: bool = True
) -> OutboundEmail:
    """Add an email to the ledger and, unless the caller delivers it itself, enqueue its
    delivery after commit. Callers hold the signup's lock and pick a sequence number not
    used yet; the unique constraint backs that up."""
    email = OutboundEmail.objects.create(
        signup=signup,
        kind=kind,
        sequence=sequence,
        to_email=signup.email,
        enqueued_at=timezone.now(),
    )
    if deliver:
        _after_commit(lambda: tasks.deliver_email.delay(email.pk))
    return email


def _skip_unsent(signup: Signup, *, kinds) -> None:
    signup.emails.filter(kind__in=kinds, status=EmailStatus.QUEUED).update(
        status=EmailStatus.SKIPPED, updated_at=timezone.now()
    )


# --- The sweeper -------------------------------------------------------------------------


def sweep(*, batch_size: int = 1000) -> dict[str, int]:
    """Expire overdue signups, hand the broker the reminders that came within reach, and
    re-enqueue work whose task was lost.

    The database is the source of truth and the countdown chain the fast path: a pending
    signup whose next reminder is overdue by more than SIGNUP_REMINDER_GRACE lost its task
    (broker restart or flush, killed worker), and so did an email stuck unsent for longer
    than SIGNUP_EMAIL_REDRIVE_AFTER. Duplicates this may create are dropped by the reminder
    sequence check and the email ledger. Rows another transaction holds are left for the
    next sweep, so the sweeper never waits on (or deadlocks with) the workflow. Each step
    works in batches until it is done or half the sweep interval has passed.
    """
    now = timezone.now()
    deadline = time.monotonic() + settings.SIGNUP_SWEEP_INTERVAL / 2
    counts = {"expired": 0, "reminders_enqueued": 0, "reminders_requeued": 0, "emails_requeued": 0}

    def in_batches(step) -> None:
        while True:
            found, done = step(now=now, batch_size=batch_size)
            for name, number in done.items():
                counts[name] += number
            if found < batch_size or time.monotonic() > deadline:
                return

    in_batches(_expire_overdue)
    in_batches(_enqueue_due_reminders)
    in_batches(_requeue_stuck_emails)
    if any(counts.values()):
        logger.info("sweep: %s", counts)
    return counts


def _expire_overdue(*, now, batch_size: int) -> tuple[int, dict[str, int]]:
    overdue = list(
        Signup.objects.filter(status=Status.PENDING, expires_at__lte=now)
        .order_by("expires_at")
        .values_list("id", flat=True)[:batch_size]
    )
    expired = sum(expire_signup(signup_id=signup_id) for signup_id in overdue)
    return len(overdue), {"expired": expired}


def _enqueue_due_reminders(*, now, batch_size: int) -> tuple[int, dict[str, int]]:
    """Enqueue the next reminder of each pending signup that is due within reach and not in
    the broker yet, or that is overdue past the grace (its task was lost).

    reminder_enqueued_at moves to now, so a signup is enqueued again only if this task is
    lost too, not on every sweep while a busy worker works through its queue.
    """
    late = now - timedelta(seconds=settings.SIGNUP_REMINDER_GRACE)
    with transaction.atomic():
        due = list(
            Signup.objects.select_for_update(skip_locked=True, no_key=True)
            .filter(status=Status.PENDING, next_reminder_at__lte=_horizon(now), expires_at__gt=now)
            .filter(
                Q(reminder_enqueued_at__isnull=True)
                | Q(next_reminder_at__lte=late, reminder_enqueued_at__lte=late)
            )
            .order_by("next_reminder_at")
            .values_list("id", "reminders_sent", "next_reminder_at", "reminder_enqueued_at")[
                :batch_size
            ]
        )
        if not due:
            return 0, {}
        Signup.objects.filter(pk__in=[signup_id for signup_id, *_ in due]).update(
            reminder_enqueued_at=now, updated_at=now
        )
        lost = [(signup_id, sent) for signup_id, sent, _, enqueued in due if enqueued is not None]
        SignupEvent.objects.bulk_create(
            SignupEvent(signup_id=signup_id, kind=Event.CHAIN_REPAIRED, number=sent + 1)
            for signup_id, sent in lost
        )

        def enqueue():
            for signup_id, sent, due_at, _ in due:
                tasks.send_reminder.apply_async((signup_id, sent + 1), eta=max(due_at, now))

        _after_commit(enqueue)
    counts = {"reminders_enqueued": len(due) - len(lost), "reminders_requeued": len(lost)}
    return len(due), counts


def _requeue_stuck_emails(*, now, batch_size: int) -> tuple[int, dict[str, int]]:
    stale = now - timedelta(seconds=settings.SIGNUP_EMAIL_REDRIVE_AFTER)
    with transaction.atomic():
        stuck = list(
            OutboundEmail.objects.select_for_update(skip_locked=True, no_key=True)
            .filter(
                Q(enqueued_at__lte=stale) | Q(enqueued_at__isnull=True),
                status__in=(EmailStatus.QUEUED, EmailStatus.SENDING),
            )
            .order_by("enqueued_at")
            .values_list("id", "signup_id", "kind", "sequence")[:batch_size]
        )
        if not stuck:
            return 0, {}
        email_ids = [email_id for email_id, *_ in stuck]
        OutboundEmail.objects.filter(pk__in=email_ids).update(enqueued_at=now, updated_at=now)
        SignupEvent.objects.bulk_create(
            SignupEvent(
                signup_id=signup_id,
                kind=Event.EMAIL_REDRIVEN,
                number=sequence,
                detail=f"{kind} #{sequence}: re-enqueued by the sweeper",
            )
            for _, signup_id, kind, sequence in stuck
        )

        def enqueue():
            for email_id in email_ids:
                tasks.deliver_email.delay(email_id)

        _after_commit(enqueue)
    return len(stuck), {"emails_requeued": len(stuck)}


def redrive_email(*, email_id: int) -> bool:
    """Give a failed email another round of attempts (an operator's re-drive)."""
    with transaction.atomic():
        email = _lock_email(email_id)
        if email is None or email.status != EmailStatus.FAILED:
            return False
        email.status = EmailStatus.QUEUED
        email.attempts = 0
        email.enqueued_at = timezone.now()
        email.save(update_fields=["status", "attempts", "enqueued_at", "updated_at"])
        _add_event_for(
            email.signup_id,
            Event.EMAIL_REDRIVEN,
            number=email.sequence,
            detail=f"{email.kind} #{email.sequence}: re-driven by an operator",
        )
        _after_commit(lambda: tasks.deliver_email.delay(email_id))
    return True


# --- Helpers -----------------------------------------------------------------------------


def _lock(signup_id: int) -> Signup | None:
    # FOR NO KEY UPDATE: inserting a timeline event or ledger row for this signup (a foreign
    # key check) from another transaction must not wait on, or deadlock with, this lock.
    return Signup.objects.select_for_update(no_key=True).filter(pk=signup_id).first()


def _lock_email(email_id: int) -> OutboundEmail | None:
    return OutboundEmail.objects.select_for_update(no_key=True).filter(pk=email_id).first()


def _lock_signup_and_email(email_id: int) -> tuple[Signup | None, OutboundEmail | None]:
    """Lock an email's signup, then the email: the order every transaction locks them in."""
    signup = (
        Signup.objects.select_for_update(no_key=True, of=("self",))
        .filter(emails__pk=email_id)
        .first()
    )
    return signup, _lock_email(email_id)


def _after_commit(enqueue) -> None:
    """Run `enqueue` once the transaction commits; if the broker is unreachable then, log it
    and carry on: the change is committed and the sweeper enqueues the lost work later."""
    transaction.on_commit(enqueue, robust=True)


def _add_event(signup: Signup, kind: str, *, number: int | None = None, detail: str = "") -> None:
    _add_event_for(signup.pk, kind, number=number, detail=detail)


def _add_event_for(
    signup_id: int, kind: str, *, number: int | None = None, detail: str = ""
) -> None:
    """Add an event to a signup's timeline; its detail never holds an address or a token."""
    SignupEvent.objects.create(signup_id=signup_id, kind=kind, number=number, detail=redact(detail))


def _drop(what: str, signup_id: int, number: int | None, why: str) -> None:
    logger.info("dropped stale %s task: signup %s, number %s (%s)", what, signup_id, number, why)
