"""12. Verify during a send: how long a verify waits while the same signup's reminder is at the
slow stand-in provider, beside verifies with nothing in flight for their signup."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parseaddr

from bench.benchmarks.common import (
    Sizes,
    fresh,
    ms,
    populate,
    provider_label,
    provider_text,
    summary,
    times,
    workers_text,
)
from bench.benchmarks.timer import populate_due_together
from bench.report import Result, Row
from bench.stack import Stack, wait_until
from harness.provider import Request

# Seconds between the last start and the first reminder falling due.
LEAD = 2.0
REMINDER_TAG = "signup-reminder"


def _verify(stack: Stack, token: str, source: str) -> tuple[float, float, int, dict]:
    started = time.time()
    status, body = stack.post("/api/signups/verify", {"token": token, "source": source})
    return started, time.time(), status, body


def verify_during_send(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    fresh(stack, provider=True)
    workers = workers_text(stack)
    total = sizes.during_send_count
    tokens_file = stack.tmp / "during-send.json"
    _, planned, interval = populate_due_together(
        stack,
        total,
        prefix="d",
        window=sizes.during_send_window,
        lead=LEAD,
        tokens_file=tokens_file,
    )
    tokens = dict(json.loads(tokens_file.read_text()))
    signup_at = {address: signup_id for signup_id, address in stack.query(
        "SELECT id, email FROM signup_signup"
    )}  # fmt: skip

    # Each verify is made the moment the signup's reminder reaches the provider, from a thread
    # of its own, while the provider is still deciding on that call.
    measured: dict[int, dict] = {}
    seen: set[int] = set()
    lock = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=16)

    def verify(signup_id: int, send_started: float) -> None:
        started, answered, status, body = _verify(stack, tokens[signup_id], "reminder-1")
        with lock:
            measured[signup_id] = {
                "send_started": send_started,
                "started": started,
                "answered": answered,
                "ok": status == 200 and body.get("result") == "done",
            }

    def on_request(request: Request) -> None:
        signup_id = signup_at.get(parseaddr(request.to)[1].lower())
        if request.tag != REMINDER_TAG or signup_id is None:
            return
        with lock:
            if signup_id in seen:
                return  # a retry of a refused call: the verify was made at the first
            seen.add(signup_id)
        pool.submit(verify, signup_id, request.received_at)

    stack.provider.on_request = on_request
    try:
        wait_until(
            lambda: len(measured) >= total,
            timeout=max(planned.values()) - time.time() + sizes.provider_wait,
            what="the verifies during a send",
            interval=0.1,
        )
    except TimeoutError:
        pass  # measured over those whose reminder reached the provider
    finally:
        stack.provider.on_request = None
        pool.shutdown(wait=True)

    # When the provider decided on each of those reminder calls: a verify that started before
    # then was made while the send was in flight.
    decided = {
        (parseaddr(attempt.to)[1].lower(), attempt.received_at): attempt.decided_at
        for attempt in stack.provider.attempts
        if attempt.tag == REMINDER_TAG
    }
    address_of = {signup_id: address for address, signup_id in signup_at.items()}
    waits, lags, left, overlapped = [], [], [], 0
    for signup_id, verify in measured.items():
        waits.append(verify["answered"] - verify["started"])
        lags.append(verify["started"] - verify["send_started"])
        send_decided = decided[(address_of[signup_id], verify["send_started"])]
        left.append(send_decided - verify["started"])
        overlapped += verify["started"] < send_decided
    failed = sum(not verify["ok"] for verify in measured.values())

    # The floor: as many other signups verified one at a time, none of them being sent to.
    floor_tokens = stack.tmp / "no-send.json"
    populate(stack, total, prefix="n", tokens_file=floor_tokens)
    floor_waits = []
    for _, token in json.loads(floor_tokens.read_text()):
        started, answered, status, body = _verify(stack, token, "verification")
        assert status == 200 and body["result"] == "done", (status, body)
        floor_waits.append(answered - started)

    figure, floor, remaining = summary(waits), summary(floor_waits), summary(left)
    notes = [
        f"{total} signups paced over {sizes.during_send_window:g} s with their first reminders"
        f" due over the same span, the workers sending through {provider_text(stack)}."
        " The moment a signup's reminder call reached the provider, that signup was verified"
        " through `POST /api/signups/verify` from a thread of its own, and the call timed"
        f" until it answered. Verifies made: {len(measured)}, started p50"
        f" {ms(summary(lags)['p50'])} after the call arrived, {overlapped} of them before the"
        " provider had decided on it (the provider had p50"
        f" {ms(remaining['p50'])}, p99 {ms(remaining['p99'])} left to go); verifies that did not"
        f" answer 200 done: {failed}.",
        "Floor: as many other signups verified one at a time with no send in flight for"
        f" them. Workers: the Procfile's ({workers}).",
    ]
    if len(measured) < total:
        notes.append(f"Only {len(measured)} of {total} reminders reached the provider in time.")
    return Result(
        name="verify_during_send",
        number=12,
        title="Verify while the same signup's reminder is at a slow provider",
        figures={
            "verify_answer_s": figure,
            "verify_started_after_send_s": summary(lags),
            "provider_time_left_at_verify_s": remaining,
            "verifies": len(measured),
            "verifies_while_in_flight": overlapped,
            "verifies_not_done": failed,
        },
        floor={
            "what": "verifies with no send in flight for their signup",
            "verify_answer_s": floor,
        },
        ratio={"p99": figure["p99"] / floor["p99"]},
        target={},
        met=None,
        parameters={
            "signups": total,
            "window_s": sizes.during_send_window,
            "reminder_interval_s": interval,
            "workers": workers,
            "provider": stack.provider_profile,
        },
        rows=[
            Row(
                f"verify while its reminder is at the {provider_label(stack)}",
                f"answered p50 {ms(figure['p50'])}, p99 {ms(figure['p99'])}",
                f"p50 {ms(floor['p50'])}, p99 {ms(floor['p99'])} (nothing in flight)",
                f"{times(figure['p99'] / floor['p99'])} (p99)",
                "—",
                None,
            )
        ],
        notes=notes,
    )
