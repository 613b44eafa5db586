"""6. Recovery: every reminder chain restored by the sweeper after the broker lost every message
(FLUSHALL), beside the same population's lateness with no flush (benchmark 4): how late the
last one leaves against the drain the pipeline's capacity allows, and how many repairs each
lost chain cost."""

import math
import time

from bench.benchmarks.common import (
    FULL,
    STACK_SETTINGS,
    SWEEP_INTERVAL,
    WORKER_CONCURRENCY,
    Sizes,
    capacity,
    chains_repaired,
    drain_bound,
    first_reminders,
    fresh,
    ms,
    summary,
    times,
    wait_for_first_reminders,
)
from bench.benchmarks.timer import populate_due_together
from bench.report import Result, Row
from bench.stack import Stack

# Seconds between the last start and the first reminder falling due: room to stop the workers,
# flush Redis and start the workers again before any reminder is due.
RECOVERY_LEAD = 5.0
# Repairs per lost chain: one each, with a tenth to spare.
REPAIRS_PER_LOSS = 1.1


def recovery(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    timer = earlier.get("timer_accuracy")
    pipeline = capacity(stack, sizes, earlier, provider=False)
    fresh(stack)
    population, planned, interval = populate_due_together(
        stack, sizes.recovery_count, prefix="r", window=sizes.timer_window, lead=RECOVERY_LEAD
    )
    # A warm shutdown hands the countdowns the worker holds back to Redis, and the flush then
    # takes them: no copy survives anywhere, as after a broker failover to an empty replica.
    stack.stop_workers()
    flushed_at = time.time()
    with stack.broker.client() as client:
        client.flushall()
    stack.start_workers(concurrency=WORKER_CONCURRENCY)
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
    per_loss = repaired / sizes.recovery_count
    # Every chain was lost at once: the last leaves within the drain of all of them.
    target = drain_bound(sizes.recovery_count, pipeline)
    met = complete and figure["max"] <= target and per_loss <= REPAIRS_PER_LOSS
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
        f" {repaired} chains for {sizes.recovery_count} lost ({per_loss:.2f} per lost chain)."
        f" Reminders already due at the flush: {due_before_flush}.",
        f"Target: the last within 1.2 × N / C + 2 sweep intervals of its due time, where N ="  # noqa: RUF001
        f" {sizes.recovery_count} chains lost at once and C = {pipeline:.0f} emails/s, the"
        f" pipeline's capacity in this run (benchmark 2's steady rate): {target:.1f} s; and at"
        f" most {REPAIRS_PER_LOSS:g} repairs per lost chain.",
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
            "repairs_per_lost_chain": per_loss,
            "due_before_flush": due_before_flush,
        },
        floor={
            "what": "benchmark 4's lateness (the same population, no flush)",
            "lateness_s": floor,
        },
        ratio={"max": figure["max"] / floor["max"] if floor else math.nan},
        target={
            "max_restore_delay_at_most_s": target,
            "capacity_emails_per_s": pipeline,
            "sweep_interval_s": SWEEP_INTERVAL,
            "repairs_per_lost_chain_at_most": REPAIRS_PER_LOSS,
        },
        met=met,
        parameters={
            "pending": sizes.recovery_count,
            "window_s": sizes.timer_window,
            "reminder_interval_s": interval,
            "sweep_interval_s": SWEEP_INTERVAL,
            "grace_s": float(STACK_SETTINGS["SIGNUP_LOST_TASK_GRACE"]),
            "population_s": round(population["seconds"], 1),
        },
        rows=[
            Row(
                f"recovery: {sizes.recovery_count} pending, FLUSHALL",
                f"all reminded ≤ {ms(figure['max'])} late (p50 {ms(figure['p50'])},"
                f" p99 {ms(figure['p99'])}); {per_loss:.2f} repairs per lost chain",
                f"≤ {ms(floor['max'])} late with no flush" if floor else "—",
                times(figure["max"] / floor["max"]) if floor else "—",
                f"≤ 1.2 × N / C + 2 sweeps ({target:.1f} s, C = {pipeline:.0f}/s);"  # noqa: RUF001
                f" ≤ {REPAIRS_PER_LOSS:g} repairs per lost chain",
                met,
            )
        ],
        notes=notes,
    )
