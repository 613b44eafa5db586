"""Database connections stay bounded under load: the web process `make run` starts, on
PostgreSQL, answers a burst of API signups from many clients without running out, with
connections closed after each request (the Procfile's default) or pooled."""

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import requests

from harness.processes import BIN, ROOT, RedisServer, free_port, fresh_database, pg_url
from harness.procfile import read_procfile

pytestmark = [pytest.mark.processes, pytest.mark.postgres, pytest.mark.redis]

API_KEY = "load-api-key-0123456789"
SIGNUPS = 300
CLIENTS = 16
POOL_SIZE = 4


class ConnectionCounter:
    """Counts, every few milliseconds, the server's connections to one database."""

    def __init__(self, database_url: str):
        self.database = urlsplit(database_url).path.lstrip("/")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        with psycopg.connect(pg_url("postgres"), autocommit=True) as admin:
            while not self._stop.is_set():
                (count,) = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.database]
                ).fetchone()
                self.peak = max(self.peak, count)
                time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize(
    ("extra_env", "budget"),
    [
        pytest.param({}, CLIENTS, id="closed-after-each-request"),
        pytest.param({"DATABASE_POOL_SIZE": str(POOL_SIZE)}, POOL_SIZE, id="pooled"),
    ],
)
def test_a_burst_of_api_signups_keeps_the_quickstart_web_within_its_connections(
    tmp_path: Path, extra_env: dict, budget: int
):
    port = free_port()
    with fresh_database("signup_load") as database_url, RedisServer(tmp_path).running() as redis:
        env = {
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",  # as make run sets it
            "HOME": str(tmp_path),
            "PYTHONUNBUFFERED": "1",
            "DEBUG": "true",  # as make run sets it
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": redis.url(),
            "SIGNUP_API_KEY": API_KEY,
            "WEB_ADDR": f"127.0.0.1:{port}",
            "SIGNUP_VAR_DIR": str(tmp_path / "var"),
            **extra_env,
        }
        subprocess.run(
            [str(BIN / "python"), "manage.py", "migrate", "--noinput"],
            cwd=ROOT, env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        log = (tmp_path / "web.log").open("wb")
        web = subprocess.Popen(
            ["sh", "-c", read_procfile()["web"].line],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            _wait_for_web(f"http://127.0.0.1:{port}", web)
            with ConnectionCounter(database_url) as counter:
                statuses = _sign_up_in_parallel(f"http://127.0.0.1:{port}/api/signups")
        finally:
            os.killpg(web.pid, signal.SIGTERM)  # the shell and the server it started
            web.wait(timeout=20)
            log.close()
    output = (tmp_path / "web.log").read_text(errors="replace")
    assert statuses == {201: SIGNUPS}, output[-3000:]
    assert "too many clients" not in output
    print(f"{SIGNUPS} signups from {CLIENTS} clients: peak {counter.peak} connections")
    assert 1 <= counter.peak <= budget


def _wait_for_web(url: str, web: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert web.poll() is None, "the web process exited"
        try:
            requests.get(f"{url}/signup/", timeout=2)
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    pytest.fail("the web process did not answer within 30 s")


def _sign_up_in_parallel(url: str) -> dict[int, int]:
    local = threading.local()

    def sign_up(number: int) -> int:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        body = {"username": f"load{number}", "email": f"load{number}@example.com",
                "first_name": "Load"}  # fmt: skip
        headers = {"Authorization": f"Bearer {API_KEY}"}
        return session.post(url, json=body, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(CLIENTS) as clients:
        statuses = list(clients.map(sign_up, range(SIGNUPS)))
    return {status: statuses.count(status) for status in set(statuses)}
