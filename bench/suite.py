"""The six benchmarks. Each one starts from empty tables and an empty broker, measures the
service and its floor on the same stack in the same run, and returns a Result."""

import json
import math
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import recording
from bench.report import Result, Row
from bench.stack import ROOT, WEB_WORKERS, Stack, wait_until

WRK_SCRIPT = ROOT / "bench" / "wrk" / "post_signup.lua"
MB = 2**20
# The worker memory the scale target is judged on (see Process.memory).
MEMORY = "pss_total"


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does; --quick trades precision for a run under 2 minutes."""

    quick: bool
    submit_seconds: int
    submit_warmup: int
    submit_connections: int
    email_count: int
    noop_count: int
    verify_count: int
    timer_count: int
    timer_window: float
    recovery_count: int
    scale_count: int
    scale_floor_count: int
    # The target of benchmark 5 is stated for this many pending signups.
    scale_target_count: int = 100_000


FULL = Sizes(
    quick=False,
    submit_seconds=20,
    submit_warmup=5,
    submit_connections=4,
    email_count=2000,
    noop_count=10_000,
    verify_count=500,
    timer_count=10_000,
    timer_window=60,
    recovery_count=10_000,
    scale_count=100_000,
    scale_floor_count=10_000,
)
QUICK = Sizes(
    quick=True,
    submit_seconds=3,
    submit_warmup=1,
    submit_connections=4,
    email_count=120,
    noop_count=500,
    verify_count=60,
    timer_count=500,
    timer_window=3,
    recovery_count=500,
    scale_count=1000,
    scale_floor_count=1000,
)

# The stack's workflow knobs (seconds). The sweeper runs every SWEEP seconds instead of the
# production 60 so that benchmark 6 fits in minutes; the grace is scaled down with it.
SWEEP_INTERVAL = 5
STACK_SETTINGS = {
    "SIGNUP_REMINDER_INTERVAL": "3600",
    "SIGNUP_SWEEP_INTERVAL": str(SWEEP_INTERVAL),
    "SIGNUP_REMINDER_GRACE": "2",
}
# The worker of benchmarks 3 to 6, as the Procfile starts it: prefork, one process per core.
WORKER_CONCURRENCY = 2


# --- Helpers -----------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def times(ratio: float) -> str:
    return f"{ratio:.2f}×"  # noqa: RUF001 (the multiplication sign is meant)


def fresh(stack: Stack, *, worker: int | None = WORKER_CONCURRENCY) -> None:
    """Empty tables and broker, with the workers stopped; then start one worker with `worker`
    pool processes unless it is None. The web and beat keep running."""
    for name in list(stack.workers):
        stack.stop_worker(name, kill=True)
    stack.reset()
    if worker is not None:
        stack.start_worker(concurrency=worker)


def count(stack: Stack, query: str, params=()) -> int:
    return stack.query(query, params)[0][0]


def populate(
    stack: Stack,
    total: int,
    *,
    prefix: str,
    processes: int = 1,
    spread: float = 0.0,
    skip_verification_emails: bool = True,
    interval: float | None = None,
    tokens_file: str | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Start `total` signups through workflow.start_signup, in `processes` parallel processes
    each paced over `spread` seconds; return the first process's summary with the wall time.
    `env` overrides the stack's settings in the populating processes."""
    env = dict(env or {})
    if interval is not None:
        env["SIGNUP_REMINDER_INTERVAL"] = str(interval)
    started = time.monotonic()
    running = []
    for number in range(processes):
        args = ["bench_populate", "--count", str(total // processes + (number < total % processes))]
        args += ["--prefix", f"{prefix}{number}x", "--spread", str(spread)]
        if skip_verification_emails:
            args.append("--skip-verification-emails")
        if tokens_file:
            args += ["--tokens-file", tokens_file]
        running.append(stack.manage_in_background(*args, env=env))
    summaries = []
    for process in running:
        out, err = process.communicate(timeout=3600)
        if process.returncode != 0:
            raise RuntimeError(f"bench_populate failed:\n{out}\n{err}")
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "count": sum(s["count"] for s in summaries),
        "seconds": time.monotonic() - started,
        "verification_tasks_discarded": sum(s["verification_tasks_discarded"] for s in summaries),
    }


def signup_times(stack: Stack) -> dict[int, float]:
    """Each pending signup's planned next reminder, in epoch seconds."""
    return {
        signup_id: float(planned)
        for signup_id, planned in stack.query(
            "SELECT id, extract(epoch FROM next_reminder_at) FROM signup_signup"
            " WHERE status = 'pending' AND next_reminder_at IS NOT NULL"
        )
    }


def first_reminders(stack: Stack) -> dict[int, tuple[float, float | None]]:
    """When each signup's reminder 1 was taken (its ledger row was written inside
    workflow.take_reminder) and when it was sent, in epoch seconds."""
    return {
        signup_id: (float(created), float(sent) if sent is not None else None)
        for signup_id, created, sent in stack.query(
            "SELECT signup_id, extract(epoch FROM created_at), extract(epoch FROM sent_at)"
            " FROM signup_outboundemail WHERE kind = 'reminder' AND sequence = 1"
        )
    }


def chains_repaired(stack: Stack) -> int:
    return count(stack, "SELECT count(*) FROM signup_signupevent WHERE kind = 'chain_repaired'")


def wait_for_first_reminders(stack: Stack, expected: int, *, timeout: float) -> bool:
    """Wait until `expected` signups have had reminder 1 taken and sent; False on timeout."""
    query = (
        "SELECT count(*) FROM signup_outboundemail"
        " WHERE kind = 'reminder' AND sequence = 1 AND status = 'sent'"
    )
    try:
        wait_until(
            lambda: count(stack, query) >= expected,
            timeout=timeout,
            what="reminders",
            interval=0.25,
        )
    except TimeoutError:
        return False
    return True


# --- 1. Signup submit through the API ----------------------------------------------------------


def _wrk(stack: Stack, path: str, *, seconds: int, connections: int, prefix: str) -> dict:
    command = [
        "wrk",
        "--threads",
        "1",
        "--connections",
        str(connections),
        "--duration",
        f"{seconds}s",
        "--timeout",
        "10s",
        "--script",
        str(WRK_SCRIPT),
        f"{stack.url}{path}",
    ]
    stack.commands.setdefault(f"wrk {path}", " ".join(command).replace(str(ROOT) + "/", ""))
    env = {**os.environ, "BENCH_PREFIX": prefix, "BENCH_API_KEY": stack.api_key}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{done.stdout}\n{done.stderr}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT "))
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def submit(stack: Stack, sizes: Sizes) -> Result:
    # No worker runs: the workers of a real deployment are on other machines, and here they
    # would take CPU from the web. The tasks the signups enqueue wait in Redis.
    fresh(stack, worker=None)
    run = secrets.token_hex(3)
    sides = {"floor": "/bench/insert", "api": "/api/signups"}
    measured = {}
    for side, path in sides.items():
        options = {"connections": sizes.submit_connections}
        _wrk(stack, path, seconds=sizes.submit_warmup, prefix=f"w{side[0]}{run}", **options)
        measured[side] = _wrk(
            stack, path, seconds=sizes.submit_seconds, prefix=f"m{side[0]}{run}", **options
        )
    api, floor = measured["api"], measured["floor"]
    ratio = api["rps"] / floor["rps"]
    errors = {side: sum(result["errors"].values()) for side, result in measured.items()}
    # Every answered request of the measured API run is a signup in the database.
    signups = count(
        stack, "SELECT count(*) FROM signup_signup WHERE username LIKE %s", [f"ma{run}%"]
    )
    met = ratio >= 0.5 and not any(errors.values())

    def figure(result: dict) -> str:
        latency = result["latency_us"]
        return (
            f"{result['rps']:.0f} req/s; p50 {latency['p50'] / 1000:.1f} ms,"
            f" p99 {latency['p99'] / 1000:.1f} ms"
        )

    notes = [
        f"wrk, 1 thread, {sizes.submit_connections} connections, {sizes.submit_seconds} s per side"
        f" after a {sizes.submit_warmup} s warm-up, unique usernames (bench/wrk/post_signup.lua);"
        f" gunicorn --workers {WEB_WORKERS} (sync); no Celery worker running (the enqueued tasks"
        " wait in Redis).",
        f"Requests that failed: API {errors['api']}, floor {errors['floor']}.",
    ]
    return Result(
        name="submit",
        number=1,
        title="Signup submit through the API",
        figures={
            "rps": api["rps"],
            "latency_ms": {k: v / 1000 for k, v in api["latency_us"].items()},
            "requests": api["requests"],
            "errors": api["errors"],
            "signups_created": signups,
        },
        floor={
            "what": "POST /bench/insert: parse the same JSON body, insert one row",
            "rps": floor["rps"],
            "latency_ms": {k: v / 1000 for k, v in floor["latency_us"].items()},
            "requests": floor["requests"],
            "errors": floor["errors"],
        },
        ratio={"throughput": ratio},
        target={"throughput_ratio_at_least": 0.5},
        met=met,
        parameters={
            "tool": "wrk",
            "threads": 1,
            "connections": sizes.submit_connections,
            "duration_s": sizes.submit_seconds,
            "warmup_s": sizes.submit_warmup,
            "gunicorn_workers": WEB_WORKERS,
        },
        rows=[
            Row(
                "submit: POST /api/signups",
                figure(api),
                f"{figure(floor)} (bare view, one INSERT)",
                f"{ratio:.0%} of floor",
                "≥ 50% of floor",
                met,
            )
        ],
        notes=notes,
    )


# --- 2. The email pipeline ---------------------------------------------------------------------


def email_pipeline(stack: Stack, sizes: Sizes, *, processes: int = 1) -> Result:
    """Verification emails per second from one worker with `processes` pool processes,
    beside no-op tasks through the same worker."""
    fresh(stack, worker=None)
    records = stack.broker.client(1)
    # Queued while no worker runs, no-op tasks first: the worker then works through the no-ops
    # and then the signups' verification emails (their reminders are out of reach).
    stack.manage("bench_noop", "--count", str(sizes.noop_count), "--record", "ends")
    populate(stack, sizes.email_count, prefix="e", skip_verification_emails=False)
    started = time.monotonic()
    stack.start_worker(concurrency=processes)
    unsent = "SELECT count(*) FROM signup_outboundemail WHERE status <> 'sent'"
    timeout = 60 + sizes.email_count + sizes.noop_count / 10
    wait_until(lambda: count(stack, unsent) == 0, timeout=timeout, what="emails", interval=0.2)
    # ...and nothing but the benchmark's own emails went out.
    assert count(stack, "SELECT count(*) FROM signup_signup") == sizes.email_count
    drained = time.monotonic() - started
    noops = recording.read(records, recording.NOOP)
    assert len(noops) == 2, f"expected the first and last no-op to report, got {len(noops)}"
    noop_seconds = noops[1]["at"] - noops[0]["at"]
    noop_rate = (sizes.noop_count - 1) / noop_seconds
    ((email_seconds, sent),) = stack.query(
        "SELECT extract(epoch FROM max(sent_at) - min(sent_at)), count(*)"
        " FROM signup_outboundemail WHERE kind = 'verification' AND status = 'sent'"
    )
    email_rate = (sent - 1) / float(email_seconds)
    ratio = email_rate / noop_rate
    met = ratio >= 0.5
    stack.stop_worker()
    return Result(
        name="email_pipeline" if processes == 1 else "scale_out",
        number=2 if processes == 1 else 7,
        title=(
            "Email pipeline: verification emails per second per worker process"
            if processes == 1
            else f"Scale-out: the email pipeline with {processes} worker processes"
        ),
        figures={
            "emails_per_second": email_rate,
            "emails": sent,
            "seconds_first_to_last_sent": float(email_seconds),
        },
        floor={
            "what": "bench.tasks.noop on the same broker and worker",
            "tasks_per_second": noop_rate,
            "tasks": sizes.noop_count,
            "seconds_first_to_last": noop_seconds,
        },
        ratio={"throughput": ratio},
        target={"throughput_ratio_at_least": 0.5},
        met=met,
        parameters={
            "emails": sizes.email_count,
            "noop_tasks": sizes.noop_count,
            "worker": f"celery -A config worker --concurrency={processes} (prefork)",
            "seconds_until_all_done": round(drained, 1),
        },
        rows=[
            Row(
                f"email pipeline, {processes} worker process" + ("es" if processes > 1 else ""),
                f"{email_rate:.0f} emails/s",
                f"{noop_rate:.0f} no-op tasks/s",
                f"{ratio:.0%} of floor",
                "≥ 50% of floor",
                met,
            )
        ],
        notes=[
            f"{sizes.email_count} signups were started with the worker stopped (so their"
            f" verification emails waited in Redis), behind {sizes.noop_count} no-op tasks;"
            f" then one worker (prefork, --concurrency={processes}) was started. Rates run"
            " from the first to the last completion: the ledger's sent_at for the emails, the"
            " time the first and last no-op noted for the floor.",
            "The email backend accepts each message at once after rendering it to MIME"
            " (bench/mail.py): the provider is not measured.",
        ],
    )


# --- 3. Verify to welcome email ----------------------------------------------------------------

VERIFY_WARMUP = 5


def verify_to_welcome(stack: Stack, sizes: Sizes) -> Result:
    fresh(stack)
    records = stack.broker.client(1)
    tokens_file = str(stack.tmp / "tokens.json")
    total = sizes.verify_count + VERIFY_WARMUP
    populate(stack, total, prefix="v", tokens_file=tokens_file)
    with open(tokens_file) as tokens:
        signups = json.load(tokens)

    welcome, answered, verify_started = [], [], {}
    for index, (signup_id, token) in enumerate(signups):
        started = time.time()
        status, body = stack.post("/api/signups/verify", {"token": token, "source": "verification"})
        answered_at = time.time()
        assert status == 200 and body["result"] == "done", (status, body)
        _, raw = records.blpop(recording.MAIL, timeout=30) or (None, None)
        assert raw is not None, "no welcome email within 30 s"
        if index >= VERIFY_WARMUP:
            verify_started[signup_id] = started
            welcome.append(json.loads(raw)["at"] - started)
            answered.append(answered_at - started)

    floor, floor_answered = [], []
    for index in range(total):
        started = time.time()
        status, _ = stack.post("/bench/enqueue", {"username": f"f{index}"})
        answered_at = time.time()
        assert status == 201, status
        _, raw = records.blpop(recording.FLOOR_TASK, timeout=30) or (None, None)
        assert raw is not None, "no no-op task within 30 s"
        if index >= VERIFY_WARMUP:
            floor.append(json.loads(raw)["at"] - started)
            floor_answered.append(answered_at - started)

    ledger = [
        float(sent) - verify_started[signup_id]
        for signup_id, sent in stack.query(
            "SELECT signup_id, extract(epoch FROM sent_at) FROM signup_outboundemail"
            " WHERE kind = 'welcome' AND status = 'sent'"
        )
        if signup_id in verify_started
    ]
    figure, floor_figure = summary(welcome), summary(floor)
    met = figure["p50"] <= 0.025 and figure["p99"] <= 0.100
    return Result(
        name="verify_to_welcome",
        number=3,
        title="Verify to welcome email",
        figures={
            "latency_s": figure,
            "api_answer_s": summary(answered),
            "ledger_sent_at_s": summary(ledger),
        },
        floor={
            "what": "POST /bench/enqueue: insert one row, enqueue bench.tasks.noop after commit;"
            " until the task ran",
            "latency_s": floor_figure,
            "answer_s": summary(floor_answered),
        },
        ratio={
            "p50": figure["p50"] / floor_figure["p50"],
            "p99": figure["p99"] / floor_figure["p99"],
        },
        target={"p50_at_most_s": 0.025, "p99_at_most_s": 0.100},
        met=met,
        parameters={
            "verifications": sizes.verify_count,
            "one_at_a_time": True,
            "worker": f"celery -A config worker --concurrency={WORKER_CONCURRENCY}",
        },
        rows=[
            Row(
                "verify → welcome email",
                f"p50 {ms(figure['p50'])}, p99 {ms(figure['p99'])}",
                f"p50 {ms(floor_figure['p50'])}, p99 {ms(floor_figure['p99'])}",
                f"{times(figure['p50'] / floor_figure['p50'])} (p50)",
                "p50 ≤ 25 ms, p99 ≤ 100 ms",
                met,
            )
        ],
        notes=[
            f"{sizes.verify_count} verifications one at a time (after {VERIFY_WARMUP} not"
            " counted), each timed from just before `POST /api/signups/verify` to the moment the"
            " email backend accepted the welcome email (its own clock, the same machine's)."
            f" The API answered in p50 {ms(summary(answered)['p50'])}; the ledger's sent_at came"
            f" p50 {ms(summary(ledger)['p50'])}, p99 {ms(summary(ledger)['p99'])} after the call.",
        ],
    )


# --- 4. Timer accuracy -------------------------------------------------------------------------

# Seconds between the end of a population and its first reminder falling due, so that the
# worker holds every countdown before the first one is due.
TIMER_LEAD = 2.0


def _populate_due_together(stack: Stack, total: int, *, prefix: str, window: float, lead: float):
    """Start `total` signups paced over `window` seconds (two processes), with the reminder
    interval set so that their first reminders fall due `lead` seconds after the last start,
    spread over the same window. Return the population summary and the planned times."""
    # Each signup's reminder falls due `interval` after its own start.
    interval = math.ceil(window + lead)
    population = populate(
        stack, total, prefix=prefix, processes=2, spread=window, interval=interval
    )
    planned = signup_times(stack)
    assert len(planned) == total, f"{len(planned)} of {total} signups have a reminder planned"
    return population, planned, interval


def _noop_lateness(stack: Stack, total: int, window: float) -> dict[str, float]:
    """The floor of the timer benchmarks: `total` no-op tasks due over `window` seconds, each
    noting how late it ran."""
    records = stack.broker.client(1)
    countdown = 1 + total / 1000  # enough to publish them all before the first is due
    stack.manage(
        "bench_noop", "--count", str(total), "--countdown", str(countdown),
        "--spread", str(window), "--record", "all",
    )  # fmt: skip
    wait_until(
        lambda: records.llen(recording.NOOP) >= total,
        timeout=countdown + window + 60 + total / 50,
        what="the no-op countdowns",
        interval=0.25,
    )
    return summary([r["at"] - r["planned"] for r in recording.read(records, recording.NOOP)])


def timer_accuracy(stack: Stack, sizes: Sizes) -> Result:
    fresh(stack)
    # The no-ops have all run when this returns: the worker is idle again for the signups.
    floor = _noop_lateness(stack, sizes.timer_count, sizes.timer_window)
    population, planned, interval = _populate_due_together(
        stack, sizes.timer_count, prefix="t", window=sizes.timer_window, lead=TIMER_LEAD
    )
    remaining = max(planned.values()) - time.time()
    complete = wait_for_first_reminders(
        stack, sizes.timer_count, timeout=remaining + 60 + sizes.timer_count / 20
    )
    reminders = first_reminders(stack)
    taken = [reminders[i][0] - due for i, due in planned.items() if i in reminders]
    sent = [reminders[i][1] - due for i, due in planned.items() if reminders.get(i, (0, None))[1]]
    # What counts is when the reminder email left, not only when its task ran.
    figure, taken_figure = summary(sent), summary(taken)
    missing = sizes.timer_count - len(sent)
    repaired = chains_repaired(stack)
    met = complete and figure["p99"] <= 1.0
    due_window = max(planned.values()) - min(planned.values())
    notes = [
        f"{sizes.timer_count} signups started through workflow.start_signup by two processes"
        f" paced over {sizes.timer_window:g} s, with SIGNUP_REMINDER_INTERVAL={interval:g} s: their"
        f" first reminders fell due over {due_window:.1f} s. Lateness is the time the reminder"
        " email left (the email backend accepted it: its ledger row's sent_at) minus the"
        " planned next_reminder_at. take_reminder took the reminders (its ledger row's"
        f" created_at) p50 {ms(taken_figure['p50'])}, p99 {ms(taken_figure['p99'])} late.",
        f"Worker: prefork --concurrency={WORKER_CONCURRENCY}, with beat (sweep every"
        f" {SWEEP_INTERVAL} s, grace {STACK_SETTINGS['SIGNUP_REMINDER_GRACE']} s). Reminders the"
        f" sweeper re-enqueued as lost while they were only late: {repaired}.",
        "The verification emails of these signups were recorded as sent without sending"
        " (their tasks went to a queue no worker reads), so that only the reminders load the"
        " worker.",
    ]
    if missing:
        notes.append(f"{missing} reminders had not been sent when the wait ended.")
    if sizes.quick:
        notes.append(
            f"Quick mode: {sizes.timer_count} signups over {sizes.timer_window:g} s (the full run:"
            f" {FULL.timer_count} over {FULL.timer_window:g} s, the same rate)."
        )
    return Result(
        name="timer_accuracy",
        number=4,
        title="Timer accuracy: reminder lateness when many fall due together",
        figures={
            "lateness_s": figure,
            "taken_lateness_s": taken_figure,
            "missing": missing,
            "chains_repaired_by_sweeper": repaired,
            "due_window_s": due_window,
        },
        floor={"what": "bench.tasks.noop with the same spread of ETAs", "lateness_s": floor},
        ratio={"p99": figure["p99"] / floor["p99"] if floor["p99"] > 0 else math.nan},
        target={"p99_at_most_s": 1.0},
        met=met,
        parameters={
            "signups": sizes.timer_count,
            "window_s": sizes.timer_window,
            "reminder_interval_s": interval,
            "population_s": round(population["seconds"], 1),
            "worker_concurrency": WORKER_CONCURRENCY,
            "sweep_interval_s": SWEEP_INTERVAL,
        },
        rows=[
            Row(
                f"timer: {sizes.timer_count} reminders due within {due_window:.0f} s",
                f"email out late p50 {ms(figure['p50'])}, p99 {ms(figure['p99'])}",
                f"p50 {ms(floor['p50'])}, p99 {ms(floor['p99'])} (no-op ETAs)",
                f"{times(figure['p99'] / floor['p99'])} (p99)" if floor["p99"] > 0 else "—",
                "p99 ≤ 1 s",
                met,
            )
        ],
        notes=notes,
    )


# --- 6. Recovery after a broker flush ----------------------------------------------------------

# Seconds between the last start and the first reminder falling due: room to stop the worker,
# flush Redis and start the worker again before any reminder is due.
RECOVERY_LEAD = 5.0


def recovery(stack: Stack, sizes: Sizes, *, timer: Result | None = None) -> Result:
    fresh(stack)
    population, planned, interval = _populate_due_together(
        stack, sizes.recovery_count, prefix="r", window=sizes.timer_window, lead=RECOVERY_LEAD
    )
    # A warm shutdown hands the countdowns the worker holds back to Redis, and the flush then
    # takes them: no copy survives anywhere, as after a broker failover to an empty replica.
    stack.stop_worker()
    flushed_at = time.time()
    with stack.broker.client() as client:
        client.flushall()
    stack.start_worker(concurrency=WORKER_CONCURRENCY)
    due_before_flush = sum(due <= flushed_at for due in planned.values())
    remaining = max(planned.values()) - time.time()
    complete = wait_for_first_reminders(
        stack,
        sizes.recovery_count,
        timeout=remaining + 20 * SWEEP_INTERVAL + sizes.recovery_count / 10,
    )
    reminders = first_reminders(stack)
    delays = [
        reminders[i][1] - max(due, flushed_at)
        for i, due in planned.items()
        if reminders.get(i, (0, None))[1]
    ]
    figure = summary(delays)
    missing = sizes.recovery_count - len(delays)
    repaired = chains_repaired(stack)
    target = 2 * SWEEP_INTERVAL
    met = complete and figure["max"] <= target
    floor = timer.figures["lateness_s"] if timer is not None else None
    if floor is not None and timer.parameters["signups"] != sizes.recovery_count:
        floor = None  # not the same population size: no like-for-like floor
    notes = [
        f"{sizes.recovery_count} pending signups started like benchmark 4 (paced over"
        f" {sizes.timer_window:g} s, first reminders due over the same span from"
        f" {RECOVERY_LEAD:g} s after the last start). Before the first was due, the worker was"
        " stopped (warm: it hands its countdowns back to Redis), Redis was flushed (FLUSHALL)"
        " and the worker started again: no copy of any countdown survived.",
        "Measured until each signup was reminded (its reminder 1 email sent), from"
        " the later of the flush and the reminder's planned time; the sweeper re-enqueued"
        f" {repaired} chains. Reminders already due at the flush: {due_before_flush}.",
        "Floor: the same population's lateness with no flush (benchmark 4, max).",
    ]
    if missing:
        notes.append(f"{missing} reminders had not been sent when the wait ended.")
    if sizes.quick:
        notes.append(
            f"Quick mode: {sizes.recovery_count} pending (full run: {FULL.recovery_count})."
        )
    return Result(
        name="recovery",
        number=6,
        title="Recovery: every chain restored after a broker FLUSHALL",
        figures={
            "restore_delay_s": figure,
            "missing": missing,
            "chains_repaired_by_sweeper": repaired,
            "due_before_flush": due_before_flush,
        },
        floor={
            "what": "benchmark 4's lateness (the same population, no flush)",
            "lateness_s": floor,
        },
        ratio={"max": figure["max"] / floor["max"] if floor else math.nan},
        target={"max_restore_delay_at_most_s": target, "sweep_interval_s": SWEEP_INTERVAL},
        met=met,
        parameters={
            "pending": sizes.recovery_count,
            "window_s": sizes.timer_window,
            "reminder_interval_s": interval,
            "sweep_interval_s": SWEEP_INTERVAL,
            "grace_s": float(STACK_SETTINGS["SIGNUP_REMINDER_GRACE"]),
            "population_s": round(population["seconds"], 1),
        },
        rows=[
            Row(
                f"recovery: {sizes.recovery_count} pending, FLUSHALL",
                f"all reminded ≤ {ms(figure['max'])} late (p50 {ms(figure['p50'])},"
                f" p99 {ms(figure['p99'])})",
                f"≤ {ms(floor['max'])} late with no flush" if floor else "—",
                times(figure["max"] / floor["max"]) if floor else "—",
                f"≤ 2 sweep intervals ({target} s)",
                met,
            )
        ],
        notes=notes,
    )


# --- 5. Scale: many pending signups ------------------------------------------------------------


def _used_memory(stack: Stack) -> int:
    with stack.broker.client() as client:
        return client.info("memory")["used_memory"]


def _broker_state(stack: Stack) -> dict[str, int]:
    """Messages in the default queue and held unacknowledged by workers (kombu's Redis keys)."""
    with stack.broker.client() as client:
        return {"queued": client.llen("celery"), "unacked": client.hlen("unacked")}


def _settled(stack: Stack, *, quiet: float = 1.5, timeout: float = 600) -> dict[str, int]:
    """Wait until the default queue is empty and the unacknowledged count has not changed for
    `quiet` seconds: the worker holds whatever it is going to hold."""
    last, since = None, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _broker_state(stack)
        if state != last:
            last, since = state, time.monotonic()
        elif state["queued"] == 0 and time.monotonic() - since >= quiet:
            return state
        time.sleep(0.25)
    raise TimeoutError("the broker did not settle")


def _baseline(stack: Stack) -> dict[str, int]:
    _settled(stack, quiet=1.0)
    return {"redis_used_memory": _used_memory(stack), **stack.workers["worker"].memory()}


def _sweeps(stack: Stack, runs: int = 5) -> dict:
    timed = stack.manage("bench_sweep", "--runs", str(runs))
    # The first run also opens the database connection: the rest are the steady state.
    return {"median_s": percentile(timed["seconds"][1:], 50), **timed}


# The production defaults the scale benchmark runs with: a reminder a day, five minutes ahead.
STEADY_INTERVAL = 24 * 3600
SCHEDULE_AHEAD = 300


def _populate_fresh(stack: Stack, sizes: Sizes, env: dict[str, str], *, prefix: str):
    """Start sizes.scale_count pending signups on a fresh stack (with `env` over its
    settings); return the population's summary and the idle baseline taken before it."""
    fresh(stack)
    before = _baseline(stack)
    population = populate(stack, sizes.scale_count, prefix=prefix, processes=2, env=env)
    return population, before


def _held_figures(stack: Stack, before: dict) -> dict:
    broker = _settled(stack)
    pending = count(stack, "SELECT count(*) FROM signup_signup WHERE status = 'pending'")
    memory = stack.workers["worker"].memory()
    return {
        "pending": pending,
        "broker": broker,
        "redis_bytes_per_pending": (_used_memory(stack) - before["redis_used_memory"]) / pending,
        "worker_memory_bytes": memory,
        "worker_memory_idle_bytes": {key: before[key] for key in memory},
        "worker_growth_per_pending_bytes": (memory[MEMORY] - before[MEMORY]) / pending,
    }


def _rss_carried(figures: dict, scaled: float) -> float:
    """The worker's total RSS with its growth over idle multiplied by `scaled`."""
    rss, idle = figures["worker_memory_bytes"]["rss_total"], figures["worker_memory_idle_bytes"]
    return rss + (rss - idle["rss_total"]) * (scaled - 1)


def scale(stack: Stack, sizes: Sizes) -> Result:
    # The floor: the same worker holding no-op countdowns, what Celery itself costs per task.
    fresh(stack)
    idle = _baseline(stack)
    empty_sweep = _sweeps(stack)
    stack.manage("bench_noop", "--count", str(sizes.scale_floor_count), "--countdown", "3600")
    held = _settled(stack)
    noop_redis = (_used_memory(stack) - idle["redis_used_memory"]) / sizes.scale_floor_count
    noop_memory = stack.workers["worker"].memory()
    noop_each = (noop_memory[MEMORY] - idle[MEMORY]) / sizes.scale_floor_count

    # Every countdown in the broker: SIGNUP_SCHEDULE_AHEAD beyond the interval, so each
    # signup's reminder task goes to the broker at once (the chain without a horizon).
    steady = {"SIGNUP_REMINDER_INTERVAL": str(STEADY_INTERVAL)}
    every_env = {**steady, "SIGNUP_SCHEDULE_AHEAD": str(2 * STEADY_INTERVAL)}
    _, before = _populate_fresh(stack, sizes, every_env, prefix="c")
    every = _held_figures(stack, before)

    # Scheduled ahead (the defaults): the signups' next reminders are spread over the next
    # day, as if they had come in evenly over the last one, and the sweeper hands the broker
    # those due within SIGNUP_SCHEDULE_AHEAD.
    population, before = _populate_fresh(stack, sizes, steady, prefix="s")
    stack.query(
        "UPDATE signup_signup SET reminder_enqueued_at = NULL,"
        " next_reminder_at = now() + random() * make_interval(secs => %s)"
        " WHERE status = 'pending'",
        [STEADY_INTERVAL],
    )
    handover = stack.manage("bench_sweep", "--runs", "1")
    ahead = _held_figures(stack, before)
    handed_over = count(
        stack, "SELECT count(*) FROM signup_signup WHERE reminder_enqueued_at IS NOT NULL"
    )
    sweep = _sweeps(stack)

    pending = ahead["pending"]
    scaled = sizes.scale_target_count / pending
    # The targets are stated for scale_target_count pending signups, which only the full run
    # starts. Held countdowns grow linearly, so the quick run carries the growth it measured
    # with every countdown in the broker to that size; what the schedule-ahead design holds
    # depends on how many fall due within the horizon, which only the full size shows.
    full_size = scaled == 1
    every_at_target = _rss_carried(every, scaled)
    ahead_rss = ahead["worker_memory_bytes"]["rss_total"]
    memory_met = ahead_rss <= 300 * MB if full_size else None
    redis_met = ahead["redis_bytes_per_pending"] <= 1024
    every_rss = f"{every['worker_memory_bytes']['rss_total'] / MB:.0f} MB" + (
        "" if full_size else f" (→ {every_at_target / MB:.0f} MB at {sizes.scale_target_count:,})"
    )

    notes = [
        f"{pending:,} pending signups started through workflow.start_signup by two processes"
        f" in {population['seconds']:.0f} s, with the production defaults"
        f" SIGNUP_REMINDER_INTERVAL={STEADY_INTERVAL} s and"
        f" SIGNUP_SCHEDULE_AHEAD={SCHEDULE_AHEAD} s;"
        " their verification emails were recorded as sent without sending. Their next"
        " reminders were then spread evenly over the next day (as if the signups had come in"
        " evenly over the last one) and the sweeper ran: it handed the broker the"
        f" {handed_over:,} due within {SCHEDULE_AHEAD} s, in {ms(handover['seconds'][0])}."
        f" Measured once the broker settled: {ahead['broker']['queued']} queued,"
        f" {ahead['broker']['unacked']:,} held by the worker (prefork"
        f" --concurrency={WORKER_CONCURRENCY}).",
        f"Beside it, the same population with every reminder's countdown in the broker"
        f" (SIGNUP_SCHEDULE_AHEAD={2 * STEADY_INTERVAL} s, longer than the interval: the chain"
        f" without a horizon): {every['broker']['unacked']:,} held by the worker.",
        "Redis: INFO used_memory after minus before, over the pending signups. Worker memory:"
        " the RSS of the worker's main process and its pool processes added up (the target's"
        " measure; it counts the pages the forked pool shares with its parent once per"
        " process); their PSS is in the JSON. Floor: the same worker and Redis holding"
        f" {sizes.scale_floor_count:,} no-op countdown tasks (what Celery itself costs per held"
        " task).",
        f"Sweeper: workflow.sweep() run {len(sweep['seconds'])} times in a separate process"
        " once the handover was done (what beat runs every minute), median of all but the"
        " first; floor: the same on the empty database.",
    ]
    if scaled != 1:
        notes.append(
            f"Quick mode: {pending:,} pending (full run: {FULL.scale_count:,}); the memory"
            " target is judged by the full run only."
        )
    return Result(
        name="scale",
        number=5,
        title="Scale: pending signups with their reminder chains",
        figures={
            "pending": pending,
            "schedule_ahead": {**ahead, "handed_over": handed_over, "handover": handover},
            "every_countdown_in_broker": every,
            "worker_rss_every_countdown_carried_to_target_bytes": every_at_target,
            "sweep_s": sweep,
        },
        floor={
            "what": "no-op countdowns held by the same worker; the idle worker; an empty sweep",
            "noop_tasks": sizes.scale_floor_count,
            "redis_bytes_per_noop": noop_redis,
            "worker_memory_idle_bytes": idle,
            "worker_memory_bytes_with_noops": noop_memory,
            "worker_growth_per_noop_bytes": noop_each,
            "broker_with_noops": held,
            "sweep_empty_s": empty_sweep,
        },
        ratio={
            "redis": ahead["redis_bytes_per_pending"] / noop_redis,
            "sweep": sweep["median_s"] / empty_sweep["median_s"],
        },
        target={
            "worker_rss_at_most_bytes": 300 * MB,
            "redis_bytes_per_pending_at_most": 1024,
            "at_pending": sizes.scale_target_count,
        },
        met=bool(memory_met and redis_met) if full_size else None,
        parameters={
            "pending": pending,
            "reminder_interval_s": STEADY_INTERVAL,
            "schedule_ahead_s": SCHEDULE_AHEAD,
            "floor_noop_tasks": sizes.scale_floor_count,
            "population_s": round(population["seconds"], 1),
            "worker_concurrency": WORKER_CONCURRENCY,
        },
        rows=[
            Row(
                f"scale: worker RSS, {pending:,} pending",
                f"{ahead_rss / MB:.0f} MB; every countdown in the broker: {every_rss}",
                f"idle {idle['rss_total'] / MB:.0f} MB, +{noop_each / 1024:.1f} KB (PSS) per"
                " held no-op",
                "—",
                f"≤ 300 MB at {sizes.scale_target_count:,}" + ("" if full_size else " (full run)"),
                memory_met,
            ),
            Row(
                "scale: Redis per pending signup",
                f"{ahead['redis_bytes_per_pending']:,.0f} B; every countdown in the broker:"
                f" {every['redis_bytes_per_pending']:,.0f} B",
                f"{noop_redis:,.0f} B per held no-op",
                times(ahead["redis_bytes_per_pending"] / noop_redis),
                "≤ 1 KB",
                redis_met,
            ),
            Row(
                "scale: sweeper run",
                f"{ms(sweep['median_s'])}",
                f"{ms(empty_sweep['median_s'])} (empty database)",
                times(sweep["median_s"] / empty_sweep["median_s"]),
                "—",
                None,
            ),
        ],
        notes=notes,
    )


def scale_out(stack: Stack, sizes: Sizes) -> Result:
    """Benchmark 2 with two worker processes: the workers' side scaled out on this host."""
    return email_pipeline(stack, sizes, processes=2)


BENCHMARKS: dict[str, Callable[..., Result]] = {
    "submit": submit,
    "email_pipeline": email_pipeline,
    "verify_to_welcome": verify_to_welcome,
    "timer_accuracy": timer_accuracy,
    "recovery": recovery,
    "scale": scale,
    "scale_out": scale_out,
}
