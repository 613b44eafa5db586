"""A deployment the fault tests can break: web, worker(s) and beat as subprocesses (started by
harness.service) on their own PostgreSQL database and a private Redis, an SMTP server that can
hold an email in mid-send, and the tally of the emails that arrived against the emails that
were due."""

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from harness import processes
from harness.processes import ReceivedEmail, RedisServer
from harness.service import BEAT_SWEPT, Service

API_KEY = "fault-api-key-0123456789"
STARTUP_TIMEOUT = 40
# After the last due email, how long a copy still in flight is given to arrive.
QUIET_PERIOD = 1.0
# The tests' own database connections say who they are, so that killing "every connection"
# kills the service's and leaves the observers alone.
OBSERVER = "fault-test-observer"

# The knobs every fault deployment starts from (seconds): short enough for a chain to run in
# seconds, with the sweeper's repair within SWEEP + max(GRACE, REDRIVE_AFTER) of a loss.
BASE_SETTINGS = {
    "SIGNUP_REMINDER_INTERVAL": 2,
    "SIGNUP_MAX_REMINDERS": 2,
    "SIGNUP_EXPIRES_AFTER": 3600,
    "SIGNUP_SWEEP_INTERVAL": 1,
    "SIGNUP_LOST_TASK_GRACE": 1,
    "SIGNUP_REDRIVE_AFTER": 2,
    "SIGNUP_EMAIL_RETRY_DELAY": 0.5,
    "SIGNUP_EMAIL_RETRY_MAX_DELAY": 2,
    "SIGNUP_EMAIL_MAX_ATTEMPTS": 10,
    "EMAIL_TIMEOUT": 5,
}


# --- The outside world: an SMTP server that can stall ------------------------------------------


@dataclass
class Hold:
    """SMTP conversations stopped after MAIL FROM: the worker is inside its send, and the
    server has accepted nothing yet. `held` is set by the first; every one that comes before
    the release waits too, so that no send the worker has in flight ends accepted."""

    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


class HoldingSmtpSink(processes.SmtpSink):
    """The recording SMTP server, which can also hold conversations in mid-send."""

    def __init__(self, hostname: str = "127.0.0.1"):
        super().__init__(hostname)
        self._hold: Hold | None = None

    def hold(self) -> Hold:
        self._hold = Hold()
        return self._hold

    def release(self) -> None:
        if self._hold is not None:
            self._hold.released.set()
            self._hold = None

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        hold = self._hold
        if hold is not None:
            hold.held.set()
            while not hold.released.is_set():
                await asyncio.sleep(0.02)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"


# --- The deployment -------------------------------------------------------------------------


class Deployment(Service):
    """The service (harness.service: web, beat and the Procfile's workers) on a private Redis,
    whose workers the tests kill, stop and start again one by one, and which restarts a worker
    that exits on its own, as the production supervisor does."""

    def __init__(
        self,
        *,
        tmp: Path,
        database_url: str,
        mail: HoldingSmtpSink,
        broker: RedisServer,
        settings: dict,
    ):
        self.mail = mail
        self.broker = broker
        self.settings = {**BASE_SETTINGS, **settings}
        # Workers that exited on their own, restarted as the production supervisor does
        # (docker-compose's `restart: unless-stopped`): (incarnation, exit code).
        self.crashes: list[tuple[str, int]] = []
        super().__init__(
            tmp=tmp,
            database_url=database_url,
            broker_url=broker.url(),
            api_key=API_KEY,
            startup_timeout=STARTUP_TIMEOUT,
            env={
                "EMAIL_URL": f"smtp://127.0.0.1:{mail.port}",
                "EMAIL_BACKEND": "",
                "CONN_MAX_AGE": "60",  # the production default: connections are reused
                "WORKER_CONCURRENCY": "1",
                **{name: str(value) for name, value in self.settings.items()},
            },
        )

    def setting(self, name: str) -> float:
        return float(self.settings[name])

    # Processes

    def start(self) -> None:
        super().start(beat_ready=BEAT_SWEPT)

    @property
    def nodes(self) -> dict[str, str]:
        """Each worker incarnation's Celery node name."""
        return {process.name: process.node for process in self.all_workers}

    def log_mark(self, name: str = "worker") -> tuple[str, int]:
        """Which incarnation of the worker runs and how far its log goes, to tell later
        whether it connected to the broker again."""
        process = self.workers[name]
        return process.name, len(process.output())

    def wait_until_consuming(self, mark: tuple[str, int], *, timeout: float) -> None:
        """Wait until the worker consumes again after a broker outage: the incarnation of
        `mark` logged a new connection, or a new incarnation (after a crash) is ready."""
        incarnation, offset = mark
        name = incarnation.rsplit("-", 1)[0]

        def consuming() -> bool:
            process = self.workers.get(name)
            if process is None:
                return False
            if process.name == incarnation:
                return "Connected to redis://" in process.output()[offset:]
            return f"{process.node} ready." in process.output()

        self.wait_for(consuming, timeout=timeout, what=f"{name} consumed again")

    def supervise(self) -> None:
        """Restart a worker that exited without being told to, and count it as a crash."""
        for name, process in list(self.workers.items()):
            if process.popen.poll() is not None:
                self.crashes.append((process.name, process.popen.returncode))
                del self.workers[name]
                self.start_worker(name, wait=False)

    def wait_for(self, check, *, timeout: float, what: str):
        """Poll check() until it is truthy and return its value, supervising the workers;
        fail after `timeout` seconds, or at once if the web or beat process exited."""
        deadline = time.monotonic() + timeout
        while not (value := check()):
            self.supervise()
            exited = [p.name for p in (self.web, self.beat) if p and p.popen.poll() is not None]
            if exited or time.monotonic() > deadline:
                problem = f"{', '.join(exited)} exited" if exited else f"{timeout}s passed"
                pytest.fail(f"{problem} before {what}\n{self.logs()}")
            time.sleep(0.05)
        return value

    # The API

    def sign_up(self, username: str, *, tries: int = 1) -> str:
        """Create a signup through the API; return its email address. With tries > 1, a 5xx is
        asked again (a 409 then means the first attempt did commit)."""
        address = f"{username}@example.com"
        body = {"username": username, "email": address, "first_name": "Fault"}
        for attempt in range(tries):
            response = self.api("POST", "/api/signups", json=body)
            if response.status_code == 201 or (attempt and response.status_code == 409):
                return address
            if response.status_code < 500:
                break
        pytest.fail(f"signing up {username}: {response.status_code} {response.text[:300]}")

    def status(self, username: str) -> dict:
        response = self.api("GET", f"/api/signups/{username}")
        assert response.status_code == 200, response.text[:300]
        return response.json()

    # The database

    def query(self, statement: str, params: Iterable = ()) -> list[tuple]:
        """Run one read on an observer's connection, which the faults leave alone."""
        with observe(self.database_url) as connection:
            return connection.execute(statement, tuple(params)).fetchall()


@contextmanager
def deployed(*, tmp: Path, database_url: str, mail: HoldingSmtpSink, **settings):
    """A running deployment on a fresh private Redis; the database is emptied first."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("TRUNCATE signup_signup CASCADE")
    with RedisServer(tmp).running() as broker:
        deployment = Deployment(
            tmp=tmp, database_url=database_url, mail=mail, broker=broker, settings=settings
        )
        try:
            deployment.start()
            yield deployment
        finally:
            deployment.stop()


def migrate(database_url: str, var_dir: Path) -> None:
    """Create the project's tables in the database at this URL."""
    # The quickstart's broker: migrating sends no task.
    Service(tmp=var_dir, database_url=database_url, broker_url="filesystem://").migrate(timeout=120)


@contextmanager
def migrated_database():
    """A fresh PostgreSQL database with the project's tables; yields its URL."""
    with processes.fresh_database(migrated=True) as database_url:
        yield database_url


# --- What arrived against what was due ------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    recipient: str
    kind: str  # verification, reminder or welcome, read from the subject
    number: int  # the reminder's number, read from its link; 1 for the others
    message_id: str
    received_at: float  # time.monotonic()
    peer: str = ""  # the sender's address (the worker host's, on a cluster of hosts)


_REMINDER_SOURCE = re.compile(r"[?&]source=reminder-(\d+)")


def arrival(received: ReceivedEmail) -> Arrival:
    subject = received.subject
    if subject.startswith("Reminder"):
        kind, number = "reminder", int(_REMINDER_SOURCE.search(received.text).group(1))
    elif subject.startswith("Verify"):
        kind, number = "verification", 1
    elif subject.startswith("Welcome"):
        kind, number = "welcome", 1
    else:
        raise AssertionError(f"an email nobody sends: {subject!r}")
    (recipient,) = received.recipients
    return Arrival(
        recipient,
        kind,
        number,
        str(received.message["Message-ID"]),
        received.received_at,
        received.peer,
    )


def arrivals(mail: HoldingSmtpSink, recipients: Iterable[str]) -> list[Arrival]:
    wanted = set(recipients)
    return [
        arrival(received) for received in list(mail.received) if set(received.recipients) & wanted
    ]


def due_emails(recipients: Iterable[str], reminders: int) -> Counter:
    """Each signup's verification email and its reminders 1..reminders, once each."""
    return Counter(
        (recipient, kind, number)
        for recipient in recipients
        for kind, number in [("verification", 1)]
        + [("reminder", n) for n in range(1, reminders + 1)]
    )


@dataclass
class Tally:
    due: Counter
    arrived: list[Arrival]

    @property
    def counts(self) -> Counter:
        return Counter((a.recipient, a.kind, a.number) for a in self.arrived)

    @property
    def lost(self) -> list[tuple]:
        return sorted(key for key in self.due if self.counts[key] == 0)

    @property
    def duplicated(self) -> dict[tuple, int]:
        """Extra copies of a due email, and any email that was not due at all."""
        counts = self.counts
        return {
            key: count - self.due[key] for key, count in counts.items() if count > self.due[key]
        }

    def summary(self) -> dict:
        return {
            "emails_expected": sum(self.due.values()),
            "emails_received": len(self.arrived),
            "lost": len(self.lost),
            "duplicated": sum(self.duplicated.values()),
        }

    def complete(self) -> bool:
        return not self.lost


def wait_for_all_due(deployment: Deployment, due: Counter, *, timeout: float) -> Tally:
    """Wait until every due email arrived and the ledger holds nothing more to send (or until
    `timeout`), then a moment longer so that a copy in flight is counted too."""
    recipients = {recipient for recipient, _, _ in due}
    deadline = time.monotonic() + timeout

    def settled() -> bool:
        done = Tally(due, arrivals(deployment.mail, recipients)).complete()
        return (done and not unsent_emails(deployment, recipients)) or time.monotonic() > deadline

    deployment.wait_for(settled, timeout=timeout + 5, what="the due emails")
    time.sleep(QUIET_PERIOD)
    return Tally(due, arrivals(deployment.mail, recipients))


def unsent_emails(deployment: Deployment, recipients: Iterable[str]) -> list[tuple]:
    """Ledger rows of these addresses that are not `sent` (queued, sending, failed, skipped)."""
    return deployment.query(
        "SELECT to_email, kind, sequence, status, attempts FROM signup_outboundemail"
        " WHERE to_email = ANY(%s) AND status <> 'sent' ORDER BY id",
        [list(recipients)],
    )


def all_sent(
    deployment: Deployment, recipients: Iterable[str], kind: str, sequence: int = 1
) -> bool:
    """Whether every signup of these addresses has its `kind` email number `sequence`
    recorded as sent."""
    recipients = list(recipients)
    (count,) = deployment.query(
        "SELECT count(*) FROM signup_outboundemail"
        " WHERE to_email = ANY(%s) AND kind = %s AND sequence = %s AND status = 'sent'",
        [recipients, kind, sequence],
    )[0]
    return count == len(recipients)


def events(deployment: Deployment, recipients: Iterable[str], kind: str) -> int:
    """How many timeline events of this kind the signups of these addresses have."""
    (count,) = deployment.query(
        "SELECT count(*) FROM signup_signupevent v JOIN signup_signup s ON s.id = v.signup_id"
        " WHERE s.email = ANY(%s) AND v.kind = %s",
        [list(recipients), kind],
    )[0]
    return count


def reminder_lateness(deployment: Deployment, tally: Tally) -> dict[tuple, float]:
    """How late each reminder arrived against its plan: one interval after the step before it
    (the signup's creation, or the previous reminder) was taken, as the workflow plans it."""
    interval = deployment.setting("SIGNUP_REMINDER_INTERVAL")
    recipients = list({recipient for recipient, _, _ in tally.due})
    # Database times are wall-clock seconds; the SMTP server stamps time.monotonic().
    to_monotonic = time.monotonic() - time.time()
    steps = {
        (address, 0): float(created) + to_monotonic
        for address, created in deployment.query(
            "SELECT email, extract(epoch FROM created_at) FROM signup_signup WHERE email = ANY(%s)",
            [recipients],
        )
    }
    for address, sequence, created in deployment.query(
        "SELECT to_email, sequence, extract(epoch FROM created_at) FROM signup_outboundemail"
        " WHERE to_email = ANY(%s) AND kind = 'reminder'",
        [recipients],
    ):
        steps[(address, sequence)] = float(created) + to_monotonic
    first_arrivals: dict[tuple, Arrival] = {}
    for arrived in sorted(tally.arrived, key=lambda a: a.received_at):
        first_arrivals.setdefault((arrived.recipient, arrived.kind, arrived.number), arrived)
    return {
        key: arrived.received_at - (steps[(key[0], key[2] - 1)] + interval)
        for key, arrived in first_arrivals.items()
        if key[1] == "reminder" and (key[0], key[2] - 1) in steps
    }


# --- Faults the database takes part in -------------------------------------------------------


def open_transactions(deployment: Deployment) -> int:
    """How many of the service's connections are inside a transaction."""
    (count,) = deployment.query(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name <> %s AND state LIKE 'idle in transaction%%'",
        [OBSERVER],
    )[0]
    return count


def observe(database_url: str, *, autocommit: bool = True) -> psycopg.Connection:
    """A connection of the tests' own, which terminate_backends() leaves alone."""
    return psycopg.connect(database_url, autocommit=autocommit, application_name=OBSERVER)


def terminate_backends(database_url: str) -> int:
    """Kill every connection the service has to its database; return how many."""
    with observe(database_url) as connection:
        (killed,) = connection.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name <> %s",
            [OBSERVER],
        ).fetchone()
    return killed


def lock_waiters(deployment: Deployment) -> int:
    """How many connections to the deployment's database wait for a row lock on a signup."""
    (count,) = deployment.query(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE %s",
        ['%FROM "signup_signup"%FOR NO KEY UPDATE%'],
    )[0]
    return count


class StalledSweep:
    """Stop the next sweep inside its work: a signup that is done with its reminders is made
    due to expire while this holds its row lock, so the sweep's expiry waits for the lock.

    release() puts the signup back as it was and lets the sweep go on; it is idempotent.
    """

    def __init__(self, deployment: Deployment, candidates: Iterable[str]):
        self.deployment = deployment
        self.candidates = list(candidates)
        self.address = ""
        self._lock: psycopg.Connection | None = None
        self._expires_at = None

    def __enter__(self) -> "StalledSweep":
        url = self.deployment.database_url
        for address in self.candidates:
            lock = observe(url, autocommit=False)
            (self._expires_at,) = lock.execute(
                "SELECT expires_at FROM signup_signup WHERE email = %s", [address]
            ).fetchone()
            lock.rollback()
            with observe(url) as connection:
                connection.execute(
                    "UPDATE signup_signup SET expires_at = now() - interval '1 second'"
                    " WHERE email = %s",
                    [address],
                )
            # A sweep may have expired it in the moment between the two statements.
            (status,) = lock.execute(
                "SELECT status FROM signup_signup WHERE email = %s FOR UPDATE", [address]
            ).fetchone()
            if status == "pending":
                self.address, self._lock = address, lock
                return self
            lock.close()
        pytest.fail("no signup was left pending to stall a sweep with")

    def release(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.execute(
                "UPDATE signup_signup SET expires_at = %s WHERE email = %s",
                [self._expires_at, self.address],
            )
            lock.commit()
            lock.close()

    def __exit__(self, *exc_info) -> None:
        self.release()
