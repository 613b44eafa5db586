"""How the project starts in a fresh interpreter: settings it refuses, and imports that work
in any order."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_tasks_module_can_be_imported_first_and_does_not_import_the_workflow():
    result = _python(
        "import sys\n"
        "import signup.tasks\n"
        "assert 'signup.workflow' not in sys.modules, 'signup.tasks imported the workflow'\n"
        "import django\n"
        "django.setup()\n"
        "from signup import tasks, workflow\n"
        "from signup.workflow.internal import ledger\n"
        "assert ledger.tasks is tasks and workflow.EMAIL is ledger.EMAIL\n"
        "print('ok')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_worker_finds_every_task_whichever_module_comes_first():
    result = _python(
        "import django\n"
        "django.setup()\n"
        "import signup.workflow\n"
        "from config.celery import app\n"
        "app.loader.import_default_modules()\n"
        "print(sorted(name for name in app.tasks if name.startswith('signup.')))\n"
    )
    assert result.returncode == 0, result.stderr
    assert "'signup.tasks.deliver_email'" in result.stdout
    assert "'signup.tasks.send_reminder'" in result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SIGNUP_REMINDER_INTERVAL": "0"}, "SIGNUP_REMINDER_INTERVAL must be a positive"),
        ({"SIGNUP_EXPIRES_AFTER": "-5"}, "SIGNUP_EXPIRES_AFTER must be a positive"),
        ({"SIGNUP_SWEEP_INTERVAL": "0"}, "SIGNUP_SWEEP_INTERVAL must be a positive"),
        (
            {"SIGNUP_SWEEP_INTERVAL": "60", "SIGNUP_SCHEDULE_AHEAD": "100"},
            "SIGNUP_SCHEDULE_AHEAD must be at least twice SIGNUP_SWEEP_INTERVAL",
        ),
        ({"SIGNUP_MAX_REMINDERS": "six"}, "invalid literal for int"),
        ({"SIGNUP_RETENTION_DAYS": "-1"}, "SIGNUP_RETENTION_DAYS must be zero or more days"),
    ],
)
def test_settings_that_would_break_the_timers_are_refused_at_startup(env, message):
    result = _python("import django; django.setup()", **env)
    assert result.returncode != 0
    assert message in result.stderr
