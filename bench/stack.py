"""The stack the benchmarks run on: the service's gunicorn, Celery workers and beat (with
bench.settings) on a fresh PostgreSQL database and a private redis-server, on free ports; every
process is stopped and the database dropped on the way out, failure and Ctrl-C included."""

import http.client
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg

from harness.processes import RedisServer, free_port, fresh_database

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The local PostgreSQL server (trust auth); each run creates and drops a database of its own.
PG_SERVER = urlsplit(os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/"))
WEB_WORKERS = 2
STARTUP_TIMEOUT = 60
# The service's own tables and the floor's, emptied between benchmarks.
TABLES = ("signup_signupevent", "signup_outboundemail", "signup_signup", "bench_floorrow")


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.05):
    """Poll until predicate() is truthy and return its value; raise TimeoutError after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Process:
    name: str
    command: list[str]
    popen: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def memory(self) -> dict[str, int]:
        """Memory in bytes: the RSS of the process itself and of it with its children, and
        their PSS (RSS with each shared page divided among the processes sharing it), which
        does not count the pages a forked pool shares with its parent twice."""
        main = psutil.Process(self.popen.pid)
        processes = [main, *main.children(recursive=True)]
        infos = [process.memory_full_info() for process in processes]
        return {
            "rss_main": infos[0].rss,
            "rss_total": sum(info.rss for info in infos),
            "pss_total": sum(info.pss for info in infos),
        }

    def stop(self, *, kill: bool = False, timeout: float = 60) -> None:
        """SIGTERM (a warm shutdown) or SIGKILL to the process and its children; wait for it."""
        if self.popen.poll() is None:
            # Started in a session of its own: its group is it and its children only.
            os.killpg(self.popen.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


@dataclass
class Stack:
    """The service's processes, started from one environment, and what they talk to."""

    tmp: Path
    database_url: str
    broker: RedisServer
    settings: dict[str, str]
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    web_port: int = field(default_factory=free_port)
    web: Process | None = None
    beat: Process | None = None
    workers: dict[str, Process] = field(default_factory=dict)
    # Every command line run, in order, for the "how to reproduce" section.
    commands: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.tmp),
            "TMPDIR": str(self.tmp),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.broker.url(0),
            "BENCH_RECORD_URL": self.broker.url(1),
            "EMAIL_BACKEND": "bench.mail.EmailBackend",
            "SITE_URL": self.url,
            "SECRET_KEY": secrets.token_urlsafe(50),
            "DEBUG": "false",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SIGNUP_API_KEY": self.api_key,
            "CONN_MAX_AGE": "60",
            "SIGNUP_VAR_DIR": str(self.tmp / "var"),
            **self.settings,
        }

    # Processes

    def _start(self, name: str, command: list[str], *, role: str) -> Process:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.commands.setdefault(role, shlex.join(_short(command)))
        return Process(name, command, popen, log)

    def start_web(self) -> Process:
        self.web = self._start(
            "web",
            [
                str(BIN / "gunicorn"),
                "config.wsgi",
                "--config",
                "config/gunicorn.py",
                "--bind",
                f"127.0.0.1:{self.web_port}",
                "--workers",
                str(WEB_WORKERS),
            ],
            role="web",
        )
        wait_until(self._web_answers, timeout=STARTUP_TIMEOUT, what="gunicorn")
        return self.web

    def _web_answers(self) -> bool:
        if self.web.popen.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{self.web.output()[-3000:]}")
        try:
            status, _ = self.post("/bench/insert", {"username": "ping"})
        except OSError:
            return False
        return status == 201

    def start_beat(self) -> Process:
        self.beat = self._start(
            "beat",
            [
                str(BIN / "celery"),
                "-A",
                "config",
                "beat",
                "--loglevel=INFO",
                "--schedule",
                str(self.tmp / "beat-schedule"),
            ],
            role="beat",
        )
        wait_until(
            lambda: "beat: Starting" in self.beat.output(), timeout=STARTUP_TIMEOUT, what="beat"
        )
        return self.beat

    def start_worker(self, name: str = "worker", *, concurrency: int = 2) -> Process:
        """Start a Celery worker (prefork, CONCURRENCY pool processes) and wait until ready."""
        assert name not in self.workers, f"{name} is running"
        node = f"{name}-{secrets.token_hex(3)}@{socket.gethostname()}"
        process = self._start(
            f"{name}-{concurrency}",
            [
                str(BIN / "celery"),
                "-A",
                "config",
                "worker",
                "--loglevel=INFO",
                f"--concurrency={concurrency}",
                f"--hostname={node}",
                # Mingle only makes a new worker wait a second for others' replies at start-up.
                "--without-mingle",
            ],
            role=f"worker (concurrency {concurrency})",
        )
        self.workers[name] = process
        offset = len(process.output())

        def ready() -> bool:
            if process.popen.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{process.output()[-3000:]}")
            return f"{node} ready." in process.output()[offset:]

        wait_until(ready, timeout=STARTUP_TIMEOUT, what=f"worker {node}")
        return process

    def stop_worker(self, name: str = "worker", *, kill: bool = False) -> None:
        self.workers.pop(name).stop(kill=kill)

    def stop_all(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name, kill=True)
        for process in (self.web, self.beat):
            if process is not None:
                process.stop()
        self.web = self.beat = None

    # Talking to the service

    def post(self, path: str, body: dict, *, timeout: float = 30) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=timeout)
        try:
            connection.request(
                "POST",
                path,
                body=json.dumps(body),
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {self.api_key}",
                },
            )
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()

    def manage(self, *args: str, env: dict | None = None, timeout: float = 3600) -> dict:
        """Run `python manage.py ARGS` against the stack and return the JSON it printed last."""
        command = [str(BIN / "python"), "manage.py", *args]
        self.commands.setdefault(args[0], shlex.join(_short(command)))
        done = subprocess.run(
            command,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def manage_in_background(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        command = [str(BIN / "python"), "manage.py", *args]
        self.commands.setdefault(args[0], shlex.join(_short(command)))
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def query(self, query: str, params=()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            cursor = connection.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def busy_connections(self) -> int:
        """Connections to the database, other than this one, inside a statement or transaction."""
        (busy,) = self.query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state <> 'idle'"
        )[0]
        return busy

    def reset(self) -> None:
        """Empty the tables and the broker (with no worker running)."""
        # Requests a load run left in gunicorn's backlog finish first: one committing after the
        # flush would leave a ledger row whose task is gone, re-driven minutes later.
        quiet_since = time.monotonic()
        deadline = quiet_since + 30
        while time.monotonic() - quiet_since < 0.5 and time.monotonic() < deadline:
            if self.busy_connections():
                quiet_since = time.monotonic()
            time.sleep(0.05)
        for attempt in range(10):
            try:
                self.query(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
                break
            except psycopg.errors.DeadlockDetected:
                # A web request still in flight from the last load run took a lock first.
                if attempt == 9:
                    raise
                time.sleep(0.5)
        with self.broker.client() as client:
            client.flushall()


def _short(command: list[str]) -> list[str]:
    """The command as a person types it in the repository: venv paths made relative."""
    return [part.replace(f"{BIN}/", ".venv/bin/") for part in command]


@contextmanager
def running_stack(tmp: Path, settings: dict[str, str]):
    """A migrated fresh database and a private Redis; yields a Stack whose processes the
    caller starts. Everything is stopped and dropped when the block ends, however it ends."""
    with ExitStack() as cleanup:
        database_url = cleanup.enter_context(fresh_database("signup_bench", PG_SERVER))
        broker = cleanup.enter_context(RedisServer(tmp).running())
        stack = Stack(tmp=tmp, database_url=database_url, broker=broker, settings=settings)
        cleanup.callback(stack.stop_all)
        subprocess.run(
            [str(BIN / "python"), "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env=stack.env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        yield stack
