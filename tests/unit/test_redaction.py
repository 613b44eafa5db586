"""What is masked before text reaches a log or a timeline: email addresses and verification
tokens, in what providers and servers print and in runserver's request lines."""

import os
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness.processes import free_port
from signup.redaction import redact
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_addresses_in_provider_errors_are_masked():
    refused = smtplib.SMTPRecipientsRefused(
        {"O.Brien+news@Example.CO.UK": (550, b"5.1.1 <O.Brien+news@Example.CO.UK>: unknown")}
    )
    assert redact(f"{type(refused).__name__}: {refused}") == (
        "SMTPRecipientsRefused: {'<address>': (550, b'5.1.1 <<address>>: unknown')}"
    )
    api_error = "AnymailAPIError: API response 422: Invalid 'To' address: 'zoë@bücher.de'."
    assert (
        redact(api_error) == "AnymailAPIError: API response 422: Invalid 'To' address: '<address>'."
    )
    assert redact("GET /?to=alice%40example.com") == "GET /?to=<address>"


def test_verify_tokens_are_masked_and_the_path_shape_stays():
    line = "GET /signup/verify/WzEsMTcwMF0:1rXa:b-_c/?source=reminder-2 HTTP/1.1"
    assert redact(line) == "GET /signup/verify/<token>/?source=reminder-2 HTTP/1.1"
    assert redact(redact(line)) == redact(line)
    assert redact("/signup/resend/ /api/signups/verify") == "/signup/resend/ /api/signups/verify"


def test_runserver_logs_the_verify_path_without_its_token(tmp_path):
    """The quickstart's web process (Procfile) is runserver: its request lines and Django's
    warning about the 400 answer both name the path."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://",
        "DEBUG": "true",
        "SIGNUP_VAR_DIR": str(tmp_path / "var"),
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    with (tmp_path / "web.log").open("wb") as log:
        web = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    token = "WzEsMTcwMF0:1rXa:made-up-token"
    try:
        status = _get(f"http://127.0.0.1:{port}/signup/verify/{token}/?source=verification")
        # runserver writes the request line after the answer has gone out.
        wait_for(lambda: '" 400 ' in (tmp_path / "web.log").read_text(), timeout=10)
    finally:
        web.terminate()
        web.wait(timeout=10)
    output = (tmp_path / "web.log").read_text()
    assert status == 400, output
    assert token not in output
    assert '"GET /signup/verify/<token>/?source=verification HTTP/1.1" 400' in output
    assert "Bad Request: /signup/verify/<token>/" in output


def test_celery_masks_addresses_in_task_outcomes_but_not_in_its_node_names():
    """A worker sets its logging up this way (app.log.setup), in a process of its own."""
    code = (
        "import logging, django\n"
        "django.setup()\n"
        "from config.celery import app\n"
        "app.log.setup(loglevel='INFO')\n"
        "logging.getLogger('celery.app.trace').error(\n"
        "    'Task raised unexpected: %r', {'alice@example.com': (550, b'unknown')})\n"
        "logging.getLogger('celery.apps.worker').info('celery@worker.example.com ready.')\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Task raised unexpected: {'<address>': (550, b'unknown')}" in result.stderr
    assert "alice@example.com" not in result.stdout + result.stderr
    assert "celery@worker.example.com ready." in result.stderr


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


@pytest.mark.parametrize(
    "echoed",
    [
        "550 5.1.1 <jane.doe/team={address}>: Recipient address rejected",
        "550 5.1.1 <o'{address}>: no such user",
        "550 5.1.1 {address}... User unknown",
        '550 <"{local} doe"@bombed.example>: unknown',
        "{{'{address}': (550, b'5.1.1 <{address}>: unknown')}}",
        "550 5.1.1 <#{address}>: unknown",
        "550 5.1.1 {{{address}}} unknown",
        "550 5.1.1 <a!b&c*d=e?f^g`h|i~j-{address}>: unknown",
    ],
)
def test_an_address_is_masked_in_any_spelling_a_provider_echoes(echoed):
    """Whatever a provider quotes back (quoted local parts, slashes, apostrophes, angle
    brackets, every character RFC 5322 allows), nothing of the local part survives."""
    local = "victim"
    text = echoed.format(address=f"{local}@bombed.example", local=local)
    masked = redact(text)
    assert local not in masked and "bombed" not in masked, masked
    assert "jane" not in masked and "doe" not in masked, masked
    assert "<address>" in masked
