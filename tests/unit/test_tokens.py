"""Verification tokens and the sources a verification may credit; no service needed."""

import pytest
from django.core import signing

from signup import tokens, workflow


@pytest.mark.parametrize("source", ["verification", "reminder-1", "reminder-12", "reminder-999"])
def test_links_carry_the_emails_sources(source):
    assert tokens.is_link_source(source)
    assert tokens.is_token_source(source)


@pytest.mark.parametrize(
    "source",
    ["operator", "api", "reminder-0", "reminder-1000", "Verification", "verification\n", "", None],
)
def test_links_cannot_carry_other_sources(source):
    assert not tokens.is_link_source(source)


def test_only_the_api_adds_a_source_to_the_links_and_never_operator():
    assert tokens.is_token_source("api")
    assert not tokens.is_token_source("operator")


def test_verifying_by_token_cannot_credit_the_operator():
    # A genuine token: without the source rule, the workflow would go on to the database.
    token = signing.dumps([1, 0], salt=tokens.SALT)
    with pytest.raises(tokens.InvalidToken, match="unknown source"):
        workflow.verify_signup(token=token, source="operator")
