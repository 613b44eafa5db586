"""16. A burst: many signups through the API in a few minutes, more than the pipeline sends in
that time. Every verification email goes out, the last within the drain the pipeline's capacity
allows, the workers' memory stays flat, and nothing that only waited is repaired."""

import time

from bench.benchmarks.common import (
    FULL,
    Sizes,
    accepted_emails,
    capacity,
    central_rate,
    count,
    drain,
    drain_bound,
    fresh,
    ms,
    percentile,
    provider_label,
    provider_text,
    workers_text,
)
from bench.benchmarks.outage import Arrivals
from bench.report import Result, Row
from bench.stack import Stack

# A worker's memory may grow this much over the burst and still count as flat.
MEMORY_GROWTH = 0.10
# The kinds of timeline event a sweeper repair leaves.
REPAIRS = ("contact_repaired", "chain_repaired", "email_redriven", "webhook_redriven")


def burst(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    pipeline = capacity(stack, sizes, earlier, provider=True)
    fresh(stack, provider=True)
    workers = workers_text(stack)
    rate = sizes.burst_count / sizes.burst_seconds
    memory_before = peak = stack.workers_memory()["rss_total"]
    arrivals = Arrivals(stack, rate, threads=8, prefix="b")
    arrivals.start()
    started = time.time()
    while arrivals.is_alive() and time.time() - started < sizes.burst_seconds:
        time.sleep(1)
        peak = max(peak, stack.workers_memory()["rss_total"])
    arrivals.stopping.set()
    arrivals.join()
    last_signup = max(at for at, _, _ in arrivals.answers)
    made = sum(status == 201 for _, _, status in arrivals.answers)

    backlog, complete = drain(stack, made, pipeline, what="the burst's verification emails")
    bound = drain_bound(backlog, pipeline)
    emails = accepted_emails(stack)
    last_out = max(e["accepted_at"] for e in emails.values()) - last_signup
    # Which step set the pace once the arrivals stopped: the first contacts (the `worker`
    # process) or the sends (the email workers).
    contacted = stack.query(
        "SELECT extract(epoch FROM contacted_at) FROM signup_signup WHERE contacted_at >="
        " to_timestamp(%s)",
        (last_signup,),
    )
    contact_rate = central_rate([float(at) for (at,) in contacted])
    send_rate = central_rate(
        [e["accepted_at"] for e in emails.values() if e["accepted_at"] >= last_signup]
    )
    memory_after = stack.workers_memory()["rss_total"]
    growth = (memory_after - memory_before) / memory_before
    repairs = count(
        stack,
        "SELECT count(*) FROM signup_signupevent WHERE kind = ANY(%s)"
        " AND (kind <> 'email_redriven' OR detail LIKE %s)",
        (list(REPAIRS), "%re-enqueued by the sweeper%"),
    )
    latency = [seconds for _, seconds, _ in arrivals.answers]
    met = complete and last_out <= bound and growth <= MEMORY_GROWTH and repairs == 0
    achieved = made / sizes.burst_seconds
    notes = [
        f"Signups through `POST /api/signups` for {sizes.burst_seconds:g} s, paced for"
        f" {sizes.burst_count} ({rate:.0f} a second) from 8 client threads, one connection per"
        f" request: {made} were made ({achieved:.0f} a second: the clients, the web, the workers"
        f" and the database share the machine's cores). The workers (the"
        f" Procfile's: {workers}) sent through {provider_text(stack)}. API answers: p50"
        f" {ms(percentile(latency, 50))}, p99 {ms(percentile(latency, 99))}.",
        f"When the last signup was answered, {backlog} verification emails were still to go."
        f" The last left {ms(last_out)} after it; the bound is 1.2 × backlog / C + 2 sweep"  # noqa: RUF001
        f" intervals = {bound:.1f} s, with C = {pipeline:.0f} emails/s, the pipeline's capacity"
        " through this provider in this run (benchmark 8). After the last signup, first contacts"
        f" were made at {contact_rate:.0f} a second (the `worker` process) and emails accepted"
        f" at {send_rate:.0f} a second.",
        "Worker memory (the RSS of every worker process, added up): before the burst"
        f" {memory_before / 2**20:.0f} MB, at its peak {peak / 2**20:.0f} MB, after the"
        f" drain {memory_after / 2**20:.0f} MB. Repairs by the sweeper (first contacts,"
        f" chains, emails, webhooks): {repairs}.",
    ]
    if not complete:
        notes.append(f"{made - len(emails)} emails were not accepted when the wait ended.")
    if sizes.quick:
        notes.append(
            f"Quick mode: {sizes.burst_count} signups in {sizes.burst_seconds:g} s (full run:"
            f" {FULL.burst_count} in {FULL.burst_seconds:g} s)."
        )
    return Result(
        name="burst",
        number=16,
        title="A burst of signups through the API",
        figures={
            "signups": made,
            "backlog_at_last_signup": backlog,
            "last_email_after_last_signup_s": last_out,
            "accepted": len(emails),
            "worker_memory_before": memory_before,
            "worker_memory_peak": peak,
            "worker_memory_after": memory_after,
            "worker_memory_growth": growth,
            "repairs": repairs,
            "api_p99_s": percentile(latency, 99),
            "contacts_per_s_after_last_signup": contact_rate,
            "emails_per_s_after_last_signup": send_rate,
        },
        floor={
            "what": "benchmark 8's capacity through the same provider",
            "emails_per_s": pipeline,
        },
        ratio={"last_email": last_out / bound},
        target={
            "last_email_at_most_s": bound,
            "worker_memory_growth_at_most": MEMORY_GROWTH,
            "repairs": 0,
        },
        met=met,
        parameters={
            "signups": sizes.burst_count,
            "seconds": sizes.burst_seconds,
            "provider": stack.provider_profile,
        },
        rows=[
            Row(
                f"burst: {made} signups in {sizes.burst_seconds:g} s through the API,"
                f" {provider_label(stack)}",
                f"all {len(emails)} out, the last {ms(last_out)} after the last signup;"
                f" memory {growth:+.0%}; {repairs} repairs",
                f"C = {pipeline:.0f} emails/s; backlog {backlog}",
                f"{last_out / bound:.2f} of the bound",
                f"≤ 1.2 × backlog / C + 2 sweeps ({bound:.1f} s); memory ≤"  # noqa: RUF001
                f" +{MEMORY_GROWTH:.0%}; 0 repairs",
                met,
            )
        ],
        notes=notes,
    )
