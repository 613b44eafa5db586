"""Where the time of a signup submit and of an email delivery goes, measured in one process.

Runs the API view through Django's test client and the email task's body directly, counting
the SQL statements and timing them, the broker publishes, the rendering and the email
backend, beside the floor view. Prints a JSON summary for `python -m bench.profile`.
"""

import json
import os
import time
from contextlib import contextmanager

from celery import Task
from django.core.mail import EmailMultiAlternatives
from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection, connections
from django.test import Client

from signup import emails, workflow
from signup.models import OutboundEmail, Signup


class Timings:
    """Time spent in SQL statements (a transaction's BEGIN goes with its first statement),
    COMMITs, connection health checks, broker publishes, rendering and the email backend."""

    def __init__(self):
        self.seconds = {
            "sql": 0.0,
            "commit": 0.0,
            "health_check": 0.0,
            "publish": 0.0,
            "render": 0.0,
            "backend": 0.0,
        }
        self.statements = 0

    def execute(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds["sql"] += time.perf_counter() - started
            self.statements += 1


@contextmanager
def timed(timings: Timings, name: str, owner, attribute: str):
    """Count the time spent in owner.attribute into timings.seconds[name]."""
    original = getattr(owner, attribute)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timings.seconds[name] += time.perf_counter() - started

    setattr(owner, attribute, wrapper)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


@contextmanager
def measuring(timings: Timings):
    wrapper = type(connections["default"])
    with (
        connection.execute_wrapper(timings.execute),
        timed(timings, "commit", wrapper, "_commit"),
        timed(timings, "health_check", wrapper, "close_if_health_check_failed"),
        timed(timings, "publish", Task, "apply_async"),
    ):
        yield


def per_item(timings: Timings, seconds: float, count: int) -> dict:
    return {
        "ms": seconds / count * 1000,
        "statements": timings.statements / count,
        **{f"{name}_ms": value / count * 1000 for name, value in timings.seconds.items()},
    }


class Command(BaseCommand):
    help = "Profile the API submit and an email delivery in-process; print a JSON summary."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=1000)

    def handle(self, *, count, **options):
        client = Client(
            headers={"Authorization": f"Bearer {os.environ['SIGNUP_API_KEY']}"},
            SERVER_NAME="127.0.0.1",  # an allowed host of the stack
        )
        run = os.urandom(3).hex()

        def post(path: str, prefix: str, number: int) -> None:
            body = {
                "username": f"{prefix}{run}{number}",
                "email": f"{prefix}{run}{number}@example.com",
                "first_name": "Bench",
                "last_name": "User",
            }
            response = client.post(path, json.dumps(body), content_type="application/json")
            assert response.status_code == 201, response.content

        results = {}
        for name, path in (("floor", "/bench/insert"), ("submit", "/api/signups")):
            for number in range(count // 10):
                post(path, f"w{name[0]}", number)  # warm-up
            timings = Timings()
            with measuring(timings):
                started = time.perf_counter()
                for number in range(count):
                    post(path, f"m{name[0]}", number)
                seconds = time.perf_counter() - started
            results[name] = per_item(timings, seconds, count)

        # The submits above enqueued their first contacts, which queue their verification
        # emails: contact, then deliver them, as a worker would.
        for signup_id in Signup.objects.filter(contacted_at__isnull=True).values_list(
            "id", flat=True
        ):
            workflow.contact_address(signup_id=signup_id)
        queued = list(
            OutboundEmail.objects.filter(status=OutboundEmail.Status.QUEUED)
            .order_by("id")
            .values_list("id", flat=True)[:count]
        )
        timings = Timings()
        with (
            measuring(timings),
            timed(timings, "render", emails, "build_message"),
            timed(timings, "backend", EmailMultiAlternatives, "send"),
        ):
            started = time.perf_counter()
            for email_id in queued:
                close_old_connections()  # what the worker does around each task
                assert workflow.attempt(workflow.EMAIL, email_id) is None
            seconds = time.perf_counter() - started
        results["email"] = per_item(timings, seconds, len(queued))
        self.stdout.write(json.dumps(results))
