"""The floor of the Celery benchmarks: a task that does nothing but, when asked, say when it ran."""

from celery import shared_task

from bench import recording


@shared_task
def noop(planned: float | None = None, record: str = "") -> None:
    """Do nothing; if `record` names a list, note when this ran (and when it was planned to)."""
    if record:
        recording.push(record, planned=planned)
