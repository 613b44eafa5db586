"""The service's processes as an operator runs them, and the outside world they talk to: a local
SMTP server that records what it is sent, a fresh PostgreSQL database, subprocesses with logs."""

import email
import email.policy
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from aiosmtpd.controller import Controller
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# The PostgreSQL server is the one the rest of the suite uses (make test's DATABASE_URL).
PG_SERVER = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/signup"))


# --- The outside world: an SMTP server and a database -------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class ReceivedEmail:
    received_at: float  # time.monotonic() when the SMTP server accepted it
    recipients: tuple[str, ...]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        return self.message.get_body(preferencelist=("plain",)).get_content()


class SmtpSink:
    """An SMTP server in this process that keeps every message it is sent."""

    def __init__(self):
        self.received: list[ReceivedEmail] = []
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.received.append(ReceivedEmail(time.monotonic(), tuple(envelope.rcpt_tos), message))
        return "250 Message accepted"

    @contextmanager
    def running(self):
        self._controller.start()
        try:
            yield self
        finally:
            self._controller.stop()


def pg_url(database: str) -> str:
    return urlunsplit(PG_SERVER._replace(path=f"/{database}"))


@contextmanager
def fresh_database():
    """A new, empty PostgreSQL database, dropped afterwards; yields its URL."""
    name = f"signup_e2e_{secrets.token_hex(4)}"
    with psycopg.connect(pg_url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield pg_url(name)
    finally:
        with psycopg.connect(pg_url("postgres"), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --- Processes ----------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


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
    return Process(name, popen, log)
