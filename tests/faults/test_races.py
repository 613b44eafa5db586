"""Races between the workflow's steps, run many times with real threads, real PostgreSQL
connections, real HTTP and a real worker; what counts is the emails sent, the answers given
and the rows left behind.
"""

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import pytest
import requests
from celery.contrib.testing.worker import start_worker
from django.core import mail
from django.core.mail.backends import locmem
from django.db import connections
from django.utils import timezone

from config.celery import app as celery_app
from signup import tasks, workflow
from signup.models import OutboundEmail, Signup, SignupEvent
from tests.helpers import (
    API_KEY,
    contact_waiting,
    hidden_fields,
    queued,
    signed_up,
    signup_data,
    verify_link,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

# Races per round; FAULT_ROUNDS (the fault_rounds fixture) sets how many rounds.
RACES_PER_ROUND = 20
HTTP_TIMEOUT = 10
API_AUTH = {"Authorization": f"Bearer {API_KEY}"}


# --- What the outside world saw ----------------------------------------------------------


class StampingOutbox(locmem.EmailBackend):
    """Django's locmem outbox, with the moment each message was handed to the backend.

    The stamp is what tells "sent before the verification committed" from "sent after": it
    is compared with the verification's time, which the workflow takes under the row lock.
    """

    def send_messages(self, messages):
        for message in messages:
            message.handed_over_at = timezone.now()
        return super().send_messages(messages)


@dataclass(frozen=True)
class SentEmail:
    to: str
    kind: str  # verification, reminder or welcome, read from the subject
    link_source: str  # which email the link credits ("reminder-2"); "" without a link
    handed_over_at: datetime


_KINDS = {"Verify": "verification", "Reminder:": "reminder", "Welcome,": "welcome"}


def sent_emails() -> list[SentEmail]:
    found = []
    for message in list(mail.outbox):
        kind = _KINDS[message.subject.split()[0]]
        source = verify_link(message)[2] if kind != "welcome" else ""
        (to,) = message.to
        found.append(SentEmail(to, kind, source, message.handed_over_at))
    return found


def duplicated(emails: list[SentEmail]) -> int:
    """How many emails repeat one already sent (same recipient, kind and link)."""
    counts = Counter((e.to, e.kind, e.link_source) for e in emails)
    return sum(count - 1 for count in counts.values())


@pytest.fixture
def outbox(settings, mailoutbox):
    settings.EMAIL_BACKEND = f"{__name__}.StampingOutbox"
    return mailoutbox


# --- Racing ------------------------------------------------------------------------------


def race(attempts: Sequence[Sequence[Callable[[], object]]], *, timeout: float = 30) -> list:
    """Run each attempt's calls at the same instant, one thread per call, attempt by attempt.

    The threads line up on a barrier before every attempt, and each uses (and at the end
    closes) its own database connection. Return, per attempt, what each call returned or the
    exception it raised: an exception is an outcome the test asserts on.
    """
    width = len(attempts[0])
    barrier = threading.Barrier(width)
    outcomes = [[None] * width for _ in attempts]
    broken = []

    def racer(position: int) -> None:
        try:
            for number, calls in enumerate(attempts):
                barrier.wait(timeout=timeout)
                try:
                    outcomes[number][position] = calls[position]()
                except Exception as exc:
                    outcomes[number][position] = exc
        except threading.BrokenBarrierError as exc:
            broken.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=racer, args=(p,), daemon=True) for p in range(width)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout * len(attempts))
    assert not any(thread.is_alive() for thread in threads), "a racer never finished"
    assert not broken, "a racer waited too long at the barrier: a lock wait or a deadlock"
    return outcomes


def errors_in(outcomes: list, *expected: type[Exception]) -> list[Exception]:
    return [
        outcome
        for attempt in outcomes
        for outcome in attempt
        if isinstance(outcome, Exception) and not isinstance(outcome, expected)
    ]


def wait_until_settled(broker, *, timeout: float = 30) -> None:
    """Wait until the worker has taken every message and no ledger email is still unsent."""
    wait_for(
        lambda: (
            queued(broker) == 0
            and not OutboundEmail.objects.filter(status__in=("queued", "sending")).exists()
        ),
        timeout=timeout,
        message="the broker's queue drained and every ledger email sent or skipped",
    )


def wait_for_kind(kind: str, count: int, *, timeout: float = 30) -> None:
    wait_for(
        lambda: sum(e.kind == kind for e in sent_emails()) >= count,
        timeout=timeout,
        message=f"{count} {kind} emails",
    )


def start_signups(prefix: str, count: int) -> list[Signup]:
    return [
        signed_up(**signup_data(username=f"{prefix}{i}", email=f"{prefix}{i}@example.com"))
        for i in range(count)
    ]


def email_id(signup: Signup, kind: str, sequence: int = 1) -> int:
    return signup.emails.get(kind=kind, sequence=sequence).pk


def send_verification_emails(signups: list[Signup]) -> dict[str, str]:
    """Deliver each signup's verification email now; return the token its link carries."""
    for signup in signups:
        assert workflow.deliver(workflow.EMAIL, email_id(signup, "verification"))
    tokens = {}
    for message in mail.outbox:
        (to,) = message.to
        tokens[to] = verify_link(message)[1]
    return tokens


def signups_with_reminder_one_queued(broker, prefix: str, count: int):
    """Signups whose verification email went out and whose reminder 1 is waiting, unsent:
    taken, but its first attempt's lease is over (as if its worker died and the sweeper
    re-drove it), so a delivery claims it again.

    The messages setup put on the broker are dropped: the race delivers reminder 1 itself,
    and a worker picking up a copy first would take it out of the race.
    """
    signups = start_signups(prefix, count)
    tokens = send_verification_emails(signups)
    for signup in signups:
        assert workflow.take_reminder(signup_id=signup.pk, number=1)
    OutboundEmail.objects.filter(kind="reminder").update(in_flight_until=None)
    broker.flushdb()
    mail.outbox.clear()
    return signups, [tokens[signup.email] for signup in signups]


def emails_after(emails: list[SentEmail], moments: dict[str, datetime]) -> list[SentEmail]:
    """The emails handed over at or after their recipient's moment (verified, cancelled)."""
    return [e for e in emails if e.to in moments and e.handed_over_at >= moments[e.to]]


# --- 1. A verification racing the reminders ----------------------------------------------


def test_no_reminder_is_sent_after_a_verification_that_races_it(
    outbox, broker, worker_factory, fault_rounds, fault_report
):
    races = fault_rounds * RACES_PER_ROUND
    signups, tokens = signups_with_reminder_one_queued(broker, "rem", races)

    with worker_factory():
        # Verify, reminder 2's task (which takes it and sends it) and the delivery of the
        # waiting reminder 1 start together; the worker delivers what the racers enqueue
        # (the welcome email) while the others are still at it.
        outcomes = race(
            [
                (
                    partial(workflow.verify_signup, token=token, source="verification"),
                    partial(tasks.send_reminder, signup.pk, 2),
                    partial(workflow.deliver, workflow.EMAIL, email_id(signup, "reminder")),
                )
                for signup, token in zip(signups, tokens, strict=True)
            ]
        )
        assert errors_in(outcomes) == []
        wait_for_kind("welcome", races)
        wait_until_settled(broker)

    emails = sent_emails()
    verified_at = dict(Signup.objects.values_list("email", "verified_at"))
    reminders = [e for e in emails if e.kind == "reminder"]
    late = emails_after(reminders, verified_at)
    welcomes = Counter(e.to for e in emails if e.kind == "welcome")
    fault_report.update(
        {
            "fault": "verify racing reminder",
            "races": races,
            "reminders_before_verify": len(reminders) - len(late),
            "reminders_after_verify": len(late),
            "welcome_emails": sum(welcomes.values()),
            "duplicated": duplicated(emails),
        }
    )
    assert [verify.message for verify, _, _ in outcomes] == ["done"] * races
    assert late == []
    assert welcomes == Counter(signup.email for signup in signups)
    assert duplicated(emails) == 0
    assert {e.kind for e in emails} <= {"reminder", "welcome"}
    assert set(Signup.objects.values_list("status", flat=True)) == {"verified"}


# --- 2. A double-clicked verification link -----------------------------------------------


def test_a_link_verified_several_times_at_once_verifies_and_welcomes_once(
    outbox, worker, broker, live_server, fault_rounds, fault_report
):
    races = fault_rounds * RACES_PER_ROUND
    signups = start_signups("click", races)
    wait_for_kind("verification", races)
    links = {}
    for message in mail.outbox:
        path, token, source = verify_link(message)
        links[message.to[0]] = (f"{live_server.url}{path}", token, source)

    def api_click(token: str, source: str) -> str:
        answer = requests.post(
            f"{live_server.url}/api/signups/verify",
            json={"token": token, "source": source},
            headers=API_AUTH,
            timeout=HTTP_TIMEOUT,
        )
        return answer.json()["result"] if answer.status_code == 200 else str(answer.status_code)

    def confirm_page(url: str, source: str) -> Callable[[], str]:
        """Open the link's confirm page now; the returned call presses its button."""
        browser = requests.Session()
        page = browser.get(url, params={"source": source}, timeout=HTTP_TIMEOUT)
        assert "Verify my account" in page.text
        fields = hidden_fields(page)

        def press() -> str:
            answer = browser.post(url, data=fields, timeout=HTTP_TIMEOUT)
            browser.close()
            if answer.status_code != 200:
                return str(answer.status_code)
            if "Already verified" in answer.text:
                return "already verified"
            return "done" if "You're verified" in answer.text else answer.text

        return press

    attempts = []
    for signup in signups:
        url, token, source = links[signup.email]
        attempts.append(
            (
                partial(api_click, token, source),
                partial(api_click, token, source),
                confirm_page(url, source),
                confirm_page(url, source),
            )
        )
    mail.outbox.clear()  # from here on, only what the clicks caused
    outcomes = race(attempts)
    assert errors_in(outcomes) == []
    wait_for_kind("welcome", races)
    wait_until_settled(broker)

    emails = sent_emails()
    answers = Counter(answer for attempt in outcomes for answer in attempt)
    welcomes = Counter(e.to for e in emails if e.kind == "welcome")
    fault_report.update(
        {
            "fault": "double-clicked verify",
            "races": races,
            "clicks": sum(answers.values()),
            "answers": dict(answers),
            "welcome_emails": sum(welcomes.values()),
            "duplicated": duplicated(emails),
        }
    )
    for attempt in outcomes:
        assert sorted(attempt) == ["already verified"] * 3 + ["done"], attempt
    assert welcomes == Counter(signup.email for signup in signups)
    assert [e.kind for e in emails] == ["welcome"] * races
    assert set(Signup.objects.values_list("status", flat=True)) == {"verified"}
    assert SignupEvent.objects.filter(kind="verified").count() == races


# --- 3. Two signups for one username -----------------------------------------------------


def test_signups_for_one_username_at_once_create_one_and_answer_409_to_the_rest(
    broker, live_server, fault_rounds, fault_report
):
    races = fault_rounds * RACES_PER_ROUND

    def sign_up(username: str, email: str) -> tuple[int, str]:
        answer = requests.post(
            f"{live_server.url}/api/signups",
            json=signup_data(username=username, email=email),
            headers=API_AUTH,
            timeout=HTTP_TIMEOUT,
        )
        is_json = "json" in answer.headers.get("Content-Type", "")
        return answer.status_code, answer.json().get("message", "") if is_json else ""

    outcomes = race(
        [
            tuple(
                partial(sign_up, username, f"{username}.{n}@example.com")
                for n, username in enumerate((f"dora{i}", f"DORA{i}", f"Dora{i}"))
            )
            for i in range(races)
        ]
    )
    assert errors_in(outcomes) == []

    answers = Counter(status for attempt in outcomes for status, _ in attempt)
    pending = Counter(
        username.lower()
        for username in Signup.objects.filter(status="pending").values_list("username", flat=True)
    )
    fault_report.update(
        {
            "fault": "same username at once",
            "races": races,
            "requests": sum(answers.values()),
            "created": answers[201],
            "conflicts": answers[409],
            "server_errors": sum(n for status, n in answers.items() if status >= 500),
            "pending_rows": sum(pending.values()),
        }
    )
    for attempt in outcomes:
        assert sorted(status for status, _ in attempt) == [201, 409, 409], attempt
        for status, message in attempt:
            assert status == 201 or "is already taken" in message, attempt
    assert pending == Counter(f"dora{i}" for i in range(races))
    assert Signup.objects.count() == races
    # Each created signup is contacted after its answer (here, as a worker would): one
    # verification email each.
    assert contact_waiting() == races
    assert OutboundEmail.objects.filter(kind="verification").count() == races


# --- 4. The same task run twice ----------------------------------------------------------


def test_a_task_run_twice_at_once_sends_its_email_once(outbox, fault_rounds, fault_report):
    races = fault_rounds * RACES_PER_ROUND
    signups = start_signups("twice", races)

    # Twice the verification email's delivery; then, once it went (a reminder never
    # overtakes it), twice reminder 1; then the send of the reminder email that made, by
    # the task that took it, raced by two more deliveries of it (a retry or a re-drive
    # arriving meanwhile). A delivery that meets another attempt with the provider is told
    # EmailInFlight: its task comes back when the lease ends.
    first = race(
        [
            (
                partial(workflow.deliver, workflow.EMAIL, email_id(signup, "verification")),
                partial(workflow.deliver, workflow.EMAIL, email_id(signup, "verification")),
            )
            for signup in signups
        ]
    )
    taken = race(
        [
            (
                partial(workflow.take_reminder, signup_id=signup.pk, number=1),
                partial(workflow.take_reminder, signup_id=signup.pk, number=1),
            )
            for signup in signups
        ]
    )
    reminder_ids = [email_id(signup, "reminder") for signup in signups]
    second = race(
        [
            (
                partial(workflow.deliver, workflow.EMAIL, pk, claimed=True),
                partial(workflow.deliver, workflow.EMAIL, pk),
                partial(workflow.deliver, workflow.EMAIL, pk),
            )
            for pk in reminder_ids
        ]
    )

    emails = sent_emails()
    sent = Counter((e.to, e.kind, e.link_source) for e in emails)
    fault_report.update(
        {
            "fault": "task executed twice (threads)",
            "races": races * 3,
            "emails": len(emails),
            "duplicated": duplicated(emails),
            "stale_reminders_dropped": sum(None in outcome for outcome in taken),
        }
    )
    in_flight = workflow.InFlight
    assert errors_in(first, in_flight) + errors_in(taken, in_flight) == []
    assert errors_in(second, in_flight) == []
    for outcome in first:
        assert outcome.count(True) == 1, outcome
        assert all(other is True or other is False or isinstance(other, in_flight)
                   for other in outcome), outcome  # fmt: skip
    for outcome in taken:
        assert sorted(taken is not None for taken in outcome) == [False, True], outcome
    for outcome in second:
        assert outcome[0] is True, outcome  # the task that took the reminder sends it
        assert all(other is False or isinstance(other, in_flight) for other in outcome[1:])
    expected = Counter()
    for signup in signups:
        expected[(signup.email, "verification", "verification")] = 1
        expected[(signup.email, "reminder", "reminder-1")] = 1
    assert sent == expected
    assert set(Signup.objects.values_list("reminders_sent", flat=True)) == {1}
    assert OutboundEmail.objects.filter(kind="reminder").count() == races


@contextmanager
def worker_with_two_threads():
    """A real worker taking two messages at a time, so both copies of one run at once.

    (Two solo workers in one process share Celery's worker state and can't both stop.)
    """
    with start_worker(
        celery_app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=15,
    ):
        yield


def test_a_task_delivered_twice_by_the_broker_sends_its_email_once(
    outbox, broker, fault_rounds, fault_report
):
    races = fault_rounds * RACES_PER_ROUND
    signups = start_signups("redelivered", races)
    # Only the duplicated messages below are to reach the workers, not setup's own.
    broker.flushdb()

    with worker_with_two_threads():
        for signup in signups:
            verification = email_id(signup, "verification")
            for _ in range(2):
                tasks.deliver_email.apply_async(
                    (verification,), task_id=f"deliver-email-{verification}"
                )
            for _ in range(2):
                tasks.send_reminder.apply_async(
                    (signup.pk, 1), task_id=f"send-reminder-{signup.pk}-1"
                )
        wait_for_kind("verification", races)
        wait_for_kind("reminder", races)
        wait_until_settled(broker)

    emails = sent_emails()
    sent = Counter((e.to, e.kind, e.link_source) for e in emails)
    fault_report.update(
        {
            "fault": "task delivered twice (broker, two worker threads)",
            "races": races * 2,
            "messages": races * 4,
            "emails": len(emails),
            "duplicated": duplicated(emails),
        }
    )
    expected = Counter()
    for signup in signups:
        expected[(signup.email, "verification", "verification")] = 1
        expected[(signup.email, "reminder", "reminder-1")] = 1
    assert sent == expected
    assert set(Signup.objects.values_list("reminders_sent", flat=True)) == {1}


# --- 5. Resend or cancel racing a verification -------------------------------------------


def test_cancel_racing_verify_ends_in_one_state_and_sends_nothing_after_it(
    outbox, broker, worker_factory, fault_rounds, fault_report
):
    races = fault_rounds * RACES_PER_ROUND
    signups, tokens = signups_with_reminder_one_queued(broker, "cancel", races)

    with worker_factory():
        outcomes = race(
            [
                (
                    partial(workflow.verify_signup, token=token, source="verification"),
                    partial(workflow.cancel_signup, signup_id=signup.pk, reason="race"),
                    partial(workflow.deliver, workflow.EMAIL, email_id(signup, "reminder")),
                )
                for signup, token in zip(signups, tokens, strict=True)
            ]
        )
        assert errors_in(outcomes, workflow.SignupClosed) == []
        # The welcome emails of those verified; the worker may still be on one.
        wait_for_kind("welcome", Signup.objects.filter(status="verified").count())
        wait_until_settled(broker)

    emails = sent_emails()
    statuses = dict(Signup.objects.values_list("email", "status"))
    closed_at = dict(Signup.objects.values_list("email", "verified_at"))
    closed_at.update(
        SignupEvent.objects.filter(kind="cancelled").values_list("signup__email", "created_at")
    )
    welcomes = Counter(e.to for e in emails if e.kind == "welcome")
    late = emails_after([e for e in emails if e.kind != "welcome"], closed_at)
    cancelled = {to for to, status in statuses.items() if status == "cancelled"}
    fault_report.update(
        {
            "fault": "cancel racing verify",
            "races": races,
            "verified": sum(status == "verified" for status in statuses.values()),
            "cancelled": len(cancelled),
            "emails_after_close": len(late),
            "welcome_to_cancelled": sum(welcomes[to] for to in cancelled),
            "duplicated": duplicated(emails),
        }
    )
    for signup, (verify, cancel, _) in zip(signups, outcomes, strict=True):
        if statuses[signup.email] == "verified":
            assert (verify.message, cancel) == ("done", False)
            assert welcomes[signup.email] == 1
        else:
            assert statuses[signup.email] == "cancelled"
            assert isinstance(verify, workflow.SignupClosed), verify
            assert (verify.status, cancel) == ("cancelled", True)
            assert welcomes[signup.email] == 0
    assert late == []
    assert duplicated(emails) == 0


def test_resend_racing_verify_sends_no_verification_email_after_it(
    outbox, broker, worker_factory, fault_rounds, fault_report
):
    races = fault_rounds * RACES_PER_ROUND
    signups, tokens = signups_with_reminder_one_queued(broker, "resend", races)

    with worker_factory():
        outcomes = race(
            [
                (
                    partial(workflow.verify_signup, token=token, source="verification"),
                    partial(workflow.resend_verification, signup_id=signup.pk),
                    partial(workflow.deliver, workflow.EMAIL, email_id(signup, "reminder")),
                )
                for signup, token in zip(signups, tokens, strict=True)
            ]
        )
        assert errors_in(outcomes) == []
        wait_for_kind("welcome", races)
        wait_until_settled(broker)

    emails = sent_emails()
    verified_at = dict(Signup.objects.values_list("email", "verified_at"))
    late = emails_after([e for e in emails if e.kind != "welcome"], verified_at)
    welcomes = Counter(e.to for e in emails if e.kind == "welcome")
    # A resend that lost the race must leave no trace: the timeline may show a resend only
    # before the verification, and only for the signups whose resend answered True.
    resent = SignupEvent.objects.filter(kind="verification_requested")
    resent_at = dict(resent.values_list("signup__email", "created_at"))
    resent_late = [to for to, at in resent_at.items() if at >= verified_at[to]]
    fault_report.update(
        {
            "fault": "resend racing verify",
            "races": races,
            "resends_queued": sum(bool(resend) for _, resend, _ in outcomes),
            "verification_emails_before_verify": sum(e.kind == "verification" for e in emails),
            "emails_after_verify": len(late),
            "resends_recorded_after_verify": len(resent_late),
            "welcome_emails": sum(welcomes.values()),
            "duplicated": duplicated(emails),
        }
    )
    assert [verify.message for verify, _, _ in outcomes] == ["done"] * races
    assert late == []
    assert resent_late == []
    assert set(resent_at) == {
        signup.email for signup, (_, resend, _) in zip(signups, outcomes, strict=True) if resend
    }
    assert welcomes == Counter(signup.email for signup in signups)
    assert duplicated(emails) == 0
    assert set(Signup.objects.values_list("status", flat=True)) == {"verified"}
