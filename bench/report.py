"""Results: one JSON file per benchmark under bench/results/, the table printed at the end of a
run, and docs/PERFORMANCE.md generated from the result files."""

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.stack import ROOT

RESULTS = ROOT / "bench" / "results"
QUICK_RESULTS = RESULTS / "quick"
PERFORMANCE_MD = ROOT / "docs" / "PERFORMANCE.md"
DESIGN_NOTES = "## Design notes"
COLUMNS = ("benchmark", "figure", "floor", "ratio", "target", "met?")
# The table's order: each slow-provider benchmark right after its instant twin.
ORDER = (
    "submit",
    "email_pipeline",
    "email_pipeline_provider",
    "verify_to_welcome",
    "verify_to_welcome_provider",
    "verify_during_send",
    "timer_accuracy",
    "timer_accuracy_provider",
    "recovery",
    "scale",
    "scale_out",
    "scale_out_provider",
)


@dataclass
class Row:
    """One line of the table: a figure beside its floor and its target."""

    label: str
    figure: str
    floor: str
    ratio: str
    target: str
    met: bool | None  # None: no target for this figure


@dataclass
class Result:
    name: str  # the file name: bench/results/<name>.json
    number: int
    title: str
    figures: dict
    floor: dict
    ratio: dict
    target: dict
    met: bool | None  # None: judged only by the full run
    parameters: dict
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self, *, mode: str, machine: dict, commands: dict, run_at: str) -> dict:
        return {
            "benchmark": self.name,
            "number": self.number,
            "title": self.title,
            "mode": mode,
            "run_at": run_at,
            "seconds": round(self.seconds, 1),
            "met": self.met,
            "figures": self.figures,
            "floor": self.floor,
            "ratio": self.ratio,
            "target": self.target,
            "parameters": self.parameters,
            "rows": [asdict(row) for row in self.rows],
            "notes": self.notes,
            "machine": machine,
            "commands": commands,
        }


def results_dir(quick: bool) -> Path:
    return QUICK_RESULTS if quick else RESULTS


def write_result(document: dict, *, quick: bool) -> Path:
    directory = results_dir(quick)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{document['benchmark']}.json"
    # Written aside and renamed, so that an interrupted run never leaves half a file.
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(partial, path)
    return path


def load_results(quick: bool) -> list[dict]:
    directory = results_dir(quick)
    documents = [json.loads(path.read_text()) for path in directory.glob("*.json")]
    return sorted(
        documents, key=lambda d: ORDER.index(d["benchmark"]) if d["benchmark"] in ORDER else 99
    )


def met_text(met: bool | None) -> str:
    return "—" if met is None else ("yes" if met else "**no**")


def markdown_table(documents: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for document in documents:
        for row in document["rows"]:
            cells = [f"{document['number']}. {row['label']}", row["figure"], row["floor"]]
            cells += [row["ratio"], row["target"], met_text(row["met"])]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def print_table(documents: list[dict]) -> None:
    widths = [len(column) for column in COLUMNS]
    rows = []
    for document in documents:
        for row in document["rows"]:
            cells = [
                f"{document['number']}. {row['label']}",
                row["figure"],
                row["floor"],
                row["ratio"],
                row["target"],
                met_text(row["met"]).replace("**", ""),
            ]
            rows.append(cells)
            widths = [max(width, len(cell)) for width, cell in zip(widths, cells, strict=True)]
    print("  ".join(column.ljust(width) for column, width in zip(COLUMNS, widths, strict=True)))
    for cells in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)))


def _machine_section(machine: dict) -> list[str]:
    return [
        f"- CPU: {machine['cpu_model']}, {machine['cpu_cores']} cores; RAM"
        f" {machine['ram_gib']} GiB; {machine['os']} (Linux {machine['kernel']})",
        f"- Python {machine['python']}, Django {machine['django']}, Celery {machine['celery']}"
        f" (kombu {machine['kombu']}), gunicorn {machine['gunicorn']}, psycopg"
        f" {machine['psycopg']}, redis-py {machine['redis_py']}",
        f"- PostgreSQL {machine['postgresql']}, Redis {machine['redis']}, {machine['wrk']}",
        "- Load average when the run started: "
        + ", ".join(map(str, machine["load_average_at_start"]))
        + " (other work shares this machine)",
    ]


def _run_section(title: str, documents: list[dict], command: str) -> list[str]:
    first = documents[0]
    lines = [
        f"## {title}",
        "",
        f"`{command}`, run at {first['run_at']}.",
        "",
        *_machine_section(first["machine"]),
        "",
        markdown_table(documents),
        "",
    ]
    for document in documents:
        parameters = ", ".join(f"{key} {value}" for key, value in document["parameters"].items())
        title = f"**{document['number']}. {document['title']}**"
        lines.append(f"{title} ({document['seconds']} s): {parameters}.")
        lines.append("")
        lines.extend(f"- {note}" for note in document["notes"])
        if document["notes"]:
            lines.append("")
    return lines


def _how_to_reproduce(documents: list[dict]) -> list[str]:
    commands: dict[str, str] = {}
    for document in documents:
        for role, command in document["commands"].items():
            commands.setdefault(role, command)
    lines = [
        "## How to reproduce",
        "",
        "```sh",
        "make bench         # the full run: writes bench/results/*.json and this file",
        "make bench-quick   # reduced sizes, about 6 minutes: bench/results/quick/*.json",
        ".venv/bin/python -m bench.run --only submit,email_pipeline   # a subset",
        "```",
        "",
        "`make bench` installs `wrk` with apt-get if it is missing, then runs"
        " `python -m bench.run`, which creates a PostgreSQL database `signup_bench_<hex>`"
        " on 127.0.0.1:5432 (user"
        ' `postgres`) and starts a private `redis-server --save "" --appendonly no` on a free'
        " port, the stand-in Postmark (harness/provider.py) on another, and then the service's"
        " processes through harness/service.py with `DJANGO_SETTINGS_MODULE=bench.settings`"
        " (the service's settings plus the floor views, the no-op task and an email backend that"
        " accepts at once; the provider benchmarks give the workers anymail's Postmark backend"
        " pointed at the stand-in instead). The workers and beat run the Procfile's lines, their"
        " variables filled in (WORKER_CONCURRENCY as each benchmark says) and a `--hostname`"
        " added to each worker; the web is gunicorn as the image runs it, without its access"
        " log. The stand-in's latency and error rate are options:"
        " `python -m bench.run --provider-median-ms 150 --provider-p99-ms 600"
        " --provider-error-rate 0.01 --provider-seed 1` (the defaults). Everything is stopped"
        " and the database dropped at the end. The commands it ran, with the environment of"
        " `bench/stack.py`:",
        "",
        "```sh",
        *(command for command in commands.values()),
        "```",
        "",
    ]
    return lines


def write_performance_md() -> Path:
    """Regenerate docs/PERFORMANCE.md from the result files, keeping the design notes."""
    design_notes = _existing_design_notes()
    full, quick = load_results(quick=False), load_results(quick=True)
    lines = [
        "# Performance",
        "",
        "Generated by `make bench` / `make bench-quick` from `bench/results/` (do not edit, except"
        " the design notes at the end, which are kept). Every figure is measured beside its"
        " floor: the least the same stack does for the same kind of work, in the same run"
        " (a bare Django view, a no-op Celery task). The ratio is the figure over the floor.",
        "",
    ]
    if full:
        lines += _run_section("Full run", full, "make bench")
    if quick:
        lines += _run_section("Quick run (reduced sizes)", quick, "make bench-quick")
    lines += _how_to_reproduce(full or quick)
    lines += [design_notes.rstrip(), ""]
    PERFORMANCE_MD.parent.mkdir(parents=True, exist_ok=True)
    PERFORMANCE_MD.write_text("\n".join(lines))
    return PERFORMANCE_MD


def _existing_design_notes() -> str:
    placeholder = f"{DESIGN_NOTES}\n\n(The lead writes this section; regenerating keeps it.)\n"
    if not PERFORMANCE_MD.is_file():
        return placeholder
    text = PERFORMANCE_MD.read_text()
    # The section is always generated last: it runs to the end of the file.
    match = re.search(rf"^{re.escape(DESIGN_NOTES)}\b.*", text, re.S | re.M)
    return match.group(0) if match else placeholder
