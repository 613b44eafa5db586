"""3. Verify to welcome email: from the verify call to the welcome email accepted, one at a time,
beside a view that enqueues a no-op task."""

import json
import time

from bench import recording
from bench.benchmarks.common import (
    Sizes,
    fresh,
    ms,
    populate,
    summary,
    times,
    workers_text,
)
from bench.report import Result, Row
from bench.stack import Stack

VERIFY_WARMUP = 5


def _pending_signups(stack: Stack, total: int) -> list[tuple[int, str]]:
    """Start `total` signups (their verification emails recorded as sent); return their ids
    and verification tokens."""
    tokens_file = stack.tmp / "tokens.json"
    populate(stack, total, prefix="v", tokens_file=tokens_file)
    return json.loads(tokens_file.read_text())


def _verify(stack: Stack, token: str) -> tuple[float, float]:
    """Verify a signup through the API; return when the call started and when it answered."""
    started = time.time()
    status, body = stack.post("/api/signups/verify", {"token": token, "source": "verification"})
    answered_at = time.time()
    assert status == 200 and body["result"] == "done", (status, body)
    return started, answered_at


def verify_to_welcome(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    fresh(stack)
    records = stack.broker.client(1)
    total = sizes.verify_count + VERIFY_WARMUP
    signups = _pending_signups(stack, total)

    welcome, answered, verify_started = [], [], {}
    for index, (signup_id, token) in enumerate(signups):
        started, answered_at = _verify(stack, token)
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
            "workers": workers_text(stack),
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
