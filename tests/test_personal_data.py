"""Personal data ends: closed signups are anonymised after the retention period, an operator
can erase one at once, and the logs (the workers', gunicorn's access log) carry no address
or verification token."""

import logging
import os
from datetime import timedelta

import pytest
import requests
from celery.signals import task_retry
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from config.celery import app as celery_app
from harness.processes import BIN, free_port, pg_url, start_process, stop_all
from signup import tokens, workflow
from signup.models import Address, OutboundEmail, Signup, SignupEvent
from tests.helpers import contact_waiting, hidden_fields, signed_up, signup_data, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def _person(name: str) -> dict:
    return signup_data(
        username=name, email=f"{name}@example.com", first_name=name.title(), last_name="Exley"
    )


def _closed(name: str, status: str, *, days_ago: float) -> Signup:
    """A signup of `name` that reached `status` days_ago, with the records an older release
    left: its address in a timeline detail and in the ledger's last error."""
    signup = signed_up(**_person(name))
    email = signup.emails.get()
    workflow.deliver(workflow.EMAIL, email.pk)
    SignupEvent.objects.create(signup=signup, kind="verification_sent", detail=signup.email)
    OutboundEmail.objects.filter(pk=email.pk).update(
        last_error=f"SMTPRecipientsRefused: {{'{signup.email}': (450, b'try later')}}"
    )
    if status == "expired":
        Signup.objects.filter(pk=signup.pk).update(expires_at=timezone.now())
        assert workflow.expire_signup(signup_id=signup.pk)
    elif status == "cancelled":
        assert workflow.cancel_signup(signup_id=signup.pk, reason="by operator")
    else:
        assert workflow.mark_undeliverable(signup_id=signup.pk, reason="email bounced")
    closed_at = timezone.now() - timedelta(days=days_ago)
    Signup.objects.filter(pk=signup.pk).update(closed_at=closed_at)
    return signup


def _records(signup_id: int) -> str:
    """Everything stored about one signup, as text."""
    return repr(
        [
            list(Signup.objects.filter(pk=signup_id).values()),
            list(OutboundEmail.objects.filter(signup_id=signup_id).order_by("id").values()),
            list(SignupEvent.objects.filter(signup_id=signup_id).order_by("id").values()),
        ]
    )


def _counts(signup_id: int) -> tuple:
    """What the counts read: kept through anonymisation."""
    signup = Signup.objects.filter(pk=signup_id)
    return (
        list(signup.values_list("status", "reminders_sent", "verified_source", "created_at")),
        list(
            SignupEvent.objects.filter(signup_id=signup_id)
            .exclude(kind="anonymised")
            .order_by("id")
            .values_list("kind", "number", "created_at")
        ),
        list(
            OutboundEmail.objects.filter(signup_id=signup_id)
            .order_by("id")
            .values_list("kind", "sequence", "status", "attempts", "sent_at")
        ),
    )


def test_closed_signups_are_anonymised_once_the_retention_period_is_over(settings):
    settings.SIGNUP_RETENTION_DAYS = 30
    old = [
        _closed("erin", "expired", days_ago=31),
        _closed("fred", "cancelled", days_ago=31),
        _closed("gina", "undeliverable", days_ago=31),
    ]
    recent = _closed("hugo", "cancelled", days_ago=29)
    pending = signed_up(**_person("ivan"))
    verified = signed_up(**_person("judy"))
    workflow.verify_signup_by_operator(signup_id=verified.pk)
    Signup.objects.filter(pk=verified.pk).update(verified_at=timezone.now() - timedelta(days=90))
    untouched = {s.pk: _records(s.pk) for s in (recent, pending, verified)}
    counts = {s.pk: _counts(s.pk) for s in old}

    assert workflow.anonymise_closed_signups() == 3

    for signup in old:
        stored = _records(signup.pk).lower()
        for personal in (signup.username, "@example.com", "exley"):
            assert personal not in stored, (personal, stored)
        assert _counts(signup.pk) == counts[signup.pk]
        signup.refresh_from_db()
        assert signup.anonymised_at is not None
        assert signup.username == f"anonymised:{signup.pk}"
        assert signup.email == f"signup-{signup.pk}@anonymised.invalid"
        email = signup.emails.get()
        assert email.to_email == signup.email
        assert "<address>" in email.last_error  # the error itself stays readable
        assert signup.events.last().kind == "anonymised"
    assert {s.pk: _records(s.pk) for s in (recent, pending, verified)} == untouched

    anonymised = {s.pk: _records(s.pk) for s in old}
    assert workflow.anonymise_closed_signups() == 0
    assert {s.pk: _records(s.pk) for s in old} == anonymised


def test_new_timeline_entries_name_the_email_not_the_address(mailoutbox):
    signup = signed_up(**signup_data())
    email = signup.emails.get()
    workflow.deliver(workflow.EMAIL, email.pk)
    workflow.record_provider_event(
        email_id=email.pk,
        event_type="bounced",
        description="550 5.1.1 <alice@example.com>: Recipient address rejected",
    )
    details = list(signup.events.values_list("kind", "detail"))
    assert ("verification_sent", f"email {email.pk}") in details
    assert "alice@example.com" not in repr(details)
    assert "verification #1: 550 5.1.1 <<address>>: Recipient address rejected" in repr(details)


def test_erasing_cancels_a_pending_signup_first_and_keeps_a_verified_one_verified(mailoutbox):
    pending = signed_up(**_person("kate"))
    verified = signed_up(**_person("liam"))
    workflow.verify_signup_by_operator(signup_id=verified.pk)
    welcome = verified.emails.get(kind="welcome")

    assert workflow.erase_personal_data(signup_id=pending.pk, operator="ops")
    assert workflow.erase_personal_data(signup_id=verified.pk, operator="ops")
    assert not workflow.erase_personal_data(signup_id=verified.pk, operator="ops")

    pending.refresh_from_db()
    verified.refresh_from_db()
    assert (pending.status, verified.status) == ("cancelled", "verified")
    assert list(pending.events.values_list("kind", flat=True))[-2:] == ["cancelled", "anonymised"]
    assert verified.events.last().detail == "erased by an operator (ops)"
    for signup in (pending, verified):
        assert "@example.com" not in _records(signup.pk)
    # Nothing goes to a placeholder, and the verified username is free again.
    assert workflow.deliver(workflow.EMAIL, welcome.pk) is False
    assert mailoutbox == []
    assert signed_up(**_person("liam")).status == "pending"


def test_the_beat_schedule_runs_the_anonymisation_on_a_real_worker(worker, settings):
    settings.SIGNUP_RETENTION_DAYS = 30
    old = _closed("mona", "expired", days_ago=31)
    (entry,) = [
        entry
        for entry in django_settings.CELERY_BEAT_SCHEDULE.values()
        if entry["task"] == "signup.tasks.forget_personal_data"
    ]
    celery_app.send_task(entry["task"], **entry["options"])
    wait_for(
        lambda: Signup.objects.filter(pk=old.pk, anonymised_at__isnull=False).exists(),
        message="the beat task to anonymise the signup",
    )
    assert "mona" not in _records(old.pk)


@pytest.mark.parametrize(
    ("backend", "level"),
    [
        ("tests.helpers.RefusingBackend", logging.ERROR),  # dead-lettered at once
        ("tests.helpers.TemporarilyRefusingBackend", logging.WARNING),  # retried
    ],
    ids=["refused", "deferred"],
)
def test_a_failed_email_is_logged_and_recorded_without_its_address(
    caplog, settings, backend, level
):
    settings.EMAIL_BACKEND = backend
    signup = signed_up(**signup_data())
    email = signup.emails.get()
    with caplog.at_level(logging.INFO):
        workflow.attempt(workflow.EMAIL, email.pk)
    (line,) = [record for record in caplog.records if record.levelno == level]
    assert f"email {email.pk}" in line.getMessage()
    assert "SMTPRecipientsRefused" in line.getMessage()
    assert "alice@example.com" not in caplog.text
    email.refresh_from_db()
    assert "<address>" in email.last_error
    assert "alice@example.com" not in repr(list(signup.events.values_list("detail", flat=True)))


def test_a_retried_email_leaves_no_address_in_the_worker_logs_or_its_retry_event(
    worker, caplog, settings
):
    settings.EMAIL_BACKEND = "tests.helpers.TemporarilyRefusingBackend"
    settings.SIGNUP_EMAIL_RETRY_DELAY = 0.1
    settings.SIGNUP_EMAIL_RETRY_MAX_DELAY = 0.2
    settings.SIGNUP_EMAIL_MAX_ATTEMPTS = 2
    retries = []

    def record_retry(sender, request, reason, einfo, **kwargs):
        retries.append(f"{reason}\n{einfo.traceback}")

    task_retry.connect(record_retry)
    try:
        caplog.set_level(logging.INFO)
        signup = signed_up(**signup_data())
        wait_for(
            lambda: signup.emails.filter(status="failed").exists(),
            message="the email to be dead-lettered after its retry",
        )
    finally:
        task_retry.disconnect(record_retry)
    assert retries  # the worker retried it, and sends Flower this traceback
    assert "alice@example.com" not in "\n".join(retries)
    assert "alice@example.com" not in caplog.text


@pytest.mark.processes
def test_gunicorn_logs_the_verify_path_without_its_token(transactional_db, broker, tmp_path):
    signup = signed_up(**signup_data())
    token = tokens.make_token(signup)
    url = f"http://127.0.0.1:{free_port()}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),  # gunicorn's control socket
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": pg_url(connection.settings_dict["NAME"]),  # this test's database
        "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
        "EMAIL_BACKEND": "",
        "SECRET_KEY": django_settings.SECRET_KEY,  # the token is signed with it
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1",
        "SITE_URL": url,
        "CONN_MAX_AGE": "0",
        "SIGNUP_VAR_DIR": str(tmp_path / "var"),
    }
    command = [str(BIN / "gunicorn"), "config.wsgi", "--config", "config/gunicorn.py"]
    command += ["--bind", url.removeprefix("http://"), "--workers", "1", "--access-logfile", "-"]
    web = start_process("web", command, env, tmp_path)
    try:
        wait_for(lambda: _answers(f"{url}/signup/"), timeout=30, message="gunicorn to answer")
        link = f"{url}/signup/verify/{token}/?source=verification"
        browser = requests.Session()
        confirm = browser.get(link, timeout=10)
        assert confirm.status_code == 200
        # The button posts back to the link, and the browser names it in the Referer.
        headers = {"Referer": link, "Origin": url}
        verified = browser.post(link, data=hidden_fields(confirm), headers=headers, timeout=10)
        assert verified.status_code == 200
        wait_for(lambda: web.output().count("/signup/verify/") >= 3, message="the access log")
    finally:
        stop_all([web])
    log = web.output()
    assert token not in log
    assert '"GET /signup/verify/<token>/?source=verification HTTP/1.1" 200' in log
    assert '"POST /signup/verify/<token>/?source=verification HTTP/1.1" 200' in log
    signup.refresh_from_db()
    assert signup.status == "verified"


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.mark.parametrize(
    "address",
    [
        "jane.doe/team=victim@bombed.example",
        "o'brien.victim@bombed.example",
        '"victim..x"@bombed.example',
        "victim+tag{1}@bombed.example",
    ],
)
def test_an_address_a_provider_echoes_is_stored_and_logged_without_any_of_it(
    caplog, settings, address
):
    """Every spelling RFC 5322 allows in a local part, quoted back by the provider in its 550:
    nothing of it in the ledger's error, the timeline or the worker's log."""
    settings.EMAIL_BACKEND = "tests.helpers.RefusingBackend"
    signup = signed_up(**signup_data(email=address))
    email = signup.emails.get()
    with caplog.at_level(logging.INFO):
        workflow.attempt(workflow.EMAIL, email.pk)
    email.refresh_from_db()
    assert email.status == "failed"
    stored = email.last_error + repr(list(signup.events.values_list("detail", flat=True)))
    for text in (stored, caplog.text):
        assert "victim" not in text and "bombed" not in text, text
        assert "jane" not in text and "brien" not in text, text
    assert "<address>" in email.last_error


def test_an_erased_signup_leaves_nothing_derived_from_its_address_beyond_the_budgets_day(
    settings, client
):
    client.post(
        "/signup/", _person("gone") | {"email": "gone@example.com"}, REMOTE_ADDR="192.0.2.5"
    )
    contact_waiting()
    signup = Signup.objects.get(username="gone")
    digest = workflow.address_digest("gone@example.com")
    assert signup.client_network and signup.address.digest == digest
    assert workflow.erase_personal_data(signup_id=signup.pk, operator="ops")
    signup.refresh_from_db()
    assert (signup.client_network, signup.address_id) == ("", None)
    # The budget still needs its row for the day: the cooldown, the daily counts.
    assert workflow.forget_idle_addresses() == 0
    assert Address.objects.filter(digest=digest).exists()
    Address.objects.filter(digest=digest).update(
        last_sent_at=timezone.now() - timedelta(days=1, seconds=1)
    )
    assert workflow.forget_idle_addresses() == 1
    assert not Address.objects.filter(digest=digest).exists()
    assert digest not in _records(signup.pk)


def test_an_address_with_a_mute_pending_signup_is_remembered(settings):
    first = signed_up(**signup_data(username="first", email="kept@example.com"))
    workflow.cancel_signup(signup_id=first.pk)
    mute = signed_up(**signup_data(username="mute", email="kept@example.com"))
    mute.refresh_from_db()
    assert not mute.emails.exists() and mute.status == "pending"
    Address.objects.update(last_sent_at=timezone.now() - timedelta(days=2))
    assert workflow.forget_idle_addresses() == 0  # the resend page may still reach it
