"""The HTML pages: the form, the emailed link and the resend page."""

import pytest
from django.contrib.sessions.models import Session

from signup import tokens, workflow
from signup.models import OutboundEmail, Signup
from tests.helpers import signup_data

pytestmark = pytest.mark.django_db


def test_form_renders_labelled_fields(client):
    response = client.get("/signup/")
    assert response.status_code == 200
    html = response.content.decode()
    for name in ("username", "email", "first_name", "last_name"):
        assert f'<label for="id_{name}"' in html
    assert "(optional)" in html  # the last name


def test_root_redirects_to_the_form(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/signup/"


def test_signup_redirects_to_check_your_email(client):
    response = client.post("/signup/", signup_data(), follow=True)
    assert response.status_code == 200
    assert b"Check your email" in response.content
    assert b"the address you gave" in response.content
    assert Signup.objects.get().status == "pending"


def test_the_session_holds_no_address_after_a_signup(client):
    client.post("/signup/", signup_data(), follow=True)
    assert "alice@example.com" not in repr(dict(client.session.items()))
    stored = [session.get_decoded() for session in Session.objects.all()]
    assert "alice@example.com" not in repr(stored)


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (signup_data(username=""), "username", "This field is required."),
        (signup_data(username="a b"), "username", "Use letters, digits"),
        (signup_data(email="nope"), "email", "Enter a valid email address."),
        (signup_data(first_name="x" * 101), "first_name", "at most 100 characters"),
        (signup_data(first_name="A\x1bB"), "first_name", "control or invisible"),
    ],
)
def test_bad_input_shows_inline_errors_and_changes_nothing(client, data, field, message):
    response = client.post("/signup/", data)
    assert response.status_code == 400
    html = response.content.decode()
    assert f'id="id_{field}_error"' in html
    assert message in html
    assert 'aria-invalid="true"' in html
    assert not Signup.objects.exists()


def test_taken_username_is_an_inline_error(client):
    client.post("/signup/", signup_data())
    response = client.post("/signup/", signup_data(username="Alice", email="x@example.com"))
    assert response.status_code == 400
    assert b"already taken" in response.content
    assert Signup.objects.count() == 1


def _link(signup, source="verification"):
    return f"/signup/verify/{tokens.make_token(signup)}/?source={source}"


def test_the_link_asks_for_confirmation_and_only_post_verifies(client):
    signup = workflow.start_signup(**signup_data())
    page = client.get(_link(signup, "reminder-2"))
    assert page.status_code == 200
    assert b"Verify my account" in page.content
    assert b'value="reminder-2"' in page.content
    signup.refresh_from_db()
    assert signup.status == "pending"

    done = client.post(_link(signup).split("?")[0], {"source": "reminder-2"})
    assert done.status_code == 200
    assert b"re verified" in done.content
    signup.refresh_from_db()
    assert (signup.status, signup.verified_source) == ("verified", "reminder-2")

    again = client.get(_link(signup))
    assert b"Already verified" in again.content


@pytest.mark.parametrize(
    "path",
    [
        "/signup/verify/garbage/?source=verification",
        "/signup/verify/{token}x/?source=verification",
        "/signup/verify/{token}/?source=<script>",
        "/signup/verify/{token}/?source=reminder-0",
        "/signup/verify/" + "a" * 400 + "/",
    ],
)
def test_bad_links_get_a_clear_page(client, path):
    signup = workflow.start_signup(**signup_data())
    path = path.replace("{token}", tokens.make_token(signup))
    for response in (client.get(path), client.post(path.split("?")[0], {"source": "x y"})):
        assert response.status_code == 400
        assert b"This link is not valid" in response.content
    signup.refresh_from_db()
    assert signup.status == "pending"


def test_expired_and_cancelled_signups_get_their_own_page(client, settings):
    expired = workflow.start_signup(**signup_data())
    Signup.objects.filter(pk=expired.pk).update(expires_at=expired.created_at)
    response = client.post(_link(expired).split("?")[0], {"source": "verification"})
    assert response.status_code == 410
    assert b"expired" in response.content

    cancelled = workflow.start_signup(**signup_data(username="bob", email="bob@example.com"))
    workflow.cancel_signup(signup_id=cancelled.pk)
    response = client.get(_link(cancelled))
    assert response.status_code == 410
    assert b"cancelled" in response.content


def test_a_link_older_than_the_expiry_window_is_expired(client, settings):
    signup = workflow.start_signup(**signup_data())
    link = _link(signup)
    settings.SIGNUP_EXPIRES_AFTER = -1  # every signed timestamp is now too old
    response = client.get(link)
    assert response.status_code == 410
    assert b"expired" in response.content


def test_resend_is_limited_per_address_and_reveals_nothing(client, settings):
    settings.SIGNUP_RESENDS_PER_HOUR = 3
    workflow.start_signup(**signup_data())
    for _ in range(4):
        response = client.post("/signup/resend/", {"email": "ALICE@example.com"})
        assert response.status_code == 200
        assert b"If <strong>ALICE@example.com</strong> has a signup" in response.content
    # The first email plus two resends: the limit is three per hour.
    assert OutboundEmail.objects.filter(kind="verification").count() == 3

    unknown = client.post("/signup/resend/", {"email": "nobody@example.com"})
    assert unknown.content.replace(b"nobody", b"ALICE") == response.content
    assert client.post("/signup/resend/", {"email": "bad"}).status_code == 400
