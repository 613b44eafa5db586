"""What the service keeps and logs about a person: timeline details and log lines carry
ids, not email addresses, and gunicorn's access log carries no verification token."""

import logging
import os

import pytest
import requests
from celery.signals import task_retry
from django.conf import settings as django_settings
from django.db import connection

from harness.processes import BIN, free_port, pg_url, start_process, stop_all
from signup import tasks, tokens, workflow
from tests.helpers import hidden_fields, signup_data, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_new_timeline_entries_name_the_email_not_the_address(mailoutbox):
    signup = workflow.start_signup(**signup_data())
    email = signup.emails.get()
    workflow.deliver_email(email_id=email.pk)
    workflow.record_provider_event(
        email_id=email.pk,
        event_type="bounced",
        description="550 5.1.1 <alice@example.com>: Recipient address rejected",
    )
    details = list(signup.events.values_list("kind", "detail"))
    assert ("verification_sent", f"email {email.pk}") in details
    assert "alice@example.com" not in repr(details)
    assert "verification #1: 550 5.1.1 <<address>>: Recipient address rejected" in repr(details)


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
    signup = workflow.start_signup(**signup_data())
    email = signup.emails.get()
    with caplog.at_level(logging.INFO):
        tasks.attempt_delivery(email.pk)
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
        signup = workflow.start_signup(**signup_data())
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
    signup = workflow.start_signup(**signup_data())
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
