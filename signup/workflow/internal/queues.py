"""How far each queue's workers have got, told by probes the sweeper sends through the queues.

From the database, a task that waits in a long queue and a task that was lost look alike:
enqueued, not done. Repairing by age alone re-enqueues a backlog over and over, and the
repairs feed the overload they meet. So each sweep sends a probe through each queue: a queue
hands out its messages in the order they came, so once a worker takes a probe, every message
enqueued to that queue before it was taken too. Work enqueued before a probe its workers took
a grace ago, and still not done, was lost; work enqueued after the newest such probe may only
be waiting its turn, however old it is. A queue no worker takes from passes nothing, and
nothing of it is repaired (nobody would carry the repair out either): the age of its oldest
waiting message (oldest_waiting) tells an operator.

What a worker took but holds in its own memory is another matter. A countdown task (a
reminder, a retry) is taken at once and held until it is due; once due, it waits for a free
thread of that worker. If one worker holds more due tasks than it can start within the grace
while another worker of the same queue, idle, takes the probe, the first one's tasks are
repaired as lost: the copies are dropped by the reminder sequence check and the ledger, and
benchmark 10 counts them (docs/PERFORMANCE.md).
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F, Max, Min, OuterRef, Q, Subquery
from django.utils import timezone

from signup import tasks
from signup.models import QueueProbe
from signup.workflow.internal.clock import database_now
from signup.workflow.internal.rows import after_commit

# A queue nobody took from for this long has its unanswered probes forgotten: its oldest
# waiting message reads at most this old.
UNANSWERED_KEPT = timedelta(days=1)


def queue_names() -> list[str]:
    """The queues probed: all, but the webhooks' when no receiver is configured (nothing goes
    there, and its workers need not run)."""
    unused = set() if settings.SIGNUP_WEBHOOK_URLS else {queue_of(tasks.deliver_webhook)}
    return [queue.name for queue in settings.CELERY_TASK_QUEUES if queue.name not in unused]


def queue_of(task) -> str:
    """The queue a task goes to (CELERY_TASK_ROUTES)."""
    route = settings.CELERY_TASK_ROUTES.get(task.name, {})
    return route.get("queue", settings.CELERY_TASK_DEFAULT_QUEUE)


def send_probes(*, now: datetime) -> None:
    """Send one probe through each queue, stamped `now` (no earlier than the enqueueing of any
    task the caller made before)."""
    probes = QueueProbe.objects.bulk_create(
        QueueProbe(queue=queue, sent_at=now) for queue in queue_names()
    )

    def publish():
        for probe in probes:
            tasks.take_probe.apply_async((probe.pk,), queue=probe.queue)

    after_commit(publish)


def take_probe(*, probe_id: int) -> None:
    """A worker took this probe: the messages of its queue enqueued before it were taken too.
    Stamped on the database's clock, as the sweeper reads it (internal.clock)."""
    QueueProbe.objects.filter(pk=probe_id, taken_at__isnull=True).update(taken_at=database_now())


def passed(*, now: datetime, settle: float) -> dict[str, datetime]:
    """For each queue whose workers took a probe at least `settle` seconds ago, when the
    newest such probe was sent: a task enqueued to that queue before then was taken by a
    worker, and had `settle` seconds to finish."""
    taken = QueueProbe.objects.filter(taken_at__lte=now - timedelta(seconds=settle))
    return dict(taken.values("queue").annotate(at=Max("sent_at")).values_list("queue", "at"))


def enqueued_before(passed_at: dict[str, datetime], task, *fields: str) -> Q:
    """The rows whose `task`, by each of `fields` (when it was enqueued, when it was due), came
    before its queue's workers had passed (`passed_at`); none if they passed nothing yet."""
    at = passed_at.get(queue_of(task))
    if at is None:
        return Q(pk__in=[])
    return Q(**{f"{field}__lt": at for field in fields})


def oldest_waiting(*, now: datetime | None = None) -> dict[str, float]:
    """For each queue, the seconds its oldest waiting message has waited, as its probes tell
    (within a sweep interval): the age of the oldest probe not taken that was sent after the
    newest one taken (older ones were lost, with whatever was with them). 0: none waits."""
    now = now or timezone.now()
    newest_taken = (
        QueueProbe.objects.filter(queue=OuterRef("queue"), taken_at__isnull=False)
        .order_by("-sent_at")
        .values("sent_at")[:1]
    )
    waiting = (
        QueueProbe.objects.filter(taken_at__isnull=True)
        .annotate(after=Subquery(newest_taken))
        .filter(Q(after__isnull=True) | Q(sent_at__gt=F("after")))
        .values("queue")
        .annotate(since=Min("sent_at"))
        .values_list("queue", "since")
    )
    ages = dict.fromkeys(queue_names(), 0.0)
    for queue, since in waiting:
        ages[queue] = max((now - since).total_seconds(), 0.0)
    return ages


def prune(*, now: datetime, keep: float) -> None:
    """Forget the probes no answer needs any more: those sent before the newest one taken
    `keep` seconds ago (taken, or lost with the messages before them), and unanswered ones
    older than UNANSWERED_KEPT (a queue nobody took from for that long)."""
    for queue, at in passed(now=now, settle=keep).items():
        QueueProbe.objects.filter(queue=queue, sent_at__lt=at).delete()
    QueueProbe.objects.filter(sent_at__lt=now - UNANSWERED_KEPT).delete()
