"""`manage.py signup_doctor`: what /readyz says, and the work that is stuck; exits 1 when
something is wrong, for cron or a probe."""

import json as json_module

from django.core.management.base import BaseCommand

from signup import health, workflow


class Command(BaseCommand):
    help = (
        "Check the database, the broker and the sweeper, and count stuck work (first contacts,"
        " reminders, emails and webhooks the sweeper should have repaired, dead letters). Exits"
        " 1 when a"
        " part is down or work is stuck; dead letters alone wait for an operator and do not"
        " fail it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *, json: bool = False, **options):
        parts = health.readiness()
        stuck = workflow.stuck_work() if parts["database"] == "ok" else {}
        problems = [f"{name}: {answer}" for name, answer in parts.items() if answer != "ok"]
        problems += [
            f"{name.replace('_', ' ')}: {count}"
            for name, count in stuck.items()
            if count and name not in ("dead_letters", "webhook_dead_letters")
        ]
        if json:
            self.stdout.write(_json({**parts, **stuck, "ok": not problems}))
        else:
            for name, answer in parts.items():
                self.stdout.write(f"{name:<18} {answer}")
            for name, count in stuck.items():
                self.stdout.write(f"{name:<18} {count}")
            if problems:
                self.stderr.write("not well: " + "; ".join(problems))
            else:
                self.stdout.write("well")
        if problems:
            raise SystemExit(1)


def _json(value) -> str:
    return json_module.dumps(value, sort_keys=True)
