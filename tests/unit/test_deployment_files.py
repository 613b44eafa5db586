"""What the deployment files promise: no default secrets, dashboards on this machine only."""

import os
import re
import signal
from pathlib import Path

import pytest
import requests

from harness.processes import BIN, free_port, start_process, stop_all
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = (ROOT / "docker-compose.yml").read_text()
README = (ROOT / "README.md").read_text()
SECRETS = ("SECRET_KEY", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")


def _service(name: str) -> str:
    """The lines of one service of docker-compose.yml."""
    match = re.search(rf"^  {name}:\n((?:    .*\n|\n)*)", COMPOSE, re.MULTILINE)
    assert match, f"no service {name} in docker-compose.yml"
    return match.group(1)


@pytest.mark.parametrize("service", ["flower", "mailpit"])
def test_compose_publishes_flower_and_mailpit_on_loopback_only(service):
    published = re.findall(r'^      - "([^"]+)"$', _service(service), re.MULTILINE)
    assert published
    assert all(port.startswith("127.0.0.1:") for port in published), published


@pytest.mark.parametrize("name", SECRETS)
def test_compose_carries_no_default_secret(name):
    # Compose's own substitutions; $${NAME} is left for the container's shell.
    uses = re.findall(rf"(?<!\$)\$\{{{name}(\W\W?)", COMPOSE)
    assert uses, f"{name} is not used"
    assert set(uses) == {":?"}, f"{name} must be required (${{{name}:?...}}), not defaulted"


def test_compose_writes_no_password_in():
    assert "postgres://signup:signup@" not in COMPOSE
    assert "POSTGRES_PASSWORD: signup" not in COMPOSE
    assert "admin:admin" not in COMPOSE


def test_flower_always_needs_a_password():
    (procfile_flower,) = re.findall(r"^flower: .*$", (ROOT / "Procfile").read_text(), re.M)
    assert "--address=${FLOWER_ADDRESS:-127.0.0.1}" in procfile_flower
    assert "--basic-auth=${FLOWER_BASIC_AUTH:?" in procfile_flower
    assert "--basic-auth=$${FLOWER_BASIC_AUTH}" in _service("flower")
    assert "admin:admin" not in (ROOT / "Makefile").read_text()


def _pins(lock: str) -> dict[str, str]:
    text = (ROOT / lock).read_text()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", text, re.MULTILINE))


def test_the_production_image_installs_the_services_dependencies_only():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"pip install .*-r requirements\.lock\b", dockerfile)
    assert "requirements-dev.lock" not in dockerfile
    runtime = {name.lower() for name in _pins("requirements.lock")}
    for tool in ("pytest", "pytest-django", "pytest-celery", "playwright", "debugpy", "docker",
                 "aiosmtpd", "ruff", "psutil"):  # fmt: skip
        assert tool not in runtime, f"{tool} would ship in the production image"
    assert {"django", "celery", "gunicorn", "django-anymail"} <= runtime


def test_the_production_image_leaves_the_tests_and_benchmarks_out():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"tests", "bench", "harness", ".env", ".git"} <= ignored
    # What the service itself imports stays in.
    for needed in ("signup", "config", "templates", "locale", "manage.py"):
        assert needed not in ignored


def test_development_pins_the_same_versions_as_production():
    runtime, development = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert {name: development.get(name) for name in runtime} == runtime


@pytest.mark.processes
def test_the_readmes_flower_command_runs_as_written(tmp_path):
    """The README's production command for Flower, run by a shell as an operator would
    (on a free port instead of 5555, the one change): it listens and wants its password."""
    (command,) = re.findall(r"^FLOWER_BASIC_AUTH=.*celery -A config flower.*$", README, re.M)
    port = str(free_port())
    assert "5555" in command
    command = command.replace("5555", port)
    env = {
        **os.environ,
        "PASSWORD": "a-password-of-the-operators",
        "DEBUG": "true",
        "CELERY_BROKER_URL": "memory://",
        "SIGNUP_VAR_DIR": str(tmp_path),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    flower = start_process("flower", ["sh", "-c", command], env, tmp_path)
    try:
        (answer,) = wait_for(
            lambda: flower.popen.poll() is not None or _get(f"http://127.0.0.1:{port}/"),
            timeout=60,
            message="Flower to listen",
        )
        assert flower.popen.poll() is None, flower.output()
        assert answer.status_code == 401  # basic auth, as the command says
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
    finally:
        os.killpg(flower.popen.pid, signal.SIGTERM)  # the shell and the Flower it started
        stop_all([flower])


def _get(url: str) -> list[requests.Response]:
    try:
        return [requests.get(url, timeout=2)]
    except requests.ConnectionError:
        return []
