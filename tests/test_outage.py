"""The email provider down for everyone (workflow.internal.outage): emails are held without
using their attempts, none is dead-lettered however long it lasts, and every one goes out
once, oldest first, as soon as the provider is back; one email refused alone is retried and
dead-lettered as before."""

import time

import pytest
from anymail.exceptions import AnymailAPIError
from django.core import mail
from django.core.cache import cache
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend

from signup import workflow
from signup.models import OutboundEmail
from tests.helpers import sent_to, signup_data, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class ProviderDown(LocmemBackend):
    """A provider that answers every call with an error (`status`: 503, unless told) while
    `down`, counting the calls."""

    down = True
    status = None  # 503
    calls = 0

    def send_messages(self, messages):
        ProviderDown.calls += 1
        if ProviderDown.down:
            if ProviderDown.status is not None:
                raise AnymailAPIError(status_code=ProviderDown.status, response=_Response())
            raise AnymailAPIError("503 Service Unavailable")
        return super().send_messages(messages)


class _Response:
    """What anymail reads of a provider's answer to describe it."""

    status_code, reason, text, headers = 429, "Too Many Requests", "", {}

    def json(self):
        return {}


@pytest.fixture
def provider(settings):
    settings.EMAIL_BACKEND = f"{__name__}.ProviderDown"
    settings.SIGNUP_EMAIL_RETRY_DELAY = 0.2
    settings.SIGNUP_EMAIL_RETRY_MAX_DELAY = 0.5
    settings.SIGNUP_EMAIL_MAX_ATTEMPTS = 3
    settings.SIGNUP_EMAIL_OUTAGE_AFTER = 3
    settings.SIGNUP_EMAIL_OUTAGE_PROBE = 1
    ProviderDown.down, ProviderDown.status, ProviderDown.calls = True, None, 0
    return ProviderDown


def emails(status: str) -> int:
    return OutboundEmail.objects.filter(status=status).count()


def test_an_outage_holds_every_email_and_sends_each_once_when_the_provider_is_back(
    provider, worker
):
    addresses = [f"out{n}@example.com" for n in range(8)]
    for n, address in enumerate(addresses):
        workflow.start_signup(**signup_data(username=f"out{n}", email=address))
    wait_for(lambda: workflow.held_emails().count() == 8, message="8 emails held")
    calls = provider.calls
    # Held, not retried: the provider is left alone, and no attempt is used.
    for _ in range(2):
        time.sleep(0.6)
        workflow.sweep()  # past the outage's second, the sweeper tries the oldest held one
    assert provider.calls <= calls + 4, (calls, provider.calls)
    assert emails("failed") == 0
    held = workflow.held_emails()
    assert max(held.values_list("attempts", flat=True)) < 3  # none near its last
    assert "503" in held.order_by("id").first().last_error  # why it waits

    provider.down = False
    time.sleep(1.1)  # the outage's time is up: the sweeper's attempt succeeds
    workflow.sweep()
    wait_for(lambda: emails("sent") == 8, message="every held email sent")
    for address in addresses:
        assert len(sent_to(address, "Verify")) == 1
    assert emails("failed") == 0 and not workflow.held_emails().exists()
    # The sweeper's try first, then the others oldest first.
    order = [message.to[0] for message in mail.outbox]
    assert order[1:] == [address for address in addresses if address != order[0]]


def test_held_emails_go_at_the_next_sweep_once_one_was_sent_even_if_the_cache_forgot(
    provider, worker
):
    for n in range(4):
        workflow.start_signup(**signup_data(username=f"out{n}", email=f"out{n}@example.com"))
    wait_for(lambda: workflow.held_emails().count() == 4, message="4 emails held")
    provider.down = False
    cache.clear()  # the outage's marks are gone (a cache restarted)
    workflow.start_signup(**signup_data(username="new", email="new@example.com"))
    wait_for(lambda: sent_to("new@example.com", "Verify"), message="a new email sent")
    workflow.sweep()
    wait_for(lambda: emails("sent") == 5, message="the held emails sent")


def test_a_rate_limit_is_no_outage(provider, worker, settings):
    provider.status = 429
    for n in range(4):
        workflow.start_signup(**signup_data(username=f"out{n}", email=f"out{n}@example.com"))
    wait_for(lambda: emails("failed") == 4, message="4 emails dead-lettered after retries")
    assert not workflow.held_emails().exists()


def test_one_email_refused_alone_is_still_dead_lettered(provider, worker):
    workflow.start_signup(**signup_data())
    wait_for(lambda: emails("failed") == 1, message="the email dead-lettered")
    assert not workflow.held_emails().exists()
    assert provider.calls == 3
