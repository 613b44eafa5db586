"""Finishing a signup another way than by the link: the code typed where the signup began, a
mistyped address fixed, and "not me" from the email's recipient; through the pages and the API,
with a real worker sending real emails."""

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import close_old_connections
from django.test import Client
from django.utils import timezone

from signup import funnel, tokens, workflow
from signup.models import OutboundEmail, Signup, SignupEvent, WebhookDelivery
from tests.helpers import (
    remind,
    sent_to,
    signed_up,
    signup_data,
    verify_link,
    wait_for,
    wait_for_emails,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

_CODE = re.compile(r"signed up: ([A-Z0-9]{4}-[A-Z0-9]{4})")
_NOT_ME = re.compile(r"https?://\S+/signup/not-me/[^\s\"<>]+/")


def code_in(message) -> str:
    return _CODE.search(message.body).group(1)


def not_me_path(message) -> str:
    return "/" + _NOT_ME.search(message.body).group(0).split("/", 3)[3]


def a_wrong_code(right: str) -> str:
    wrong = "ACDE-3467"
    return wrong if wrong != right else "ACDE-3469"


def sign_up_in(client, **fields) -> Signup:
    response = client.post("/signup/", signup_data(**fields))
    assert response.status_code == 302, response.content
    return Signup.objects.get(username=fields.get("username", "alice"))


# --- A code ------------------------------------------------------------------------------------


def test_a_person_finishes_by_typing_the_code_where_they_signed_up(worker, client):
    sign_up_in(client)
    page = client.get("/signup/sent/")
    assert b"<strong>alice@example.com</strong>" in page.content  # where the email went
    (email,) = wait_for_emails("alice@example.com", "Verify")
    code = code_in(email)
    assert code in email.alternatives[0][0]  # the HTML part carries it too

    # Typed as people type it: lower case, a space instead of the dash.
    page = client.post("/signup/sent/", {"action": "code", "code": code.lower().replace("-", " ")})
    assert page.status_code == 200
    assert b"You're verified" in page.content

    signup = Signup.objects.get(username="alice")
    assert (signup.status, signup.verified_source) == ("verified", "code")
    wait_for_emails("alice@example.com", "Welcome")
    assert signup.events.filter(kind="verified", detail="source: code").exists()
    today = timezone.localdate()
    assert funnel.funnel(today, today).verified_by == {"code": 1}
    # The same code again, now that the signup is verified: nothing more happens.
    assert workflow.verify_signup_by_code(signup_id=signup.pk, code=code).already_verified


def test_every_reminder_carries_the_same_code_as_the_verification_email(worker, client):
    signup = sign_up_in(client)
    (verification,) = wait_for_emails("alice@example.com", "Verify")
    remind(signup, 1)
    (reminder,) = sent_to("alice@example.com", "Reminder")
    assert code_in(reminder) == code_in(verification)


def test_wrong_codes_void_the_code_until_a_new_email_brings_a_new_one(worker, client, settings):
    settings.SIGNUP_ADDRESS_COOLDOWN = 0  # the new email may follow at once
    signup = sign_up_in(client)
    (email,) = wait_for_emails("alice@example.com", "Verify")
    right = code_in(email)
    for tries_left in (2, 1):
        page = client.post("/signup/sent/", {"action": "code", "code": a_wrong_code(right)})
        assert page.status_code == 400
        assert f"{tries_left} more tries".encode() in page.content
    page = client.post("/signup/sent/", {"action": "code", "code": a_wrong_code(right)})
    assert b"too many wrong tries" in page.content
    # Void: the right code does not work any more either.
    page = client.post("/signup/sent/", {"action": "code", "code": right})
    assert page.status_code == 400 and b"too many wrong tries" in page.content
    assert Signup.objects.get(pk=signup.pk).status == "pending"
    assert signup.events.filter(kind="code_rejected").count() == 3

    page = client.post("/signup/sent/", {"action": "new-email"}, follow=True)
    assert b"A new email is on its way" in page.content
    _first, second = wait_for_emails("alice@example.com", "Verify", count=2)
    assert code_in(second) != right
    page = client.post("/signup/sent/", {"action": "code", "code": code_in(second)})
    assert b"You're verified" in page.content


def test_a_malformed_code_is_a_form_error_and_costs_no_try(worker, client):
    signup = sign_up_in(client)
    for typed in ("", "12", "ABCD-EFGH0", "OOOO-IIII", "x" * 40):
        page = client.post("/signup/sent/", {"action": "code", "code": typed})
        assert page.status_code == 400
        assert b'aria-invalid="true"' in page.content
    assert Signup.objects.get(pk=signup.pk).code_attempts == 0


def test_parallel_guesses_each_count_and_stop_at_the_cap(worker, settings):
    settings.SIGNUP_CODE_MAX_ATTEMPTS = 3
    signup = signed_up(**signup_data())
    right = tokens.verification_code(signup)

    def guess(_n):
        try:
            workflow.verify_signup_by_code(signup_id=signup.pk, code=a_wrong_code(right))
        except workflow.CodeRejected as rejected:
            return rejected.tries_left
        finally:
            close_old_connections()

    with ThreadPoolExecutor(8) as pool:
        answers = sorted(pool.map(guess, range(8)))
    assert answers == [0, 0, 0, 0, 0, 0, 1, 2]
    signup.refresh_from_db()
    assert (signup.code_attempts, signup.status) == (3, "pending")
    with pytest.raises(workflow.CodeRejected):
        workflow.verify_signup_by_code(signup_id=signup.pk, code=right)


def test_the_api_verifies_by_username_and_code(worker, api, settings):
    settings.SIGNUP_ADDRESS_COOLDOWN = 0
    assert api.post("/api/signups", signup_data()).status_code == 201
    (email,) = wait_for_emails("alice@example.com", "Verify")
    right = code_in(email)

    answer = api.post("/api/signups/verify", {"username": "alice", "code": a_wrong_code(right)})
    assert answer.status_code == 400 and answer.json()["tries_left"] == 2
    answer = api.post("/api/signups/verify", {"username": "alice", "code": "nope"})
    assert answer.status_code == 400 and "code" in answer.json()["errors"]  # no try spent
    answer = api.post("/api/signups/verify", {"username": "nobody", "code": right})
    assert answer.status_code == 404
    answer = api.post("/api/signups/verify", {"username": "alice", "code": right, "token": "x"})
    assert answer.status_code == 400  # one way or the other, not both
    for _ in range(2):
        api.post("/api/signups/verify", {"username": "alice", "code": a_wrong_code(right)})
    answer = api.post("/api/signups/verify", {"username": "alice", "code": right})
    assert answer.status_code == 409 and answer.json()["tries_left"] == 0

    assert api.post("/api/signups/alice/new-email", {}).status_code == 202
    _first, second = wait_for_emails("alice@example.com", "Verify", count=2)
    answer = api.post("/api/signups/verify", {"username": "alice", "code": code_in(second)})
    assert answer.status_code == 200, answer.content
    assert answer.json() == {"result": "done", "username": "alice"}
    assert Signup.objects.get(username="alice").verified_source == "code"


def test_a_new_email_waits_for_the_address_budget(worker, client):
    sign_up_in(client)
    wait_for_emails("alice@example.com", "Verify")
    page = client.post("/signup/sent/", {"action": "new-email"}, follow=True)
    assert b"can't be sent to it yet" in page.content
    assert OutboundEmail.objects.filter(kind="verification").count() == 1


# --- A mistyped address --------------------------------------------------------------------


def test_a_mistyped_address_is_fixed_from_the_sent_page(worker, client, settings):
    settings.SIGNUP_WEBHOOK_URLS = ["http://127.0.0.1:9/"]  # the events are recorded
    signup = sign_up_in(client, email="anna@gmial.com", username="anna")
    (wrong,) = wait_for_emails("anna@gmial.com", "Verify")
    old_path, _token, source = verify_link(wrong)

    page = client.post(
        "/signup/sent/", {"action": "change-address", "email": "anna@gmail.com"}, follow=True
    )
    assert b"<strong>anna@gmail.com</strong>" in page.content
    assert b"gets nothing more" in page.content
    (right,) = wait_for_emails("anna@gmail.com", "Verify")

    # The old address's link and code no longer work, and it is sent nothing more.
    assert client.get(f"{old_path}?source={source}").status_code == 400
    with pytest.raises(workflow.CodeRejected):
        workflow.verify_signup_by_code(signup_id=signup.pk, code=code_in(wrong))
    signup.refresh_from_db()
    remind(signup, 1)
    assert [m.subject for m in sent_to("anna@gmial.com")] == [wrong.subject]
    assert len(sent_to("anna@gmail.com", "Reminder")) == 1

    # The timeline says it changed, not what it was; a webhook event announces it.
    changed = signup.events.get(kind="address_changed")
    assert "gmial" not in changed.detail
    assert not SignupEvent.objects.filter(detail__contains="gmial").exists()
    assert WebhookDelivery.objects.filter(event_type="signup.address_changed").count() == 1

    page = client.post("/signup/sent/", {"action": "code", "code": code_in(right)})
    assert b"You're verified" in page.content
    assert Signup.objects.filter(username="anna").count() == 1  # one username, one signup


def test_an_address_changes_a_few_times_at_most(worker, client, settings):
    settings.SIGNUP_MAX_ADDRESS_CHANGES = 1
    signup = sign_up_in(client)
    client.post("/signup/sent/", {"action": "change-address", "email": "alice@example.org"})
    page = client.get("/signup/sent/")
    assert b"Wrong address?" not in page.content  # no change left to offer
    page = client.post(
        "/signup/sent/", {"action": "change-address", "email": "alice@example.net"}, follow=True
    )
    assert b"can't be changed again" in page.content
    signup.refresh_from_db()
    assert (signup.email, signup.address_changes) == ("alice@example.org", 1)


def test_a_changed_address_is_contacted_as_a_new_signup_is(worker, client, api, settings):
    """Its own budget, and the enumeration rule: an address with an account gets the owner's
    note, and the page says the same as for any address."""
    settings.SIGNUP_ADDRESS_COOLDOWN = 0  # the owner's own email was sent just before
    owner = api.post("/api/signups", signup_data(username="owner", email="taken@example.com"))
    assert owner.status_code == 201
    wait_for_emails("taken@example.com", "Verify")
    owner = Signup.objects.get(username="owner")
    workflow.verify_signup_by_operator(signup_id=owner.pk)

    sign_up_in(client, email="typo@example.com")
    wait_for_emails("typo@example.com", "Verify")
    page = client.post(
        "/signup/sent/", {"action": "change-address", "email": "taken@example.com"}, follow=True
    )
    assert b"we are sending a new email to <strong>taken@example.com</strong>" in page.content
    wait_for_emails("taken@example.com", "already")
    assert len(sent_to("taken@example.com", "Verify")) == 1  # the owner's own, nothing more


def test_the_api_changes_an_address_with_the_key(worker, api):
    assert api.post("/api/signups", signup_data(email="alice@exmaple.com")).status_code == 201
    wait_for_emails("alice@exmaple.com", "Verify")
    answer = api.post("/api/signups/alice/change-email", {"email": "not an address"})
    assert answer.status_code == 400 and "email" in answer.json()["errors"]
    answer = api.post("/api/signups/alice/change-email", {"email": "alice@example.com"})
    assert answer.status_code == 202 and answer.json()["result"] == "changed"
    wait_for_emails("alice@example.com", "Verify")
    answer = api.post("/api/signups/alice/change-email", {"email": "alice@example.com"})
    assert answer.status_code == 200 and answer.json()["result"] == "same address"


def test_a_former_address_is_forgotten_after_the_retention(worker, client, settings):
    signup = sign_up_in(client, email="anna@gmial.com", username="anna")
    wait_for_emails("anna@gmial.com", "Verify")
    client.post("/signup/sent/", {"action": "change-address", "email": "anna@gmail.com"})
    wait_for_emails("anna@gmail.com", "Verify")
    assert workflow.forget_personal_data()["former_addresses_forgotten"] == 0  # not yet
    settings.SIGNUP_RETENTION_DAYS = 0
    OutboundEmail.objects.filter(signup=signup).update(
        created_at=timezone.now() - timedelta(seconds=1)
    )
    assert workflow.forget_personal_data()["former_addresses_forgotten"] == 1
    addresses = set(signup.emails.values_list("to_email", flat=True))
    assert addresses == {"anna@gmail.com", f"signup-{signup.pk}@anonymised.invalid"}


def test_an_old_dead_letter_to_a_former_address_is_not_sent_again(worker, client):
    signup = sign_up_in(client, email="anna@gmial.com", username="anna")
    wait_for_emails("anna@gmial.com", "Verify")
    OutboundEmail.objects.filter(signup=signup).update(status="failed")
    client.post("/signup/sent/", {"action": "change-address", "email": "anna@gmail.com"})
    wait_for_emails("anna@gmail.com", "Verify")
    old = signup.emails.get(to_email="anna@gmial.com")
    workflow.redrive(workflow.EMAIL, old.pk)
    wait_for(lambda: OutboundEmail.objects.get(pk=old.pk).status == "skipped")
    assert len(sent_to("anna@gmial.com")) == 1


# --- Not me ----------------------------------------------------------------------------------


def test_not_me_in_one_click_stops_the_emails(worker, settings):
    settings.SIGNUP_WEBHOOK_URLS = ["http://127.0.0.1:9/"]
    signup = signed_up(**signup_data())
    (email,) = wait_for_emails("alice@example.com", "Verify")
    path = not_me_path(email)
    assert email.extra_headers["List-Unsubscribe"] == f"<http://testserver{path}>"
    assert email.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # A mail client's one-click POST (RFC 8058): no cookie, no CSRF token of ours.
    mail_client = Client(enforce_csrf_checks=True)
    assert mail_client.get(path).status_code == 200  # a scanner's GET stops nothing
    assert Signup.objects.get(pk=signup.pk).status == "pending"
    answer = mail_client.post(
        path, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
    )
    assert answer.status_code == 200
    assert b"No more emails" in answer.content

    signup.refresh_from_db()
    assert (signup.status, signup.closed_by) == ("cancelled", "recipient")
    assert signup.events.filter(kind="cancelled", detail="source: not-me").exists()
    (cancelled,) = WebhookDelivery.objects.filter(event_type="signup.cancelled")
    assert cancelled.payload["closed_by"] == "recipient"
    today = timezone.localdate()
    assert funnel.funnel(today, today).cancelled_by == {"recipient": 1}
    # Its reminder is dropped; the link now says the signup was cancelled.
    assert workflow.take_reminder(signup_id=signup.pk, number=1) is None
    path_, _token, source = verify_link(email)
    assert mail_client.get(f"{path_}?source={source}").status_code == 410
    assert len(sent_to("alice@example.com")) == 1
    # A second click says the same and changes nothing.
    assert b"No more emails" in mail_client.post(path).content


def test_not_me_leaves_a_verified_signup_verified(worker, client):
    signup = signed_up(**signup_data())
    (email,) = wait_for_emails("alice@example.com", "Verify")
    workflow.verify_signup(token=tokens.make_token(signup), source="verification")
    answer = client.post(not_me_path(email))
    assert b"already confirmed" in answer.content
    assert Signup.objects.get(pk=signup.pk).status == "verified"


def test_not_me_needs_the_signed_link_and_is_rate_limited(worker, client, settings, one_window):
    signup = signed_up(**signup_data())
    token = tokens.make_token(signup)
    forged = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    assert client.post(f"/signup/not-me/{forged}/").status_code == 400
    assert client.get("/signup/not-me/nothing/").status_code == 400
    settings.SIGNUP_RATE_LIMIT_PAGES = "2/m"
    settings.SIGNUP_RATE_LIMIT_BAD_LINKS = "100000/m"
    for _ in range(2):
        client.post(f"/signup/not-me/{forged}/")
    answer = client.post(f"/signup/not-me/{token}/")
    assert answer.status_code == 429 and answer["Retry-After"]
    assert Signup.objects.get(pk=signup.pk).status == "pending"
