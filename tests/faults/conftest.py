"""Fixtures of the fault tests (the processes they start, a rig list, the counts of each test) and the counts table printed at the end of the run.

With OPSROOM_FAULT_COUNTS=<file> in the environment, the rows are also written to that file as
JSON (one object per test, with its outcome): `make soak` reads them (tests/faults/soak.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.counts import Counts
from tests.faults.procs import Processes
from tests.faults.rig import RecordCounts, Rig

ROWS = pytest.StashKey[list[Counts]]()
COUNTS_FILE = "OPSROOM_FAULT_COUNTS"


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Everything a test starts registers its stopper here; all are stopped, by PID, at teardown."""
    keeper = Processes()
    yield keeper
    errors = keeper.stop_all()
    assert not errors, f"stopping the test's processes failed: {errors}"


@pytest.fixture
async def rigs(processes: Processes) -> AsyncIterator[list[Rig]]:
    """Rigs a test made (append them); their clients and proxy are closed at teardown, before the processes stop."""
    made: list[Rig] = []
    yield made
    for rig in made:
        await rig.close()


@pytest.fixture
def record_counts(request: pytest.FixtureRequest) -> RecordCounts:
    """Add a test's counts to the table printed at the end of the run."""
    rows = request.config.stash.setdefault(ROWS, [])

    def record(counts: Counts) -> None:
        counts.nodeid = request.node.nodeid
        rows.append(counts)

    return record


def _with_outcomes(terminalreporter: Any, rows: list[Counts]) -> None:
    outcomes = {
        report.nodeid: outcome
        for outcome in ("passed", "failed", "xfailed", "xpassed", "error")
        for report in terminalreporter.stats.get(outcome, [])
        if getattr(report, "when", "call") == "call"
    }
    for row in rows:
        row.outcome = outcomes.get(row.nodeid, "?")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the counts of every fault test that ran as one table (and write them as JSON if asked)."""
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    _with_outcomes(terminalreporter, rows)
    target = os.environ.get(COUNTS_FILE)
    if target:
        Path(target).write_text(json.dumps([row.as_json() for row in rows], indent=1), encoding="utf-8")
    header = [title for _, title in Counts.COLUMNS]
    table = [header, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return " | ".join([first, *rest])

    terminalreporter.write_sep("=", "fault-injection counts")
    terminalreporter.write_line(line(header))
    terminalreporter.write_line("-+-".join("-" * w for w in widths))
    for cells in table[1:]:
        terminalreporter.write_line(line(cells))
    terminalreporter.write_line(Counts.LEGEND)
    for row in rows:
        if row.examples:
            terminalreporter.write_line(f"{row.test}: {row.examples}")
