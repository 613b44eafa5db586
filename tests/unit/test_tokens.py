"""Verification tokens: signed, bound to one record, expiring; and the sources a verification
may credit. No service needed."""

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import signing

from signup import tokens, workflow
from signup.models import Signup

CREATED = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _signup(pk: int = 42, created_at: datetime = CREATED) -> Signup:
    return Signup(pk=pk, created_at=created_at)


def test_a_token_names_its_signup_and_creation_time():
    assert tokens.read_token(tokens.make_token(_signup())) == (42, int(CREATED.timestamp()))


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


def test_a_token_outlives_the_signup_by_the_longest_extension_and_no_more(settings, monkeypatch):
    """Whether a signup is still pending is the signup's to say (an operator may have
    extended it); the signature only bounds how long any could be."""
    settings.SIGNUP_EXPIRES_AFTER = 3600
    settings.SIGNUP_MAX_EXTENSION = 7200
    token = tokens.make_token(_signup())
    now = signing.time.time()
    monkeypatch.setattr(signing.time, "time", lambda: now + 10799)
    assert tokens.read_token(token)[0] == 42
    monkeypatch.setattr(signing.time, "time", lambda: now + 10801)
    with pytest.raises(tokens.ExpiredToken):
        tokens.read_token(token)


def test_the_emailed_link_is_absolute_and_carries_its_source(settings):
    settings.SITE_URL = "https://accounts.example.com"
    url = urlsplit(tokens.verification_url(_signup(), source="reminder-2"))
    assert (url.scheme, url.netloc) == ("https", "accounts.example.com")
    token = url.path.removeprefix("/signup/verify/").rstrip("/")
    assert tokens.read_token(token)[0] == 42
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
    token = signing.dumps([1, 0], salt=tokens.SALT)
    with pytest.raises(tokens.InvalidToken, match="unknown source"):
        workflow.verify_signup(token=token, source="operator")
