"""The retry policy of the ledgers: which provider errors are final, and how long to wait."""

import smtplib

import pytest
import requests
from anymail.exceptions import AnymailAPIError, AnymailRecipientsRefused

from signup.workflow import EMAIL, WEBHOOK, retry_delay
from signup.workflow.internal.ledger import email_error_is_final as is_permanent
from signup.workflow.internal.ledger import retry_after_seconds


def _api_error(status: int, **headers) -> AnymailAPIError:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers)
    return AnymailAPIError("provider said no", status_code=status, response=response)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_provider_4xx_is_permanent(status):
    assert is_permanent(_api_error(status))


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
def test_timeouts_conflicts_rate_limits_and_5xx_are_retried(status):
    assert not is_permanent(_api_error(status))


def test_an_api_error_without_an_answer_is_retried():
    assert not is_permanent(AnymailAPIError("connection reset"))


def test_refused_recipients_are_permanent():
    assert is_permanent(AnymailRecipientsRefused("all recipients refused"))


@pytest.mark.parametrize(
    ("codes", "permanent"), [((550,), True), ((450,), False), ((550, 451), False), ((), False)]
)
def test_smtp_recipients_are_permanent_only_when_every_one_got_a_5xx(codes, permanent):
    refused = {f"r{i}@example.com": (code, b"no") for i, code in enumerate(codes)}
    assert is_permanent(smtplib.SMTPRecipientsRefused(refused)) is permanent


@pytest.mark.parametrize(("code", "permanent"), [(554, True), (421, False), (451, False)])
def test_an_smtp_reply_is_permanent_when_it_is_a_5xx(code, permanent):
    assert is_permanent(smtplib.SMTPResponseException(code, b"reply")) is permanent


@pytest.mark.parametrize("error", [ConnectionError(), TimeoutError(), OSError(), ValueError()])
def test_network_and_unknown_errors_are_retried(error):
    assert not is_permanent(error)


@pytest.fixture
def backoff(settings):
    settings.SIGNUP_EMAIL_RETRY_DELAY = 5.0
    settings.SIGNUP_EMAIL_RETRY_MAX_DELAY = 900.0


@pytest.mark.parametrize("attempt", range(1, 13))
def test_the_delay_doubles_with_equal_jitter_up_to_the_cap(backoff, attempt):
    full = min(900.0, 5.0 * 2 ** (attempt - 1))
    delays = [retry_delay(EMAIL, attempt) for _ in range(200)]
    assert all(full / 2 <= delay <= full for delay in delays)
    if full < 900.0:
        assert len(set(delays)) > 1  # jittered, so retries of many emails spread out


def test_each_ledger_backs_off_by_its_own_settings(backoff, settings):
    settings.SIGNUP_WEBHOOK_RETRY_DELAY = 60.0
    settings.SIGNUP_WEBHOOK_RETRY_MAX_DELAY = 100.0
    assert all(30.0 <= retry_delay(WEBHOOK, 1) <= 60.0 for _ in range(50))
    assert retry_delay(WEBHOOK, 9) <= 100.0
    assert retry_delay(EMAIL, 1) <= 5.0


def test_a_providers_retry_after_is_honoured_but_capped(backoff):
    assert retry_delay(EMAIL, 1, retry_after=120) >= 120
    assert retry_delay(EMAIL, 1, retry_after=86400) == 900.0


@pytest.mark.parametrize(("value", "seconds"), [("120", 120.0), ("0", 0.0), ("1.5", 1.5)])
def test_a_retry_after_in_seconds_is_read(value, seconds):
    assert retry_after_seconds(value) == seconds


@pytest.mark.parametrize("value", ["", "soon", "Wed, 21 Oct 2026 07:28:00 GMT", "-5"])
def test_a_retry_after_that_is_not_seconds_leaves_the_backoff_alone(backoff, value):
    assert 2.5 <= retry_delay(EMAIL, 1, retry_after=retry_after_seconds(value)) <= 5.0
