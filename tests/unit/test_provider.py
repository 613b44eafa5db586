"""The stand-in Postmark the benchmarks send through: a seeded lognormal latency that does not
hold up other calls, occasional throttling and server errors, and when each message was
accepted."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from harness.provider import OCCASIONAL_ERRORS, Answer, FakePostmark, Latency, draws

TOKEN = "provider-unit-test-token"


@pytest.fixture
def provider():
    started = FakePostmark(token=TOKEN, keep_bodies=False)
    started.start()
    yield started
    started.stop()


def send(provider: FakePostmark, to: str, subject: str = "Hello") -> requests.Response:
    body = {
        "From": "no-reply@example.com",
        "To": to,
        "Subject": subject,
        "TextBody": "hi",
        "Tag": "signup-welcome",
        "Metadata": {"signup_email_id": to.split("@")[0]},
    }
    return requests.post(
        f"{provider.url}email",
        data=json.dumps(body),
        headers={"X-Postmark-Server-Token": TOKEN, "Content-Type": "application/json"},
        timeout=10,
    )


def test_the_latency_has_the_median_and_the_99th_percentile_it_was_given():
    latency = Latency(median=0.150, p99=0.600)
    assert latency.seconds(0.5) == pytest.approx(0.150)
    assert latency.seconds(0.99) == pytest.approx(0.600)
    sample = sorted(latency.seconds(draws(7, str(n), 1)[0]) for n in range(20_000))
    assert sample[10_000] == pytest.approx(0.150, rel=0.05)
    assert sample[19_800] == pytest.approx(0.600, rel=0.1)
    with pytest.raises(ValueError):
        Latency(median=0.2, p99=0.1)


def test_the_draws_depend_on_the_seed_and_the_message_only():
    assert draws(1, "a", 3) == draws(1, "a", 3)
    assert draws(1, "a", 3) != draws(2, "a", 3)
    assert all(0 < value < 1 for value in draws(1, "b", 3))


def test_concurrent_calls_wait_their_latency_side_by_side(provider):
    provider.latency = Latency(median=0.3, p99=0.3)  # every call 0.3 s
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(pool.map(lambda n: send(provider, f"p{n}@example.com"), range(40)))
    elapsed = time.monotonic() - started
    assert [answer.status_code for answer in answers] == [200] * 40
    assert 0.3 <= elapsed < 2.0, elapsed  # one after the other would take 12 s
    for accepted in provider.accepted:
        assert accepted.accepted_at - accepted.received_at >= 0.29
        assert accepted.tag == "signup-welcome"
        assert accepted.text_body == ""  # keep_bodies=False


def test_a_share_of_the_calls_fail_transiently_and_the_same_ones_each_run(provider):
    provider.error_rate = 0.2
    answers = [send(provider, f"e{n}@example.com").status_code for n in range(300)]
    failed = [n for n, status in enumerate(answers) if status != 200]
    assert {answers[n] for n in failed} == {429, 500}
    assert 30 <= len(failed) <= 90
    assert len(provider.accepted) == 300 - len(failed)
    assert {a.answer for a in provider.attempts} == {Answer.ACCEPT, *OCCASIONAL_ERRORS}

    provider.reset()
    again = [send(provider, f"e{n}@example.com").status_code for n in range(300)]
    assert again == answers
    # A message sent again draws anew: a retry is not doomed to fail the same way.
    retried = [send(provider, f"e{n}@example.com").status_code for n in failed]
    assert retried.count(200) > len(failed) / 2


def test_each_call_is_seen_as_it_arrives_before_it_is_decided(provider):
    provider.latency = Latency(median=0.2, p99=0.2)
    seen = []
    provider.on_request = lambda request: seen.append((request, len(provider.accepted)))
    send(provider, "watched@example.com")
    ((request, accepted_before),) = seen
    assert (request.to, request.email_id, request.tag) == (
        "watched@example.com",
        "watched",
        "signup-welcome",
    )
    assert accepted_before == 0
    assert provider.wait_for_accepted(1, timeout=1)
    assert provider.accepted[0].received_at == request.received_at


def test_the_anymail_postmark_backend_sends_through_it(provider, settings):
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": TOKEN, "POSTMARK_API_URL": provider.url}
    from anymail.exceptions import AnymailAPIError
    from django.core.mail import EmailMessage

    message = EmailMessage("Hi", "body", "no-reply@example.com", ["ada@example.com"])
    message.tags = ["signup-welcome"]
    message.metadata = {"signup_email_id": "42"}
    message.send()
    (accepted,) = provider.accepted
    assert (accepted.email_id, accepted.tag) == ("42", "signup-welcome")
    assert message.anymail_status.message_id == accepted.message_id

    provider.answer_next(Answer.THROTTLED)
    with pytest.raises(AnymailAPIError) as refused:
        EmailMessage("Hi", "body", "no-reply@example.com", ["bob@example.com"]).send()
    assert refused.value.status_code == 429
