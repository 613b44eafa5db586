"""Log lines a machine can read: with LOG_FORMAT=json each line is one JSON object carrying the
ids it is about (signup_id, email_id, reminder) and the Celery task that wrote it.
"""

import datetime
import logging
import logging.config

from celery import current_task
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as BaseJsonFormatter

from signup.redaction import redact


def configure(config: dict) -> None:
    """Set logging up from settings.LOGGING (Django's LOGGING_CONFIG), with Python's warnings
    logged (py.warnings) rather than printed bare, as a Celery worker has them."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)


def ids(
    *, signup_id: int | None = None, email_id: int | None = None, reminder: int | None = None
) -> dict[str, int]:
    """Return the `extra` of a log call about a signup, one of its emails or a reminder (by
    number): the ids that are known, as the fields of a JSON line."""
    known = {"signup_id": signup_id, "email_id": email_id, "reminder": reminder}
    return {name: value for name, value in known.items() if value is not None}


class TaskContextFilter(logging.Filter):
    """Add the id and name of the Celery task being run, if any, to every record it sees, so
    that a line leads to the task's other lines and to Flower without every call passing
    them. On a handler, it runs in the thread that logs, where Celery's current_task is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if current_task and current_task.request.id and not hasattr(record, "task_id"):
            record.task_id = current_task.request.id
            record.task_name = current_task.name
        return True


class JsonFormatter(BaseJsonFormatter):
    """One JSON object a line: timestamp (UTC), level, logger, message, the traceback if any,
    and the record's extra fields (our ids, a filter's task_id and task_name, Celery's).

    The message is masked by the redacting filters, as in plain text (config/celery.py says
    why not all of Celery's lines are). Every other value is masked here: Celery hands a
    task's arguments to its "received" and "succeeded" lines as an extra field, and the
    arguments of signup.tasks.request_verification_email are an address.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", True)
        # Django's request lines carry the request object (runserver's: a socket) and the
        # time as text: the message and the timestamp say what they would.
        kwargs.setdefault("reserved_attrs", [*RESERVED_ATTRS, "request", "server_time"])
        super().__init__("%(levelname)s %(name)s %(message)s", **kwargs)

    def process_log_record(self, log_data: dict) -> dict:
        log_data = {"timestamp": log_data.pop("timestamp"), **log_data}  # first, to read
        return {
            key: value if key == "message" else _redacted(value) for key, value in log_data.items()
        }


def _redacted(value):
    """`value` with every address and token masked in its text, as JSON can hold it."""
    if value is None or isinstance(value, bool | int | float | datetime.date | datetime.time):
        return value
    if isinstance(value, dict):
        return {redact(str(key)): _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(item) for item in value]
    return redact(str(value))
