"""`make soak`: the fault tests in a loop under CPU load, and one table of what they counted.

    python -m tests.faults.soak --runs 20                 # every scenario, every way to publish, 20 times
    python -m tests.faults.soak --runs 3 --rotate         # CI's budget: one way to publish per scenario and run

Each run is one pytest process over the scenarios, the fault tests marked `soak` (nats-server
kill -9 and restart, hub kill -9, cluster node loss, network cut between hub and nats-server,
rooms stopped mid-stream),
with one busy process per core (os.cpu_count()) burning CPU for the whole soak. Each test
writes its counts (tests/faults/conftest.py, OPSROOM_FAULT_COUNTS); the soak adds them up per
test and prints one table. With --rotate, run i takes the i-th parametrization of each test
(cycling), so a few runs cover Publish, PublishStream in small batches and in large ones.

Exit status 0 only if every test of every run passed and nothing was lost, unstored,
undelivered or unlogged. Each run's output and files are kept under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

ROOT = Path(__file__).resolve().parents[2]
# The scenarios: the fault tests marked `soak` (nats-server and hub kill -9, cluster node loss,
# network cut, rooms stopped mid-stream), each parametrized by the way senders publish.
SCENARIOS = ("tests/faults", "-m", "soak")
RUN_TIMEOUT = 3600.0  # one pytest run, as a last resort (each test has its own timeout, each wait its stall check)
BURN_LIMIT = 24 * 3600  # a burner outliving its soak stops by itself after this
# One busy loop, as its own interpreter: it stops when its parent goes away, or after BURN_LIMIT.
BURN = f"""
import os, time
parent, end = os.getppid(), time.monotonic() + {BURN_LIMIT}
while os.getppid() == parent and time.monotonic() < end:
    for _ in range(200_000):
        pass
"""


@contextmanager
def cpu_burners(count: int) -> Iterator[list[int]]:
    """count busy processes for the block's duration; each is stopped by its PID at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # One by one (extend appends as it goes): a failure part way still stops those started.
        procs.extend(subprocess.Popen([sys.executable, "-c", BURN], start_new_session=True) for _ in range(count))
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def collect(selection: Sequence[str]) -> dict[str, list[str]]:
    """The node ids of the selected tests, by test function (its parametrizations in order)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *selection],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    tests: dict[str, list[str]] = {}
    for line in out.splitlines():
        if "::" in line:
            tests.setdefault(line.split("[", 1)[0], []).append(line.strip())
    return tests


def rotation(tests: dict[str, list[str]], number: int) -> list[str]:
    """Run number's choice: one parametrization of each test, shifted by run and by test.

    Over as many runs as a test has parametrizations, each of them runs once; and every run
    has a mix of them (test j takes its (number + j)-th), so two runs already cover most.
    """
    return [ids[(number - 1 + j) % len(ids)] for j, ids in enumerate(tests.values())]


@dataclass
class Row:
    """One test over the soak's runs."""

    test: str
    runs: int = 0
    failed: int = 0
    sums: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: list[str] = field(default_factory=list)


SUMMED = (
    "acked",
    "delivered",
    "lost",
    "room_duplicates",
    "redelivered",
    "acked_not_stored",
    "stored_not_delivered",
    "delivered_not_logged",
    "failed",
    "stored_twice",
    "wrong_view",
    "out_of_order",
    "app_duplicates",
    "restart_duplicates",
)
HARMFUL = (
    "lost",
    "acked_not_stored",
    "stored_not_delivered",
    "delivered_not_logged",
    "failed",
    "stored_twice",
    "wrong_view",
    "out_of_order",
    "app_duplicates",
)
TABLE = (
    ("runs", "runs"),
    ("failed_runs", "failed"),
    ("acked", "publishes acknowledged"),
    ("delivered", "delivered"),
    ("lost", "lost"),
    ("room_duplicates", "duplicates seen by rooms"),
    ("redelivered", "redelivered"),
    ("acked_not_stored", "acked, not stored"),
    ("stored_not_delivered", "stored, not delivered"),
    ("delivered_not_logged", "delivered, not logged"),
)


@dataclass
class Soak:
    """What the runs counted, by test name."""

    rows: dict[str, Row] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # tests that failed without recording counts
    audited: set[str] = field(default_factory=set)

    def add(self, counts: dict[str, Any]) -> None:
        """One test's counts from one run."""
        row = self.rows.setdefault(counts["test"], Row(counts["test"]))
        row.runs += 1
        row.failed += counts["outcome"] != "passed"
        for key in SUMMED:
            value = counts.get(key, 0)
            if isinstance(value, int):
                row.sums[key] += value
                if key == "delivered_not_logged":
                    self.audited.add(row.test)
        for harm, kept in counts.get("examples", {}).items():
            if len(row.examples) < 10:
                row.examples.append(f"{harm}: {kept[:2]}")

    def harmed(self) -> bool:
        """Whether any run failed or counted any harm."""
        return bool(self.errors) or any(row.failed or any(row.sums[k] for k in HARMFUL) for row in self.rows.values())

    def table(self) -> list[str]:
        """The table as Markdown lines, one row per test and a total."""
        header = ["test", *(title for _, title in TABLE)]
        total = Row("total")
        lines = []
        for row in sorted(self.rows.values(), key=lambda r: r.test):
            lines.append([row.test, *self._cells(row)])
            total.runs += row.runs
            total.failed += row.failed
            for key in SUMMED:
                total.sums[key] += row.sums[key]
        lines.append(["**total**", *self._cells(total)])
        out = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(TABLE)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return out

    def _cells(self, row: Row) -> list[str]:
        cells = []
        for key, _ in TABLE:
            if key == "runs":
                cells.append(str(row.runs))
            elif key == "failed_runs":
                cells.append(str(row.failed))
            elif key == "delivered_not_logged" and row.test != "total" and row.test not in self.audited:
                cells.append("-")
            else:
                cells.append(f"{row.sums[key]:,}")
        return cells


def run_once(number: int, selection: Sequence[str], out: Path) -> tuple[int, list[dict[str, Any]], list[str]]:
    """One pytest run; its exit code, the counts its tests recorded, and the tests that failed without counts."""
    folder = out / f"run-{number:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    counts_file = folder / "counts.json"
    junit = folder / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]
    command += [f"--basetemp={folder / 'tmp'}", f"--junitxml={junit}", *selection]
    env = {**os.environ, "OPSROOM_FAULT_COUNTS": str(counts_file)}
    with (folder / "pytest.out").open("wb") as log:
        # Its own session: a Ctrl-C reaches the soak only, which passes one SIGINT on (see _interrupt).
        proc = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            code = proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = _interrupt(proc)
        except BaseException:  # Ctrl-C or SIGTERM of the soak: the run stops its processes before we go
            _interrupt(proc)
            raise
    rows: list[dict[str, Any]] = json.loads(counts_file.read_text()) if counts_file.exists() else []
    return code, rows, _failed_without_counts(junit, rows)


def _interrupt(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT a pytest run (it tears down: every test stops its processes by PID); SIGKILL if it hangs; its exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)


def _failed_without_counts(junit: Path, rows: list[dict[str, Any]]) -> list[str]:
    """Tests the junit report says failed or errored whose counts were never recorded."""
    if not junit.exists():
        return ["(no junit report: the run did not finish)"]
    recorded = {row["nodeid"].rsplit("::", 1)[-1] for row in rows}
    failed = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            name = case.get("name", "?")
            if name not in recorded:
                failed.append(f"{case.get('classname', '')}::{name}")
    return failed


def _terminated(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; print the table; 0 if nothing failed and nothing was harmed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="how many times to run the scenarios (default 5)")
    parser.add_argument("--rotate", action="store_true", help="one parametrization of each test per run, in turn")
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 1, help="busy processes (default: cores)")
    parser.add_argument("--out", type=Path, default=ROOT / ".opsroom" / "soak", help="where each run's files go")
    parser.add_argument("-k", dest="keyword", default="", help="pytest -k expression to narrow the tests")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)  # stop as on Ctrl-C: the current run tears down, burners stop
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    base = [*SCENARIOS, *(["-k", args.keyword] if args.keyword else [])]
    tests = collect(base) if args.rotate else {}
    soak = Soak()
    started = time.monotonic()
    print(f"soak: {args.runs} runs, {args.burners} CPU burners, files in {out}", flush=True)
    with cpu_burners(args.burners) as pids:
        print(f"soak: burners {pids}", flush=True)
        for number in range(1, args.runs + 1):
            selection = rotation(tests, number) if args.rotate else base
            began = time.monotonic()
            code, rows, errors = run_once(number, selection, out)
            for counts in rows:
                soak.add(counts)
            soak.errors += [f"run {number}: {e}" for e in errors]
            if code != 0 and not errors and all(r["outcome"] == "passed" for r in rows):
                soak.errors.append(f"run {number}: pytest exited with {code} (see its pytest.out)")
            failed = [r["test"] for r in rows if r["outcome"] != "passed"] + errors
            print(
                f"soak: run {number}/{args.runs}: exit {code}, {len(rows)} tests counted, "
                f"failed: {failed or 'none'} ({time.monotonic() - began:.0f} s)",
                flush=True,
            )
    print(f"\nsoak: {args.runs} runs under {args.burners} CPU burners in {time.monotonic() - started:.0f} s\n")
    print("\n".join(soak.table()))
    for row in soak.rows.values():
        for example in row.examples:
            print(f"  {row.test}: {example}")
    for error in soak.errors:
        print(f"  failed without counts: {error}")
    harmed = soak.harmed()
    print(f"\nsoak: {'FAILED' if harmed else 'passed'}; each run's output and files in {out}")
    return 1 if harmed else 0


if __name__ == "__main__":
    sys.exit(main())
