"""Email-provider tracking webhooks (Postmark's format through anymail): bounces and
complaints stop a signup, deliveries and opens land on its timeline, and forged or
malformed posts change nothing."""

import base64
import json

import pytest
import requests

from signup import provider_events, workflow
from signup.models import OutboundEmail, Signup, SignupEvent
from tests.helpers import signed_up, signup_data, written_lines

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

URL = "/anymail/postmark/tracking/"
SECRET = "hook-user:hook-password-0123"


@pytest.fixture(autouse=True)
def webhook_secret(settings):
    settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": SECRET}


def _auth(secret: str = SECRET) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}


def _post(client, payload, secret: str = SECRET):
    body = payload if isinstance(payload, bytes) else json.dumps(payload)
    return client.post(URL, body, content_type="application/json", headers=_auth(secret))


def _sent_verification(mailoutbox) -> OutboundEmail:
    signup = signed_up(**signup_data())
    email = signup.emails.get()
    workflow.deliver(workflow.EMAIL, email.pk)
    email.refresh_from_db()
    assert email.status == "sent"
    return email


def _event(email: OutboundEmail, record_type: str, **fields) -> dict:
    """A Postmark webhook payload about one of our emails."""
    payload = {
        "RecordType": record_type,
        "MessageID": email.provider_message_id,
        "Recipient": email.to_email,
        "Email": email.to_email,
        "Metadata": {"signup_email_id": str(email.pk)},
        "DeliveredAt": "2026-11-24T10:00:00Z",
    }
    if record_type in ("Bounce", "SpamComplaint"):
        payload |= {"ID": 4242, "BouncedAt": "2026-11-24T10:00:00Z", "TypeCode": 1}
    return payload | fields


def _kinds(signup_id: int) -> list[str]:
    return list(SignupEvent.objects.filter(signup_id=signup_id).values_list("kind", flat=True))


def test_a_hard_bounce_makes_the_signup_undeliverable_and_stops_its_reminders(client, mailoutbox):
    email = _sent_verification(mailoutbox)
    response = _post(client, _event(email, "Bounce", Type="HardBounce", Description="No mailbox"))
    assert response.status_code == 200
    signup = Signup.objects.get()
    assert signup.status == "undeliverable"
    assert signup.next_reminder_at is None
    assert "email_bounced" in _kinds(signup.pk)
    assert "undeliverable" in _kinds(signup.pk)
    assert workflow.take_reminder(signup_id=signup.pk, number=1) is None
    assert not signup.emails.filter(kind="reminder").exists()


def test_a_spam_complaint_makes_the_signup_undeliverable(client, mailoutbox):
    email = _sent_verification(mailoutbox)
    assert _post(client, _event(email, "SpamComplaint", Type="SpamComplaint")).status_code == 200
    assert Signup.objects.get().status == "undeliverable"
    assert "email_complained" in _kinds(email.signup_id)


def test_a_soft_bounce_is_recorded_but_the_signup_stays_pending(client, mailoutbox):
    email = _sent_verification(mailoutbox)
    assert _post(client, _event(email, "Bounce", Type="SoftBounce")).status_code == 200
    assert Signup.objects.get().status == "pending"
    assert "email_bounced" in _kinds(email.signup_id)


def test_a_deferred_email_is_recorded_as_delayed_not_bounced(client, mailoutbox):
    email = _sent_verification(mailoutbox)
    assert _post(client, _event(email, "Bounce", Type="Transient")).status_code == 200
    assert Signup.objects.get().status == "pending"
    kinds = _kinds(email.signup_id)
    assert "email_deferred" in kinds
    assert "email_bounced" not in kinds


def test_delivered_and_opened_land_on_the_timeline_once(client, mailoutbox):
    email = _sent_verification(mailoutbox)
    for _ in range(2):  # providers post again when unsure the first post arrived
        assert _post(client, _event(email, "Delivery")).status_code == 200
        assert _post(client, _event(email, "Open", FirstOpen=True)).status_code == 200
    kinds = _kinds(email.signup_id)
    assert kinds.count("email_delivered") == 1
    assert kinds.count("email_opened") == 1
    assert Signup.objects.get().status == "pending"


def test_an_event_found_by_the_provider_message_id_alone_counts(client, mailoutbox):
    email = _sent_verification(mailoutbox)
    assert _post(client, _event(email, "Delivery", Metadata={})).status_code == 200
    assert "email_delivered" in _kinds(email.signup_id)


def test_a_bounce_after_verification_is_recorded_and_changes_no_status(client, mailoutbox):
    email = _sent_verification(mailoutbox)
    workflow.verify_signup_by_operator(signup_id=email.signup_id)
    assert _post(client, _event(email, "Bounce", Type="HardBounce")).status_code == 200
    assert Signup.objects.get().status == "verified"
    assert "email_bounced" in _kinds(email.signup_id)


@pytest.mark.parametrize(
    "secret", ["", "hook-user:wrong", "someone:hook-password-0123", SECRET + "x"]
)
def test_posts_without_the_right_basic_auth_are_refused_and_change_nothing(
    client, mailoutbox, secret
):
    email = _sent_verification(mailoutbox)
    before = _kinds(email.signup_id)
    payload = json.dumps(_event(email, "Bounce", Type="HardBounce"))
    headers = _auth(secret) if secret else {}
    response = client.post(URL, payload, content_type="application/json", headers=headers)
    assert response.status_code in (400, 401, 403)
    assert Signup.objects.get().status == "pending"
    assert _kinds(email.signup_id) == before


def test_webhooks_are_off_without_a_secret(client, mailoutbox, settings):
    email = _sent_verification(mailoutbox)
    settings.ANYMAIL = {name: v for name, v in settings.ANYMAIL.items() if name != "WEBHOOK_SECRET"}
    response = _post(client, _event(email, "Bounce", Type="HardBounce"))
    assert response.status_code == 404
    assert Signup.objects.get().status == "pending"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b"null",
        b'"Bounce"',
        {"RecordType": "Bounce", "Type": "HardBounce", "Metadata": "not a dict"},
        {"RecordType": "Bounce", "Type": "HardBounce", "Metadata": {"signup_email_id": "1e9"}},
        {"RecordType": "Bounce", "Type": "HardBounce", "Metadata": {"signup_email_id": ["1"]}},
        {"RecordType": "Bounce", "Type": "HardBounce", "BouncedAt": "yesterday"},
        {"RecordType": "Inbound", "FromFull": {}},
        {"RecordType": ["Bounce"]},
    ],
)
def test_malformed_posts_get_400_or_are_ignored_and_change_nothing(client, mailoutbox, payload):
    email = _sent_verification(mailoutbox)
    before = _kinds(email.signup_id)
    response = _post(client, payload)
    assert response.status_code in (200, 400), response.content
    assert response.status_code == 400 or response.content == b""
    assert Signup.objects.get().status == "pending"
    assert _kinds(email.signup_id) == before


def test_an_event_for_another_recipient_or_an_unknown_email_changes_nothing(client, mailoutbox):
    email = _sent_verification(mailoutbox)
    other = _event(email, "Bounce", Type="HardBounce", Email="mallory@example.com")
    unknown = _event(email, "Bounce", Type="HardBounce", Metadata={"signup_email_id": "999999"})
    unknown["MessageID"] = "not-ours"
    assert _post(client, other).status_code == 200
    assert _post(client, unknown).status_code == 200
    assert Signup.objects.get().status == "pending"
    assert "email_bounced" not in _kinds(email.signup_id)


@pytest.mark.django_db(transaction=True)
def test_a_bounce_posted_over_real_http_stops_the_signup(live_server, mailoutbox):
    email = _sent_verification(mailoutbox)
    payload = _event(email, "Bounce", Type="HardBounce")
    response = requests.post(
        live_server.url + URL, json=payload, auth=tuple(SECRET.split(":", 1)), timeout=10
    )
    assert response.status_code == 200
    assert Signup.objects.get().status == "undeliverable"
    forged = requests.post(live_server.url + URL, json=payload, timeout=10)
    assert forged.status_code in (400, 401, 403)


@pytest.mark.usefixtures("one_window")
def test_guessing_the_basic_auth_is_slowed_per_client(client, mailoutbox, settings):
    settings.SIGNUP_RATE_LIMIT_BAD_LINKS = "3/m"
    email = _sent_verification(mailoutbox)
    bounce = _event(email, "Bounce", Type="HardBounce")
    statuses = [_post(client, bounce, secret=f"hook-user:guess{n}").status_code for n in range(5)]
    assert statuses == [403, 403, 403, 429, 429]
    assert Signup.objects.get().status == "pending"
    # The provider, with the right secret, is not held back by someone else's guesses.
    assert _post(client, bounce).status_code == 200
    assert Signup.objects.get().status == "undeliverable"


ANYMAIL_TRACKING = ["/anymail/" + str(pattern.pattern) for pattern in provider_events.urlpatterns]


@pytest.mark.parametrize("url", ANYMAIL_TRACKING)
def test_junk_posts_to_any_providers_endpoint_get_a_4xx_and_log_one_line(client, url):
    """Providers whose own settings are missing (a signing key, a package) answer 404; wrong
    credentials 403; junk 400. Never a 500, never a traceback: a 4xx is one line."""
    for body, headers in [
        (b"{}", {}),  # no credentials
        (b"{}", _auth()),
        (b"not json", _auth()),
        (b'{"event": [1, 2], "type": null, "RecordType": {"a": 1}}', _auth()),
    ]:
        with written_lines() as lines:
            response = client.post(url, body, content_type="application/json", headers=headers)
        assert response.status_code in (200, 400, 403, 404), (url, response.status_code)
        if response.status_code >= 400:
            assert len(lines) == 1, lines
        assert not any("Traceback" in line for line in lines), lines
    assert not OutboundEmail.objects.exists()


@pytest.mark.parametrize(
    "provider", ["mailgun", "amazon_ses", "postal", "mailersend", "unisender_go"]
)
def test_a_provider_that_is_not_configured_answers_404(client, provider):
    response = client.post(f"/anymail/{provider}/tracking/", b"{}", content_type="application/json")
    assert response.status_code == 404
    assert response.json() == {"message": "This provider's webhook is not configured."}
