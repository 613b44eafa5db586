"""One mailbox, one budget: every spelling of an address that reaches one mailbox counts as
that mailbox, and what a signup stores is the address as typed, without quotes that change
nothing. No service needed."""

import pytest

from signup.forms import SignupForm
from signup.workflow import address_digest
from signup.workflow.mailbox import canonical_email, mailbox

VICTIM = "victim@bombed.example"


@pytest.mark.parametrize(
    "spelling",
    [
        VICTIM,
        '"victim"@bombed.example',  # quotes that change nothing
        '"vic\\tim"@bombed.example',  # a quoted pair is its character
        "VICTIM@BOMBED.EXAMPLE",
        "Victim@Bombed.Example",
        "victim@\uff42\uff4f\uff4d\uff42\uff45\uff44.example",  # full-width domain
        "victim+1@bombed.example",  # sub-addresses reach the same mailbox
        "victim+12@bombed.example",
        "Victim+Signup-Spam@bombed.example",
        '"victim+1"@bombed.example',
        "victim+@bombed.example",
        " victim@bombed.example ",
    ],
)
def test_every_spelling_of_one_mailbox_is_one_mailbox(spelling):
    assert mailbox(spelling) == VICTIM
    assert address_digest(spelling) == address_digest(VICTIM)


@pytest.mark.parametrize(
    ("spelling", "same_as"),
    [
        ("eve@bücher.example", "eve@xn--bcher-kva.example"),
        ("EVE@BÜCHER.example", "eve@xn--bcher-kva.example"),
        ("v.i.c.t.i.m@gmail.com", "victim@gmail.com"),  # Gmail ignores dots
        ("Victim.Name+shop@googlemail.com", "victimname@gmail.com"),
    ],
)
def test_international_domains_and_gmails_dots_are_one_mailbox(spelling, same_as):
    assert mailbox(spelling) == mailbox(same_as) == same_as


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (VICTIM, "victim2@bombed.example"),
        (VICTIM, "victim@bombed.example.org"),
        ("v.ictim@bombed.example", VICTIM),  # dots count outside Gmail
        ('"a..b"@bombed.example', "a.b@bombed.example"),  # quoted for a reason: its own
        ("+tag@bombed.example", "@bombed.example"),  # no base: the whole local part
        ("straße@straße.de", "straße@strasse.de"),  # IDNA 2008: not strasse.de
    ],
)
def test_other_mailboxes_stay_apart(one, other):
    assert mailbox(one) != mailbox(other)


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ('"victim"@Bombed.Example', "victim@bombed.example"),
        ('"victim+1"@bombed.example', "victim+1@bombed.example"),
        ('"v\\ictim"@bombed.example', "victim@bombed.example"),
        ('"a..b"@bombed.example', '"a..b"@bombed.example'),
        ('"a\\"b"@bombed.example', '"a\\"b"@bombed.example'),
        ("Victim+1@bombed.example", "Victim+1@bombed.example"),  # as typed: a sub-address stays
    ],
)
def test_a_signup_stores_the_address_as_typed_without_quotes_that_change_nothing(typed, stored):
    assert canonical_email(typed) == stored
    form = SignupForm({"username": "ada", "email": typed, "first_name": "Ada"})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["email"] == stored


@pytest.mark.parametrize(
    "address",
    [
        "jöhn@example.com",  # RFC 6531 local parts: refused, as Django's validator does
        "\uff56\uff49\uff43\uff54\uff49\uff4d@bombed.example",  # full-width local part
        '"john doe"@example.com',  # a quoted space
        "a..b@example.com",
        "victim@bombed.example.",
    ],
)
def test_local_parts_beyond_ascii_and_rfc_5321_are_refused_with_a_clear_error(address):
    form = SignupForm({"username": "ada", "email": address, "first_name": "Ada"})
    assert not form.is_valid()
    assert list(form.errors) == ["email"]
