"""Turn the outcome log of `make faults` ($FAULT_REPORT, one JSON object per test run) into
the Markdown table docs/RELIABILITY.md quotes: one row per fault, summed over its runs."""

import json
import sys
from collections import defaultdict
from pathlib import Path

# Columns of the table: (heading, outcome key, how runs combine).
COLUMNS = [
    ("rounds", "rounds", "sum"),
    ("signups", "signups", "sum"),
    ("emails due", "emails_expected", "sum"),
    ("emails received", "emails_received", "sum"),
    ("lost", "lost", "sum"),
    ("duplicated", "duplicated", "sum"),
    ("first contacts restored", "contacts_restored", "sum"),
    ("chains restored", "chains_restored", "sum"),
    ("worst lateness (s)", "seconds_to_restore", "max"),
]
# Keys that are bookkeeping or per-email detail, not figures for the notes column.
NOT_NOTES = {"test", "at", "fault", "delivered", "provider_calls", "ledger_attempts"}


def _cell(values: list, combine: str) -> str:
    if not values:
        return "-"
    if combine == "sum":
        return str(sum(values))
    return f"{max(values):.1f}"


def _notes(runs: list[dict]) -> str:
    """The figures a fault measured beyond the common columns, summed over its runs."""
    used = {key for _, key, _ in COLUMNS} | NOT_NOTES
    notes: dict[str, object] = {}
    for run in runs:
        for key, value in run.items():
            if key in used or isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int | float):
                notes[key] = notes.get(key, 0) + value
            elif isinstance(value, dict):
                merged = notes.setdefault(key, {})
                for inner, number in value.items():
                    merged[inner] = merged.get(inner, 0) + number
    return ", ".join(
        f"{key.replace('_', ' ')}: "
        + (
            ", ".join(f"{k} {v}" for k, v in value.items())
            if isinstance(value, dict)
            else f"{value:g}"
        )
        for key, value in notes.items()
    )


def table(records: list[dict]) -> str:
    by_fault: dict[str, list[dict]] = defaultdict(list)
    for raw in records:
        # A race test counts races and a scenario run once counts nothing: both are rounds.
        record = {key: value for key, value in raw.items() if key != "races"}
        record.setdefault("rounds", raw.get("races", 1))
        by_fault[record.get("fault", record["test"])].append(record)
    lines = [
        "| fault | " + " | ".join(heading for heading, _, _ in COLUMNS) + " | also measured |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for fault, runs in by_fault.items():
        cells = [
            _cell([run[key] for run in runs if run.get(key) is not None], combine)
            for _, key, combine in COLUMNS
        ]
        lines.append(f"| {fault} | " + " | ".join(cells) + f" | {_notes(runs)} |")
    return "\n".join(lines)


def main(path: str) -> None:
    log = Path(path)
    if not log.exists():
        sys.exit(f"no outcomes recorded at {path}")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    print(table(records))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "var/faults.jsonl")
