"""The Celery application; its configuration is the CELERY_* part of config.settings."""

import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun

from signup.redaction import redacting_filter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def close_old_connections(**kwargs) -> None:
    """Give each task the database connection lifecycle Django gives each request: keep a
    connection for CONN_MAX_AGE seconds, health-check it before use (CONN_HEALTH_CHECKS),
    and drop one that broke. Celery's own Django fixup would close it after every task
    (unless CELERY_DB_REUSE_MAX), and a new connection costs more than most of our tasks."""
    from django.db import close_old_connections

    close_old_connections()


@after_setup_logger.connect
@after_setup_task_logger.connect
def redact_worker_logs(logger, **kwargs) -> None:
    """Mask email addresses and verification tokens in every line a worker or beat logs,
    Celery's own included: a task that fails unexpectedly is logged with its exception, and
    a provider's exception can name the recipient."""
    for handler in logger.handlers:
        handler.addFilter(_redact_all_but_output)


def _redact_all_but_output(record) -> bool:
    # What a worker prints reaches its log as "celery.redirected". In the quickstart that is
    # the console email backend writing the emails themselves, whose links the person opens.
    if record.name != "celery.redirected":
        redacting_filter.filter(record)
    return True
