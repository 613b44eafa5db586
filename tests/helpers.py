"""Helpers for the tests: waiting on real processes, reading the emails they sent, and the
database faults some tests cause."""

import html
import logging
import os
import re
import smtplib
import time
from contextlib import contextmanager
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.db import connection

API_KEY = "test-api-key-0123456789-abcdefghijklmn"
# How much longer than on an idle machine waiting may take: `make test` runs four tests at a
# time on two cores, so every process of a test shares them with three other tests'.
LOAD = 2.0 if os.environ.get("PYTEST_XDIST_WORKER") else 1.0


def wait_for(predicate, *, timeout: float = 15, interval: float = 0.1, message: str = ""):
    """Poll until predicate() is truthy and return its value; fail after `timeout` seconds
    (times LOAD)."""
    timeout *= LOAD
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def signed_up(**fields):
    """Start a signup and make its first contact, as the form or the API and then a worker
    do; return it as they left it (its verification email queued, not sent yet)."""
    from signup import workflow

    signup = workflow.start_signup(**fields)
    workflow.contact_address(signup_id=signup.pk)
    signup.refresh_from_db()
    return signup


def emailed(**fields):
    """signed_up, and its verification email sent (to the locmem outbox), as the worker
    that made the first contact does next: a reminder never overtakes it."""
    from signup import workflow

    signup = signed_up(**fields)
    for email_id in signup.emails.filter(status="queued").values_list("id", flat=True):
        workflow.deliver(workflow.EMAIL, email_id)
    signup.refresh_from_db()
    return signup


def probes_taken(*, ago: float) -> None:
    """Record what a worker taking the sweeper's probes records: each queue's workers took,
    `ago` seconds ago, a probe sent then (so what was enqueued before then was taken too).
    For tests with no worker; with one, the probes the sweeps send are really taken."""
    from django.utils import timezone

    from signup.models import QueueProbe
    from signup.workflow.internal.queues import queue_names

    at = timezone.now() - timedelta(seconds=ago)
    QueueProbe.objects.bulk_create(
        QueueProbe(queue=queue, sent_at=at, taken_at=at) for queue in queue_names()
    )


def swept_after_probes():
    """Sweep as beat does, twice: the first sweep sends its probes, a worker takes them, and
    once SIGNUP_LOST_TASK_GRACE has passed the second sweep repairs the first contacts and
    reminders that came before them."""
    from django.conf import settings

    from signup import workflow
    from signup.models import QueueProbe

    workflow.sweep()
    wait_for(
        lambda: not QueueProbe.objects.filter(taken_at__isnull=True).exists(),
        message="the worker to take the probes",
    )
    time.sleep(settings.SIGNUP_LOST_TASK_GRACE + 0.1)
    return workflow.sweep()


def send_reminder(signup_id: int, number: int) -> bool:
    """Do here what the task send_reminder does: take reminder `number` and send its email
    (to the locmem outbox); return whether it was taken."""
    from signup import workflow

    email_id = workflow.take_reminder(signup_id=signup_id, number=number)
    return email_id is not None and workflow.deliver(workflow.EMAIL, email_id, claimed=True)


def contact_waiting() -> int:
    """Do what a worker does with the first-contact tasks the form and the API enqueued (for
    the tests that run no worker); return how many signups were contacted."""
    from signup import workflow
    from signup.models import Signup

    waiting = Signup.objects.filter(contacted_at__isnull=True).order_by("id")
    return sum(
        workflow.contact_address(signup_id=pk) for pk in waiting.values_list("id", flat=True)
    )


@contextmanager
def written_lines(*loggers: str):
    """The lines the service's log configuration writes for these loggers (the project's and
    Django's request reports by default) while the block runs, tracebacks included."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.extend(self.format(record).splitlines())

    handler = Collect()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    names = loggers or ("signup", "django.request")
    for name in names:
        logging.getLogger(name).addHandler(handler)
    try:
        yield lines
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)


QUEUES = ("celery", "email", "webhooks")  # config.settings.CELERY_TASK_QUEUES


def queued(broker) -> int:
    """How many task messages wait in the Redis broker, on every queue the service uses."""
    return sum(broker.llen(queue) for queue in QUEUES)


def sent_to(address: str, subject_word: str = "") -> list:
    """The emails in the outbox to this address whose subject contains subject_word."""
    return [m for m in list(mail.outbox) if address in m.to and subject_word in m.subject]


def wait_for_emails(address: str, subject_word: str, count: int = 1, timeout: float = 15):
    return wait_for(
        lambda: (found := sent_to(address, subject_word)) and len(found) >= count and found,
        timeout=timeout,
        message=f"{count} email(s) with {subject_word!r} to {address}",
    )


_LINK = re.compile(r"https?://\S+/signup/verify/[^\s\"<>]+")


def verify_link(message) -> tuple[str, str, str]:
    """Return (path, token, source) of the verification link in an email's text body."""
    url = _LINK.search(message.body).group(0)
    parts = urlsplit(url)
    token = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return parts.path, token, parse_qs(parts.query)["source"][0]


def hidden_fields(page) -> dict[str, str]:
    """The hidden inputs of a page's form (a requests.Response): the CSRF token and, on the
    confirm page, the link's source."""
    return {
        name: html.unescape(value)
        for name, value in re.findall(
            r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text
        )
    }


def signup_data(**overrides) -> dict:
    data = {
        "username": "alice",
        "email": "alice@example.com",
        "first_name": "Alice",
        "last_name": "Liddell",
    }
    data.update(overrides)
    return data


def kill_own_connection() -> None:
    """Have PostgreSQL terminate this thread's database connection, as a restart would."""
    connection.ensure_connection()  # a pooled one may have been handed back meanwhile
    pid = connection.connection.info.backend_pid
    params = connection.get_connection_params()
    with psycopg.connect(
        dbname=params["dbname"], host=params.get("host"), port=params.get("port"),
        user=params.get("user"), autocommit=True,
    ) as admin:  # fmt: skip
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


class ConnectionKillingBackend(LocmemBackend):
    """Hands the email over, then has PostgreSQL kill the sender's database connection: the
    provider has the email, and recording that fails."""

    def send_messages(self, messages):
        sent = super().send_messages(messages)
        kill_own_connection()
        return sent


class RefusingBackend(LocmemBackend):
    """An SMTP server that refuses every recipient for good, quoting the address back as
    real servers do."""

    code = 550

    def send_messages(self, messages):
        address = messages[0].to[0]
        reply = f"5.1.1 <{address}>: Recipient address rejected".encode()
        raise smtplib.SMTPRecipientsRefused({address: (self.code, reply)})


class TemporarilyRefusingBackend(RefusingBackend):
    """The same, with a 4xx: the email is retried."""

    code = 450


def remind(signup, number: int) -> None:
    """Make reminder `number` of `signup` due now and wait until the worker has sent it."""
    from django.utils import timezone

    from signup import tasks
    from signup.models import Signup

    Signup.objects.filter(pk=signup.pk).update(next_reminder_at=timezone.now())
    tasks.send_reminder.delay(signup.pk, number)
    wait_for(
        lambda: signup.emails.filter(kind="reminder", sequence=number, status="sent").exists(),
        message=f"reminder {number} of {signup.username} sent",
    )


def wait_for_sent(kind: str, count: int, *, timeout: float = 15) -> None:
    """Wait until `count` ledger emails of `kind` (or more) have been sent."""
    from signup.models import OutboundEmail

    wait_for(
        lambda: OutboundEmail.objects.filter(kind=kind, status="sent").count() >= count,
        timeout=timeout,
        message=f"{count} {kind} email(s) sent",
    )
