"""Verification tokens: signed, bound to one record, telling nothing; old-style links still
read until they expire; and the sources a verification may credit. No service needed."""

import base64
import contextlib
import re
import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import signing

from signup import tokens, workflow
from signup.models import Signup

CREATED = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _signup(pk: int = 42, created_at: datetime = CREATED) -> Signup:
    return Signup(pk=pk, created_at=created_at, public_id=uuid.uuid4())


def test_a_token_names_its_signup_by_its_random_public_id():
    signup = _signup()
    assert tokens.read_token(tokens.make_token(signup)) == tokens.SignupRef(
        public_id=signup.public_id
    )


def _readable(token: str) -> str:
    """Everything a token's parts say when read as text, base64 or base62 numbers."""
    said = [token]
    for part in re.split(r"[:.]", token):
        padded = part + "=" * (-len(part) % 4)
        said.append(base64.urlsafe_b64decode(padded).decode("latin-1") if part else "")
        with contextlib.suppress(ValueError):
            said.append(str(signing.b62_decode(part)))
    return "\n".join(said)


def test_a_token_tells_neither_the_signups_id_nor_when_it_was_made():
    signup = _signup(pk=123457, created_at=datetime(2026, 11, 1, 12, 0, 7, tzinfo=UTC))
    token = tokens.make_token(signup)
    readable = _readable(token)
    assert "123457" not in readable
    assert str(int(signup.created_at.timestamp())) not in readable
    # Made now, and no clock in it either: the same token a minute later.
    assert str(int(signing.time.time()))[:7] not in readable
    # The old kind of link said both, in plain base64.
    old = signing.dumps([123457, int(signup.created_at.timestamp())], salt=tokens.SALT)
    assert "123457" in _readable(old)


def test_links_sent_before_public_ids_still_name_their_signup():
    old = signing.dumps([42, int(CREATED.timestamp())], salt=tokens.SALT)
    assert tokens.read_token(old) == tokens.SignupRef(legacy=(42, int(CREATED.timestamp())))


@pytest.mark.parametrize(
    "token",
    ["", "x", "garbage:garbage", "a" * (tokens.TOKEN_MAX_LENGTH + 1), None, 7, ["a"]],
)
def test_malformed_tokens_are_invalid(token):
    with pytest.raises(tokens.InvalidToken):
        tokens.read_token(token)


def test_a_tampered_token_is_invalid():
    token = tokens.make_token(_signup())
    _, _, rest = token.partition(":")
    other = tokens.make_token(_signup(pk=43)).partition(":")[0]
    with pytest.raises(tokens.InvalidToken):
        tokens.read_token(f"{other}:{rest}")
    with pytest.raises(tokens.InvalidToken):
        tokens.read_token(token[:-1] + ("A" if token[-1] != "A" else "B"))


def test_a_token_from_another_deployment_is_invalid(settings):
    token = tokens.make_token(_signup())
    settings.SECRET_KEY = "another-deployment-" + "k" * 40
    with pytest.raises(tokens.InvalidToken):
        tokens.read_token(token)


def test_a_token_signed_for_another_purpose_is_invalid():
    forged = signing.dumps([42, int(CREATED.timestamp())], salt="another.purpose")
    with pytest.raises(tokens.InvalidToken):
        tokens.read_token(forged)


@pytest.mark.parametrize("payload", [[42], [42, 1, 2], ["42", 1], [True, 1], {"id": 42}, 42])
def test_a_signed_payload_of_the_wrong_shape_is_invalid(payload):
    with pytest.raises(tokens.InvalidToken):
        tokens.read_token(signing.dumps(payload, salt=tokens.SALT))


def test_an_old_link_outlives_its_signup_by_the_longest_extension_and_no_more(
    settings, monkeypatch
):
    """Whether a signup is still pending is the signup's to say (an operator may have
    extended it); an old link's signature only bounds how long any could be."""
    settings.SIGNUP_EXPIRES_AFTER = 3600
    settings.SIGNUP_MAX_EXTENSION = 7200
    token = signing.dumps([42, int(CREATED.timestamp())], salt=tokens.SALT)
    now = signing.time.time()
    monkeypatch.setattr(signing.time, "time", lambda: now + 10799)
    assert tokens.read_token(token).legacy[0] == 42
    monkeypatch.setattr(signing.time, "time", lambda: now + 10801)
    with pytest.raises(tokens.ExpiredToken):
        tokens.read_token(token)


def test_the_emailed_link_is_absolute_and_carries_its_source(settings):
    settings.SITE_URL = "https://accounts.example.com"
    signup = _signup()
    url = urlsplit(tokens.verification_url(signup, source="reminder-2"))
    assert (url.scheme, url.netloc) == ("https", "accounts.example.com")
    token = url.path.removeprefix("/signup/verify/").rstrip("/")
    assert tokens.read_token(token).public_id == signup.public_id
    assert parse_qs(url.query) == {"source": ["reminder-2"]}


@pytest.mark.parametrize("source", ["verification", "reminder-1", "reminder-12", "reminder-999"])
def test_links_carry_the_emails_sources(source):
    assert tokens.is_link_source(source)
    assert tokens.is_token_source(source)


@pytest.mark.parametrize(
    "source",
    ["operator", "api", "reminder-0", "reminder-1000", "Verification", "verification\n", "", None],
)
def test_links_cannot_carry_other_sources(source):
    assert not tokens.is_link_source(source)


def test_only_the_api_adds_a_source_to_the_links_and_never_operator():
    assert tokens.is_token_source("api")
    assert not tokens.is_token_source("operator")


def test_verifying_by_token_cannot_credit_the_operator():
    # A genuine token: without the source rule, the workflow would go on to the database.
    token = tokens.make_token(_signup())
    with pytest.raises(tokens.InvalidToken, match="unknown source"):
        workflow.verify_signup(token=token, source="operator")


def test_a_code_is_compared_whatever_its_spacing_and_case_and_changes_with_its_generation():
    signup = _signup()
    code = tokens.verification_code(signup)
    assert re.fullmatch(r"[ACDEFGHJKMNPQRTWXY34679]{4}-[ACDEFGHJKMNPQRTWXY34679]{4}", code)
    for typed in (code, code.lower(), code.replace("-", ""), code.replace("-", " "), f" {code} "):
        assert tokens.is_code_shaped(typed) and tokens.code_matches(signup, typed)
    assert not tokens.code_matches(signup, code[:-1] + ("A" if code[-1] != "A" else "C"))
    assert not tokens.code_matches(signup, None) and not tokens.is_code_shaped("O0I1-L5S2")
    # Too many wrong tries bump the generation: the code before no longer works.
    signup.code_generation += 1
    assert tokens.verification_code(signup) != code and not tokens.code_matches(signup, code)
    # Another signup, another code; another public id (a changed address), another code.
    assert tokens.verification_code(_signup()) != tokens.verification_code(signup)


def test_a_code_made_under_the_previous_key_is_accepted_while_it_is_a_fallback(settings):
    signup = _signup()
    old = tokens.verification_code(signup)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-key-" + "x" * 50
    assert tokens.verification_code(signup) != old
    assert tokens.code_matches(signup, old)
    settings.SECRET_KEY_FALLBACKS = []
    assert not tokens.code_matches(signup, old)
