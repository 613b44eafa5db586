"""What the service keeps and logs about a person: timeline details and log lines carry
ids, not email addresses."""

import logging

import pytest
from celery.signals import task_retry

from signup import tasks, workflow
from tests.helpers import signup_data, wait_for

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
