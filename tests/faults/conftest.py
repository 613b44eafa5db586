"""Shared by the fault tests: how many rounds a race or fault repeats, and the outcome log
that `make faults` turns into the table in docs/RELIABILITY.md."""

import json
import os
import time
from pathlib import Path

import pytest

# `make test` runs each fault a few times; `make faults` runs the long variants.
FAULT_ROUNDS = int(os.environ.get("FAULT_ROUNDS", "3"))


@pytest.fixture
def fault_rounds() -> int:
    return FAULT_ROUNDS


@pytest.fixture
def fault_report(request):
    """A dict the test fills with what it measured (emails lost, duplicated, seconds to
    restore, ...); written as one JSON line to $FAULT_REPORT when that is set."""
    outcome: dict = {}
    yield outcome
    path = os.environ.get("FAULT_REPORT")
    if path and outcome:
        record = {"test": request.node.nodeid, "at": time.time(), **outcome}
        with Path(path).open("a") as log:
            log.write(json.dumps(record) + "\n")
