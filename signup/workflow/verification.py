"""Verifying: by the emailed link (crediting the email it came from), by the code beside it,
or on an operator's word, and an operator's resend of the verification email."""

from django.db import transaction
from django.utils import timezone

from signup import selectors, tokens
from signup.models import Address, Signup
from signup.workflow.internal.announce import VERIFIED, announce
from signup.workflow.internal.budget import restore_expiry, when_no_email_is_out
from signup.workflow.internal.codes import code_is_void, tries_left
from signup.workflow.internal.endings import expire_if_due
from signup.workflow.internal.ledger import PENDING_KINDS, next_sequence, queue_email, skip_unsent
from signup.workflow.internal.rows import (
    CodeRejected,
    EmailKind,
    Event,
    LedgerState,
    SignupClosed,
    Status,
    VerifyResult,
    add_event,
    lock,
)
from signup.workflow.internal.timers import PLAN_FIELDS, mute


def verify_signup(*, token: str, source: str) -> VerifyResult:
    """Verify the signup a link's token names, crediting `source` (which email it came from).

    Raise tokens.InvalidToken (or ExpiredToken) for a bad link, SignupClosed if the signup
    expired or was cancelled. Verifying twice answers already_verified and sends nothing.
    """
    if not tokens.is_token_source(source):
        raise tokens.InvalidToken("unknown source")
    return _verify(selectors.signup_for_token(token).pk, source=source)


def verify_signup_by_code(*, signup_id: int, code: str) -> VerifyResult:
    """Verify a pending signup by the code its emails carry (source "code").

    Raise CodeRejected for a wrong code, with how many tries are left: the signup's code is
    void after SIGNUP_CODE_MAX_ATTEMPTS wrong ones (counted under its lock, so parallel
    guesses count too), until a new email brings a new one (request_new_code). SignupClosed
    if the signup is no longer pending, as for a link. A typed string that cannot be a code
    at all (tokens.is_code_shaped) is the caller's form error and costs no try.
    """

    def act(signup: Signup | None, address: Address | None):
        if signup is None:
            raise Signup.DoesNotExist(signup_id)
        if signup.status == Status.VERIFIED and tokens.code_matches(signup, code):
            return VerifyResult(signup, already_verified=True)
        if signup.status != Status.PENDING:
            raise SignupClosed(signup.status)
        if expire_if_due(signup):
            return None
        if code_is_void(signup):
            return CodeRejected(tries_left=0)
        if not tokens.code_matches(signup, code):
            signup.code_attempts += 1
            signup.save(update_fields=["code_attempts", "updated_at"])
            add_event(signup.pk, Event.CODE_REJECTED, number=signup.code_attempts)
            return CodeRejected(tries_left=tries_left(signup))
        return _verified(signup, address, source=tokens.CODE_SOURCE)

    result = when_no_email_is_out(signup_id, act)
    if result is None:
        raise SignupClosed(Status.EXPIRED)  # after the expiry has committed
    if isinstance(result, CodeRejected):
        raise result  # after the count has committed
    return result


def verify_signup_by_operator(*, signup_id: int) -> VerifyResult:
    """Mark a pending signup verified on an operator's word (source "operator")."""
    if not Signup.objects.filter(pk=signup_id).exists():
        raise Signup.DoesNotExist(signup_id)
    return _verify(signup_id, source="operator")


def _verify(signup_id: int, *, source: str) -> VerifyResult:
    """Verify under the address's and the signup's locks, once no verification email or
    reminder of the signup is with the provider (internal.budget.when_no_email_is_out); a
    signup whose time is up expires instead."""

    def act(signup: Signup | None, address: Address | None) -> VerifyResult | None:
        if signup is None:
            raise tokens.InvalidToken("no such signup")  # gone since it was looked up
        if expire_if_due(signup):
            return None
        return _verified(signup, address, source=source)

    result = when_no_email_is_out(signup_id, act)
    if result is None:
        raise SignupClosed(Status.EXPIRED)  # after the expiry has committed
    return result


def _verified(signup: Signup, address: Address, *, source: str) -> VerifyResult:
    if signup.status == Status.VERIFIED:
        return VerifyResult(signup, already_verified=True)
    if signup.status != Status.PENDING:
        raise SignupClosed(signup.status)
    signup.status = Status.VERIFIED
    signup.verified_at = timezone.now()
    signup.verified_source = _provable(source, signup)
    mute(signup)
    signup.save(
        update_fields=["status", "verified_at", "verified_source", *PLAN_FIELDS, "updated_at"]
    )
    add_event(signup.pk, Event.VERIFIED, detail=f"source: {signup.verified_source}")
    announce(signup, VERIFIED)
    skip_unsent(signup, kinds=PENDING_KINDS)
    queue_email(signup, EmailKind.WELCOME, sequence=1)
    # The address has an account now: another signup's reminders would only nag its owner.
    if address.live_signup_id not in (None, signup.pk):
        live = lock(address.live_signup_id)
        if live is not None and live.status == Status.PENDING:
            mute(live)
            live.save(update_fields=[*PLAN_FIELDS, "updated_at"])
            skip_unsent(live, kinds=(EmailKind.REMINDER,))
            detail = f"the address verified signup {signup.pk}"
            add_event(live.pk, Event.SUPERSEDED, detail=detail)
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
        signup = lock(signup_id)
        if signup is None or signup.status != Status.PENDING:
            return False
        waiting = (LedgerState.QUEUED, LedgerState.SENDING)
        if signup.emails.filter(kind=EmailKind.VERIFICATION, status__in=waiting).exists():
            return False
        sequence = next_sequence(signup, EmailKind.VERIFICATION)
        add_event(signup.pk, Event.VERIFICATION_REQUESTED, number=sequence)
        queue_email(signup, EmailKind.VERIFICATION, sequence=sequence)
        restore_expiry(signup)  # a mute signup's link goes out now
        signup.save(update_fields=["expires_at", "updated_at"])
    return True
