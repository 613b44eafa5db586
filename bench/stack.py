"""The stack the benchmarks run on: the service's processes as harness.service starts them (the
Procfile's workers and beat, gunicorn), with bench.settings, on a fresh PostgreSQL database and a
private redis-server, and the stand-in email provider; every process is stopped and the database
dropped on the way out, failure and Ctrl-C included."""

import http.client
import json
import os
import subprocess
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from harness.processes import BIN, ROOT, Process, RedisServer, fresh_database
from harness.provider import FakePostmark, Latency
from harness.service import BEAT_STARTED, Service, short_command, worker_banner

# The local PostgreSQL server (trust auth); each run creates and drops a database of its own.
PG_SERVER = urlsplit(os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/"))
WEB_WORKERS = 2
# The service's own tables and the floor's, emptied between benchmarks.
TABLES = (
    "signup_signupevent",
    "signup_outboundemail",
    "signup_address",  # each address's budget: a benchmark reuses the addresses of the last
    "signup_signup",
    "bench_floorrow",
)
POSTMARK_TOKEN = "bench-postmark-server-token"


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


class Stack:
    """The service (harness.service), what it talks to, and the benchmarks' ways in."""

    def __init__(
        self,
        *,
        tmp: Path,
        database_url: str,
        broker: RedisServer,
        provider: FakePostmark,
        provider_profile: dict,
        settings: dict[str, str],
    ):
        self.tmp = tmp
        self.database_url = database_url
        self.broker = broker
        self.provider = provider
        # The latency and error rate the provider benchmarks give it (see provider_profile()).
        self.provider_profile = provider_profile
        self.service = Service(
            tmp=tmp,
            database_url=database_url,
            broker_url=broker.url(0),
            web_workers=WEB_WORKERS,
            env={
                "DJANGO_SETTINGS_MODULE": "bench.settings",
                "BENCH_RECORD_URL": broker.url(1),
                "EMAIL_BACKEND": "bench.mail.EmailBackend",
                "CONN_MAX_AGE": "60",
                **settings,
            },
        )
        # Every command line run, in order, for the "how to reproduce" section.
        self.commands: dict[str, str] = {}

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def api_key(self) -> str:
        return self.service.api_key

    @property
    def env(self) -> dict[str, str]:
        return self.service.env

    @property
    def workers(self) -> dict[str, Process]:
        return self.service.workers

    # Processes

    def start_web(self) -> Process:
        web = self.service.start_web()
        self._note("web", short_command(web.command))
        return web

    def start_beat(self) -> Process:
        beat = self.service.start_beat(ready=BEAT_STARTED)
        self._note("beat", short_command(beat.command))
        return beat

    def start_workers(
        self, *, concurrency: int = 2, provider: bool = False, extra_email: int = 0
    ) -> list[Process]:
        """Start every worker line of the Procfile with WORKER_CONCURRENCY=`concurrency`,
        and `extra_email` more copies of its email line, sending through the instant backend
        or, with `provider`, anymail's Postmark backend to the stand-in provider; wait until
        they are ready."""
        env = {"WORKER_CONCURRENCY": str(concurrency)}
        if provider:
            env.update(
                EMAIL_BACKEND="anymail.backends.postmark.EmailBackend",
                ANYMAIL_POSTMARK_SERVER_TOKEN=POSTMARK_TOKEN,
                ANYMAIL_POSTMARK_API_URL=self.provider.url,
            )
        workers = self.service.start_workers(env=env)
        copies = [
            self.service.start_worker(f"email-copy{number}", entry="email", env=env, wait=False)
            for number in range(1, extra_email + 1)
        ]
        for copy in copies:
            self.service.wait_until_ready(copy)
        workers += copies
        for worker in workers:
            # The node name differs on every start: the rest says what ran.
            command = [part for part in worker.command if not part.startswith("--hostname=")]
            name = worker.name.rsplit("-", 1)[0]
            self._note(f"{name} (WORKER_CONCURRENCY={concurrency})", short_command(command))
        return workers

    def stop_workers(self, *, kill: bool = False) -> None:
        for name in list(self.service.workers):
            self.service.stop_worker(name, kill=kill)

    def workers_ran(self) -> list[dict]:
        """What each running worker said it runs (its Procfile line, pool, concurrency,
        queues)."""
        return [
            {"name": name, **worker_banner(process)}
            for name, process in self.service.workers.items()
        ]

    def workers_memory(self) -> dict[str, int]:
        """The running workers' memory (Process.memory), added up."""
        total: dict[str, int] = {}
        for process in self.service.workers.values():
            for key, value in process.memory().items():
                total[key] = total.get(key, 0) + value
        return total

    def queues(self) -> list[str]:
        """The queues the running workers consume."""
        return sorted({queue for worker in self.workers_ran() for queue in worker["queues"]})

    def stop_all(self) -> None:
        self.service.stop()

    def _note(self, role: str, command: str) -> None:
        self.commands.setdefault(role, command)

    # Talking to the service

    def post(self, path: str, body: dict, *, timeout: float = 30) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.service.port, timeout=timeout)
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
        self._note(args[0], short_command(command))
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
        self._note(args[0], short_command(command))
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
        """Empty the tables, the broker and the provider's records (with no worker running)."""
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
        self.provider.on_request = None
        self.provider.reset()


def provider_profile(*, median_ms: float, p99_ms: float, error_rate: float, seed: int) -> dict:
    """The stand-in provider's behaviour in the provider benchmarks, as the results record it."""
    return {
        "latency_median_s": median_ms / 1000,
        "latency_p99_s": p99_ms / 1000,
        "error_rate": error_rate,
        "seed": seed,
    }


def slow_provider(stack: Stack) -> None:
    """Give the stand-in provider the run's latency and error rate."""
    profile = stack.provider_profile
    stack.provider.latency = Latency(profile["latency_median_s"], profile["latency_p99_s"])
    stack.provider.error_rate = profile["error_rate"]
    stack.provider.seed = profile["seed"]


def instant_provider(stack: Stack) -> None:
    """The stand-in provider answering at once and never failing."""
    stack.provider.latency = None
    stack.provider.error_rate = 0.0


@contextmanager
def running_stack(tmp: Path, settings: dict[str, str], profile: dict | None = None):
    """A migrated fresh database, a private Redis and the stand-in provider; yields a Stack
    whose processes the caller starts. Everything is stopped and dropped when the block ends,
    however it ends."""
    with ExitStack() as cleanup:
        database_url = cleanup.enter_context(fresh_database("signup_bench", PG_SERVER))
        broker = cleanup.enter_context(RedisServer(tmp).running())
        provider = FakePostmark(token=POSTMARK_TOKEN, keep_bodies=False)
        provider.start()
        cleanup.callback(provider.stop)
        stack = Stack(
            tmp=tmp,
            database_url=database_url,
            broker=broker,
            provider=provider,
            provider_profile=profile
            or provider_profile(median_ms=150, p99_ms=600, error_rate=0.01, seed=1),
            settings=settings,
        )
        cleanup.callback(stack.stop_all)
        stack.service.migrate()
        yield stack
