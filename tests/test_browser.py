"""The pages as a person uses them: headless Chromium against a live server and a real worker."""

import re

import pytest
from playwright.sync_api import expect

from signup.models import Signup
from tests.helpers import sent_to, signed_up, signup_data, verify_link, wait_for_emails

pytestmark = [pytest.mark.browser, pytest.mark.chromium, pytest.mark.postgres, pytest.mark.redis]


def test_a_person_signs_up_verifies_and_is_welcomed(page, worker, live_server):
    page.goto("/signup/")
    expect(page).to_have_title("Create your account")
    page.get_by_label("Username").fill("grace")
    page.get_by_label("Email").fill("grace@example.com")
    page.get_by_label("First name").fill("Grace")
    page.get_by_label("Last name").fill("Hopper")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("grace@example.com")

    (email,) = wait_for_emails("grace@example.com", "Verify")
    path, _, source = verify_link(email)
    page.goto(f"{path}?source={source}")
    expect(page.get_by_role("heading", name="Confirm your account")).to_be_visible()
    page.get_by_role("button", name="Verify my account").click()
    expect(page.get_by_role("heading", name="You're verified")).to_be_visible()

    wait_for_emails("grace@example.com", "Welcome")
    page.goto(f"{path}?source={source}")
    expect(page.get_by_role("heading", name="Already verified")).to_be_visible()


def test_bad_input_shows_errors_next_to_the_fields(page, worker):
    page.goto("/signup/")
    page.get_by_label("Username").fill("no spaces")
    page.get_by_label("Email").fill("not-an-email")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("alert")).to_contain_text("correct the fields")
    expect(page.locator("#id_username_error")).to_contain_text("Use letters, digits")
    expect(page.locator("#id_email_error")).to_contain_text("valid email address")
    expect(page.locator("#id_first_name_error")).to_contain_text("required")
    expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Username")).to_have_value("no spaces")
    assert sent_to("not-an-email") == []


def test_a_broken_link_gets_a_clear_page(page):
    page.goto("/signup/verify/not-a-real-token/?source=verification")
    expect(page.get_by_role("heading", name="This link is not valid")).to_be_visible()


@pytest.fixture
def operator_and_signup(transactional_db, broker, django_user_model):
    """An operator's account and a signup, made before `page` starts the browser (under its
    event loop the ORM would open a connection of its own that nothing closes)."""
    django_user_model.objects.create_superuser("ops", "ops@example.com", "a long pass phrase")
    return signed_up(**signup_data())


def test_the_pages_and_the_admin_work_within_the_content_security_policy(operator_and_signup, page):
    signup = operator_and_signup
    refused = []
    page.on("console", lambda message: refused.append(message.text))

    page.goto("/signup/")
    # The style sheet applies: the button has the accent colour.
    button = page.get_by_role("button", name="Sign up")
    expect(button).to_have_css("background-color", "rgb(36, 84, 214)")

    page.goto("/admin/login/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill("a long pass phrase")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
    page.goto("/admin/signup/signup/")
    expect(page.locator("#result_list")).to_contain_text("alice")
    page.goto(f"/admin/signup/signup/{signup.pk}/change/")
    expect(page.get_by_role("heading", name="alice")).to_be_visible()
    # The admin's own scripts ran: its theme script marks the page.
    expect(page.locator("html")).to_have_attribute("data-theme", "auto")

    assert [text for text in refused if "Content Security Policy" in text] == []


def test_a_person_fixes_a_typo_and_finishes_with_the_code_on_the_same_device(page, worker):
    page.goto("/signup/")
    page.get_by_label("Username").fill("anna")
    page.get_by_label("Email").fill("anna@gmial.com")
    page.get_by_label("First name").fill("Anna")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("status")).to_contain_text("anna@gmial.com")
    wait_for_emails("anna@gmial.com", "Verify")

    page.get_by_label("The right email address").fill("anna@gmail.com")
    page.get_by_role("button", name="Send it there instead").click()
    expect(page.get_by_role("status")).to_contain_text("anna@gmail.com")
    (email,) = wait_for_emails("anna@gmail.com", "Verify")
    code = re.search(r"signed up: (\S+)", email.body).group(1)

    page.get_by_label("Code from the email").fill(code.lower())
    page.get_by_role("button", name="Verify with the code").click()
    expect(page.get_by_role("heading", name="You're verified")).to_be_visible()
    wait_for_emails("anna@gmail.com", "Welcome")
    assert len(sent_to("anna@gmial.com")) == 1


def test_a_stranger_stops_the_emails_from_the_link_in_one(page, worker):
    signed_up(**signup_data())
    (email,) = wait_for_emails("alice@example.com", "Verify")
    not_me = re.search(r"https?://\S+/signup/not-me/\S+/", email.body).group(0)
    page.goto(not_me)
    expect(page.get_by_role("heading", name="Didn't sign up?")).to_be_visible()
    page.get_by_role("button", name="Cancel the signup and stop the emails").click()
    expect(page.get_by_role("heading", name="No more emails")).to_be_visible()
    signup = Signup.objects.get(username="alice")
    assert (signup.status, signup.closed_by) == ("cancelled", "recipient")
