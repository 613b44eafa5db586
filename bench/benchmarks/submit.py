"""1. Signup submit through the API: POST /api/signups under wrk, beside a bare view that parses
the same body and inserts one row."""

import json
import os
import secrets
import subprocess

from bench.benchmarks.common import Sizes, count, fresh
from bench.report import Result, Row
from bench.stack import ROOT, WEB_WORKERS, Stack

WRK_SCRIPT = ROOT / "bench" / "wrk" / "post_signup.lua"


def _wrk(stack: Stack, path: str, *, seconds: int, connections: int, prefix: str) -> dict:
    command = [
        "wrk",
        "--threads",
        "1",
        "--connections",
        str(connections),
        "--duration",
        f"{seconds}s",
        "--timeout",
        "10s",
        "--script",
        str(WRK_SCRIPT),
        f"{stack.url}{path}",
    ]
    stack.commands.setdefault(f"wrk {path}", " ".join(command).replace(str(ROOT) + "/", ""))
    env = {**os.environ, "BENCH_PREFIX": prefix, "BENCH_API_KEY": stack.api_key}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{done.stdout}\n{done.stderr}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT "))
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def submit(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    # No worker runs: the workers of a real deployment are on other machines, and here they
    # would take CPU from the web. The tasks the signups enqueue wait in Redis.
    fresh(stack, worker=None)
    run = secrets.token_hex(3)
    sides = {"floor": "/bench/insert", "api": "/api/signups"}
    measured = {}
    for side, path in sides.items():
        options = {"connections": sizes.submit_connections}
        _wrk(stack, path, seconds=sizes.submit_warmup, prefix=f"w{side[0]}{run}", **options)
        measured[side] = _wrk(
            stack, path, seconds=sizes.submit_seconds, prefix=f"m{side[0]}{run}", **options
        )
    api, floor = measured["api"], measured["floor"]
    ratio = api["rps"] / floor["rps"]
    errors = {side: sum(result["errors"].values()) for side, result in measured.items()}
    # Every answered request of the measured API run is a signup in the database.
    signups = count(
        stack, "SELECT count(*) FROM signup_signup WHERE username LIKE %s", [f"ma{run}%"]
    )
    met = ratio >= 0.5 and not any(errors.values())

    def figure(result: dict) -> str:
        latency = result["latency_us"]
        return (
            f"{result['rps']:.0f} req/s; p50 {latency['p50'] / 1000:.1f} ms,"
            f" p99 {latency['p99'] / 1000:.1f} ms"
        )

    notes = [
        f"wrk, 1 thread, {sizes.submit_connections} connections, {sizes.submit_seconds} s per side"
        f" after a {sizes.submit_warmup} s warm-up, unique usernames (bench/wrk/post_signup.lua);"
        f" gunicorn --workers {WEB_WORKERS} (sync); no Celery worker running (the enqueued tasks"
        " wait in Redis).",
        f"Requests that failed: API {errors['api']}, floor {errors['floor']}.",
    ]
    return Result(
        name="submit",
        number=1,
        title="Signup submit through the API",
        figures={
            "rps": api["rps"],
            "latency_ms": {k: v / 1000 for k, v in api["latency_us"].items()},
            "requests": api["requests"],
            "errors": api["errors"],
            "signups_created": signups,
        },
        floor={
            "what": "POST /bench/insert: parse the same JSON body, insert one row",
            "rps": floor["rps"],
            "latency_ms": {k: v / 1000 for k, v in floor["latency_us"].items()},
            "requests": floor["requests"],
            "errors": floor["errors"],
        },
        ratio={"throughput": ratio},
        target={"throughput_ratio_at_least": 0.5},
        met=met,
        parameters={
            "tool": "wrk",
            "threads": 1,
            "connections": sizes.submit_connections,
            "duration_s": sizes.submit_seconds,
            "warmup_s": sizes.submit_warmup,
            "gunicorn_workers": WEB_WORKERS,
        },
        rows=[
            Row(
                "submit: POST /api/signups",
                figure(api),
                f"{figure(floor)} (bare view, one INSERT)",
                f"{ratio:.0%} of floor",
                "≥ 50% of floor",
                met,
            )
        ],
        notes=notes,
    )
