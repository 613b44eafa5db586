"""Run the sweeper RUNS times in a row and print how long each run took."""

import json
import time

from django.core.management.base import BaseCommand

from signup import workflow


class Command(BaseCommand):
    help = "Time RUNS calls of signup.workflow.sweep(); print a JSON summary."

    def add_arguments(self, parser):
        parser.add_argument("--runs", type=int, default=5)

    def handle(self, *, runs, **options):
        seconds, counts = [], []
        for _ in range(runs):
            started = time.perf_counter()
            counts.append(workflow.sweep())
            seconds.append(time.perf_counter() - started)
        self.stdout.write(json.dumps({"seconds": seconds, "counts": counts}))
