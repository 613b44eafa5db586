"""Signed, expiring verification links.

A token names one signup record (its id and creation time) and is signed with SECRET_KEY
through django.core.signing, so it cannot be forged or pointed at another record; it stops
working after SIGNUP_EXPIRES_AFTER. The state checks (already verified, expired) are the
workflow's, so a used link can still say what happened.
"""

import re
from urllib.parse import urlencode

from django.conf import settings
from django.core import signing
from django.urls import reverse

SALT = "signup.verify"
# Which email a link came from: the verification email or reminder n. Only these travel in
# links; "api" (a call of the JSON API) and "operator" (an admin action) are the server's.
LINK_SOURCE_PATTERN = re.compile(r"\A(verification|reminder-[1-9][0-9]{0,2})\Z")
API_SOURCE = "api"
TOKEN_MAX_LENGTH = 200


class InvalidToken(Exception):
    """The token was tampered with, malformed or made for another site."""


class ExpiredToken(InvalidToken):
    """The token was genuine but is older than SIGNUP_EXPIRES_AFTER."""


def make_token(signup) -> str:
    """Return a token that verifies this signup until it expires."""
    return signing.dumps([signup.pk, int(signup.created_at.timestamp())], salt=SALT)


def read_token(token: str) -> tuple[int, int]:
    """Return (signup id, creation timestamp) from a token, or raise InvalidToken."""
    if not isinstance(token, str) or not token or len(token) > TOKEN_MAX_LENGTH:
        raise InvalidToken("malformed token")
    try:
        # As long as the signup may be pending: an operator may extend it (workflow.extend_expiry).
        # Whether it still is, is the signup's to say.
        max_age = settings.SIGNUP_EXPIRES_AFTER + settings.SIGNUP_MAX_EXTENSION
        value = signing.loads(token, salt=SALT, max_age=max_age)
    except signing.SignatureExpired as exc:
        raise ExpiredToken("token expired") from exc
    except (signing.BadSignature, ValueError) as exc:
        raise InvalidToken("bad signature") from exc
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(part, int) and not isinstance(part, bool) for part in value)
    ):
        raise InvalidToken("unexpected payload")
    return value[0], value[1]


def is_link_source(source: object) -> bool:
    """Return whether `source` names an email, so that a link may carry it."""
    return isinstance(source, str) and bool(LINK_SOURCE_PATTERN.match(source))


def is_token_source(source: object) -> bool:
    """Return whether verifying by token may credit `source`: an email's link or the API.

    Never "operator": an operator verifies a signup by its id, in the admin.
    """
    return is_link_source(source) or source == API_SOURCE


def verification_url(signup, *, source: str) -> str:
    """Return the absolute link to put in an email, built from SITE_URL."""
    path = reverse("signup:verify", kwargs={"token": make_token(signup)})
    return f"{settings.SITE_URL}{path}?{urlencode({'source': source})}"
