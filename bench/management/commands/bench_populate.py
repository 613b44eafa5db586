"""Create pending signups through the workflow, as the API does, for a benchmark to work on."""

import json
import time

from django.core.management.base import BaseCommand
from django.utils import timezone

from config.celery import app as celery_app
from signup import tokens, workflow
from signup.models import OutboundEmail

# Where the verification emails' tasks go with --skip-verification-emails: a queue no worker
# reads, deleted at the end.
DISCARD_QUEUE = "bench-discard"
BATCH = 200


class Command(BaseCommand):
    help = (
        "Start COUNT signups with workflow.start_signup and make their first contact (as a "
        "worker would), optionally paced evenly over SPREAD seconds, and print a JSON summary."
    )

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--prefix", required=True, help="usernames are PREFIX0, PREFIX1, ...")
        parser.add_argument("--spread", type=float, default=0.0, help="seconds to pace over")
        parser.add_argument(
            "--skip-verification-emails",
            action="store_true",
            help="record the verification emails as sent instead of sending them",
        )
        parser.add_argument("--tokens-file", help="write [[signup id, token], ...] here")

    def handle(self, *, count, prefix, spread, skip_verification_emails, tokens_file, **options):
        # The first contacts are made here, so their tasks are discarded (and the
        # verification emails' too, when they are recorded as sent instead). Set before the
        # first task is sent: the router is built from it then. Under its Django name: the
        # app reads its settings with the CELERY_ namespace.
        discarded_tasks = ["signup.tasks.contact_address"]
        if skip_verification_emails:
            discarded_tasks.append("signup.tasks.deliver_email")
        celery_app.conf.CELERY_TASK_ROUTES = {
            **celery_app.conf.task_routes,
            **{task: {"queue": DISCARD_QUEUE} for task in discarded_tasks},
        }
        started = time.monotonic()
        signups = []
        for index in range(count):
            if spread:
                delay = started + spread * index / count - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            username = f"{prefix}{index}"
            signup = workflow.start_signup(
                username=username,
                email=f"{username}@example.com",
                first_name="Bench",
                last_name="User",
            )
            workflow.contact_address(signup_id=signup.pk)
            signups.append(signup)
            if skip_verification_emails and len(signups) % BATCH == 0:
                # Batch by batch, before the sweeper takes them for stuck and re-drives them.
                _mark_verification_sent(signups[-BATCH:])
        seconds = time.monotonic() - started
        if skip_verification_emails:
            _mark_verification_sent(signups[-(len(signups) % BATCH or BATCH) :])
        discarded = _delete_discard_queue()
        if tokens_file:
            with open(tokens_file, "w") as out:
                json.dump([[signup.pk, tokens.make_token(signup)] for signup in signups], out)
        summary = {
            "count": len(signups),
            "seconds": seconds,
            "first_id": signups[0].pk if signups else None,
            "last_id": signups[-1].pk if signups else None,
            "tasks_discarded": discarded,
        }
        self.stdout.write(json.dumps(summary))


def _mark_verification_sent(signups) -> None:
    OutboundEmail.objects.filter(
        signup__in=signups,
        kind=OutboundEmail.Kind.VERIFICATION,
        status=OutboundEmail.Status.QUEUED,
    ).update(status=OutboundEmail.Status.SENT, sent_at=timezone.now(), attempts=1)


def _delete_discard_queue() -> int:
    """Delete the discard queue and its bindings; return how many tasks it held."""
    with celery_app.connection_for_write() as connection:
        channel = connection.default_channel
        client = channel.client
        waiting = client.llen(DISCARD_QUEUE)
        # kombu's queue_delete() only knows the bindings this channel declared itself.
        client.delete(
            DISCARD_QUEUE,
            channel.keyprefix_queue % DISCARD_QUEUE,
            channel.keyprefix_binding_permanent % DISCARD_QUEUE,
        )
    return waiting
