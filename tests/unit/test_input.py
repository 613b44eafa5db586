"""What the forms accept from people and API clients, and the form they store it in."""

import pytest

from signup.forms import ResendForm, SignupForm
from signup.workflow.mailbox import canonical_email
from tests.helpers import signup_data


def _clean(**fields) -> tuple[dict, dict]:
    form = SignupForm(signup_data(**fields))
    form.is_valid()
    return form.cleaned_data, {
        name: [e["code"] for e in errors] for name, errors in form.errors.get_json_data().items()
    }


# --- Names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("\uff2a\uff4f\uff48\uff4e", "John"),  # full-width letters
        ("\ufb01ona", "fiona"),  # the fi ligature
        ("Jose\u0301", "Jos\u00e9"),  # e and a combining accent: one letter
        ("\u3000Ann\u3000", "Ann"),  # ideographic spaces
    ],
)
def test_names_are_stored_in_nfkc_form(typed, stored):
    cleaned, errors = _clean(first_name=typed, last_name=typed)
    assert not errors
    assert cleaned["first_name"] == cleaned["last_name"] == stored


@pytest.mark.parametrize(
    "name",
    [
        "Al\x07ice",  # Cc: a control character
        "Al\u200dice",  # Cf: zero-width joiner
        "Alice\u202e",  # Cf: right-to-left override
        "Al\ufeffice",  # Cf: byte order mark
        "Al\ud800ice",  # Cs: a lone surrogate
        "Al\ue000ice",  # Co: private use
        "Al\u0378ice",  # Cn: unassigned
        "Al\u2028ice",  # Zl: a line separator
    ],
)
def test_names_refuse_invisible_private_and_unassigned_characters(name):
    _, errors = _clean(first_name=name)
    assert errors == {"first_name": ["control_characters"]}


def test_names_are_checked_after_normalisation():
    # Full-width brackets become < and >, which names can't contain.
    _, errors = _clean(first_name="\uff1cb\uff1eAlice")
    assert errors == {"first_name": ["invalid_name"]}


@pytest.mark.parametrize("name", ["Nguyễn", "Dvořák", "กิ่ง", "a\u0336\u0336"])
def test_names_may_carry_two_combining_marks_on_a_letter(name):
    _, errors = _clean(first_name=name)
    assert not errors


def test_names_refuse_three_combining_marks_in_a_row():
    _, errors = _clean(first_name="Zal\u0336\u0336\u0336go")
    assert errors == {"first_name": ["combining_marks"]}


# --- Emails -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "code"),
    [
        ("user@[1.2.3.4]", "ip_literal"),
        ("user@[::1]", "ip_literal"),
        ("user@localhost", "dotless"),
        ("a" * 65 + "@example.com", "local_part_too_long"),
        ("user@☃.net", "invalid"),  # valid in IDNA 2003, not in IDNA 2008
    ],
)
def test_emails_mail_cannot_reach_are_refused(email, code):
    for form in (SignupForm(signup_data(email=email)), ResendForm({"email": email})):
        assert not form.is_valid()
        assert [error["code"] for error in form.errors.get_json_data()["email"]] == [code]


def test_a_local_part_of_64_characters_is_allowed():
    _, errors = _clean(email="a" * 64 + "@example.com")
    assert not errors


@pytest.mark.parametrize(
    "email",
    ["Alice@BÜCHER.de", "Alice@bücher.de", "Alice@xn--bcher-kva.de", "Alice@XN--BCHER-KVA.DE"],
)
def test_an_international_domain_and_its_punycode_are_stored_as_one(email):
    cleaned, errors = _clean(email=email)
    assert not errors
    assert cleaned["email"] == "Alice@xn--bcher-kva.de"
    form = ResendForm({"email": email})
    assert form.is_valid()
    assert form.cleaned_data["email"] == "Alice@xn--bcher-kva.de"


def test_an_address_too_long_once_its_domain_is_in_ascii_is_refused():
    # 27 CJK characters make a 63-character ASCII label: 148 characters typed, 256 stored.
    label = "".join(chr(0x4E00 + 37 * i) for i in range(27))
    email = "a" * 60 + "@" + ".".join([label] * 3) + ".com"
    _, errors = _clean(email=email)
    assert errors == {"email": ["max_length"]}


@pytest.mark.parametrize(
    ("address", "canonical"),
    [
        ("Alice@Example.COM", "Alice@example.com"),
        ("Alice@Bücher.DE", "Alice@xn--bcher-kva.de"),
        ("a@straße.de", "a@xn--strae-oqa.de"),  # its own domain, not strasse.de
        ("a@\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com", "a@example.com"),
        # Not addresses at all: returned, with whatever domain lower-cased, never an error.
        ("no at sign", "no at sign"),
        ("", ""),
        ("a@", "a@"),
        ("a@B..C", "a@b..c"),
        ("a@\ud800", "a@\ud800"),
        ("a@b@C.com", "a@b@c.com"),
    ],
)
def test_canonical_email_lowercases_the_domain_and_writes_it_in_ascii(address, canonical):
    assert canonical_email(address) == canonical


# --- Usernames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "username",
    [
        "postmaster",
        "post.master",
        "Web_Master",
        "no-reply",
        "NoReply",
        "a.d.m.i.n",
        "ROOT",
        "abuse",
    ],
)
def test_reserved_usernames_are_refused_whatever_the_case_and_separators(username):
    _, errors = _clean(username=username)
    assert errors == {"username": ["reserved"]}


def test_usernames_that_only_contain_a_reserved_word_are_free():
    _, errors = _clean(username="rootbeer")
    assert not errors
