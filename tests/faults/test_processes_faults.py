"""Faults caused for real against the service running as separate processes: a worker killed
with SIGKILL or restarted in mid-chain, the Redis broker flushed or restarted, every PostgreSQL
connection killed, countdowns that outlive the Redis visibility timeout.

What counts is what the SMTP server received: each due email (a signup's verification email and
each of its reminders) exactly once, and each reminder within the sweeper's repair delay of its
plan. The ledger and the API are the second witnesses. Each test fills `fault_report`.
"""

import re
import threading
import time
from collections import Counter
from contextlib import ExitStack, contextmanager

import pytest

from tests.faults.conftest import FAULT_ROUNDS
from tests.faults.deployment import (
    Deployment,
    HoldingSmtpSink,
    StalledSweep,
    Tally,
    all_sent,
    arrivals,
    deployed,
    due_emails,
    events,
    lock_waiters,
    migrate,
    migrated_database,
    open_transactions,
    reminder_lateness,
    terminate_backends,
    unsent_emails,
    wait_for_all_due,
)
from tests.faults.postgres import PostgresServer
from tests.helpers import LOAD, queued

pytestmark = [pytest.mark.faults, pytest.mark.processes, pytest.mark.postgres, pytest.mark.redis]

SIGNUPS_PER_ROUND = 4
# This machine is shared with other tests: a reminder may be this much later than the
# workflow's own bound (the fault's downtime + one sweep interval + the grace) before it fails.
SLACK = 3.0 * LOAD
# Where in a chain a worker is struck; the rounds go through them in turn.
POINTS = ("counting down", "sending an email", "sweeping")


def _timeout(per_round: float):
    """The test's time limit: a deployment, then each round (FAULT_ROUNDS grows it)."""
    return pytest.mark.timeout(LOAD * (60 + per_round * max(FAULT_ROUNDS, len(POINTS))))


# --- Fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database():
    with migrated_database() as url:
        yield url


@pytest.fixture(scope="module")
def mail():
    with HoldingSmtpSink().running() as sink:
        yield sink


@pytest.fixture
def deploy(request, tmp_path, database, mail):
    """Start the service with these settings (over BASE_SETTINGS) on a private Redis; it stops
    after the test, and every process's log is shown if the test failed."""
    failures_before = request.session.testsfailed
    started: list[Deployment] = []
    with ExitStack() as stack:
        stack.callback(mail.release)  # a held conversation must not outlive its test

        def start(**settings) -> Deployment:
            deployment = stack.enter_context(
                deployed(tmp=tmp_path, database_url=database, mail=mail, **settings)
            )
            started.append(deployment)
            return deployment

        yield start
        if request.session.testsfailed > failures_before:
            for deployment in started:
                print(deployment.logs())


# --- A round: signups, a fault, then what arrived ---------------------------------------------


def sign_up_round(deployment: Deployment, prefix: str, *, tries: int = 1) -> list[str]:
    return [deployment.sign_up(f"{prefix}-{n}", tries=tries) for n in range(SIGNUPS_PER_ROUND)]


def wait_until_sent(
    deployment: Deployment, addresses: list[str], kind: str, sequence: int = 1, *, timeout: float
) -> None:
    """Wait until each signup's `kind` email number `sequence` is recorded as sent."""
    deployment.wait_for(
        lambda: all_sent(deployment, addresses, kind, sequence),
        timeout=timeout,
        what=f"{kind} email {sequence} of {addresses} recorded as sent",
    )


def wait_until_counting_down(deployment: Deployment, addresses: list[str]) -> None:
    """Wait until the round's verification emails are recorded as sent: the worker is idle,
    holding the first reminders' countdown tasks."""
    wait_until_sent(deployment, addresses, "verification", timeout=10 + SLACK)


@contextmanager
def chain_at(point: str, deployment: Deployment, addresses: list[str], finished: list[str]):
    """Bring the round's chains to `point` and keep them there; yields a callable that lets
    them go on (it runs again on exit, and is harmless twice)."""
    wait_until_counting_down(deployment, addresses)
    if point == "counting down":
        yield lambda: None
    elif point == "sending an email":
        # Held after MAIL FROM: the worker is inside its sends and none was accepted yet.
        hold = deployment.mail.hold()
        try:
            deployment.wait_for(
                hold.held.is_set,
                timeout=deployment.setting("SIGNUP_REMINDER_INTERVAL") + SLACK,
                what="a reminder being sent",
            )
            yield deployment.mail.release
        finally:
            deployment.mail.release()
    else:
        with StalledSweep(deployment, finished) as stalled:
            deployment.wait_for(
                lambda: lock_waiters(deployment),
                timeout=deployment.setting("SIGNUP_SWEEP_INTERVAL") + SLACK,
                what="a sweep waiting inside its work",
            )
            yield stalled.release


def repair_bound(deployment: Deployment, downtime: float) -> float:
    """How late a reminder may be after a fault that kept work from happening for `downtime`
    seconds: a sweep sends its probes, and once the workers took them the grace ago (or
    SIGNUP_REDRIVE_AFTER for an email), the next sweep finds the lost reminder."""
    return (
        downtime
        + 2 * deployment.setting("SIGNUP_SWEEP_INTERVAL")
        + max(
            deployment.setting("SIGNUP_LOST_TASK_GRACE"),
            deployment.setting("SIGNUP_REDRIVE_AFTER"),
        )
        + SLACK
    )


def settle(
    deployment: Deployment, addresses: list[str], bound: float
) -> tuple[Tally, dict[tuple, float]]:
    """Wait for the round's due emails; return what arrived and each reminder's lateness."""
    reminders = int(deployment.setting("SIGNUP_MAX_REMINDERS"))
    due = due_emails(addresses, reminders)
    interval = deployment.setting("SIGNUP_REMINDER_INTERVAL")
    tally = wait_for_all_due(deployment, due, timeout=bound + interval * reminders + SLACK)
    return tally, reminder_lateness(deployment, tally)


def record(
    report: dict,
    deployment: Deployment,
    addresses: list[str],
    tally: Tally,
    lateness: dict[tuple, float],
    **measured,
) -> None:
    """Add a round's figures to the fault report (sums, and the worst time to restore)."""
    figures = {
        "rounds": 1,
        "signups": len(addresses),
        **tally.summary(),
        "contacts_restored": events(deployment, addresses, "contact_repaired"),
        "chains_restored": events(deployment, addresses, "chain_repaired"),
        "emails_redriven": events(deployment, addresses, "email_redriven"),
        **measured,
    }
    for key, value in figures.items():
        report[key] = report.get(key, 0) + value
    worst = max(lateness.values(), default=0.0)
    report["seconds_to_restore"] = round(max(report.get("seconds_to_restore", 0.0), worst), 2)
    report["worker_crashes"] = len(deployment.crashes)


def problems(
    deployment: Deployment,
    addresses: list[str],
    tally: Tally,
    lateness: dict[tuple, float],
    bound: float,
) -> list[str]:
    """What went wrong in a round: emails lost, doubled or late, the ledger or the API amiss.
    The rounds go on after a bad one, so that the report covers them all."""
    found = []
    if tally.lost:
        found.append(f"due emails that never arrived: {tally.lost}")
    if tally.duplicated:
        # The Message-IDs tell one ledger row sent again from two rows for one email.
        copies = {
            key: [a.message_id for a in tally.arrived if (a.recipient, a.kind, a.number) == key]
            for key in tally.duplicated
        }
        found.append(f"emails that arrived more than once: {copies}")
    late = {key: round(seconds, 1) for key, seconds in lateness.items() if seconds > bound}
    if late:
        found.append(f"reminders more than {bound:.1f}s after their plan: {late}")
    unsent = unsent_emails(deployment, addresses)
    if unsent:
        found.append(f"ledger rows not sent: {unsent}")
    reminders = int(deployment.setting("SIGNUP_MAX_REMINDERS"))
    for address in addresses:
        answer = deployment.status(address.split("@")[0])
        if (answer["status"], answer["reminders_sent"]) != ("pending", reminders):
            found.append(f"the API says {answer}")
    return found


def assert_no_problems(deployment: Deployment, found: list[str]) -> None:
    if deployment.crashes:
        crashed = {name for name, _ in deployment.crashes}
        last_words = "\n".join(
            f"----- {process.name} (its last lines) -----\n{process.output()[-3000:]}"
            for process in deployment.all_workers
            if process.name in crashed
        )
        found.append(
            "workers exited on their own (and were restarted, as a supervisor would): "
            f"{deployment.crashes}\n{last_words}"
        )
    assert not found, "\n".join(found)


# --- Workers killed and restarted ------------------------------------------------------------


@_timeout(per_round=25)
def test_a_worker_killed_mid_chain_loses_and_doubles_nothing(deploy, fault_rounds, fault_report):
    deployment = deploy()
    fault_report["fault"] = "worker SIGKILL mid-chain"
    found: list[str] = []
    finished: list[str] = []  # signups whose chains are over: a sweep can be stalled on them
    for index in range(max(fault_rounds, len(POINTS))):
        point = POINTS[index % len(POINTS)]
        addresses = sign_up_round(deployment, f"kill{index}")
        # Every worker of the Procfile at once, as when their machine dies: the email worker
        # holds the sends and the reminders' countdowns, the other one the sweep.
        with chain_at(point, deployment, addresses, finished) as release:
            killed_at = time.monotonic()
            for name in deployment.worker_entries:
                deployment.kill_worker(name)
            release()
        for name in deployment.worker_entries:
            deployment.start_worker(name)
        bound = repair_bound(deployment, time.monotonic() - killed_at)

        tally, lateness = settle(deployment, addresses, bound)
        record(fault_report, deployment, addresses, tally, lateness)
        found += problems(deployment, addresses, tally, lateness, bound)
        # What the killed worker held comes back from Redis only after the visibility timeout,
        # hours away: the sweeper re-drove the email it was sending, or repaired the chains
        # whose countdowns it held.
        repair = "email_redriven" if point == "sending an email" else "chain_repaired"
        if not events(deployment, addresses, repair):
            found.append(f"killed while {point}, yet no {repair} event: did the fault bite?")
        finished += addresses
    assert_no_problems(deployment, found)


@_timeout(per_round=25)
def test_a_worker_restarted_mid_chain_loses_and_doubles_nothing(deploy, fault_rounds, fault_report):
    deployment = deploy()
    fault_report["fault"] = "worker warm restart (SIGTERM) mid-chain"
    found: list[str] = []
    finished: list[str] = []
    for index in range(max(fault_rounds, len(POINTS))):
        point = POINTS[index % len(POINTS)]
        addresses = sign_up_round(deployment, f"restart{index}")
        with chain_at(point, deployment, addresses, finished) as release:
            stopped_at = time.monotonic()
            # The warm shutdown waits for the running task: let it finish meanwhile.
            for name in deployment.worker_entries:
                deployment.stop_worker(name, then=release)
        for name in deployment.worker_entries:
            deployment.start_worker(name)
        bound = repair_bound(deployment, time.monotonic() - stopped_at)

        tally, lateness = settle(deployment, addresses, bound)
        record(fault_report, deployment, addresses, tally, lateness)
        found += problems(deployment, addresses, tally, lateness, bound)
        finished += addresses
    assert_no_problems(deployment, found)


# --- The broker loses its data ---------------------------------------------------------------


# What a broker flush can take that the sweeper puts back: countdowns, and first contacts.
REPAIRS = ("chain_repaired", "contact_repaired")


@_timeout(per_round=20)
def test_a_flushed_broker_loses_and_doubles_nothing(deploy, fault_rounds, fault_report):
    # One sending thread, so that holding one send makes the others wait in Redis.
    deployment = deploy(EMAIL_CONCURRENCY=1)
    fault_report["fault"] = "Redis FLUSHALL while chains count down"
    found: list[str] = []
    for index in range(fault_rounds):
        # The worker is held sending the first verification email, so the other signups'
        # tasks (their verification emails and first countdowns) wait in Redis.
        hold = deployment.mail.hold()
        addresses = sign_up_round(deployment, f"flush{index}")
        deployment.wait_for(hold.held.is_set, timeout=10 * LOAD, what="a verification email sent")
        with deployment.broker.client() as broker:
            waiting = queued(broker)
            broker.flushall()
        flushed_at = time.monotonic()
        deployment.mail.release()
        # Then again once the worker holds the next countdowns: what it holds survives, but
        # the copies Redis keeps for redelivery do not.
        wait_until_sent(
            deployment,
            addresses,
            "reminder",
            timeout=repair_bound(deployment, time.monotonic() - flushed_at) + 2,
        )
        with deployment.broker.client() as broker:
            broker.flushall()
        bound = repair_bound(deployment, time.monotonic() - flushed_at)

        tally, lateness = settle(deployment, addresses, bound)
        record(fault_report, deployment, addresses, tally, lateness, messages_flushed=waiting)
        found += problems(deployment, addresses, tally, lateness, bound)
        if not waiting:
            found.append(f"round {index}: nothing was waiting in Redis when it was flushed")
        # The flush took countdowns, or first contacts not made yet (the reminders of a signup
        # contacted late are planned from its contact): either way the sweeper put them back.
        repaired = sum(events(deployment, addresses, kind) for kind in REPAIRS)
        if not repaired:
            found.append(f"round {index}: Redis was flushed, yet nothing needed the sweeper")
    assert_no_problems(deployment, found)


BROKER_OUTAGE = 1.0  # seconds the restarted Redis is away


@_timeout(per_round=25)
def test_a_restarted_broker_loses_and_doubles_nothing(deploy, fault_rounds, fault_report):
    deployment = deploy()
    fault_report["fault"] = "Redis restart (no persistence) while chains count down"
    found: list[str] = []
    for index in range(fault_rounds):
        addresses = sign_up_round(deployment, f"broker{index}")
        wait_until_counting_down(deployment, addresses)
        mark = deployment.log_mark()
        deployment.broker.stop()
        stopped_at = time.monotonic()
        time.sleep(BROKER_OUTAGE)  # the outage itself
        deployment.broker.start()
        deployment.wait_until_consuming(mark, timeout=30)
        bound = repair_bound(deployment, time.monotonic() - stopped_at)

        tally, lateness = settle(deployment, addresses, bound)
        record(fault_report, deployment, addresses, tally, lateness)
        found += problems(deployment, addresses, tally, lateness, bound)
        # Redis came back empty and the worker lost what it held: the sweeper restores it.
        if not events(deployment, addresses, "chain_repaired"):
            found.append(f"round {index}: the broker restarted, yet no chain needed the sweeper")
    assert_no_problems(deployment, found)


# --- The PostgreSQL server restarted or crashed ----------------------------------------------

DATABASE_OUTAGE = 2.0  # seconds the server stays down
# A clean restart (every client disconnected, a checkpoint), then a crash: an immediate
# shutdown without a checkpoint, so the next start replays the WAL, as after a power cut.
DATABASE_STOPS = ("fast", "immediate")


@pytest.fixture(scope="module")
def private_database(tmp_path_factory):
    """A PostgreSQL server of this module's own, migrated, that a test may stop and start."""
    server = PostgresServer()
    try:
        server.create()
        migrate(server.url, tmp_path_factory.mktemp("migrate-private"))
        yield server
    finally:
        server.destroy()


@_timeout(per_round=30)
def test_a_restarted_or_crashed_database_loses_and_doubles_nothing(
    private_database, tmp_path, mail, request, fault_rounds, fault_report
):
    fault_report["fault"] = "PostgreSQL server restart and crash (immediate shutdown)"
    found: list[str] = []
    repaired = False
    # A task waits for a pooled connection shorter than the outage lasts, so tasks fail
    # meanwhile and the sweeper has chains to repair (a longer wait would ride it out).
    with deployed(
        tmp=tmp_path,
        database_url=private_database.url,
        mail=mail,
        DATABASE_POOL_TIMEOUT=DATABASE_OUTAGE / 2,
    ) as deployment:
        try:
            for index in range(max(fault_rounds, len(DATABASE_STOPS))):
                addresses = sign_up_round(deployment, f"pgrestart{index}")
                wait_until_counting_down(deployment, addresses)
                private_database.stop(DATABASE_STOPS[index % len(DATABASE_STOPS)])
                stopped_at = time.monotonic()
                time.sleep(DATABASE_OUTAGE)  # the outage itself: every task meanwhile fails
                private_database.start()
                private_database.wait_until_up()
                bound = repair_bound(deployment, time.monotonic() - stopped_at)

                tally, lateness = settle(deployment, addresses, bound)
                record(fault_report, deployment, addresses, tally, lateness)
                found += problems(deployment, addresses, tally, lateness, bound)
                repaired = repaired or bool(events(deployment, addresses, "chain_repaired"))
            # The outages reached the tasks: ones that ran meanwhile failed, and were retried
            # (a short outage is ridden out by the tasks' own retries on database errors) or
            # dropped and their chains repaired by the sweeper.
            retried = re.search(r"retry: Retry in .*OperationalError", deployment.logs(tail=10**9))
            if not (repaired or retried):
                found.append("the database was down, yet no task failed on it")
            assert_no_problems(deployment, found)
        except BaseException:
            print(deployment.logs())
            raise


# --- PostgreSQL connections killed -----------------------------------------------------------


class ConnectionKiller(threading.Thread):
    """Kill every connection to the deployment's database, again and again.

    The PostgreSQL server is shared with other test runs, so it is not restarted: killing
    every backend of this test's own database is the stand-in for a restart.
    """

    def __init__(self, deployment: Deployment, every: float):
        super().__init__(daemon=True)
        self.deployment = deployment
        self.every = every
        self.killed = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.killed += terminate_backends(self.deployment.database_url)

    def __enter__(self) -> "ConnectionKiller":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._halt.set()
        self.join()


KILL_EVERY = 0.05  # seconds between two rounds of killed connections


@_timeout(per_round=25)
def test_killed_database_connections_lose_and_double_nothing(deploy, fault_rounds, fault_report):
    deployment = deploy()
    fault_report["fault"] = "PostgreSQL connections killed during the flow"
    found: list[str] = []
    interval = deployment.setting("SIGNUP_REMINDER_INTERVAL")
    reminders = deployment.setting("SIGNUP_MAX_REMINDERS")
    for index in range(fault_rounds):
        with ConnectionKiller(deployment, every=KILL_EVERY) as killer:
            started_at = time.monotonic()
            # The verification emails are held in mid-send (no transaction open: a send
            # holds a lease) until the killer has killed the sending threads' connections.
            hold = deployment.mail.hold()
            addresses = sign_up_round(deployment, f"pg{index}", tries=20)
            deployment.wait_for(
                hold.held.is_set, timeout=10 * LOAD, what="a verification email sent"
            )
            deployment.wait_for(
                lambda: not open_transactions(deployment),
                timeout=5 * LOAD,
                what="the sending worker's connection killed",
            )
            deployment.mail.release()
            # Then on through every reminder's due time.
            last_due_at = started_at + interval * reminders + 1
            deployment.wait_for(
                lambda moment=last_due_at: time.monotonic() > moment,
                timeout=interval * reminders + 2,
                what="the chains to run under the fault",
            )
        bound = repair_bound(deployment, time.monotonic() - started_at)

        tally, lateness = settle(deployment, addresses, bound)
        record(
            fault_report, deployment, addresses, tally, lateness, connections_killed=killer.killed
        )
        found += problems(deployment, addresses, tally, lateness, bound)
    assert_no_problems(deployment, found)


# --- Countdowns longer than the Redis visibility timeout -------------------------------------

VISIBILITY_TIMEOUT = 1
LONG_COUNTDOWN = 12  # room for a second worker to start on a busy machine


def reminder_receipts(deployment: Deployment) -> Counter:
    """How often the workers received each reminder task (by task id)."""
    return Counter(
        re.findall(
            r"Task signup\.tasks\.send_reminder\[([0-9a-f-]+)\] received",
            deployment.worker_output(),
        )
    )


def arrived(deployment: Deployment, addresses: list[str], number: int) -> int:
    """How many copies of reminder `number` these addresses received."""
    return sum(
        a.kind == "reminder" and a.number == number for a in arrivals(deployment.mail, addresses)
    )


def unacked_older_than(deployment: Deployment, seconds: float) -> int:
    """How many messages Redis has held unacknowledged for longer than `seconds`."""
    with deployment.broker.client() as broker:
        return broker.zcount("unacked_index", "-inf", time.time() - seconds)


@pytest.mark.timeout(LOAD * (60 + (LONG_COUNTDOWN + 4) * FAULT_ROUNDS))
def test_countdowns_longer_than_the_visibility_timeout_send_each_reminder_once(
    deploy, fault_rounds, fault_report
):
    """A countdown held past the visibility timeout is redelivered; the copy is dropped.

    kombu's Redis transport puts such messages back in the queue when a worker starts (and,
    in a running worker, every unacked_restore_interval x unacked_restore_throttle, 100 s by
    default), so each round starts a second worker while the first holds the countdowns.
    """
    deployment = deploy(
        SIGNUP_REMINDER_INTERVAL=LONG_COUNTDOWN,
        SIGNUP_MAX_REMINDERS=fault_rounds,
        CELERY_BROKER_VISIBILITY_TIMEOUT=VISIBILITY_TIMEOUT,
    )
    fault_report["fault"] = "countdown longer than the Redis visibility timeout"
    addresses = sign_up_round(deployment, "visibility")
    found: list[str] = []
    redelivered_before = 0
    for number in range(1, fault_rounds + 1):
        deployment.wait_for(
            lambda: unacked_older_than(deployment, VISIBILITY_TIMEOUT) >= len(addresses),
            timeout=LONG_COUNTDOWN,
            what=f"reminder {number}'s countdowns to outlive the visibility timeout",
        )
        deployment.start_worker("second")
        deployment.stop_worker("second")
        deployment.wait_for(
            lambda number=number: arrived(deployment, addresses, number) >= len(addresses),
            timeout=LONG_COUNTDOWN + SLACK,
            what=f"reminder {number}",
        )
        redelivered = sum(count > 1 for count in reminder_receipts(deployment).values())
        if redelivered == redelivered_before:
            found.append(f"no countdown of reminder {number} was redelivered")
        redelivered_before = redelivered

    bound = repair_bound(deployment, 0)
    tally, lateness = settle(deployment, addresses, bound)
    receipts = reminder_receipts(deployment)
    record(
        fault_report,
        deployment,
        addresses,
        tally,
        lateness,
        reminder_tasks_redelivered=sum(count > 1 for count in receipts.values()),
        extra_deliveries=sum(count - 1 for count in receipts.values()),
        stale_copies_dropped=len(
            re.findall(r"INFO signup\.workflow dropped stale reminder", deployment.worker_output())
        ),
    )
    fault_report["rounds"] = fault_rounds
    found += problems(deployment, addresses, tally, lateness, bound)
    assert_no_problems(deployment, found)
