"""Enqueue the no-op task COUNT times: the floor of the Celery benchmarks."""

import json
import time
from datetime import UTC, datetime

from django.core.management.base import BaseCommand

from bench import recording
from bench.tasks import noop


class Command(BaseCommand):
    help = (
        "Enqueue COUNT no-op tasks, due COUNTDOWN seconds from now and spread evenly over "
        "SPREAD seconds after that; print a JSON summary."
    )

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--countdown", type=float, default=0.0)
        parser.add_argument("--spread", type=float, default=0.0)
        parser.add_argument(
            "--record",
            choices=["none", "ends", "all"],
            default="none",
            help="which tasks note when they ran: none, the first and the last, or all",
        )

    def handle(self, *, count, countdown, spread, record, **options):
        started = time.time()
        for index in range(count):
            noted = record == "all" or (record == "ends" and index in (0, count - 1))
            kwargs = {"record": recording.NOOP if noted else ""}
            if countdown or spread:
                planned = started + countdown + spread * index / count
                kwargs["planned"] = planned
                noop.apply_async(kwargs=kwargs, eta=datetime.fromtimestamp(planned, UTC))
            else:
                noop.apply_async(kwargs=kwargs)
        summary = {"count": count, "seconds": time.time() - started, "started_at": started}
        self.stdout.write(json.dumps(summary))
