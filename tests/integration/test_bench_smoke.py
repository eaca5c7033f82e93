"""The benchmark stays runnable: a tiny run of one scenario (its figures are not checked, only its report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """bench/<script> with args, in its own process (at most 5 minutes); its output as text."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip


def test_benchmark_runs_both_paths_and_reports_ratios(tmp_path: Path) -> None:
    """bench/run.py runs raw JetStream, the hub and the hub without audit in one run, with their ratios."""
    result = bench("run.py", "--quick", "--runs", "1", "--scenario", "100/s", "--out", str(tmp_path))
    assert 0 == result.returncode, result.stderr
    assert "100/s: hub/raw throughput" in result.stdout
    assert "100/s: audit on/off throughput" in result.stdout
    [report] = list(tmp_path.glob("*.json"))
    rows = json.loads(report.read_text())["results"]
    assert {("raw JetStream", 200), ("hub", 200), ("hub, no audit", 200)} == {(r["path"], r["events"]) for r in rows}


def test_policy_benchmark_runs() -> None:
    """bench/policy.py times decisions with 10, 100 and 1,000 agreements and prints one row each."""
    result = bench("policy.py", "--quick")
    assert 0 == result.returncode, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert ["10", "100", "1000"] == [row[0] for row in rows]


def test_lanes_benchmark_runs_and_reports(tmp_path: Path) -> None:
    """bench/lanes.py measures the urgent lane alone and under a bulk flood in one run, and a backlog replay."""
    result = bench("lanes.py", "--quick", "--runs", "1", "--backlog", "300", "--out", str(tmp_path))
    assert 0 == result.returncode, result.stderr
    assert "urgent p99 with flood / alone:" in result.stdout
    assert "backlog replay of 300 reads" in result.stdout
    [report] = list(tmp_path.glob("lanes-*.json"))
    data = json.loads(report.read_text())
    assert 1 == len(data["urgent"]["runs"]["alone"]) == len(data["urgent"]["runs"]["flood"])
    assert data["urgent"]["runs"]["flood"][0]["bulk_per_s"] > 0
    assert (300, 1.0, 0.0) == (data["replay"]["events"], data["replay"]["in_order"], data["replay"]["duplicates"])


def test_write_modes_benchmark_runs_every_mode(tmp_path: Path) -> None:
    """bench/write_modes.py writes envelopes pipelined, staged and as atomic batches on one server, in one run."""
    result = bench("write_modes.py", "--runs", "1", "--events", "5", "--k", "2", "--json", str(tmp_path / "m.json"))
    assert 0 == result.returncode, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] == ["2"]]
    assert [["2", "pipelined"], ["2", "staged"], ["2", "atomic"]] == [row[:2] for row in rows]
    assert {"pipelined/2", "staged/2", "atomic/2"} == set(json.loads((tmp_path / "m.json").read_text()))


def test_expiry_benchmark_runs_and_reports() -> None:
    """bench/expiry.py scans rooms away, writes the notices of what expired, and a second worker writes none again."""
    result = bench("expiry.py", "--quick")
    assert 0 == result.returncode, result.stderr
    assert "1. first scan:" in result.stdout
    assert "4. expiries: 500 notices stored" in result.stdout
    assert "0 notices new (expected 0)" in result.stdout


def test_flood_benchmark_runs_and_reports(tmp_path: Path) -> None:
    """bench/flood.py measures a well-behaved agency alone, under a PublishStream flood and under stream churn, in one run."""
    result = bench("flood.py", "--quick", "--runs", "1", "--count", "100", "--out", str(tmp_path))
    assert 0 == result.returncode, result.stderr
    assert "p99 flood / alone:" in result.stdout
    assert "p99 churn / alone:" in result.stdout
    assert "well-behaved agency refused:" in result.stdout
    [report] = list(tmp_path.glob("flood-*.json"))
    data = json.loads(report.read_text())
    assert {"alone", "flood", "churn"} == set(data["runs"])
    assert all(1 == len(runs) for runs in data["runs"].values())
    assert 100 == data["runs"]["alone"][0]["events"]
    assert sum(data["flooder"].values()) > 0, "the flooder sent nothing: the run proves nothing"
    assert sum(data["churner"].values()) > 0, "the churner opened no stream"
