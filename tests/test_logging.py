"""LOG_FORMAT: plain text by default, or one JSON object a line carrying the ids a line is about
and the Celery task that wrote it, with addresses and tokens masked in every field."""

import io
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.processes import free_port
from signup import tasks
from signup.logs import JsonFormatter, TaskContextFilter
from signup.models import OutboundEmail
from signup.redaction import RedactingFilter
from tests.helpers import signed_up, signup_data, wait_for

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@contextmanager
def json_lines(logger_name: str = "signup"):
    """Capture what settings.LOGGING's console handler writes with LOG_FORMAT=json (its
    filters, the JSON formatter) for `logger_name`; yields a function that parses the lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    handler.addFilter(TaskContextFilter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)


def test_json_masks_addresses_and_tokens_in_the_message_and_in_every_field():
    with json_lines() as lines:
        logging.getLogger("signup.workflow").warning(
            "bounce for %s at /signup/verify/WzEsMTcwMF0:1rXa:tok/",
            "alice@example.com",
            extra={
                "signup_id": 7,
                "detail": "<bob@example.com>: unknown",
                # As Celery hands a task's arguments to its "received" line.
                "data": {"args": "('carol@example.com',)", "eta": None},
            },
        )
    (line,) = lines()
    assert line["message"] == "bounce for <address> at /signup/verify/<token>/"
    assert line["signup_id"] == 7
    assert line["detail"] == "<<address>>: unknown"
    assert line["data"] == {"args": "('<address>',)", "eta": None}
    assert {"timestamp", "level", "logger"} <= line.keys()
    assert "@example.com" not in json.dumps(line)


def test_json_lines_of_a_task_carry_its_id_and_the_ids_of_the_signup_and_email(worker, settings):
    settings.EMAIL_BACKEND = "tests.helpers.RefusingBackend"  # dead-letters the email at once
    with json_lines() as lines:
        signup = signed_up(**signup_data())
        email = signup.emails.get()
        wait_for(
            lambda: OutboundEmail.objects.filter(pk=email.pk, status="failed").exists(),
            message="the verification email to be dead-lettered",
        )
        tasks.send_reminder.delay(signup.pk, 9)  # past SIGNUP_MAX_REMINDERS: dropped
        wait_for(
            lambda: any(line.get("reminder") == 9 for line in lines()),
            message="the dropped reminder's line",
        )
    failed, dropped = (
        next(line for line in lines() if line["message"].startswith(start))
        for start in (f"email {email.pk} ", "dropped stale reminder")
    )
    assert failed["level"] == "ERROR"
    assert failed["signup_id"] == signup.pk
    assert failed["email_id"] == email.pk
    assert failed["task_name"] == "signup.tasks.deliver_email"
    assert re.fullmatch(r"[0-9a-f-]{36}", failed["task_id"])
    assert "reminder" not in failed  # a verification email has no number
    assert "<address>" in failed["message"]  # the server's refusal quoted it
    assert dropped["signup_id"] == signup.pk
    assert dropped["task_name"] == "signup.tasks.send_reminder"
    assert dropped["task_id"] != failed["task_id"]
    assert "alice@example.com" not in json.dumps(lines())


def test_a_line_outside_any_task_has_no_task_id():
    with json_lines() as lines:
        logging.getLogger("signup.provider_events").info("no task here")
    (line,) = lines()
    assert "task_id" not in line
    assert "task_name" not in line


# --- In processes of their own -------------------------------------------------------------


def production_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """A deployment on SQLite and the filesystem broker, under `tmp_path`, DEBUG off."""
    env = {
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://",
        "SIGNUP_VAR_DIR": str(tmp_path / "var"),
        # Set, these win over a developer's .env.
        "EMAIL_URL": "consolemail://",
        "LOG_LEVEL": "INFO",
    }
    return {**env, **variables}


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "python"), "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def parsed(output: str) -> list[dict]:
    """Every line of `output` as JSON: a line that is not fails the test."""
    return [json.loads(line) for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize("value", ["yaml", "JSON", "text"])
def test_an_unknown_log_format_is_refused_when_the_settings_load(tmp_path, value):
    result = manage(production_env(tmp_path, LOG_FORMAT=value), "check")
    assert result.returncode != 0
    assert f"ImproperlyConfigured: LOG_FORMAT must be plain or json, not {value!r}." in (
        result.stderr
    )


LOG_A_LINE = (
    "import logging, warnings; "
    "logging.getLogger('signup.workflow').warning("
    "'email 40 for alice@example.com', extra={'signup_id': 12, 'email_id': 40}); "
    "warnings.warn('deprecated')"
)


def test_plain_text_is_the_default_and_reads_as_before(tmp_path):
    env = production_env(tmp_path)
    result = manage(env, "shell", "--no-imports", "-c", LOG_A_LINE)
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING signup\.workflow email 40 for <address>$",
        result.stderr,
        re.MULTILINE,
    ), result.stderr
    assert "{" not in result.stderr


def test_json_from_a_management_command(tmp_path):
    result = manage(
        production_env(tmp_path, LOG_FORMAT="json"), "shell", "--no-imports", "-c", LOG_A_LINE
    )
    assert result.returncode == 0, result.stderr
    line, warning = parsed(result.stderr)
    assert line["message"] == "email 40 for <address>"
    assert (line["level"], line["logger"]) == ("WARNING", "signup.workflow")
    assert (line["signup_id"], line["email_id"]) == (12, 40)
    assert warning["logger"] == "py.warnings"
    assert "UserWarning: deprecated" in warning["message"]


@contextmanager
def started(command: list[str], env: dict[str, str], log_dir: Path, name: str):
    """Run `command` with its stdout and stderr in files of `log_dir`; stop it (SIGTERM: a
    warm shutdown) afterwards and yield the path of its stderr."""
    stderr = log_dir / f"{name}.stderr"
    with (log_dir / f"{name}.stdout").open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True
        )
    try:
        yield stderr
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for_line(path: Path, predicate, what: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        *complete, _ = path.read_text().split("\n")  # the last line may be half written
        for line in complete:
            if line.startswith("{") and predicate(record := json.loads(line)):
                return record
        time.sleep(0.2)
    pytest.fail(f"no line of {what} in {path.name}:\n{path.read_text()[-4000:]}")


@pytest.mark.processes
def test_a_worker_and_beat_write_every_line_as_json(tmp_path):
    """The Procfile's worker (one, serving both queues) and beat, with LOG_FORMAT=json; the
    emails go to an SMTP port where nothing listens, so they are retried, then dead-lettered."""
    env = production_env(
        tmp_path,
        LOG_FORMAT="json",
        EMAIL_URL=f"smtp://127.0.0.1:{free_port()}",
        SIGNUP_EMAIL_RETRY_DELAY="0.1",
        SIGNUP_EMAIL_MAX_ATTEMPTS="2",
    )
    migrated = manage(env, "migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stderr
    worker_command = [
        str(BIN / "celery"),
        *("-A", "config", "worker", "-Q", "celery,email", "--loglevel=INFO"),
        "--concurrency=1",
    ]
    beat_command = [str(BIN / "celery"), "-A", "config", "beat", "--loglevel=INFO"]
    start = (
        "from signup import tasks, workflow; "
        "signup = workflow.start_signup(username='quinn', email='quinn@example.com', "
        "first_name='Quinn'); "
        "workflow.contact_address(signup_id=signup.pk); "
        "tasks.send_reminder.delay(signup.pk, 9); "
        "tasks.request_verification_email.delay('quinn@example.com'); "
        "print(signup.pk, signup.emails.get().pk)"
    )
    with (
        started(worker_command, env, tmp_path, "worker") as worker,
        started(beat_command, env, tmp_path, "beat") as beat,
    ):
        wait_for_line(worker, lambda line: line["message"].endswith(" ready."), "readiness")
        wait_for_line(beat, lambda line: line["message"].startswith("beat: Starting"), "beat")
        result = manage(env, "shell", "--no-imports", "-c", start)
        assert result.returncode == 0, result.stderr
        signup_id, email_id = map(int, result.stdout.split())
        wait_for_line(
            worker,
            lambda line: line.get("email_id") == email_id and "gave up" in line["message"],
            "the dead-lettered email",
        )
        wait_for_line(worker, lambda line: line.get("reminder") == 9, "the dropped reminder")
        wait_for_line(worker, lambda line: "resend request" in line["message"], "the resend")
    worker_lines, beat_lines = parsed(worker.read_text()), parsed(beat.read_text())

    for line in worker_lines + beat_lines:
        assert {"timestamp", "level", "logger", "message"} <= line.keys(), line
    retried, dead_lettered = (
        [
            line
            for line in worker_lines
            if line.get("email_id") == email_id and word in line["message"]
        ]
        for word in ("retrying", "gave up")
    )
    assert len(retried) == 1 and len(dead_lettered) == 1  # once each: not Celery's handler too
    assert retried[0]["task_name"] == dead_lettered[0]["task_name"] == "signup.tasks.deliver_email"
    assert dead_lettered[0]["signup_id"] == signup_id
    (dropped,) = [line for line in worker_lines if line.get("reminder") == 9]
    assert dropped["signup_id"] == signup_id
    assert dropped["task_name"] == "signup.tasks.send_reminder"
    # Celery's own lines, with the task's id; its arguments (an address) masked.
    received = [line for line in worker_lines if line["logger"] == "celery.worker.strategy"]
    assert {line["data"]["name"] for line in received} >= {
        "signup.tasks.deliver_email",
        "signup.tasks.send_reminder",
        "signup.tasks.request_verification_email",
    }
    succeeded = [line for line in worker_lines if line["logger"] == "celery.app.trace"]
    assert succeeded and all(line["task_id"] == line["data"]["id"] for line in succeeded)
    assert "quinn@example.com" not in worker.read_text() + beat.read_text()
    assert any(line["logger"] == "celery.beat" for line in beat_lines)


@pytest.mark.processes
def test_gunicorn_writes_its_error_and_access_logs_as_json(tmp_path):
    env = production_env(tmp_path, LOG_FORMAT="json")
    port = free_port()
    command = [
        str(BIN / "gunicorn"),
        *("config.wsgi", "--config", "config/gunicorn.py", "--bind", f"127.0.0.1:{port}"),
        *("--workers", "1", "--access-logfile", "-", "--error-logfile", "-"),
    ]
    token = "WzEsMTcwMF0:1rXa:made-up-token"
    with started(command, env, tmp_path, "web") as stderr:
        wait_for_line(stderr, lambda line: line["message"].startswith("Booting worker"), "boot")
        status = _get(f"http://127.0.0.1:{port}/signup/verify/{token}/?source=verification")
        assert status == 400
        access = tmp_path / "web.stdout"
        wait_for(lambda: "/signup/verify/" in access.read_text(), message="the access log line")
    (request,) = parsed(access.read_text())
    assert request["logger"] == "gunicorn.access"
    assert '"GET /signup/verify/<token>/?source=verification HTTP/1.1" 400' in request["message"]
    errors = parsed(stderr.read_text())
    assert {line["logger"] for line in errors} >= {"gunicorn.error"}
    assert token not in access.read_text() + stderr.read_text()


@pytest.mark.processes
def test_a_server_error_is_logged_with_its_traceback_when_debug_is_off(tmp_path):
    """An answer of 500 leaves its traceback in the web's log in production (the database
    here has no tables: every query fails)."""
    env = production_env(tmp_path, LOG_FORMAT="json", SIGNUP_API_KEY="logging-test-key")
    port = free_port()
    command = [
        str(BIN / "gunicorn"),
        *("config.wsgi", "--config", "config/gunicorn.py", "--bind", f"127.0.0.1:{port}"),
        *("--workers", "1"),
    ]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/signups/someone",
        headers={"Authorization": "Bearer logging-test-key"},
    )
    with started(command, env, tmp_path, "web") as stderr:
        wait_for_line(stderr, lambda line: line["message"].startswith("Booting worker"), "boot")
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == 500
        error = wait_for_line(stderr, lambda line: line["logger"] == "django.request", "500")
    assert error["level"] == "ERROR"
    assert error["message"] == "Internal Server Error: /api/signups/someone"
    assert "OperationalError" in error["exc_info"]


def test_runserver_writes_its_request_lines_as_json(tmp_path):
    """The quickstart's web process (the Procfile's), with LOG_FORMAT=json."""
    env = production_env(tmp_path, LOG_FORMAT="json", DEBUG="true")
    port = free_port()
    command = [str(BIN / "python"), "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    token = "WzEsMTcwMF0:1rXa:made-up-token"
    with started(command, env, tmp_path, "web") as stderr:
        status = _get(f"http://127.0.0.1:{port}/signup/verify/{token}/?source=verification")
        assert status == 400
        wait_for(lambda: '" 400 ' in stderr.read_text(), message="the request line")
    lines = parsed(stderr.read_text())
    (request,) = [line for line in lines if line["logger"] == "django.server"]
    assert request["message"].startswith(
        '"GET /signup/verify/<token>/?source=verification HTTP/1.1" 400'
    )
    assert request["status_code"] == 400
    (bad_request,) = [line for line in lines if line["logger"] == "django.request"]
    assert bad_request["message"] == "Bad Request: /signup/verify/<token>/"
    assert token not in stderr.read_text()


def _get(url: str) -> int:
    deadline = time.monotonic() + 30
    while True:
        try:
            return urllib.request.urlopen(url, timeout=5).status
        except urllib.error.HTTPError as error:
            return error.code
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
