"""Run the sweeper RUNS times in a row and print how long each run took; with --explain, the
plan of each query a sweep makes, as PostgreSQL ran it (EXPLAIN ANALYZE)."""

import json
import re
import time

from django.core.management.base import BaseCommand
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from signup import workflow


class Command(BaseCommand):
    help = "Time RUNS calls of signup.workflow.sweep(); print a JSON summary."

    def add_arguments(self, parser):
        parser.add_argument("--runs", type=int, default=5)
        parser.add_argument(
            "--explain",
            action="store_true",
            help="then sweep once more in a transaction that is rolled back, and EXPLAIN"
            " ANALYZE each of its queries there",
        )

    def handle(self, *, runs, explain, **options):
        seconds, counts = [], []
        for _ in range(runs):
            started = time.perf_counter()
            counts.append(workflow.sweep())
            seconds.append(time.perf_counter() - started)
        summary = {"seconds": seconds, "counts": counts}
        if explain:
            summary["plans"] = _plans()
        self.stdout.write(json.dumps(summary))


def _plans() -> list[dict]:
    """Each distinct statement of one sweep, with its plan as it ran. The sweep and the
    EXPLAINs share one transaction that is rolled back: nothing changes, nothing is enqueued
    (the sweep's after-commit work never runs)."""
    plans, seen = [], set()
    with transaction.atomic():
        with CaptureQueriesContext(connection) as captured:
            workflow.sweep()
        with connection.cursor() as cursor:
            for query in captured.captured_queries:
                sql = query["sql"]
                if sql.split(None, 1)[0].upper() not in ("SELECT", "UPDATE", "DELETE", "INSERT"):
                    continue
                shape = re.sub(r"'[^']*'|\b\d+\b", "?", sql)
                if shape in seen:
                    continue
                seen.add(shape)
                cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
                plan = [line for (line,) in cursor.fetchall()]
                plans.append({"sql": sql, "plan": plan})
        transaction.set_rollback(True)
    return plans
