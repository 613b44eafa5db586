"""2. The email pipeline: verification emails per second through the Procfile's workers, beside
no-op tasks through the same workers; 8. the same through the slow stand-in provider, beside the
instant backend (how much of the provider's latency the service hides). Benchmarks 7 and 11
(scale_out.py) are these with one more process of the email line than the Procfile has."""

import time
from contextlib import suppress

from bench import recording
from bench.benchmarks.common import (
    Sizes,
    accepted_emails,
    central_rate,
    count,
    fresh,
    populate,
    provider_label,
    provider_text,
    refused_calls,
    workers_label,
    workers_text,
)
from bench.report import Result, Row
from bench.stack import Stack, instant_provider, wait_until


def extra_text(extra_email: int) -> str:
    """How the email line was started, for the notes."""
    if not extra_email:
        return "as the Procfile has it"
    return f"with {extra_email} more cop{'y' if extra_email == 1 else 'ies'} of its email line"


# The share of the instant backend's rate the pipeline keeps with the slow provider.
PROVIDER_TARGET = 0.9


def email_pipeline(
    stack: Stack, sizes: Sizes, earlier: dict[str, Result], *, extra_email: int = 0
) -> Result:
    """Verification emails per second from the Procfile's workers (and `extra_email` more
    copies of its email line), beside no-op tasks through the same workers."""
    fresh(stack, worker=None)
    records = stack.broker.client(1)
    # Queued while no worker runs, no-op tasks first: the worker then works through the no-ops
    # and then the signups' verification emails (their reminders are out of reach).
    stack.manage("bench_noop", "--count", str(sizes.noop_count), "--record", "ends")
    populate(stack, sizes.email_count, prefix="e", skip_verification_emails=False)
    started = time.monotonic()
    stack.start_workers(extra_email=extra_email)
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
        name="email_pipeline" if not extra_email else "scale_out",
        number=2 if not extra_email else 7,
        title=(
            "Email pipeline: verification emails per second through the Procfile's workers"
            if not extra_email
            else f"Scale-out: the email pipeline with {extra_email} more email worker process"
        ),
        figures={
            "emails_per_second": email_rate,
            "emails_per_second_central": central_rate(sent_at),
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
            f" then the Procfile's workers were started {extra_text(extra_email)}"
            f" ({workers}). The no-op tasks go to the email queue"
            " (bench/settings.py), so that both run through the same worker. Rates run from the"
            " first to the last completion: the ledger's sent_at for the emails, the time the"
            " first and last no-op noted for the floor.",
            "The email backend accepts each message at once after rendering it to MIME"
            " (bench/mail.py): the provider is not measured (benchmark"
            f" {8 if not extra_email else 11} is this through a slow one).",
        ],
    )


def send_through_provider(stack: Stack, sizes: Sizes, *, extra_email: int, slow: bool) -> dict:
    """Start sizes.email_count signups with the workers stopped, then the workers sending
    through the stand-in provider (slow, or answering at once); measure each verification
    email's acceptance, waiting at most what 40 emails a second need plus sizes.provider_wait."""
    fresh(stack, worker=None, provider=True)
    if not slow:
        instant_provider(stack)
    populate(stack, sizes.email_count, prefix="e", skip_verification_emails=False)
    started = time.monotonic()
    stack.start_workers(extra_email=extra_email, provider=True)
    workers, label = workers_text(stack), workers_label(stack)

    def accepted() -> int:
        return len({message.email_id for message in stack.provider.accepted})

    # Measured over what was done when the wait ends: a rate does not need every email.
    with suppress(TimeoutError):
        wait_until(
            lambda: accepted() >= sizes.email_count,
            timeout=sizes.provider_wait + sizes.email_count / 40,
            what="the verification emails",
            interval=0.2,
        )
    waited = time.monotonic() - started
    stack.stop_workers(kill=True)
    emails = accepted_emails(stack)
    moments = [email["accepted_at"] for email in emails.values()]
    return {
        "emails_per_second": central_rate(moments),
        "emails_per_second_first_to_last": (len(moments) - 1) / (max(moments) - min(moments)),
        "emails_accepted": len(emails),
        "emails_started": sizes.email_count,
        "emails_accepted_after_a_refusal": sum(email["calls"] > 1 for email in emails.values()),
        "calls_refused": refused_calls(stack),
        "seconds_waited": round(waited, 1),
        "workers": workers,
        "label": label,
    }


def email_pipeline_provider(
    stack: Stack, sizes: Sizes, earlier: dict[str, Result], *, extra_email: int = 0
) -> Result:
    """Benchmark 2 (or 7) sending through the slow stand-in provider, beside the instant
    backend's rate from the same run, and the stand-in answering at once."""
    base = "email_pipeline" if not extra_email else "scale_out"
    instant = earlier.get(base) or email_pipeline(stack, sizes, earlier, extra_email=extra_email)
    instant_rate = instant.figures["emails_per_second_central"]
    # The stand-in answering at once separates anymail's HTTP call from the latency.
    at_once = (
        send_through_provider(stack, sizes, extra_email=extra_email, slow=False)
        if not extra_email
        else None
    )
    slow = send_through_provider(stack, sizes, extra_email=extra_email, slow=True)
    ratio = slow["emails_per_second"] / instant_rate
    met = ratio >= PROVIDER_TARGET if not extra_email else None
    number = 8 if not extra_email else 11
    notes = [
        f"Benchmark {2 if not extra_email else 7} (without its no-op tasks) sending through"
        f" {provider_text(stack)}. Workers: the Procfile's, {extra_text(extra_email)}"
        f" ({slow['workers']}).",
        "Each verification email counts once, when the provider accepted it (a call refused"
        " with 429 or 500 is retried by the service and counts when the retry is accepted):"
        f" {slow['emails_accepted']} of {sizes.email_count} accepted,"
        f" {slow['emails_accepted_after_a_refusal']} after a refusal"
        f" ({slow['calls_refused']} calls refused). The rate is over the middle 90% of the"
        " acceptances (a slow start or a last retry does not bend it), and so is the instant"
        f" backend's it is compared with ({instant_rate:.0f} emails/s from benchmark"
        f" {2 if not extra_email else 7}'s sent_at).",
    ]
    if at_once is not None:
        notes.append(
            "The stand-in answering at once (no latency, no errors):"
            f" {at_once['emails_per_second']:.0f} emails/s, anymail's HTTP call without the"
            " provider's latency."
        )
    if slow["emails_accepted"] < sizes.email_count:
        notes.append(
            f"Only {slow['emails_accepted']} of {sizes.email_count} were accepted within the"
            f" {slow['seconds_waited']:.0f} s the benchmark waits; the rate is over those."
        )
    return Result(
        name="email_pipeline_provider" if not extra_email else "scale_out_provider",
        number=number,
        title=(
            "Email pipeline through a slow provider: how much of its latency the service hides"
            if not extra_email
            else f"Scale-out through a slow provider: {extra_email} more email worker process"
        ),
        figures={"slow_provider": slow, "instant_provider": at_once},
        floor={
            "what": f"benchmark {instant.number}: the instant backend, same workers, same run",
            "emails_per_second_central": instant_rate,
        },
        ratio={"throughput": ratio},
        target={"throughput_ratio_at_least": PROVIDER_TARGET} if not extra_email else {},
        met=met,
        parameters={
            "emails": sizes.email_count,
            "workers": slow["workers"],
            "provider": stack.provider_profile,
        },
        rows=[
            Row(
                f"email pipeline, {slow['label']}, {provider_label(stack)}",
                f"{slow['emails_per_second']:.0f} emails/s"
                + (
                    f" ({slow['emails_per_second'] / at_once['emails_per_second']:.0%} of the"
                    f" stand-in answering at once, {at_once['emails_per_second']:.0f}/s)"
                    if at_once
                    else ""
                ),
                f"{instant_rate:.0f} emails/s (instant backend)",
                f"{ratio:.0%} of instant",
                f"≥ {PROVIDER_TARGET:.0%} of instant" if not extra_email else "—",
                met,
            )
        ],
        notes=notes,
    )
