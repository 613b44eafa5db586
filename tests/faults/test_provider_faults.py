"""A failing email provider, for real: anymail's Postmark backend in a real worker talks HTTP to
a stand-in Postmark that errors, refuses, throttles, hangs, goes away or loses its answers.

What is asserted is what the provider saw (calls, accepted messages) and what the ledger, the
timeline and the admin show.
"""

import itertools
import json
import time
from collections.abc import Sequence

import pytest

from harness.provider import Answer, FakePostmark
from signup.emails import message_id
from signup.models import OutboundEmail, SignupEvent
from tests.helpers import signed_up, signup_data, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.postgres, pytest.mark.redis]

TOKEN = "postmark-server-token-for-tests"
CLIENT_TIMEOUT = 0.6  # anymail's REQUESTS_TIMEOUT: how long a hung provider holds a worker
RETRY_DELAY = 0.2
RETRY_MAX_DELAY = 1.0
FAILURES = 4  # failed calls before the provider recovers: enough for the backoff to reach its cap
DELIVER_TASK = "signup.tasks.deliver_email"

_FAULT_NAMES = {
    Answer.SERVER_ERROR: "500 Internal Server Error",
    Answer.THROTTLED: "429 rate limit",
    Answer.HANG: f"no answer within the {CLIENT_TIMEOUT}s client timeout",
    Answer.SLOW: f"slow answers ({CLIENT_TIMEOUT / 2}s, within the timeout)",
    Answer.INACTIVE_RECIPIENT: "422/406 inactive recipient",
    Answer.UNAUTHORIZED: "401 bad server token",
    Answer.BAD_REQUEST: "400 bad request",
    Answer.ACCEPT_THEN_DROP: "accepts, then drops the connection unanswered",
}


@pytest.fixture
def postmark(settings):
    """The stand-in provider, and the settings that send through it with anymail's Postmark
    backend. Request it before `worker`, so the worker stops before the provider does."""
    provider = FakePostmark(
        token=TOKEN, slow_seconds=CLIENT_TIMEOUT / 2, hang_seconds=CLIENT_TIMEOUT * 5
    )
    provider.start()
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {
        "POSTMARK_SERVER_TOKEN": TOKEN,
        "POSTMARK_API_URL": provider.url,
        "REQUESTS_TIMEOUT": CLIENT_TIMEOUT,
    }
    settings.SIGNUP_EMAIL_RETRY_DELAY = RETRY_DELAY
    settings.SIGNUP_EMAIL_RETRY_MAX_DELAY = RETRY_MAX_DELAY
    settings.SIGNUP_EMAIL_MAX_ATTEMPTS = 10
    yield provider
    provider.stop()


def _start(username: str) -> OutboundEmail:
    """Start a signup (the worker sends its verification email); return that ledger row."""
    signup = signed_up(**signup_data(username=username, email=f"{username}@example.com"))
    return signup.emails.get()


def _ledger(email: OutboundEmail) -> OutboundEmail:
    return OutboundEmail.objects.get(pk=email.pk)


def _wait_for_status(email: OutboundEmail, *statuses: str, timeout: float = 20) -> OutboundEmail:
    return wait_for(
        lambda: (row := _ledger(email)).status in statuses and row,
        timeout=timeout,
        message=f"email {email.pk} to be {' or '.join(statuses)}",
    )


def _deliveries_in_flight(broker) -> int:
    """deliver_email tasks waiting in the Redis queues or held by the worker (unacked, which
    includes retries waiting for their countdown)."""
    raw = [broker.hget("unacked", tag) for tag in broker.hkeys("unacked")]
    messages = [json.loads(value)[0] for value in raw if value]
    for key in broker.scan_iter("celery*"):
        if broker.type(key) == b"list":
            messages += [json.loads(value) for value in broker.lrange(key, 0, -1)]
    return sum(m["headers"].get("task") == DELIVER_TASK for m in messages)


def _wait_until_idle(broker) -> None:
    """Wait until no delivery is queued, running or waiting to be retried.

    Asked twice, a little apart: a message the worker has just popped from its queue is in
    neither place for an instant before kombu records it as unacked.
    """

    def idle() -> bool:
        if _deliveries_in_flight(broker):
            return False
        time.sleep(0.1)
        return not _deliveries_in_flight(broker)

    wait_for(idle, timeout=20, message="no email delivery left in flight")


def _gaps(attempts) -> list[float]:
    return [round(b.at - a.at, 3) for a, b in itertools.pairwise(attempts)]


def _backoff_floor(retries: int) -> float:
    """The shortest countdown tasks.retry_delay can pick before retry number `retries`."""
    return min(RETRY_MAX_DELAY, RETRY_DELAY * 2**retries) / 2


def _outcome(
    postmark: FakePostmark, wanted: Sequence[OutboundEmail], refused: Sequence[OutboundEmail] = ()
) -> dict:
    """What the provider received for emails that should arrive (`wanted`) and for emails it
    refuses for good (`refused`), in the keys tests/faults/report.py tabulates."""
    emails = [*wanted, *refused]
    copies = {email.pk: len(postmark.accepted_for(email.pk)) for email in emails}
    return {
        "signups": len(emails),
        "emails_expected": len(wanted),
        "emails_received": sum(copies.values()),
        "delivered": sum(1 for email in wanted if copies[email.pk]),
        "lost": sum(1 for email in wanted if not copies[email.pk]),
        "duplicated": sum(max(n - 1, 0) for n in copies.values()),
        "dead_lettered": sum(_ledger(email).status == "failed" for email in emails),
        "provider_calls": [len(postmark.attempts_for(email.pk)) for email in emails],
        "ledger_attempts": [_ledger(email).attempts for email in emails],
    }


# --- Transient failures are retried with backoff ----------------------------------------


@pytest.mark.parametrize(
    ("fault", "error_text"),
    [
        (Answer.SERVER_ERROR, "Postmark API response 500"),
        (Answer.THROTTLED, "Postmark API response 429"),
        (Answer.HANG, "Read timed out"),
    ],
)
def test_transient_failures_are_retried_with_backoff_and_delivered_once(
    postmark, worker, broker, fault_rounds, fault_report, fault, error_text
):
    emails, gaps = [], []
    for round_number in range(fault_rounds):
        postmark.answer_next(fault, times=FAILURES)
        email = _start(f"transient{round_number}")
        emails.append(email)

        # The error is in the ledger while the email waits for its next attempt.
        seen_error = wait_for(lambda: _ledger(email).last_error, message="a recorded error")  # noqa: B023
        assert error_text in seen_error
        assert _wait_for_status(email, "sent", "failed").status == "sent"
        _wait_until_idle(broker)

        calls = postmark.attempts_for(email.pk)
        (copy,) = postmark.accepted_for(email.pk)
        assert [call.answer for call in calls] == [fault] * FAILURES + [Answer.ACCEPT]
        assert {call.path for call in calls} == {"/email"}
        row = _ledger(email)
        assert (row.attempts, row.last_error) == (FAILURES + 1, "")
        assert row.provider_message_id == copy.message_id
        assert copy.to == f"transient{round_number}@example.com"
        assert "Verify" in copy.subject and "/signup/verify/" in copy.text_body

        # Each wait is at least the backoff's floor for that retry, and the waits grow.
        round_gaps = _gaps(calls)
        gaps.append(round_gaps)
        for retries, gap in enumerate(round_gaps):
            assert gap >= _backoff_floor(retries) - 0.02, round_gaps
        assert round_gaps[-1] > round_gaps[0], round_gaps

    fault_report.update(
        fault=f"provider: {_FAULT_NAMES[fault]}, {FAILURES} times, then accepts",
        rounds=fault_rounds,
        **_outcome(postmark, emails),
        gaps_seconds=gaps,
    )
    assert fault_report["delivered"] == fault_rounds
    assert fault_report["duplicated"] == 0


def test_a_reminder_sent_in_its_own_task_goes_on_retrying_when_the_send_fails(
    postmark, worker, broker, settings
):
    settings.SIGNUP_REMINDER_INTERVAL = 1
    settings.SIGNUP_MAX_REMINDERS = 1
    verification = _start("reminded")
    assert _wait_for_status(verification, "sent").status == "sent"
    postmark.answer_next(Answer.SERVER_ERROR, times=2)

    reminder = wait_for(
        lambda: OutboundEmail.objects.filter(kind="reminder").first(), message="reminder 1"
    )
    assert _wait_for_status(reminder, "sent", "failed").status == "sent"
    _wait_until_idle(broker)
    calls = postmark.attempts_for(reminder.pk)
    assert [call.answer for call in calls] == [Answer.SERVER_ERROR] * 2 + [Answer.ACCEPT]
    assert len(postmark.accepted_for(reminder.pk)) == 1
    assert _ledger(reminder).attempts == 3
    # The first attempt was made by the reminder's own task, as soon as it took the reminder.
    wall_clock = time.time() - time.monotonic()  # the stand-in stamps time.monotonic()
    first_attempt = calls[0].at + wall_clock - _ledger(reminder).created_at.timestamp()
    assert 0 <= first_attempt < 0.5, first_attempt


def test_a_throttled_send_waits_at_least_as_long_as_retry_after_asks(postmark, worker, broker):
    postmark.retry_after = "0.8"  # well above the first backoff here (0.1 s to 0.2 s)
    postmark.answer_next(Answer.THROTTLED, times=1)
    email = _start("throttled")
    assert _wait_for_status(email, "sent", "failed").status == "sent"
    _wait_until_idle(broker)
    calls = postmark.attempts_for(email.pk)
    assert [call.answer for call in calls] == [Answer.THROTTLED, Answer.ACCEPT]
    assert _gaps(calls)[0] >= 0.8 - 0.02
    assert len(postmark.accepted_for(email.pk)) == 1


def test_a_sending_thread_keeps_its_connection_and_opens_a_new_one_after_an_error(
    postmark, worker, broker
):
    """One kept-alive connection per sending thread (no TCP/TLS handshake per email), given
    up when a call fails, so that a retry never rides a connection in an unknown state."""
    for username in ("kept1", "kept2"):
        assert _wait_for_status(_start(username), "sent").status == "sent"
    postmark.answer_next(Answer.SERVER_ERROR, times=1)
    assert _wait_for_status(_start("kept3"), "sent", "failed").status == "sent"
    _wait_until_idle(broker)
    calls = postmark.attempts
    assert [call.answer for call in calls] == [Answer.ACCEPT] * 2 + [
        Answer.SERVER_ERROR,
        Answer.ACCEPT,
    ]
    first, second, failed, retried = (call.client for call in calls)
    assert first == second == failed, "the worker's thread opened a connection per email"
    assert retried != failed, "the retry reused the connection of the failed call"


def test_an_unreachable_provider_is_retried_until_it_is_back(
    postmark, worker, broker, fault_rounds, fault_report
):
    emails, refused, restored = [], [], []
    for round_number in range(fault_rounds):
        postmark.stop()
        email = _start(f"refused{round_number}")
        emails.append(email)
        # A third attempt has started only once the second was refused too.
        down = wait_for(
            lambda: (row := _ledger(email)).attempts >= 3 and row,  # noqa: B023
            message="two attempts refused by the closed port",
        )
        assert "Connection refused" in down.last_error
        assert down.status == "sending"
        postmark.start()  # the same port
        restarted_at = time.monotonic()

        row = _wait_for_status(email, "sent", "failed")
        _wait_until_idle(broker)
        assert row.status == "sent"
        (call,) = postmark.attempts_for(email.pk)  # the attempts while down never reached it
        assert call.answer is Answer.ACCEPT
        assert len(postmark.accepted_for(email.pk)) == 1
        assert _ledger(email).attempts >= 3
        refused.append(_ledger(email).attempts - 1)
        restored.append(call.at - restarted_at)

    fault_report.update(
        fault="provider: unreachable (connection refused) until restarted",
        rounds=fault_rounds,
        **_outcome(postmark, emails),
        refused_attempts=refused,
        seconds_to_restore=max(restored),
    )
    assert fault_report["duplicated"] == 0


def test_slow_answers_within_the_timeout_are_one_attempt_each(
    postmark, worker, broker, fault_rounds, fault_report
):
    postmark.answer(Answer.SLOW)
    emails = [_start(f"slow{n}") for n in range(fault_rounds + 2)]
    for email in emails:
        assert _wait_for_status(email, "sent", "failed").status == "sent"
    _wait_until_idle(broker)

    for email in emails:
        (call,) = postmark.attempts_for(email.pk)
        assert call.answer is Answer.SLOW
        assert len(postmark.accepted_for(email.pk)) == 1
        assert _ledger(email).attempts == 1
    fault_report.update(
        fault=f"provider: {_FAULT_NAMES[Answer.SLOW]}",
        **_outcome(postmark, emails),
    )
    assert fault_report["duplicated"] == 0


# --- Permanent failures are not retried ---------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error_text"),
    [
        (Answer.INACTIVE_RECIPIENT, "AnymailRecipientsRefused"),
        (Answer.UNAUTHORIZED, "Postmark API response 401"),
        (Answer.BAD_REQUEST, "Postmark API response 400"),
    ],
)
def test_permanent_failures_are_dead_lettered_after_one_attempt(
    postmark, worker, broker, fault_rounds, fault_report, fault, error_text
):
    emails = []
    for round_number in range(fault_rounds):
        # Only the first call fails: a retry would be accepted, and show up below.
        postmark.answer_next(fault)
        email = _start(f"permanent{round_number}")
        emails.append(email)

        row = _wait_for_status(email, "failed", "sent")
        _wait_until_idle(broker)
        assert row.status == "failed"
        assert error_text in row.last_error
        assert [call.answer for call in postmark.attempts_for(email.pk)] == [fault]
        assert postmark.accepted_for(email.pk) == []
        assert _ledger(email).attempts == 1
        (event,) = SignupEvent.objects.filter(signup_id=email.signup_id, kind="email_failed")
        assert event.detail.startswith("verification #1: ")
        assert error_text in event.detail

    fault_report.update(
        fault=f"provider: {_FAULT_NAMES[fault]} (permanent)",
        rounds=fault_rounds,
        **_outcome(postmark, [], refused=emails),
    )
    assert fault_report["emails_received"] == 0


# --- Exhausted retries and the dead letter ---------------------------------------------------


def test_exhausted_retries_end_failed_after_the_attempt_budget(
    postmark, worker, broker, settings, fault_rounds, fault_report
):
    settings.SIGNUP_EMAIL_MAX_ATTEMPTS = 3
    postmark.answer(Answer.SERVER_ERROR)
    emails = []
    for round_number in range(fault_rounds):
        email = _start(f"exhausted{round_number}")
        emails.append(email)
        row = _wait_for_status(email, "failed", "sent")
        _wait_until_idle(broker)
        assert row.status == "failed"
        assert row.attempts == 3
        assert row.last_error.startswith("gave up after 3 attempts; last error: ")
        assert "Postmark API response 500" in row.last_error
        assert len(postmark.attempts_for(email.pk)) == 3
        assert postmark.accepted_for(email.pk) == []
        (event,) = SignupEvent.objects.filter(signup_id=email.signup_id, kind="email_failed")
        assert "gave up after 3 attempts" in event.detail

    fault_report.update(
        fault="provider: 500 on every call, until 3 attempts are spent",
        rounds=fault_rounds,
        **_outcome(postmark, [], refused=emails),
    )


def test_dead_letter_is_seen_and_re_driven_from_the_admin(
    postmark, worker, broker, settings, admin_client, fault_report
):
    settings.SIGNUP_EMAIL_MAX_ATTEMPTS = 3
    postmark.answer(Answer.SERVER_ERROR)
    email = _start("deadletter")
    assert _wait_for_status(email, "failed", "sent").status == "failed"
    _wait_until_idle(broker)

    listing = admin_client.get("/admin/signup/outboundemail/?status__exact=failed")
    assert listing.status_code == 200
    (listed,) = listing.context["cl"].result_list
    assert (listed.pk, listed.attempts) == (email.pk, 3)
    html = listing.content.decode()
    assert "gave up after 3 attempts" in html
    assert '<td class="field-attempts">3</td>' in html
    page = admin_client.get(f"/admin/signup/outboundemail/{email.pk}/change/")
    assert page.status_code == 200
    assert "Postmark API response 500" in page.content.decode()

    postmark.answer(Answer.ACCEPT)  # the provider recovers; then the operator re-drives
    redrive_requested_at = time.monotonic()
    response = admin_client.post(
        "/admin/signup/outboundemail/",
        {"action": "redrive", "_selected_action": [email.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "1 of 1 email(s) re-driven" in response.content.decode()

    row = _wait_for_status(email, "sent", "failed")
    _wait_until_idle(broker)
    assert row.status == "sent"
    assert row.attempts == 1  # a fresh budget
    (copy,) = postmark.accepted_for(email.pk)
    assert row.provider_message_id == copy.message_id
    assert len(postmark.attempts_for(email.pk)) == 4
    kinds = list(
        SignupEvent.objects.filter(signup_id=email.signup_id).values_list("kind", flat=True)
    )
    assert kinds == ["submitted", "email_failed", "email_redriven", "verification_sent"]
    assert (
        admin_client.get("/admin/signup/outboundemail/?status__exact=failed")
        .context["cl"]
        .result_count
        == 0
    )

    fault_report.update(
        fault="provider: 500 x3 (dead letter), recovers, re-driven from the admin",
        **_outcome(postmark, [email]),
        seconds_to_restore=postmark.attempts_for(email.pk)[-1].at - redrive_requested_at,
    )


# --- The at-least-once window ------------------------------------------------------------


def test_an_accepted_email_whose_answer_is_lost_arrives_at_least_once(
    postmark, worker, broker, fault_rounds, fault_report
):
    """The provider took the message but the worker never heard so: the worker can't tell
    this from a failure and retries (docs/RELIABILITY.md's window), so the recipient may get it
    twice, under one Message-ID; never zero times, never more than once per lost answer."""
    emails = []
    for round_number in range(fault_rounds):
        postmark.answer_next(Answer.ACCEPT_THEN_DROP)
        email = _start(f"lost{round_number}")
        emails.append(email)
        row = _wait_for_status(email, "sent", "failed")
        _wait_until_idle(broker)

        assert row.status == "sent"
        copies = postmark.accepted_for(email.pk)
        assert 1 <= len(copies) <= 2
        assert row.provider_message_id == copies[-1].message_id
        assert row.attempts == len(postmark.attempts_for(email.pk))
        message_ids = {copy.headers.get("Message-ID") for copy in copies}
        assert message_ids == {message_id(row)}

    fault_report.update(
        fault=f"provider: {_FAULT_NAMES[Answer.ACCEPT_THEN_DROP]}, once",
        rounds=fault_rounds,
        **_outcome(postmark, emails),
    )
    assert fault_report["lost"] == 0


# --- One failing address does not hold up the others ---------------------------------------


def test_a_failing_address_neither_blocks_nor_duplicates_other_emails(
    postmark, worker, broker, settings, fault_rounds, fault_report
):
    settings.SIGNUP_EMAIL_MAX_ATTEMPTS = 50  # the flaky address keeps retrying throughout
    postmark.answer_for("refused@example.com", Answer.INACTIVE_RECIPIENT)
    postmark.answer_for("flaky@example.com", Answer.SERVER_ERROR)
    refused = _start("refused")
    flaky = _start("flaky")
    healthy = [_start(f"healthy{n}") for n in range(fault_rounds + 3)]

    for email in healthy:
        assert _wait_for_status(email, "sent", "failed").status == "sent"
    # All delivered while the flaky address is still being retried.
    flaky_now = _ledger(flaky)
    assert flaky_now.status == "sending"
    assert flaky_now.attempts >= 1
    assert _wait_for_status(refused, "failed", "sent").attempts == 1

    postmark.answer_for("flaky@example.com", None)
    assert _wait_for_status(flaky, "sent", "failed").status == "sent"
    _wait_until_idle(broker)

    for email in [*healthy, flaky]:
        assert len(postmark.accepted_for(email.pk)) == 1, email.to_email
    for email in healthy:
        assert len(postmark.attempts_for(email.pk)) == 1, email.to_email
    assert postmark.accepted_for(refused.pk) == []
    assert len(postmark.attempts_for(refused.pk)) == 1

    fault_report.update(
        fault="provider: one address refused, one flaky (500), the others healthy",
        **_outcome(postmark, [*healthy, flaky], refused=[refused]),
        flaky_attempts_while_others_sent=flaky_now.attempts,
    )
    assert fault_report["lost"] == 0
    assert fault_report["duplicated"] == 0
