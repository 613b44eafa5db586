"""The HTML pages: the form, the emailed link and the resend page."""

import re

import pytest
from django.contrib.sessions.models import Session
from django.core import signing
from django.test import Client

from signup import tokens, workflow
from signup.models import Signup
from tests.helpers import emailed, send_reminder, sent_to, signed_up, signup_data, wait_for_emails

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_signup_redirects_to_check_your_email(client):
    response = client.post("/signup/", signup_data(), follow=True)
    assert response.status_code == 200
    assert b"Check your email" in response.content
    # This browser made the signup: it is told where the email went, and nothing else is.
    assert b"<strong>alice@example.com</strong>" in response.content
    assert Signup.objects.get().status == "pending"
    other_browser = Client()
    response = other_browser.get("/signup/sent/")
    assert b"the address you gave" in response.content
    assert b"alice@example.com" not in response.content


def test_the_sent_page_cookie_is_signed_http_only_and_kept_to_its_page(client):
    client.post("/signup/", signup_data())
    cookie = client.cookies["signup_started"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/signup/sent/"
    client.cookies["signup_started"] = Signup.objects.get().public_id.hex  # unsigned: ignored
    assert b"alice@example.com" not in client.get("/signup/sent/").content


def test_the_favicon_answers(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:4] == b"\x00\x00\x01\x00"  # an icon file


def test_the_session_holds_no_address_after_a_signup(client):
    client.post("/signup/", signup_data(), follow=True)
    assert "alice@example.com" not in repr(dict(client.session.items()))
    stored = [session.get_decoded() for session in Session.objects.all()]
    assert "alice@example.com" not in repr(stored)


def test_taken_username_is_an_inline_error(client):
    client.post("/signup/", signup_data())
    response = client.post("/signup/", signup_data(username="Alice", email="x@example.com"))
    assert response.status_code == 400
    assert b"already taken" in response.content
    assert Signup.objects.count() == 1


def _link(signup, source="verification"):
    return f"/signup/verify/{tokens.make_token(signup)}/?source={source}"


def test_the_link_asks_for_confirmation_and_only_post_verifies(client):
    signup = emailed(**signup_data())
    for number in (1, 2):  # the link came from reminder 2, which was sent
        assert send_reminder(signup_id=signup.pk, number=number)
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
    signup = signed_up(**signup_data())
    path = path.replace("{token}", tokens.make_token(signup))
    for response in (client.get(path), client.post(path.split("?")[0], {"source": "x y"})):
        assert response.status_code == 400
        assert b"This link is not valid" in response.content
    signup.refresh_from_db()
    assert signup.status == "pending"


@pytest.mark.parametrize("source", ["operator", "api"])
def test_a_link_cannot_claim_a_source_only_the_server_sets(client, source):
    signup = signed_up(**signup_data())
    path = _link(signup).split("?")[0]
    for response in (client.get(f"{path}?source={source}"), client.post(path, {"source": source})):
        assert response.status_code == 400
        assert b"This link is not valid" in response.content
    signup.refresh_from_db()
    assert (signup.status, signup.verified_source) == ("pending", "")
    assert not signup.emails.filter(kind="welcome").exists()


def test_expired_and_cancelled_signups_get_their_own_page(client, settings):
    expired = signed_up(**signup_data())
    Signup.objects.filter(pk=expired.pk).update(expires_at=expired.created_at)
    response = client.post(_link(expired).split("?")[0], {"source": "verification"})
    assert response.status_code == 410
    assert b"expired" in response.content

    cancelled = signed_up(**signup_data(username="bob", email="bob@example.com"))
    workflow.cancel_signup(signup_id=cancelled.pk)
    response = client.get(_link(cancelled))
    assert response.status_code == 410
    assert b"cancelled" in response.content


def test_an_old_style_link_older_than_any_signup_could_be_pending_is_expired(client, settings):
    signup = signed_up(**signup_data())
    old = signing.dumps([signup.pk, int(signup.created_at.timestamp())], salt=tokens.SALT)
    link = f"/signup/verify/{old}/?source=verification"
    assert client.get(link).status_code == 200
    # Past the expiry and the longest extension: every signed timestamp is now too old.
    settings.SIGNUP_EXPIRES_AFTER = -1
    settings.SIGNUP_MAX_EXTENSION = 0
    response = client.get(link)
    assert response.status_code == 410
    assert b"expired" in response.content


@pytest.mark.django_db(transaction=True)
def test_the_resend_page_answers_alike_for_every_address_and_a_worker_does_the_work(
    client, worker, settings
):
    settings.SIGNUP_ADDRESS_COOLDOWN = 0
    signed_up(**signup_data())
    account = signed_up(**signup_data(username="bob", email="bob@example.com"))
    workflow.verify_signup_by_operator(signup_id=account.pk)
    answers = set()
    for address in ("ALICE@example.com", "bob@example.com", "nobody@example.com"):
        response = client.post("/signup/resend/", {"email": address})
        assert response.status_code == 200
        page = response.content.replace(address.encode(), b"ADDRESS")
        # The language switcher's CSRF token is masked afresh in every answer.
        answers.add(re.sub(rb'name="csrfmiddlewaretoken" value="[^"]+"', b"", page))
    assert len(answers) == 1
    assert client.post("/signup/resend/", {"email": "bad"}).status_code == 400
    # The pending address got a fresh link, the account's owner a note, nobody nothing.
    wait_for_emails("alice@example.com", "Verify your email", count=2)
    wait_for_emails("bob@example.com", "You already have an account")
    assert not sent_to("nobody@example.com")


def test_the_pages_answer_head_as_get_and_refuse_other_methods(client):
    """Monitors and link checkers ask with HEAD; it reads, so it changes nothing."""
    signup = signed_up(**signup_data())
    verify = f"/signup/verify/{tokens.make_token(signup)}/"
    for path in ("/signup/", "/signup/sent/", "/signup/resend/", verify):
        assert client.head(path).status_code == 200, path
        assert client.put(path).status_code == 405, path
    signup.refresh_from_db()
    assert signup.status == "pending"
