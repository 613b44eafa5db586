"""What the benchmarks share: their sizes (full and --quick), the stack's settings, statistics,
and the steps many of them take (a fresh stack, a population of signups, reading the ledger)."""

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from bench.stack import Stack, instant_provider, slow_provider, wait_until


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does; --quick trades precision for a run of about 6
    minutes."""

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
    # The provider benchmarks: how long they wait past what the instant backend needs before
    # they measure what was done (a service that does not hide the provider's latency would
    # otherwise keep them for many minutes).
    provider_wait: float
    # Benchmark 9's verifications, each waiting for the slow provider to accept its email.
    provider_verify_count: int
    # Signups verified while their reminder is at the provider, over this many seconds.
    during_send_count: int
    during_send_window: float
    # Signups in the table under benchmark 13's funnel page.
    funnel_count: int
    # Benchmark 14's requests per endpoint and kind of address.
    enumeration_count: int
    # Benchmark 15: how long the provider is down, after how long a run without an outage.
    outage_seconds: float
    outage_before: float
    # Benchmark 16: this many signups through the API in this many seconds.
    burst_count: int
    burst_seconds: float
    # Benchmark 17: this many pending signups.
    million_count: int
    # Benchmark 18: emails per pipeline run, and signups whose reminder is timed.
    hosts_email_count: int
    hosts_timer_count: int
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
    provider_wait=90,
    provider_verify_count=500,
    during_send_count=100,
    during_send_window=40,
    funnel_count=1_000_000,
    enumeration_count=300,
    outage_seconds=600,
    outage_before=30,
    burst_count=50_000,
    burst_seconds=300,
    million_count=1_000_000,
    hosts_email_count=3000,
    hosts_timer_count=1000,
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
    provider_wait=6,
    provider_verify_count=30,
    during_send_count=10,
    during_send_window=3,
    funnel_count=20_000,
    enumeration_count=30,
    outage_seconds=60,
    outage_before=10,
    burst_count=5_000,
    burst_seconds=30,
    million_count=20_000,
    hosts_email_count=400,
    hosts_timer_count=150,
)

# The stack's workflow knobs (seconds). The sweeper runs every SWEEP seconds instead of the
# production 60 so that benchmark 6 fits in minutes; the grace is scaled down with it.
SWEEP_INTERVAL = 5
STACK_SETTINGS = {
    "SIGNUP_REMINDER_INTERVAL": "3600",
    "SIGNUP_SWEEP_INTERVAL": str(SWEEP_INTERVAL),
    "SIGNUP_LOST_TASK_GRACE": "2",
    # Benchmark 14 posts the pages hundreds of times a minute from one client.
    "SIGNUP_RATE_LIMIT_PAGES": "10000000/m",
}
# The workers of benchmarks 3 to 6, as the Procfile starts them: WORKER_CONCURRENCY=2, one
# pool process per core.
WORKER_CONCURRENCY = 2


# --- Statistics --------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between the closest ranks; values
    that are math.inf (not done when the wait ended) sort last and make it inf if it falls
    among them."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    if math.isinf(ordered[high]):
        return ordered[low] if high == low or rank == low else math.inf
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def finite(figures: dict) -> dict:
    """The summary with inf written as None, for the JSON result files."""
    return {
        key: None if isinstance(v, float) and math.isinf(v) else v for key, v in figures.items()
    }


def ms(seconds: float) -> str:
    if math.isinf(seconds):
        return "not done"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def times(ratio: float) -> str:
    return f"{ratio:.2f}×"  # noqa: RUF001 (the multiplication sign is meant)


def central_rate(moments: list[float], share: float = 0.9) -> float:
    """Completions per second over the middle `share` of them: the steady rate, which a slow
    start or a last retry does not bend."""
    ordered = sorted(moments)
    if len(ordered) < 3:
        return math.nan
    cut = (1 - share) / 2
    first, last = round(cut * (len(ordered) - 1)), round((1 - cut) * (len(ordered) - 1))
    return (last - first) / (ordered[last] - ordered[first])


# --- Steps -------------------------------------------------------------------------------------


def fresh(stack: Stack, *, worker: int | None = WORKER_CONCURRENCY, provider: bool = False) -> None:
    """Empty tables, broker and provider records, with the workers stopped; then start the
    Procfile's workers with WORKER_CONCURRENCY=`worker` unless it is None, sending through the
    instant backend, or the slow stand-in provider with `provider`. Web and beat keep running."""
    stack.stop_workers(kill=True)
    stack.reset()
    if provider:
        slow_provider(stack)
    else:
        instant_provider(stack)
    if worker is not None:
        stack.start_workers(concurrency=worker, provider=provider)


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
    tokens_file: Path | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Start `total` signups through workflow.start_signup, in `processes` parallel processes
    each paced over `spread` seconds; return their summary with the wall time. `env` overrides
    the stack's settings in the populating processes; `tokens_file` receives every signup's
    [id, token]."""
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
            args += ["--tokens-file", f"{tokens_file}.{number}"]
        running.append(stack.manage_in_background(*args, env=env))
    summaries = []
    for process in running:
        out, err = process.communicate(timeout=3600)
        if process.returncode != 0:
            raise RuntimeError(f"bench_populate failed:\n{out}\n{err}")
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    if tokens_file:
        tokens = []
        for number in range(processes):
            part = Path(f"{tokens_file}.{number}")
            tokens += json.loads(part.read_text())
            part.unlink()
        tokens_file.write_text(json.dumps(tokens))
    return {
        "count": sum(s["count"] for s in summaries),
        "seconds": time.monotonic() - started,
        "tasks_discarded": sum(s["tasks_discarded"] for s in summaries),
    }


def first_reminder_times(stack: Stack, interval: float) -> dict[int, float]:
    """When each signup's reminder 1 is due, in epoch seconds: `interval` after it was
    started, as its first contact (made right after, by bench_populate) plans it (read from
    created_at, since a worker that already took reminder 1 has moved next_reminder_at on to
    reminder 2)."""
    return {
        signup_id: float(created) + interval
        for signup_id, created in stack.query(
            "SELECT id, extract(epoch FROM created_at) FROM signup_signup"
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


def workers_text(stack: Stack) -> str:
    """What the running workers are, from their own banners: `worker (prefork, 2)`."""
    return ", ".join(
        f"{worker['name']} ({worker['pool']}, {worker['concurrency']})"
        for worker in stack.workers_ran()
    )


def workers_label(stack: Stack) -> str:
    """The workers for a row's label: `1 worker process` while the Procfile has one prefork
    worker line, else each line's pool and size."""
    ran = stack.workers_ran()
    if len(ran) == 1 and ran[0]["pool"] == "prefork":
        processes = ran[0]["concurrency"]
        return f"{processes} worker process" + ("es" if processes != 1 else "")
    return " + ".join(f"{w['name']} {w['pool']} ×{w['concurrency']}" for w in ran)  # noqa: RUF001


# --- What the stand-in provider accepted -------------------------------------------------------


def accepted_emails(stack: Stack) -> dict[int, dict]:
    """Each ledger email the provider accepted, once (its first acceptance: a copy sent again
    does not count twice), with when its accepted call arrived and was accepted, when its first
    call arrived (the service handed it over), and how many calls it took."""
    calls: dict[int, list] = {}
    for attempt in stack.provider.attempts:
        if attempt.email_id is not None:
            calls.setdefault(int(attempt.email_id), []).append(attempt)
    emails = {}
    for email_id, attempts in calls.items():
        attempts.sort(key=lambda a: a.received_at)
        accepted = [a for a in attempts if a.message_id is not None]
        if accepted:
            emails[email_id] = {
                "first_call_at": attempts[0].received_at,
                "received_at": accepted[0].received_at,
                "accepted_at": accepted[0].decided_at,
                "calls": attempts.index(accepted[0]) + 1,
                "tag": accepted[0].tag,
            }
    return emails


def refused_calls(stack: Stack) -> int:
    """Calls the provider answered with one of its occasional errors."""
    return sum(attempt.message_id is None for attempt in stack.provider.attempts)


def provider_text(stack: Stack) -> str:
    profile = stack.provider_profile
    return (
        f"anymail's Postmark backend to the stand-in Postmark (harness/provider.py):"
        f" lognormal latency, median {profile['latency_median_s'] * 1000:.0f} ms, p99"
        f" {profile['latency_p99_s'] * 1000:.0f} ms, {profile['error_rate']:.0%} of calls answered"
        f" 429 or 500 (seed {profile['seed']})"
    )


def provider_label(stack: Stack) -> str:
    """The slow provider for a row's label: `150 ms provider`."""
    return f"{stack.provider_profile['latency_median_s'] * 1000:.0f} ms provider"


# --- The pipeline's capacity, and how fast a backlog must drain -------------------------------


def capacity(stack: Stack, sizes: Sizes, earlier: dict, *, provider: bool) -> float:
    """The email pipeline's capacity C in emails a second, measured in this run: benchmark 2's
    steady rate (8's through the slow provider), measured now if this run has not yet."""
    from bench.benchmarks.email_pipeline import email_pipeline, email_pipeline_provider

    if provider:
        result = earlier.get("email_pipeline_provider") or email_pipeline_provider(
            stack, sizes, earlier
        )
        return result.figures["slow_provider"]["emails_per_second"]
    result = earlier.get("email_pipeline") or email_pipeline(stack, sizes, earlier)
    return result.figures["emails_per_second_central"]


def drain_bound(backlog: float, capacity: float) -> float:
    """How late the last of a backlog may leave: 1.2 backlog / C (the queue drains at the
    pipeline's capacity, with a fifth to spare), plus two sweep intervals (a lost task is
    repaired at the second sweep after its queue's workers passed it)."""
    return 1.2 * backlog / capacity + 2 * SWEEP_INTERVAL


def drain(stack: Stack, expected: int, capacity: float, *, what: str) -> tuple[int, bool]:
    """The backlog now (emails still to be accepted of `expected`, one per email), and whether
    the provider accepted them all within three times the time `capacity` needs (and a
    minute)."""

    def accepted() -> int:
        return len({message.email_id for message in stack.provider.accepted})

    backlog = expected - accepted()
    try:
        wait_until(
            lambda: accepted() >= expected,
            timeout=60 + 3 * backlog / capacity,
            what=what,
            interval=0.5,
        )
    except TimeoutError:
        return backlog, False
    return backlog, True
