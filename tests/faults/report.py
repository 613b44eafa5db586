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
# The faults of several hosts (tests.faults.test_hosts): what each signup received, in order,
# and how long until the work the fault held up was done.
HOSTS_COLUMNS = [
    *COLUMNS[:6],
    ("out of order", "out_of_order", "sum"),
    ("time to recover (s)", "seconds_to_recover", "max"),
]
# Keys that are bookkeeping or per-email detail, not figures for the notes column.
NOT_NOTES = {"test", "at", "fault", "delivered", "provider_calls", "ledger_attempts"}


def _cell(values: list, combine: str) -> str:
    if not values:
        return "-"
    if combine == "sum":
        return str(sum(values))
    return f"{max(values):.1f}"


def _notes(runs: list[dict], columns: list) -> str:
    """The figures a fault measured beyond the columns, summed over its runs (times in
    seconds, `seconds_*`: the worst)."""
    used = {key for _, key, _ in columns} | NOT_NOTES
    notes: dict[str, object] = {}
    for run in runs:
        for key, value in run.items():
            if key in used or isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int | float) and key.startswith("seconds"):
                notes[key] = round(max(notes.get(key, 0), value), 1)
            elif isinstance(value, int | float):
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


def table(records: list[dict], columns: list = COLUMNS) -> str:
    by_fault: dict[str, list[dict]] = defaultdict(list)
    for raw in records:
        # A race test counts races and a scenario run once counts nothing: both are rounds.
        record = {key: value for key, value in raw.items() if key != "races"}
        record.setdefault("rounds", raw.get("races", 1))
        by_fault[record.get("fault", record["test"])].append(record)
    lines = [
        "| fault | " + " | ".join(heading for heading, _, _ in columns) + " | also measured |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for fault, runs in by_fault.items():
        cells = [
            _cell([run[key] for run in runs if run.get(key) is not None], combine)
            for _, key, combine in columns
        ]
        lines.append(f"| {fault} | " + " | ".join(cells) + f" | {_notes(runs, columns)} |")
    return "\n".join(lines)


def main(path: str, *, hosts: bool = False) -> None:
    log = Path(path)
    if not log.exists():
        sys.exit(f"no outcomes recorded at {path}")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    print(table(records, HOSTS_COLUMNS if hosts else COLUMNS))


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if a != "--hosts"]
    main(arguments[0] if arguments else "var/faults.jsonl", hosts="--hosts" in sys.argv)
