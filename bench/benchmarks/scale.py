"""5. Scale: many pending signups with their reminder chains, and what they cost the workers'
memory, Redis and the sweeper; beside the same with every countdown in the broker, and no-op
countdowns (what Celery itself costs per held task)."""

import time

from bench.benchmarks.common import (
    FULL,
    WORKER_CONCURRENCY,
    Sizes,
    count,
    fresh,
    ms,
    percentile,
    populate,
    times,
    workers_text,
)
from bench.report import Result, Row
from bench.stack import Stack

MB = 2**20
# The worker memory the scale target is judged on (see Process.memory).
MEMORY = "pss_total"


def _used_memory(stack: Stack) -> int:
    with stack.broker.client() as client:
        return client.info("memory")["used_memory"]


def _broker_state(stack: Stack) -> dict[str, int]:
    """Messages in the workers' queues and held unacknowledged by them (kombu's Redis keys)."""
    with stack.broker.client() as client:
        queued = sum(client.llen(queue) for queue in stack.queues())
        return {"queued": queued, "unacked": client.hlen("unacked")}


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
    return {"redis_used_memory": _used_memory(stack), **stack.workers_memory()}


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
    memory = stack.workers_memory()
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


def scale(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    # The floor: the same worker holding no-op countdowns, what Celery itself costs per task.
    fresh(stack)
    idle = _baseline(stack)
    empty_sweep = _sweeps(stack)
    stack.manage("bench_noop", "--count", str(sizes.scale_floor_count), "--countdown", "3600")
    held = _settled(stack)
    noop_redis = (_used_memory(stack) - idle["redis_used_memory"]) / sizes.scale_floor_count
    noop_memory = stack.workers_memory()
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
        f" {ahead['broker']['unacked']:,} held by the workers (the Procfile's,"
        f" WORKER_CONCURRENCY={WORKER_CONCURRENCY}: {workers_text(stack)}).",
        f"Beside it, the same population with every reminder's countdown in the broker"
        f" (SIGNUP_SCHEDULE_AHEAD={2 * STEADY_INTERVAL} s, longer than the interval: the chain"
        f" without a horizon): {every['broker']['unacked']:,} held by the worker.",
        "Redis: INFO used_memory after minus before, over the pending signups. Worker memory:"
        " the RSS of each worker's main process and its pool processes added up (the target's"
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
