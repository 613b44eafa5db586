"""A PostgreSQL server of the fault tests' own, on a free port, so a test can restart it or
crash it (immediate shutdown: no checkpoint, as after a power cut) without touching the
server the rest of the suite uses."""

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from harness.processes import free_port

STARTUP_TIMEOUT = 30


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        pytest.fail("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    return found[-1].parent


class PostgresServer:
    """initdb + pg_ctl as the `postgres` system user (PostgreSQL refuses to run as root)."""

    def __init__(self):
        self.port = free_port()
        self.bin = _pg_bin()
        self.directory = Path(tempfile.mkdtemp(prefix="signup-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/signup"
        shutil.chown(self.directory, user="postgres")

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            capture_output=True,
            timeout=STARTUP_TIMEOUT,
        )

    def create(self) -> None:
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self.start()
        with psycopg.connect(self._admin_url(), autocommit=True) as connection:
            connection.execute("CREATE DATABASE signup")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log),
            "-w", "-t", str(STARTUP_TIMEOUT), "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" disconnects every client and shuts down cleanly,
        "immediate" kills it without a checkpoint, so the next start runs crash recovery."""
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def destroy(self) -> None:
        if self.data.exists():
            subprocess.run(
                ["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D",
                 str(self.data), "-m", "immediate", "-w", "stop"],
                capture_output=True, timeout=STARTUP_TIMEOUT,
            )  # fmt: skip
        shutil.rmtree(self.directory, ignore_errors=True)

    def _admin_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.answers():
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL did not come back:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
