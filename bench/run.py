"""Run the benchmark suite: `python -m bench.run [--quick] [--only NAME,...]`.

Starts the stack (bench/stack.py), runs each benchmark (bench/benchmarks/), writes
bench/results/[quick/]<name>.json as each one finishes, prints the table and regenerates
docs/PERFORMANCE.md (bench/report.py).
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.benchmarks import BENCHMARKS
from bench.benchmarks.common import FULL, QUICK, STACK_SETTINGS
from bench.machine import machine_info
from bench.stack import ROOT, provider_profile, running_stack


def _stop_on_sigterm(signum, frame):
    # SystemExit unwinds through every `finally`: the processes stop, the database is dropped.
    sys.exit(128 + signum)


def _keep_logs(tmp: Path) -> Path:
    """Copy the processes' logs out of the run's temporary directory, which goes at exit."""
    logs = ROOT / "var" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    for log in tmp.glob("*.log"):
        shutil.copy(log, logs / log.name)
    return logs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes, about 6 minutes")
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)}",
    )
    provider = parser.add_argument_group(
        "the slow provider", "the stand-in Postmark of the *_provider benchmarks"
    )
    provider.add_argument("--provider-median-ms", type=float, default=150)
    provider.add_argument("--provider-p99-ms", type=float, default=600)
    provider.add_argument(
        "--provider-error-rate", type=float, default=0.01, help="share of calls answered 429/500"
    )
    provider.add_argument(
        "--provider-seed", type=int, default=1, help="the same seed draws the same latencies"
    )
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(selected) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install -y wrk (make bench does it)")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    signal.signal(signal.SIGHUP, _stop_on_sigterm)

    sizes = QUICK if args.quick else FULL
    profile = provider_profile(
        median_ms=args.provider_median_ms,
        p99_ms=args.provider_p99_ms,
        error_rate=args.provider_error_rate,
        seed=args.provider_seed,
    )
    mode = "quick" if args.quick else "full"
    run_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    started = time.monotonic()
    failed = []
    with (
        tempfile.TemporaryDirectory(prefix="signup-bench-") as tmp,
        running_stack(Path(tmp), STACK_SETTINGS, profile) as stack,
    ):
        database = stack.database_url.rsplit("/", 1)[1]
        print(f"bench ({mode}): database {database}, redis on port {stack.broker.port}")
        stack.start_web()
        stack.start_beat()
        machine = machine_info(stack)
        results: dict[str, report.Result] = {}
        for name in selected:
            print(f"- {name} ...", flush=True)
            begun = time.monotonic()
            try:
                result = BENCHMARKS[name](stack, sizes, results)
            except Exception:
                traceback.print_exc()
                logs = _keep_logs(Path(tmp))
                print(f"  {name} failed; the processes' logs are in {logs}", file=sys.stderr)
                failed.append(name)
                continue
            result.seconds = time.monotonic() - begun
            results[name] = result
            machine["load_average_at_end"] = [round(load, 2) for load in os.getloadavg()]
            document = result.to_json(
                mode=mode, machine=machine, commands=dict(stack.commands), run_at=run_at
            )
            path = report.write_result(document, quick=args.quick)
            for row in result.rows:
                print(f"  {row.label}: {row.figure} | floor {row.floor} | {row.ratio}"
                      f" | target {row.target} | met: {report.met_text(row.met)}")  # fmt: skip
            print(f"  ({result.seconds:.0f} s) -> {path.relative_to(ROOT)}")

    print()
    report.print_table(report.load_results(quick=args.quick))
    path = report.write_performance_md()
    print(f"\n{path} written; the whole run took {time.monotonic() - started:.0f} s.")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
