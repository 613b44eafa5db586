"""Thin Celery tasks: each takes ids and calls signup.workflow, which decides what a failure
means; a task only carries out the retry the workflow asks for.

signup.workflow imports this module to enqueue tasks, so this one imports the workflow inside
each function (HackSoft's rule for the task/service cycle): importing either module first is
safe, and a name added to the top of this module can't reach a half-initialised workflow.
"""

import logging

from celery import shared_task
from django.db import DatabaseError

logger = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=None)
def deliver_email(self, email_id: int, provider_message_id: str | None = None) -> None:
    """Send one ledger email; the ledger's attempts count is the retry budget."""
    from signup import workflow

    retries, answer = self.request.retries, provider_message_id
    then = workflow.attempt(workflow.EMAIL, email_id, retries=retries, answer=answer)
    _retry_if_asked(self, then, email_id=email_id, provider_message_id=then and then.answer)


@shared_task(bind=True, max_retries=None)
def deliver_webhook(self, delivery_id: int, answer: int | None = None) -> None:
    """POST one event to one receiver; the ledger's attempts count is the retry budget."""
    from signup import workflow

    retries = self.request.retries
    then = workflow.attempt(workflow.WEBHOOK, delivery_id, retries=retries, answer=answer)
    _retry_if_asked(self, then, delivery_id=delivery_id, answer=then and then.answer)


def _retry_if_asked(task, then, **kwargs) -> None:
    if then is not None:
        raise task.retry(args=(), kwargs=kwargs, countdown=then.countdown) from then.error


# A step that met a broken database connection is tried again a moment later, a few times,
# rather than waiting for the sweeper to find it lost: each is safe to run twice.
ON_DATABASE_ERRORS = {
    "autoretry_for": (DatabaseError,),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "max_retries": 5,
}


@shared_task(**ON_DATABASE_ERRORS)
def send_reminder(signup_id: int, number: int) -> None:
    """Take reminder `number` and send its email in this same task, so that it leaves when
    the reminder is due; a send that fails goes on as a deliver_email task with retries. A
    countdown that fired before the reminder's due time by the database's clock (this
    worker's clock is ahead) is put back for the time left (workflow.internal.clock)."""
    from signup import workflow

    if send_reminder.request.eta and (early := workflow.reminder_early_by(signup_id)):
        send_reminder.apply_async((signup_id, number), countdown=early)
        return
    email_id = workflow.take_reminder(signup_id=signup_id, number=number)
    if email_id is None:
        return
    then = workflow.attempt(workflow.EMAIL, email_id, claimed=True)
    if then is not None:
        kwargs = {"email_id": email_id, "provider_message_id": then.answer}
        deliver_email.apply_async(kwargs=kwargs, countdown=then.countdown)


@shared_task(**ON_DATABASE_ERRORS)
def contact_address(signup_id: int) -> None:
    """A new signup's first contact, done here so that the form's and the API's answers take
    as long whatever the address (workflow.start_signup)."""
    from signup import workflow

    workflow.contact_address(signup_id=signup_id)


@shared_task(**ON_DATABASE_ERRORS)
def request_verification_email(email: str, network: str = "") -> None:
    """The resend page's request, done here so that the page answers alike for every address."""
    from signup import workflow

    outcome = workflow.request_verification_email(email=email, network=network)
    logger.info("resend request: %s", outcome)


@shared_task(**ON_DATABASE_ERRORS)
def expire_signup(signup_id: int) -> None:
    from signup import workflow

    workflow.expire_signup(signup_id=signup_id)


@shared_task
def sweep() -> dict[str, int]:
    from signup import workflow

    return workflow.sweep()


@shared_task
def resume_held_emails() -> int:
    """The email provider is back: enqueue the emails held while it was out."""
    from signup import workflow

    return workflow.resume_held_emails()


@shared_task
def take_probe(probe_id: int) -> None:
    """A probe the sweeper sent through this task's queue (workflow.internal.queues); it was
    sent with the queue named, and has no route of its own."""
    from signup import workflow

    workflow.take_probe(probe_id=probe_id)


@shared_task
def forget_personal_data() -> dict[str, int]:
    """Personal data ends: closed signups past the retention period, former and idle
    addresses; and the API's idempotency records past their time."""
    from signup import idempotency, workflow

    return {
        **workflow.forget_personal_data(),
        "idempotency_records_forgotten": idempotency.forget_expired(),
    }


# The names the previous release gave two of these tasks: one of its messages still in the
# broker when this release starts is carried out, not dropped. To be removed in the next.
greet_signup = shared_task(name="signup.tasks.greet_signup")(contact_address.run)
anonymise_closed_signups = shared_task(name="signup.tasks.anonymise_closed_signups")(
    forget_personal_data.run
)
