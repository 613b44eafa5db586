"""The Celery application; its configuration is the CELERY_* part of config.settings."""

import logging
import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun
from celery.utils.log import get_multiprocessing_logger

from signup.logs import JsonFormatter, TaskContextFilter
from signup.redaction import redacting_filter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Celery's lines about a task's outcome quote its exception or return value, and a
# provider's exception can name the recipient: they are masked as the project's own lines
# are. Not all of Celery's lines: a worker's node name ("celery@host ready.") looks like an
# address, and what a worker prints is the quickstart's console emails, links included.
for _name in ("celery.app.trace", "celery.worker.request"):
    logging.getLogger(_name).addFilter(redacting_filter)


def _not_the_projects(record: logging.LogRecord) -> bool:
    return record.name != "signup" and not record.name.startswith("signup.")


@after_setup_logger.connect
def format_celery_logs(logger: logging.Logger, **kwargs) -> None:
    """Write Celery's lines in LOG_FORMAT, once each.

    A worker or beat takes the root logger over (worker_hijack_root_logger) with a handler of
    its own, and gives billiard's logger (its pool's lines) another: they get the JSON
    formatter and the task's id here. A worker has set up settings.LOGGING by then (Celery's
    Django fixup), and the project's lines are written by their own handler: they would
    reach Celery's too, so Celery's leaves them out.
    """
    handlers = [*logger.handlers, *get_multiprocessing_logger().handlers]
    if logging.getLogger("signup").handlers:
        for handler in handlers:
            handler.addFilter(_not_the_projects)
    _use_log_format(handlers)


@after_setup_task_logger.connect
def format_celery_task_logs(logger: logging.Logger, **kwargs) -> None:
    """The same for the handler of Celery's task logger (get_task_logger)."""
    _use_log_format(logger.handlers)


def _use_log_format(handlers: list[logging.Handler]) -> None:
    from django.conf import settings

    if settings.LOG_FORMAT == "json":
        for handler in handlers:
            handler.setFormatter(JsonFormatter())
            handler.addFilter(TaskContextFilter())


@task_prerun.connect
@task_postrun.connect
def close_old_connections(**kwargs) -> None:
    """Give each task the database connection lifecycle Django gives each request: a pooled
    connection goes back to the pool when the task ends; without a pool, one is kept for
    CONN_MAX_AGE seconds, health-checked before use (CONN_HEALTH_CHECKS) and dropped if it
    broke. Celery's own Django fixup would close it after every task (unless
    CELERY_DB_REUSE_MAX), and a new connection costs more than most of our tasks."""
    from django.db import close_old_connections

    close_old_connections()
