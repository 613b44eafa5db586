"""The code a signup's emails carry (signup.tokens.verification_code): when it is void, and
the new one that replaces it."""

from django.conf import settings

from signup.models import Signup


def code_is_void(signup: Signup) -> bool:
    """Whether the signup's current code has had its SIGNUP_CODE_MAX_ATTEMPTS wrong tries."""
    return signup.code_attempts >= settings.SIGNUP_CODE_MAX_ATTEMPTS


def tries_left(signup: Signup) -> int:
    return max(settings.SIGNUP_CODE_MAX_ATTEMPTS - signup.code_attempts, 0)


def renew_void_code(signup: Signup) -> list[str]:
    """Give a signup whose code is void the next one (the email about to be queued carries
    it); return the fields changed, for the caller's save."""
    if not code_is_void(signup):
        return []
    signup.code_generation += 1
    signup.code_attempts = 0
    return ["code_generation", "code_attempts"]
