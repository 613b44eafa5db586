"""The Celery application; its configuration is the CELERY_* part of config.settings."""

import logging
import os

from celery import Celery
from celery.signals import task_postrun, task_prerun

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
