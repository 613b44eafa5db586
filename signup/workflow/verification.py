"""Verifying: by the emailed link (crediting the email it came from) or on an operator's
word, and sending another verification email to a pending signup."""

from django.db import transaction
from django.utils import timezone

from signup import selectors, tokens
from signup.models import Address, Signup
from signup.workflow.addresses import _lock_address_of, _mute, _restore_expiry
from signup.workflow.common import (
    _PLAN_FIELDS,
    EmailKind,
    EmailStatus,
    Event,
    SignupClosed,
    Status,
    VerifyResult,
    _add_event,
    _lock,
)
from signup.workflow.events import VERIFIED, _announce
from signup.workflow.ledger import (
    _pending_email_out_until,
    _queue_email,
    _skip_unsent,
    _wait_for_lease,
)
from signup.workflow.reminders import _expire


def verify_signup(*, token: str, source: str) -> VerifyResult:
    """Verify the signup a link's token names, crediting `source` (which email it came from).

    Raise tokens.InvalidToken (or ExpiredToken) for a bad link, SignupClosed if the signup
    expired or was cancelled. Verifying twice answers already_verified and sends nothing.
    """
    if not tokens.is_token_source(source):
        raise tokens.InvalidToken("unknown source")
    signup_id = selectors.signup_for_token(token).pk

    def exists(signup: Signup | None) -> None:
        if signup is None:
            raise tokens.InvalidToken("no such signup")

    return _verify_when_no_email_is_out(signup_id, source=source, check=exists)


def verify_signup_by_operator(*, signup_id: int) -> VerifyResult:
    """Mark a pending signup verified on an operator's word (source "operator")."""

    def exists(signup: Signup | None) -> None:
        if signup is None:
            raise Signup.DoesNotExist(signup_id)

    return _verify_when_no_email_is_out(signup_id, source="operator", check=exists)


def _verify_when_no_email_is_out(signup_id: int, *, source: str, check) -> VerifyResult:
    """Verify under the address's and the signup's locks, once no verification email or
    reminder of the signup is with the provider.

    Such an email claimed before the verification is out until its lease ends (the
    provider's own time limit): wait for it outside the transaction, so that it can record
    itself, and look again. A claim made after the verification commits sees it and skips
    the email. So neither leaves after a verification commits, and the wait is at most one
    lease; usually it is none, or one provider call.
    """
    while True:
        with transaction.atomic():
            address = _lock_address_of(signup_id)
            signup = _lock(signup_id) if address is not None else None
            check(signup)
            if _expire_if_due(signup):
                break
            out_until = _pending_email_out_until(signup)
            if out_until is None:
                return _verify(signup, address, source=source)
        _wait_for_lease(out_until)
    raise SignupClosed(Status.EXPIRED)  # after the expiry above has committed


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
    signup.verified_source = _provable(source, signup)
    signup.next_reminder_at = signup.reminder_enqueued_at = None
    signup.save(
        update_fields=["status", "verified_at", "verified_source", *_PLAN_FIELDS, "updated_at"]
    )
    _add_event(signup, Event.VERIFIED, detail=f"source: {signup.verified_source}")
    _announce(signup, VERIFIED)
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


def _provable(source: str, signup: Signup) -> str:
    """The source as far as the server can tell it is true: a link's reminder-N counts only
    if reminder N was sent (a link's source travels beside its signature, not inside it)."""
    number = tokens.reminder_number(source)
    if number is not None and number > signup.reminders_sent:
        return tokens.VERIFICATION_SOURCE
    return source


def resend_verification(*, signup_id: int) -> bool:
    """Queue another verification email for a pending signup (an operator's action, which
    the address's budget does not hold back); return whether one was queued.

    Nothing is queued while a verification email of the signup has not left yet: a double
    click, or two operators at once, send one.
    """
    with transaction.atomic():
        signup = _lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return False
        waiting = (EmailStatus.QUEUED, EmailStatus.SENDING)
        if signup.emails.filter(kind=EmailKind.VERIFICATION, status__in=waiting).exists():
            return False
        last = signup.emails.filter(kind=EmailKind.VERIFICATION).order_by("-sequence").first()
        sequence = last.sequence + 1 if last else 1
        _add_event(signup, Event.VERIFICATION_REQUESTED, number=sequence)
        _queue_email(signup, EmailKind.VERIFICATION, sequence=sequence)
        _restore_expiry(signup)  # a mute signup's link goes out now
        signup.save(update_fields=["expires_at", "updated_at"])
    return True
