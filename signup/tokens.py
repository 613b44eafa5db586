"""Signed verification links, the "not me" links, and the codes emails carry beside them.

A token is a signup's random public id, signed with SECRET_KEY through django.core.signing,
so it cannot be forged or pointed at another record, and it tells nothing: no sequential id,
no time. Whether it still verifies is the signup's state to say (pending until it expires,
verified, closed), so a used link can still say what happened.

A code is the short form of the same thing, for a person who reads the email on one device
and signed up on another: derived (HMAC under SECRET_KEY) from the signup's public id and its
code_generation, so no code is stored, every email of the signup carries the same one, and
changing either (a new address gets a new public id; too many wrong tries a new generation)
voids every code sent before. Its alphabet leaves out the characters people confuse (0 O, 1 I
L, 5 S, 2 Z, 8 B, U V): CODE_LENGTH characters of CODE_ALPHABET, docs/SECURITY.md gives the
odds.

Links sent before public ids named the signup's id and creation time in a signed, timestamped
payload; they are still read, as long as SIGNUP_EXPIRES_AFTER + SIGNUP_MAX_EXTENSION allow.
"""

import hmac
import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.core import signing
from django.urls import reverse
from django.utils.crypto import salted_hmac

SALT = "signup.verify"
# Which email a link came from: the verification email or reminder n. Only these travel in
# links; "api" (a call of the JSON API) and "operator" (an admin action) are the server's.
LINK_SOURCE_PATTERN = re.compile(r"\A(?:verification|reminder-([1-9][0-9]{0,2}))\Z")
VERIFICATION_SOURCE = "verification"
API_SOURCE = "api"
CODE_SOURCE = "code"  # a code typed on the "sent" page or passed to the API
TOKEN_MAX_LENGTH = 200


class InvalidToken(Exception):
    """The token was tampered with, malformed or made for another site."""


class ExpiredToken(InvalidToken):
    """The token was genuine but is older than any signup stays pending (an old-style link)."""


@dataclass(frozen=True)
class SignupRef:
    """What a token names: a signup by its public id, or (an old link) by its id and creation
    time."""

    public_id: uuid.UUID | None = None
    legacy: tuple[int, int] | None = None

    def lookup(self) -> dict:
        return {"public_id": self.public_id} if self.public_id else {"pk": self.legacy[0]}

    def names(self, signup) -> bool:
        return self.public_id is not None or int(signup.created_at.timestamp()) == self.legacy[1]


_PUBLIC_ID = re.compile(r"\A[0-9a-f]{32}\Z")


def make_token(signup) -> str:
    """Return a token that verifies this signup while it is pending."""
    return signing.Signer(salt=SALT).sign(signup.public_id.hex)


def read_token(token: str) -> SignupRef:
    """Return the signup a token names, or raise InvalidToken."""
    if not isinstance(token, str) or not token or len(token) > TOKEN_MAX_LENGTH:
        raise InvalidToken("malformed token")
    try:
        value = signing.Signer(salt=SALT).unsign(token)
    except signing.BadSignature as exc:
        raise InvalidToken("bad signature") from exc
    if _PUBLIC_ID.match(value):
        return SignupRef(public_id=uuid.UUID(hex=value))
    return SignupRef(legacy=_read_legacy_token(token))


def _read_legacy_token(token: str) -> tuple[int, int]:
    try:
        # As long as a signup may be pending: an operator may extend it (workflow.extend_expiry).
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


def reminder_number(source: str) -> int | None:
    """The n of a "reminder-n" source; None for any other."""
    match = LINK_SOURCE_PATTERN.match(source) if isinstance(source, str) else None
    return int(match.group(1)) if match and match.group(1) else None


def is_token_source(source: object) -> bool:
    """Return whether verifying by token may credit `source`: an email's link or the API.

    Never "operator": an operator verifies a signup by its id, in the admin.
    """
    return is_link_source(source) or source == API_SOURCE


def verification_url(signup, *, source: str) -> str:
    """Return the absolute link to put in an email, built from SITE_URL."""
    path = reverse("signup:verify", kwargs={"token": make_token(signup)})
    return f"{settings.SITE_URL}{path}?{urlencode({'source': source})}"


# --- Codes ----------------------------------------------------------------------------------

CODE_ALPHABET = "ACDEFGHJKMNPQRTWXY34679"
CODE_LENGTH = 8
CODE_SALT = "signup.code"
_TYPED_SEPARATORS = re.compile(r"[\s\-]+")


def verification_code(signup) -> str:
    """The code this signup's emails carry now, as people read it: ABCD-EFGH."""
    code = _code(signup, settings.SECRET_KEY)
    half = CODE_LENGTH // 2
    return f"{code[:half]}-{code[half:]}"


def code_matches(signup, typed: str) -> bool:
    """Whether `typed` is the signup's current code, however it was spaced or cased; compared
    in constant time with the code under SECRET_KEY and each of SECRET_KEY_FALLBACKS."""
    given = _as_typed(typed)
    if given is None:
        return False
    given = given.encode()
    keys = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
    # Every key is tried, so the time does not tell which (if any) matched.
    return sum(hmac.compare_digest(given, _code(signup, key).encode()) for key in keys) > 0


def is_code_shaped(typed: object) -> bool:
    """Whether `typed` could be a code at all (its characters and length), to tell a typo
    from a wrong code: only a wrong code counts against the attempts."""
    given = _as_typed(typed)
    return given is not None and len(given) == CODE_LENGTH and set(given) <= set(CODE_ALPHABET)


def _as_typed(typed: object) -> str | None:
    """A typed code without its spaces and dashes, in capitals; None for what is not text of
    a code's length or so."""
    if not isinstance(typed, str) or len(typed) > 4 * CODE_LENGTH:
        return None
    return _TYPED_SEPARATORS.sub("", typed).upper()


def _code(signup, key: str) -> str:
    value = f"{signup.public_id.hex}:{signup.code_generation}"
    digest = int.from_bytes(salted_hmac(CODE_SALT, value, secret=key, algorithm="sha256").digest())
    characters = []
    for _position in range(CODE_LENGTH):
        digest, index = divmod(digest, len(CODE_ALPHABET))
        characters.append(CODE_ALPHABET[index])
    return "".join(characters)


# --- "Not me" -------------------------------------------------------------------------------


def not_me_url(signup) -> str:
    """The absolute link by which the recipient of an email says they did not sign up; the
    same token as the verification link (it names the signup, nothing else), another path."""
    path = reverse("signup:not-me", kwargs={"token": make_token(signup)})
    return f"{settings.SITE_URL}{path}"
