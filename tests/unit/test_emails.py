"""The workflow's emails as rendered from their templates: subject, text and HTML bodies, the
link, and the headers that tie a message to its ledger row."""

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from signup import emails, tokens
from signup.models import OutboundEmail, Signup

CREATED = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def signup(settings) -> Signup:
    settings.SITE_URL = "https://accounts.example.com"
    settings.SIGNUP_MAX_REMINDERS = 3
    return Signup(
        pk=42,
        public_id=uuid.uuid4(),
        username="ada",
        email="ada@example.com",
        first_name="Ada <b>",
        last_name="Lovelace",
        created_at=CREATED,
        expires_at=CREATED + timedelta(days=7),
    )


def _email(kind: str, sequence: int = 1) -> OutboundEmail:
    return OutboundEmail(
        pk=7, signup_id=42, kind=kind, sequence=sequence, to_email="ada@example.com"
    )


@pytest.mark.parametrize(
    ("kind", "sequence", "subject", "source"),
    [
        ("verification", 1, "Verify your email address for accounts.example.com", "verification"),
        ("verification", 2, "Verify your email address for accounts.example.com", "verification"),
        (
            "reminder",
            2,
            "Reminder: verify your email address for accounts.example.com",
            "reminder-2",
        ),
    ],
)
def test_verification_and_reminders_carry_a_link_crediting_their_email(
    signup, kind, sequence, subject, source
):
    message = emails.build_message(_email(kind, sequence), signup)
    assert message.subject == subject
    assert message.to == ["ada@example.com"]
    # The link is signed at the time of the call (a token made in another second differs), so
    # it is read back rather than rebuilt.
    links = re.findall(
        r"https://accounts\.example\.com/signup/verify/([^/\s]+)/\?source=(\S+)", message.body
    )
    assert [(tokens.read_token(token), link_source) for token, link_source in links] == [
        (tokens.SignupRef(public_id=signup.public_id), source)
    ]
    html, mimetype = message.alternatives[0]
    assert mimetype == "text/html"
    url = f"https://accounts.example.com/signup/verify/{links[0][0]}/?source={source}"
    assert url in html
    assert "8 November 2026, 12:00 (UTC)" in message.body  # the expiry, spelled out


def test_the_welcome_email_has_no_link_to_verify(signup):
    message = emails.build_message(_email("welcome"), signup)
    assert message.subject == "Welcome, Ada <b>! Your account ada is ready"
    assert "/signup/verify/" not in message.body
    assert "/signup/verify/" not in message.alternatives[0][0]


def test_names_are_escaped_in_html_and_kept_as_typed_in_text(signup):
    message = emails.build_message(_email("welcome"), signup)
    assert "Ada <b>" in message.body
    html = message.alternatives[0][0]
    assert "Ada &lt;b&gt;" in html
    assert "Ada <b>" not in html


SPAM = "WIN 500 EUR: claim at prize-claim.example today!"


@pytest.mark.parametrize(("kind", "sequence"), [("verification", 1), ("reminder", 1)])
@pytest.mark.parametrize("language", ["en", "de", "fr", "es"])
def test_mail_to_an_unverified_address_carries_nothing_a_stranger_typed(
    signup, settings, kind, sequence, language
):
    """Registration spam: a stranger's name or username would travel in our sender's mail to
    any address. The site, the time and the language say what the signup is."""
    signup.first_name, signup.last_name, signup.username = SPAM, SPAM, "prize-claim.example"
    signup.language = language
    message = emails.build_message(_email(kind, sequence), signup)
    html = message.alternatives[0][0]
    for text in (message.subject, message.body, html):
        assert "prize-claim" not in text
        assert "WIN 500" not in text
    assert "accounts.example.com" in message.subject
    assert (
        "1 November 2026" in message.body
        or "1. November 2026" in message.body
        or ("1 novembre 2026" in message.body or "1 de noviembre de 2026" in message.body)
    )  # when the signup was made, in its language


def test_the_welcome_names_the_account_the_verified_address_owns(signup):
    signup.username = "prize-claim.example"
    message = emails.build_message(_email("welcome"), signup)
    assert "prize-claim.example" in message.subject


def test_the_site_name_can_be_set(signup, settings):
    settings.SIGNUP_SITE_NAME = "Example Accounts"
    message = emails.build_message(_email("verification"), signup)
    assert message.subject == "Verify your email address for Example Accounts"


def test_the_message_id_is_the_same_on_every_attempt_and_names_the_site(signup):
    first = emails.build_message(_email("reminder", 2), signup)
    again = emails.build_message(_email("reminder", 2), signup)
    message_id = first.extra_headers["Message-ID"]
    assert message_id == again.extra_headers["Message-ID"] == emails.message_id(_email("reminder"))
    assert re.fullmatch(r"<signup-[0-9a-f]{32}@accounts\.example\.com>", message_id)
    # Keyed: the next id's is unrelated to it.
    other = OutboundEmail(pk=8, signup_id=42, kind="reminder", sequence=2)
    assert emails.message_id(other) != message_id


def test_provider_events_can_be_matched_back_to_the_ledger(signup):
    message = emails.build_message(_email("verification"), signup)
    assert message.metadata == {"signup_email_id": "7"}
    assert message.tags == ["signup-verification"]


@pytest.mark.parametrize("kind", ["verification", "reminder", "welcome"])
def test_subjects_are_one_line(signup, kind):
    signup.username = "ada"
    assert "\n" not in emails.build_message(_email(kind), signup).subject


@pytest.mark.parametrize("kind, sequence", [("verification", 1), ("reminder", 2)])
@pytest.mark.parametrize("language", ["en", "de", "fr", "es"])
def test_a_verification_email_or_reminder_offers_its_code_and_not_me(
    signup, kind, sequence, language
):
    """The code beside the link, the "not me" link in the text and the HTML, and the same
    action as a one-click List-Unsubscribe (RFC 8058)."""
    signup.language = language
    message = emails.build_message(_email(kind, sequence), signup)
    code, not_me = tokens.verification_code(signup), tokens.not_me_url(signup)
    html = message.alternatives[0][0]
    assert code in message.body and code in html
    assert not_me in message.body and f'href="{not_me}"' in html
    assert message.extra_headers["List-Unsubscribe"] == f"<{not_me}>"
    assert message.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_the_welcome_has_no_code_and_no_unsubscribe(signup):
    message = emails.build_message(_email("welcome"), signup)
    assert "List-Unsubscribe" not in message.extra_headers
    assert tokens.verification_code(signup) not in message.body
