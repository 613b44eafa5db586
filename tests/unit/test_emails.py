"""The workflow's emails as rendered from their templates: subject, text and HTML bodies, the
link, and the headers that tie a message to its ledger row."""

import re
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
        ("verification", 1, "Verify your email address for ada", "verification"),
        ("verification", 2, "Verify your email address for ada", "verification"),
        ("reminder", 2, "Reminder: verify your email address for ada", "reminder-2"),
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
        ((42, int(CREATED.timestamp())), source)
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
    message = emails.build_message(_email("verification"), signup)
    assert "Ada <b>" in message.body
    html = message.alternatives[0][0]
    assert "Ada &lt;b&gt;" in html
    assert "Ada <b>" not in html


def test_the_message_id_is_the_same_on_every_attempt_and_names_the_site(signup):
    first = emails.build_message(_email("reminder", 2), signup)
    again = emails.build_message(_email("reminder", 2), signup)
    message_id = first.extra_headers["Message-ID"]
    assert message_id == again.extra_headers["Message-ID"]
    assert message_id == "<signup-email-7.reminder.2@accounts.example.com>"


def test_provider_events_can_be_matched_back_to_the_ledger(signup):
    message = emails.build_message(_email("verification"), signup)
    assert message.metadata == {"signup_email_id": "7"}
    assert message.tags == ["signup-verification"]


@pytest.mark.parametrize("kind", ["verification", "reminder", "welcome"])
def test_subjects_are_one_line(signup, kind):
    signup.username = "ada"
    assert "\n" not in emails.build_message(_email(kind), signup).subject
