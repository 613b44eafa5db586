"""15. A provider outage: the stand-in provider answers 503 to every call for a while, signups
keep arriving through the API meanwhile, then it recovers. Every email is sent exactly once
and none is dead-lettered; the backlog drains at the pipeline's capacity; the API answers as
fast as before the outage."""

import math
import threading
import time

from bench.benchmarks.common import (
    FULL,
    Sizes,
    accepted_emails,
    capacity,
    central_rate,
    count,
    drain,
    fresh,
    ms,
    percentile,
    provider_text,
    workers_text,
)
from bench.report import Result, Row
from bench.stack import Stack
from harness.provider import Answer

# Signups a second through the API, before, during and after the outage.
ARRIVALS_PER_S = 20
# The share of the pipeline's capacity the backlog drains at, at least.
DRAIN_SHARE = 0.9
# How much slower the API may answer during the outage than before it (p99).
API_SLOWDOWN = 1.5


class Arrivals:
    """Signups through POST /api/signups at a steady rate from `threads` client threads (each
    request on its own connection, as clients come), each answer timed."""

    def __init__(self, stack: Stack, rate: float, *, threads: int = 1, prefix: str = "o"):
        self.stack, self.rate, self.prefix = stack, rate, prefix
        self.answers: list[tuple[float, float, int]] = []  # (sent at, seconds, status)
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(first, threads), daemon=True)
            for first in range(threads)
        ]

    def start(self) -> None:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def is_alive(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def _run(self, number: int, step: int) -> None:
        while not self.stopping.is_set():
            wait = self.started + number / self.rate - time.monotonic()
            if wait > 0 and self.stopping.wait(wait):
                break
            name = f"{self.prefix}{number}"
            body = {"username": name, "email": f"{name}@example.com", "first_name": "Bench"}
            sent_at, begun = time.time(), time.perf_counter()
            status, _ = self.stack.post("/api/signups", body)
            self.answers.append((sent_at, time.perf_counter() - begun, status))
            number += step

    def latencies(self, start: float, end: float) -> list[float]:
        return [seconds for at, seconds, _ in self.answers if start <= at < end]


def outage(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    pipeline = capacity(stack, sizes, earlier, provider=True)
    fresh(stack, provider=True)
    workers = workers_text(stack)
    arrivals = Arrivals(stack, ARRIVALS_PER_S)
    arrivals.start()
    time.sleep(sizes.outage_before)
    down_at = time.time()
    stack.provider.answer(Answer.UNAVAILABLE)
    try:
        time.sleep(sizes.outage_seconds)
    finally:
        stack.provider.answer(Answer.ACCEPT)
        up_at = time.time()
        arrivals.stopping.set()
        arrivals.join()
    made = sum(status == 201 for _, _, status in arrivals.answers)
    refused = len(arrivals.answers) - made

    backlog, complete = drain(stack, made, pipeline, what="the emails held in the outage")
    emails = accepted_emails(stack)
    copies = len(stack.provider.accepted) - len(emails)
    dead_letters = count(stack, "SELECT count(*) FROM signup_outboundemail WHERE status = 'failed'")
    after = sorted(e["accepted_at"] for e in emails.values() if e["accepted_at"] >= up_at)
    drain_rate = central_rate(after)
    first_after = after[0] - up_at if after else math.inf
    drained_in = after[-1] - up_at if after else math.inf
    calls_in_outage = sum(
        down_at <= attempt.received_at < up_at for attempt in stack.provider.attempts
    )
    before = arrivals.latencies(0, down_at)
    during = arrivals.latencies(down_at, up_at)
    before_p99, during_p99 = percentile(before, 99), percentile(during, 99)
    slowdown = during_p99 / before_p99
    met = (
        complete
        and copies == 0
        and dead_letters == 0
        and drain_rate >= DRAIN_SHARE * pipeline
        and slowdown <= API_SLOWDOWN
    )
    notes = [
        f"Signups through `POST /api/signups` at {ARRIVALS_PER_S} a second, one connection"
        f" each, for {sizes.outage_before:g} s, then through an outage of"
        f" {sizes.outage_seconds:g} s in which {provider_text(stack)} answered every call 503,"
        f" then it recovered and the arrivals stopped: {made} signups ({refused} answers other"
        f" than 201). Workers: the Procfile's ({workers}), beat sweeping as in the other"
        " benchmarks.",
        f"During the outage the provider was called {calls_in_outage} times (the service held"
        f" the emails after SIGNUP_EMAIL_OUTAGE_AFTER failures and tried again every"
        f" SIGNUP_EMAIL_OUTAGE_PROBE s). At its end {backlog} verification emails were held;"
        f" the first was accepted {ms(first_after)} after the recovery and the last"
        f" {ms(drained_in)} after it, at {drain_rate:.0f} emails/s (the middle 90% of the"
        f" acceptances after the recovery) against the pipeline's capacity C ="
        f" {pipeline:.0f} emails/s through this provider in this run (benchmark 8).",
        f"Accepted: {len(emails)} of {made} emails, {copies} of them twice; dead letters:"
        f" {dead_letters}. API answers: p99 {ms(before_p99)} before the outage, p99"
        f" {ms(during_p99)} during it.",
        "Each signup here has one email (its reminders are an hour away): the order of one"
        " signup's emails is not measured by this benchmark.",
    ]
    if not complete:
        notes.append(f"{made - len(emails)} emails were not accepted when the wait ended.")
    if sizes.quick:
        notes.append(
            f"Quick mode: an outage of {sizes.outage_seconds:g} s (full run:"
            f" {FULL.outage_seconds:g} s)."
        )
    return Result(
        name="outage",
        number=15,
        title="A provider outage while signups keep coming",
        figures={
            "signups": made,
            "held_at_recovery": backlog,
            "accepted": len(emails),
            "accepted_twice": copies,
            "dead_letters": dead_letters,
            "provider_calls_during_outage": calls_in_outage,
            "first_accepted_after_recovery_s": first_after,
            "drained_after_recovery_s": drained_in,
            "drain_emails_per_s": drain_rate,
            "api_p99_before_s": before_p99,
            "api_p99_during_s": during_p99,
        },
        floor={
            "what": "benchmark 8's capacity through the same provider",
            "emails_per_s": pipeline,
        },
        ratio={"drain": drain_rate / pipeline, "api_p99": slowdown},
        target={
            "drain_share_at_least": DRAIN_SHARE,
            "api_p99_slowdown_at_most": API_SLOWDOWN,
            "accepted_twice": 0,
            "dead_letters": 0,
        },
        met=met,
        parameters={
            "outage_s": sizes.outage_seconds,
            "before_s": sizes.outage_before,
            "arrivals_per_s": ARRIVALS_PER_S,
            "provider": stack.provider_profile,
        },
        rows=[
            Row(
                f"outage: provider 503 for {sizes.outage_seconds:g} s, {ARRIVALS_PER_S} signups/s",
                f"{len(emails)} of {made} sent, {copies} twice, {dead_letters} dead letters;"
                f" {backlog} held drained at {drain_rate:.0f}/s; API p99 {ms(during_p99)}"
                f" (before: {ms(before_p99)})",
                f"C = {pipeline:.0f} emails/s",
                f"{drain_rate / pipeline:.0%} of C; API {slowdown:.2f}× (p99)",  # noqa: RUF001
                f"all once, none dead; drain ≥ {DRAIN_SHARE:.0%} of C; API ≤"
                f" {API_SLOWDOWN:g}× (p99)",  # noqa: RUF001
                met,
            )
        ],
        notes=notes,
    )
