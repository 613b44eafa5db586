"""Where the time of a submit and of an email delivery goes: `python -m bench.profile`.

Starts a fresh database and a private Redis (no web, no worker), runs `manage.py
bench_profile` against them and prints the breakdown per request and per email.
"""

import argparse
import tempfile
from pathlib import Path

from bench.benchmarks.common import STACK_SETTINGS
from bench.stack import running_stack

ROWS = [
    ("floor", "POST /bench/insert (the floor: one INSERT)"),
    ("submit", "POST /api/signups"),
    ("email", "one verification email (the deliver_email task's body)"),
]
PARTS = [
    ("sql_ms", "SQL statements"),
    ("commit_ms", "COMMIT"),
    ("health_check_ms", "health check"),
    ("publish_ms", "broker publish"),
    ("render_ms", "rendering"),
    ("backend_ms", "email backend (MIME)"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="signup-profile-") as tmp,
        running_stack(Path(tmp), STACK_SETTINGS) as stack,
    ):
        results = stack.manage("bench_profile", "--count", str(args.count))
    header = ["", "ms each", "statements", *(label for _, label in PARTS), "the rest"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key, label in ROWS:
        result = results[key]
        parts = [result[name] for name, _ in PARTS]
        cells = [label, f"{result['ms']:.2f}", f"{result['statements']:.0f}"]
        cells += [f"{part:.2f}" if part else "-" for part in parts]
        cells.append(f"{result['ms'] - sum(parts):.2f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
