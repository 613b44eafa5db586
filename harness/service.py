"""The service as separate processes on resources the caller provides (a database, a broker, an
email backend): gunicorn, and the Celery workers and beat exactly as the Procfile starts them,
all from one environment. The process tests, the fault tests and the benchmarks run this."""

import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

from harness.processes import BIN, ROOT, Process, free_port, start_process, stop_all
from harness.procfile import PROCFILE, read_procfile

WEB_WORKERS = 2
HOST_METRICS_PORT = 9808
STARTUP_TIMEOUT = 60
HTTP_TIMEOUT = 10
BEAT_STARTED = "beat: Starting"
BEAT_SWEPT = "Sending due task sweep-signups"


class ServiceError(RuntimeError):
    pass


class Service:
    """Web, beat and the Procfile's workers of one deployment of the service.

    `env` goes over the environment every process gets (a free port, or 8000 on a host of its
    own, a fresh secret key, the database, the broker, a private HOME, TMPDIR, SIGNUP_VAR_DIR
    and metrics directory under `tmp`); it is where
    a caller sets the email backend, the workflow's knobs and the Procfile's own variables
    (WORKER_CONCURRENCY, ...). The workers and beat run the Procfile's lines, with only a node
    name added to each worker (`--hostname`, so that each one is known apart on a shared
    broker). The web is gunicorn as the image runs it, since the Procfile's web line is
    Django's development server.
    """

    def __init__(
        self,
        *,
        tmp: Path,
        database_url: str,
        broker_url: str,
        env: dict[str, str] | None = None,
        api_key: str | None = None,
        web_workers: int = WEB_WORKERS,
        startup_timeout: float = STARTUP_TIMEOUT,
        procfile: Path = PROCFILE,
        host=None,
    ):
        self.tmp = tmp
        # Where the processes run: this machine (127.0.0.1), or a harness.hosts.Host, a
        # network namespace of its own with an address on the hosts' network.
        self.host = host
        self.database_url = database_url
        self.broker_url = broker_url
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.web_workers = web_workers
        self.startup_timeout = startup_timeout
        self.procfile = read_procfile(procfile)
        self.port = free_port() if host is None else 8000
        self.web: Process | None = None
        self.beat: Process | None = None
        self.host_metrics: Process | None = None  # config.metrics_wsgi, on a worker host
        self.workers: dict[str, Process] = {}  # the running incarnation of each worker
        self.all_workers: list[Process] = []  # every incarnation, for their logs
        # The command each process was last started with, by name, for the benchmarks' report.
        self.commands: dict[str, list[str]] = {}
        self.env = {
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            # Per-user state (gunicorn's control socket) stays out of the real home directory.
            "HOME": str(tmp),
            # A killed worker leaves its pool's temporary directory behind: keep it here.
            "TMPDIR": str(tmp),
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            "SITE_URL": self.url,
            "SECRET_KEY": secrets.token_urlsafe(50),
            "DEBUG": "false",
            "ALLOWED_HOSTS": self.address,
            "SIGNUP_API_KEY": self.api_key,
            # Beat's schedule file lives here too.
            "SIGNUP_VAR_DIR": str(tmp / "var"),
            # As production runs: one scrape adds up every web and worker process.
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
            **(env or {}),
        }

    @property
    def address(self) -> str:
        return "127.0.0.1" if self.host is None else self.host.address

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def worker_entries(self) -> list[str]:
        """The names of the Procfile's worker lines, in its order."""
        return [name for name, entry in self.procfile.items() if entry.role == "worker"]

    @property
    def processes(self) -> list[Process]:
        """The running processes: web, the current workers, beat."""
        shown = (self.web, *self.workers.values(), self.beat, self.host_metrics)
        return [p for p in shown if p is not None]

    def migrate(self, timeout: float = 300) -> None:
        """Create the service's tables in its database."""
        done = subprocess.run(
            [str(BIN / "python"), "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise ServiceError(f"migrate failed:\n{done.stdout}\n{done.stderr}")

    # --- Starting and stopping ---------------------------------------------------------------

    def start(self, *, beat_ready: str = BEAT_STARTED) -> None:
        """Start web, beat and every worker of the Procfile; wait until all are ready."""
        # The metrics of an earlier run of this deployment are gone, as on a restarted host.
        shutil.rmtree(self.env["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
        self.start_web(wait=False)
        self.start_beat(wait=False)
        workers = self.start_workers(wait=False)
        self.wait_for(self.web_answers, timeout=self.startup_timeout, what="the web answered")
        for worker in workers:
            self.wait_until_ready(worker)
        self.wait_until_beat(beat_ready)

    def start_web(self, *, wait: bool = True) -> Process:
        command = [
            str(BIN / "gunicorn"),
            "config.wsgi",
            "--config",
            "config/gunicorn.py",
            "--bind",
            f"{self.address}:{self.port}",
            "--workers",
            str(self.web_workers),
        ]
        self.web = self._start("web", command, self.env)
        if wait:
            self.wait_for(self.web_answers, timeout=self.startup_timeout, what="the web answered")
        return self.web

    def start_host_metrics(self, port: int = HOST_METRICS_PORT) -> Process:
        """The /metrics of a host that runs workers and no web (config.metrics_wsgi), as
        docs/OPERATIONS.md#several-hosts runs it."""
        command = [
            str(BIN / "gunicorn"),
            "config.metrics_wsgi",
            "--config",
            "config/gunicorn.py",
            "--bind",
            f"{self.address}:{port}",
            "--workers",
            "1",
        ]
        self.host_metrics = self._start("metrics", command, self.env)
        return self.host_metrics

    def start_beat(self, *, wait: bool = True, ready: str = BEAT_STARTED) -> Process:
        (name,) = [name for name, entry in self.procfile.items() if entry.role == "beat"]
        self.beat = self._start(name, self._procfile_command(name, self.env), self.env)
        if wait:
            self.wait_until_beat(ready)
        return self.beat

    def wait_until_beat(self, ready: str = BEAT_STARTED) -> None:
        """Wait until beat's log shows `ready`: BEAT_STARTED, or BEAT_SWEPT once it has sent
        its first sweep."""
        self.wait_for(
            lambda: ready in self.beat.output(), timeout=self.startup_timeout, what=f"beat: {ready}"
        )

    def start_workers(self, *, env: dict[str, str] | None = None, wait: bool = True):
        """Start every worker line of the Procfile (with `env` over the service's); return
        their processes."""
        started = [self.start_worker(name, env=env, wait=False) for name in self.worker_entries]
        if wait:
            for worker in started:
                self.wait_until_ready(worker)
        return started

    def start_worker(
        self,
        name: str = "worker",
        *,
        entry: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Process:
        """Start (a new incarnation of) the worker `name`, running the Procfile's line `entry`:
        by default the line called `name`, or its `worker` line for a name it does not have
        (a second copy of that worker). Each incarnation logs to a file of its own."""
        assert name not in self.workers, f"{name} is running"
        entry = entry or (name if name in self.procfile else "worker")
        assert self.procfile[entry].role == "worker", f"the Procfile's {entry} is no worker"
        incarnation = sum(p.name.rsplit("-", 1)[0] == name for p in self.all_workers) + 1
        machine = socket.gethostname() if self.host is None else self.host.name
        node = f"{name}-{secrets.token_hex(3)}-{incarnation}@{machine}"
        process_env = {**self.env, **(env or {})}
        command = [*self._procfile_command(entry, process_env), f"--hostname={node}"]
        process = self._start(f"{name}-{incarnation}", command, process_env, record=name)
        process.node = node
        self.workers[name] = process
        self.all_workers.append(process)
        if wait:
            self.wait_until_ready(process)
        return process

    def wait_until_ready(self, worker: Process) -> None:
        self.wait_for(
            lambda: f"{worker.node} ready." in worker.output(),
            timeout=self.startup_timeout,
            what=f"{worker.name} was ready",
        )

    def stop_worker(self, name: str = "worker", *, kill: bool = False, then=None) -> None:
        """Warm shutdown (SIGTERM: the worker finishes its tasks and hands back what it holds),
        or SIGKILL to it and its pool at once, as the OOM killer or `docker kill` would.
        `then` runs right after the signal, while the worker is shutting down."""
        process = self.workers.pop(name)
        if then is None:
            process.stop(kill=kill)
            return
        assert not kill, "a killed worker has no shutdown to run `then` during"
        process.popen.terminate()
        then()
        process.popen.wait(timeout=60)

    def kill_worker(self, name: str = "worker") -> None:
        self.stop_worker(name, kill=True)

    def stop(self) -> None:
        """Stop everything: workers are killed (nothing they hold matters any more), web and
        beat get a warm shutdown."""
        for name in list(self.workers):
            self.kill_worker(name)
        stop_all([p for p in (self.web, self.beat, self.host_metrics) if p is not None])
        self.web = self.beat = self.host_metrics = None

    def _procfile_command(self, name: str, env: dict[str, str]) -> list[str]:
        program, *arguments = self.procfile[name].command(env)
        # What `make run` finds first on its PATH: the virtualenv's own programs.
        if "/" not in program and (BIN / program).exists():
            program = str(BIN / program)
        return [program, *arguments]

    def _start(
        self, name: str, command: list[str], env: dict[str, str], *, record: str = ""
    ) -> Process:
        self.commands[record or name] = command
        if self.host is not None:
            command = self.host.wrap(command)
        return start_process(name, command, env, self.tmp)

    # --- Waiting and watching ----------------------------------------------------------------

    def wait_for(self, check, *, timeout: float, what: str):
        """Poll check() until it is truthy and return its value; raise ServiceError with the
        logs after `timeout` seconds, or at once if a process exited."""
        deadline = time.monotonic() + timeout
        while not (value := check()):
            exited = [p.name for p in self.processes if p.popen.poll() is not None]
            if exited or time.monotonic() > deadline:
                problem = f"{', '.join(exited)} exited" if exited else f"{timeout:.0f}s passed"
                raise ServiceError(f"{problem} before {what}\n{self.logs()}")
            time.sleep(0.05)
        return value

    def web_answers(self) -> bool:
        try:
            # A 404 from the API proves the web process is up and reaches its database.
            return self.api("GET", "/api/signups/nobody", timeout=2).status_code == 404
        except (requests.ConnectionError, requests.Timeout):  # not up, or still starting
            return False

    def logs(self, since: dict[str, int] | None = None, *, tail: int = 15_000) -> str:
        """Every process's log (from the offsets in `since`, by name), the last `tail`
        characters each."""
        shown = [
            p for p in (self.web, self.beat, self.host_metrics, *self.all_workers) if p is not None
        ]
        return "\n".join(
            f"----- {p.name} (exit code {p.popen.poll()}) -----\n"
            + p.output()[(since or {}).get(p.name, 0) :][-tail:]
            for p in shown
        )

    def log_sizes(self) -> dict[str, int]:
        return {p.name: len(p.output()) for p in (self.web, self.beat, *self.all_workers) if p}

    def worker_output(self) -> str:
        return "\n".join(p.output() for p in self.all_workers)

    # --- Talking to it ------------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs["headers"] = {"Authorization": f"Bearer {self.api_key}", **kwargs.get("headers", {})}
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return requests.request(method, f"{self.url}{path}", **kwargs)


_BANNER = re.compile(r"\.> concurrency: (\d+) \((\w+)\)")
_QUEUE = re.compile(r"^\s+\.> (\S+)\s+exchange=", re.M)


def worker_banner(worker: Process) -> dict:
    """What a started worker says it runs: its pool, how many it runs at once, its queues."""
    output = worker.output()
    match = _BANNER.search(output)
    return {
        "concurrency": int(match.group(1)) if match else None,
        "pool": match.group(2) if match else None,
        "queues": _QUEUE.findall(output),
    }


def short_command(command: list[str]) -> str:
    """The command as a person types it in the repository: venv paths made relative."""
    return shlex.join(part.replace(f"{BIN}/", ".venv/bin/") for part in command)
