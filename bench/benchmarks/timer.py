"""4. Timer accuracy: how late reminder emails leave when many fall due together, beside no-op
tasks with the same spread of ETAs; 10. the same through the slow stand-in provider."""

import math
import time
from pathlib import Path

from bench import recording
from bench.benchmarks.common import (
    FULL,
    STACK_SETTINGS,
    SWEEP_INTERVAL,
    WORKER_CONCURRENCY,
    Sizes,
    accepted_emails,
    capacity,
    chains_repaired,
    drain_bound,
    finite,
    first_reminder_times,
    first_reminders,
    fresh,
    ms,
    populate,
    provider_label,
    provider_text,
    summary,
    times,
    wait_for_first_reminders,
    workers_text,
)
from bench.report import Result, Row
from bench.stack import Stack, wait_until

# Seconds between the end of a population and its first reminder falling due, so that the
# worker holds every countdown before the first one is due.
TIMER_LEAD = 2.0


def populate_due_together(
    stack: Stack,
    total: int,
    *,
    prefix: str,
    window: float,
    lead: float,
    tokens_file: Path | None = None,
):
    """Start `total` signups paced over `window` seconds (two processes), with the reminder
    interval set so that their first reminders fall due `lead` seconds after the last start,
    spread over the same window. Return the population summary and the planned times."""
    # Each signup's reminder falls due `interval` after its own start.
    interval = math.ceil(window + lead)
    population = populate(
        stack,
        total,
        prefix=prefix,
        processes=2,
        spread=window,
        interval=interval,
        tokens_file=tokens_file,
    )
    planned = first_reminder_times(stack, interval)
    assert len(planned) == total, f"{len(planned)} of {total} signups were started"
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


def timer_accuracy(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    fresh(stack)
    # The no-ops have all run when this returns: the worker is idle again for the signups.
    floor = _noop_lateness(stack, sizes.timer_count, sizes.timer_window)
    population, planned, interval = populate_due_together(
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
        f"Workers: the Procfile's, WORKER_CONCURRENCY={WORKER_CONCURRENCY}"
        f" ({workers_text(stack)}), with beat (sweep every {SWEEP_INTERVAL} s, grace"
        f" {STACK_SETTINGS['SIGNUP_LOST_TASK_GRACE']} s). Reminders the sweeper re-enqueued as"
        f" lost while they were only late: {repaired}.",
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


def timer_accuracy_provider(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    """Benchmark 4 with the workers sending through the slow stand-in provider: the reminders
    may come due faster than the pipeline sends them, and the backlog then drains at its
    capacity; nothing only late is repaired."""
    instant = earlier.get("timer_accuracy") or timer_accuracy(stack, sizes, earlier)
    pipeline = capacity(stack, sizes, earlier, provider=True)
    fresh(stack, provider=True)
    workers = workers_text(stack)
    population, planned, interval = populate_due_together(
        stack, sizes.timer_count, prefix="t", window=sizes.timer_window, lead=TIMER_LEAD
    )
    remaining = max(planned.values()) - time.time()

    def accepted() -> int:
        return len({message.email_id for message in stack.provider.accepted})

    try:
        wait_until(
            lambda: accepted() >= sizes.timer_count,
            timeout=remaining + sizes.provider_wait,
            what="the reminders",
            interval=0.25,
        )
        complete = True
    except TimeoutError:
        complete = False
    waited_until = time.time()
    stack.stop_workers(kill=True)
    emails = accepted_emails(stack)
    reminder_of = dict(
        stack.query(
            "SELECT id, signup_id FROM signup_outboundemail WHERE kind = 'reminder'"
            " AND sequence = 1"
        )
    )
    email_of = {signup_id: email_id for email_id, signup_id in reminder_of.items()}
    # A reminder not accepted when the wait ended is later than anything measured: inf.
    accepted_late, handed_late, retried = [], [], 0
    for signup_id, due in planned.items():
        email = emails.get(email_of.get(signup_id))
        accepted_late.append(email["accepted_at"] - due if email else math.inf)
        handed_late.append(email["first_call_at"] - due if email else math.inf)
        retried += bool(email) and email["calls"] > 1
    figure, handed = summary(accepted_late), summary(handed_late)
    missing = sum(math.isinf(late) for late in accepted_late)
    waited = waited_until - max(planned.values())

    def late(seconds: float) -> str:
        return ms(seconds) if math.isfinite(seconds) else f"> {waited:.0f} s"

    repaired = chains_repaired(stack)
    floor = instant.figures["lateness_s"]
    due_window = max(planned.values()) - min(planned.values())
    # What the pipeline could not send while they came due is a backlog when the last is due.
    backlog = max(sizes.timer_count - pipeline * due_window, 0.0)
    target = drain_bound(backlog, pipeline)
    met = complete and figure["max"] <= target and repaired == 0
    notes = [
        f"Benchmark 4 with the workers sending through {provider_text(stack)}: {sizes.timer_count}"
        f" signups paced over {sizes.timer_window:g} s, their first reminders due over"
        f" {due_window:.1f} s. Lateness is the time the provider accepted the reminder email"
        " (after any retry of a refused call) minus the planned next_reminder_at. Handed to the"
        f" provider (its first call arrived): p50 {late(handed['p50'])}, p99"
        f" {late(handed['p99'])} late. Accepted only after a refused call: {retried}.",
        f"Workers: the Procfile's, WORKER_CONCURRENCY={WORKER_CONCURRENCY}"
        f" ({workers}); beat sweeping every {SWEEP_INTERVAL} s (grace"
        f" {STACK_SETTINGS['SIGNUP_LOST_TASK_GRACE']} s). Reminders the sweeper re-enqueued as"
        f" lost while they were only late: {repaired}.",
        f"Target: the last accepted within 1.2 × B / C + 2 sweep intervals of its due time,"  # noqa: RUF001
        f" where C = {pipeline:.0f} emails/s is the pipeline's capacity through this provider in"
        f" this run (benchmark 8) and B = {sizes.timer_count} - C × {due_window:.1f} s ="  # noqa: RUF001
        f" {backlog:.0f} the reminders it could not send while they came due: {target:.1f} s;"
        " and no reminder re-enqueued.",
    ]
    if missing:
        notes.append(
            f"{missing} of {sizes.timer_count} reminders had not been accepted when the wait"
            f" ended, {waited:.0f} s after the last was due; they count as later than that."
        )
    if sizes.quick:
        notes.append(
            f"Quick mode: {sizes.timer_count} signups over {sizes.timer_window:g} s (the full run:"
            f" {FULL.timer_count} over {FULL.timer_window:g} s, the same rate)."
        )
    return Result(
        name="timer_accuracy_provider",
        number=10,
        title="Timer accuracy through a slow provider",
        figures={
            "lateness_s": finite(figure),
            "handed_over_lateness_s": finite(handed),
            "missing": missing,
            "accepted_after_a_refusal": retried,
            "chains_repaired_by_sweeper": repaired,
            "due_window_s": due_window,
        },
        floor={
            "what": "benchmark 4: the same with the instant backend, same run",
            "lateness_s": floor,
        },
        ratio={"p99": figure["p99"] / floor["p99"] if floor["p99"] > 0 else math.nan},
        target={
            "max_at_most_s": target,
            "capacity_emails_per_s": pipeline,
            "backlog": backlog,
            "chains_repaired": 0,
        },
        met=met,
        parameters={
            "signups": sizes.timer_count,
            "window_s": sizes.timer_window,
            "reminder_interval_s": interval,
            "population_s": round(population["seconds"], 1),
            "worker_concurrency": WORKER_CONCURRENCY,
            "provider": stack.provider_profile,
        },
        rows=[
            Row(
                f"timer: {sizes.timer_count} reminders due within {due_window:.0f} s,"
                f" {provider_label(stack)}",
                f"email accepted late p50 {late(figure['p50'])}, p99 {late(figure['p99'])},"
                f" max {late(figure['max'])}; {repaired} re-enqueued",
                f"p50 {ms(floor['p50'])}, p99 {ms(floor['p99'])} (instant backend)",
                f"{times(figure['p99'] / floor['p99'])} (p99)"
                if math.isfinite(figure["p99"]) and floor["p99"] > 0
                else "—",
                f"max ≤ 1.2 × B / C + 2 sweeps ({target:.1f} s, C = {pipeline:.0f}/s);"  # noqa: RUF001
                " 0 re-enqueued",
                met,
            )
        ],
        notes=notes,
    )
