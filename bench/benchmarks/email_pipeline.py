"""2. The email pipeline: verification emails per second through the Procfile's workers, beside
no-op tasks through the same workers. Benchmark 7 (scale_out.py) is this with
WORKER_CONCURRENCY=2."""

import time

from bench import recording
from bench.benchmarks.common import (
    Sizes,
    count,
    fresh,
    populate,
    workers_label,
    workers_text,
)
from bench.report import Result, Row
from bench.stack import Stack, wait_until


def email_pipeline(
    stack: Stack, sizes: Sizes, earlier: dict[str, Result], *, processes: int = 1
) -> Result:
    """Verification emails per second from the workers with WORKER_CONCURRENCY=`processes`,
    beside no-op tasks through the same workers."""
    fresh(stack, worker=None)
    records = stack.broker.client(1)
    # Queued while no worker runs, no-op tasks first: the worker then works through the no-ops
    # and then the signups' verification emails (their reminders are out of reach).
    stack.manage("bench_noop", "--count", str(sizes.noop_count), "--record", "ends")
    populate(stack, sizes.email_count, prefix="e", skip_verification_emails=False)
    started = time.monotonic()
    stack.start_workers(concurrency=processes)
    workers, label = workers_text(stack), workers_label(stack)
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
    sent_at = [
        float(sent)
        for (sent,) in stack.query(
            "SELECT extract(epoch FROM sent_at) FROM signup_outboundemail"
            " WHERE kind = 'verification' AND status = 'sent'"
        )
    ]
    email_seconds = max(sent_at) - min(sent_at)
    email_rate = (len(sent_at) - 1) / email_seconds
    ratio = email_rate / noop_rate
    met = ratio >= 0.5
    stack.stop_workers()
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
            "emails": len(sent_at),
            "seconds_first_to_last_sent": email_seconds,
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
            "workers": workers,
            "seconds_until_all_done": round(drained, 1),
        },
        rows=[
            Row(
                f"email pipeline, {label}",
                f"{email_rate:.0f} emails/s",
                f"{noop_rate:.0f} no-op tasks/s",
                f"{ratio:.0%} of floor",
                "≥ 50% of floor",
                met,
            )
        ],
        notes=[
            f"{sizes.email_count} signups were started with the workers stopped (so their"
            f" verification emails waited in Redis), behind {sizes.noop_count} no-op tasks;"
            f" then the Procfile's workers were started with WORKER_CONCURRENCY={processes}"
            f" ({workers}). Rates run from the first to the last completion: the ledger's"
            " sent_at for the emails, the time the first and last no-op noted for the floor.",
            "The email backend accepts each message at once after rendering it to MIME"
            " (bench/mail.py): the provider is not measured.",
        ],
    )
