"""Turn the outcome log of `make faults` ($FAULT_REPORT, one JSON object per test run) into
the Markdown table docs/RELIABILITY.md quotes: one row per fault, summed over its runs."""

import json
import sys
from collections import defaultdict
from pathlib import Path

# Columns of the table: (heading, outcome key, how runs combine).
COLUMNS = [
    ("runs", None, "count"),
    ("signups", "signups", "sum"),
    ("emails expected", "emails_expected", "sum"),
    ("emails received", "emails_received", "sum"),
    ("lost", "lost", "sum"),
    ("duplicated", "duplicated", "sum"),
    ("chains restored", "chains_restored", "sum"),
    ("time to restore, max (s)", "seconds_to_restore", "max"),
]


def table(records: list[dict]) -> str:
    by_fault: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_fault[record.get("fault", record["test"])].append(record)
    lines = [
        "| fault | " + " | ".join(heading for heading, _, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for fault, runs in by_fault.items():
        cells = []
        for _, key, combine in COLUMNS:
            values = [run[key] for run in runs if key is not None and run.get(key) is not None]
            if combine == "count":
                cells.append(str(len(runs)))
            elif not values:
                cells.append("-")
            elif combine == "sum":
                cells.append(str(sum(values)))
            else:
                cells.append(f"{max(values):.1f}")
        lines.append(f"| {fault} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(path: str) -> None:
    log = Path(path)
    if not log.exists():
        sys.exit(f"no outcomes recorded at {path}")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    print(table(records))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "var/faults.jsonl")
