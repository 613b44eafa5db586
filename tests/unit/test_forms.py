"""The signup and resend forms as a person meets them, checked without any service: the
database is out of reach here, so a post that got as far as changing something would fail."""

import pytest

from signup.forms import ResendForm, SignupForm
from tests.helpers import signup_data


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


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (signup_data(username=""), "username", "This field is required."),
        (signup_data(username="a b"), "username", "Use letters, digits"),
        (signup_data(email="nope"), "email", "Enter a valid email address, like name@example"),
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


def test_a_valid_signup_is_cleaned_with_the_domain_in_lower_case():
    form = SignupForm(signup_data(email="Alice@Example.COM", last_name=""))
    assert form.is_valid(), form.errors
    assert form.cleaned_data == {
        "username": "alice",
        "email": "Alice@example.com",
        "first_name": "Alice",
        "last_name": "",
    }


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (signup_data(username="ab"), "username"),
        (signup_data(username="a" * 31), "username"),
        (signup_data(username=".alice"), "username"),
        (signup_data(username="Admin"), "username"),
        (signup_data(first_name="<b>"), "first_name"),
        (signup_data(first_name=""), "first_name"),
        (signup_data(email="a" * 250 + "@example.com"), "email"),
        (signup_data(email="alice@example.com\nBcc: x@example.com"), "email"),
    ],
)
def test_the_signup_form_names_the_field_at_fault(data, field):
    form = SignupForm(data)
    assert not form.is_valid()
    assert list(form.errors) == [field]


def test_the_resend_page_shows_a_bad_address_inline(client):
    response = client.post("/signup/resend/", {"email": "not-an-email"})
    assert response.status_code == 400
    assert 'id="id_email_error"' in response.content.decode()
    assert not ResendForm({"email": "not-an-email"}).is_valid()


def test_bad_links_get_a_clear_page_without_a_lookup(client):
    for path in ("/signup/verify/garbage/", "/signup/verify/garbage/?source=<script>"):
        response = client.get(path)
        assert response.status_code == 400
        assert b"This link is not valid" in response.content
