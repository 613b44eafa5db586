"""The zero-setup quickstart: SQLite, the filesystem broker and console email, with real
worker and beat processes started the way `make run` starts them."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Starts its own processes on SQLite and the filesystem broker: no service, but slow.
pytestmark = pytest.mark.processes

QUICKSTART_UNSET = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "EMAIL_URL",
    "EMAIL_BACKEND",
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "CONN_MAX_AGE",
    "SIGNUP_API_KEY",
)


@pytest.fixture
def quickstart_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in QUICKSTART_UNSET}
    env.update(
        DEBUG="true",  # as `make run` sets it: the quickstart's development key comes with it
        SIGNUP_VAR_DIR=str(tmp_path / "var"),
        SIGNUP_REMINDER_INTERVAL="2",
        SIGNUP_SWEEP_INTERVAL="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _manage(env, *args, timeout=60) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return result.stdout


def _wait_for_output(path: Path, pattern: str, *, count=1, timeout=30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(pattern, path.read_text(errors="replace"))
        if len(found) >= count:
            return found
        time.sleep(0.2)
    pytest.fail(f"{pattern!r} x{count} not in output:\n{path.read_text()[-3000:]}")


def test_quickstart_defaults_run_the_flow_with_a_real_worker(quickstart_env, tmp_path):
    _manage(quickstart_env, "migrate", "--noinput")
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [
                str(BIN / "celery"),
                "-A",
                "config",
                "worker",
                "--beat",
                "--loglevel=INFO",
                "--concurrency=1",
                "--schedule",
                str(tmp_path / "beat-schedule"),
            ],
            cwd=ROOT,
            env=quickstart_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _manage(
            quickstart_env,
            "shell",
            "-c",
            (
                "from signup import workflow; workflow.start_signup(username='quinn', "
                "email='quinn@example.com', first_name='Quinn')"
            ),
        )
        _wait_for_output(log, r"Subject: Verify your email address for 127\.0\.0\.1")
        _wait_for_output(log, r"Subject: Reminder: verify", timeout=20)
        link = _wait_for_output(log, r"http://127\.0\.0\.1:8000/signup/verify/(\S+)/\?source=(\S+)")
        token, source = link[0]
        out = _manage(
            quickstart_env,
            "shell",
            "-c",
            (
                f"from signup import workflow; print(workflow.verify_signup(token='{token}', "
                f"source='{source}').message)"
            ),
        )
        assert out.strip().endswith("done")
        _wait_for_output(log, r"Subject: Welcome, Quinn!")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert "Traceback" not in log.read_text()
