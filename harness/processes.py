"""The outside world the service talks to (a local SMTP server that records what it is sent, a
fresh PostgreSQL database, a private redis-server) and subprocesses with their logs."""

import email
import email.policy
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
import redis
from aiosmtpd.controller import Controller
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# The PostgreSQL server is the one the rest of the suite uses (make test's DATABASE_URL).
PG_SERVER = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/signup"))


# --- The outside world: an SMTP server, a database and a broker ---------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class ReceivedEmail:
    received_at: float  # time.monotonic() when the SMTP server accepted it
    recipients: tuple[str, ...]
    message: EmailMessage
    peer: str = ""  # the address the sender connected from

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        return self.message.get_body(preferencelist=("plain",)).get_content()


class SmtpSink:
    """An SMTP server in this process, on `hostname` (127.0.0.1, or the outside address of
    harness.hosts), that keeps every message it is sent."""

    def __init__(self, hostname: str = "127.0.0.1"):
        self.received: list[ReceivedEmail] = []
        self.hostname = hostname
        self.port = free_port()
        self._controller = Controller(self, hostname=hostname, port=self.port)

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        peer = session.peer[0] if session.peer else ""
        self.received.append(
            ReceivedEmail(time.monotonic(), tuple(envelope.rcpt_tos), message, peer)
        )
        return "250 Message accepted"

    @contextmanager
    def running(self):
        self._controller.start()
        try:
            yield self
        finally:
            self._controller.stop()


def pg_url(database: str, server=PG_SERVER) -> str:
    return urlunsplit(server._replace(path=f"/{database}"))


@contextmanager
def fresh_database(prefix: str = "signup_e2e", server=PG_SERVER, *, migrated: bool = False):
    """A new PostgreSQL database `<prefix>_<hex>` on `server`, dropped afterwards: empty, or
    `migrated` (a copy of migrated_template's, which costs no run of the migrations); yields
    its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    template = sql.SQL(" TEMPLATE {}").format(sql.Identifier(migrated_template(server)))
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    with psycopg.connect(pg_url("postgres", server), autocommit=True) as admin:
        admin.execute(create + template if migrated else create)
    try:
        yield pg_url(name, server)
    finally:
        with psycopg.connect(pg_url("postgres", server), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def migrated_template(server=PG_SERVER) -> str:
    """The name of a database on `server` that the migrations ran on, made the first time it
    is asked for (by whichever process of a test run comes first) and named after what it
    was made from: the migrations and the pinned packages (another checkout's test run may be
    using an older one at the same time: those stay)."""
    digest = hashlib.sha256()
    for path in [
        *sorted((ROOT / "signup" / "migrations").glob("*.py")),
        ROOT / "requirements.lock",
    ]:
        digest.update(path.read_bytes())
    name = f"signup_template_{digest.hexdigest()[:16]}"
    with psycopg.connect(pg_url("postgres", server), autocommit=True) as admin:
        # One process makes it; the others wait here, then find it.
        admin.execute("SELECT pg_advisory_lock(hashtext('signup_template'))")
        try:
            found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not found:
                _make_template(admin, name, server)
        finally:
            admin.execute("SELECT pg_advisory_unlock(hashtext('signup_template'))")
    return name


def _make_template(admin: psycopg.Connection, name: str, server) -> None:
    making = f"{name}_making"
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(making)))
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(making)))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": pg_url(making, server),
        "CELERY_BROKER_URL": "memory://",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DEBUG": "false",
    }
    command = [str(BIN / "python"), "manage.py", "migrate", "--noinput"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{done.stdout}\n{done.stderr}")
    rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
    admin.execute(rename.format(sql.Identifier(making), sql.Identifier(name)))


class RedisServer:
    """A redis-server of our own on a free port that keeps nothing on disk, so a restart loses
    every message it held, as a broker without persistence does."""

    STARTUP_TIMEOUT = 40

    def __init__(self, directory: Path):
        self.port = free_port()
        self.directory = directory
        self.log = directory / "redis.log"
        self.command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--logfile",
            str(self.log),
        ]
        self._popen: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, socket_timeout=30)

    def start(self) -> None:
        self._popen = subprocess.Popen(self.command, start_new_session=True)
        deadline = time.monotonic() + self.STARTUP_TIMEOUT
        while not self._answers():
            if self._popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Shut the server down; with no persistence configured it forgets everything."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.terminate()
            self._popen.wait(timeout=30)

    @contextmanager
    def running(self):
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def _answers(self) -> bool:
        try:
            with self.client() as client:
                return client.ping()
        except redis.ConnectionError:
            return False


# --- Processes ----------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path
    command: list[str] = field(default_factory=list)
    node: str = ""  # a Celery worker's node name

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
        """SIGTERM to the process (a warm shutdown: gunicorn and Celery stop their own
        children), or SIGKILL to it and its children at once; wait until it is gone."""
        if self.popen.poll() is None:
            if kill:
                # Started in a session of its own: its group is it and its children only.
                os.killpg(self.popen.pid, signal.SIGKILL)
            else:
                self.popen.terminate()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


def stop_all(processes: list[Process]) -> None:
    """Stop every process at once: a warm shutdown, then a kill for what outlives it."""
    for process in processes:
        if process.popen.poll() is None:
            process.popen.terminate()
    for process in processes:
        try:
            process.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            # Started in a session of its own, its group holds it and its children only.
            os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait(timeout=10)


def start_process(name: str, command: list[str], env: dict, log_dir: Path) -> Process:
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(name, popen, log, command)
