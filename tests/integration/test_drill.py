"""`opsroom simulate` through the real command: every shipped scenario passes; a broken agreement fails its expectation.

Each run is the CLI in its own process: an embedded nats-server and hub (stopped by PID), the
scenario's rooms as real clients with their own certificates, the verdict and the JSON report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "deploy" / "scenarios").glob("*.yaml"))
# liveness: a scenario of a few steps takes seconds on a quiet machine.
DRILL_LIVENESS = 300.0


def simulate(scenario: Path, work: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    report = work / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker",
            "simulate",
            str(scenario),
            "--data",
            str(work / "data"),
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=DRILL_LIVENESS,
        check=False,
        cwd=work,
    )
    data: dict[str, object] = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
    return result, data


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_shipped_scenario_passes_through_the_real_hub(scenario: Path, tmp_path: Path) -> None:
    result, report = simulate(scenario, tmp_path)
    assert 0 == result.returncode, result.stdout + result.stderr
    checks = report["checks"]
    assert isinstance(checks, list)
    assert checks
    assert all(c["passed"] for c in checks)
    assert f"{len(checks)} of {len(checks)} expectations passed" in result.stdout
    assert "FAIL" not in result.stdout


def test_a_broken_agreement_fails_the_expectation_that_depends_on_it(tmp_path: Path) -> None:
    """The Torino agreement, edited to let the Polizia Locale's role see the network location (cell, IMSI).

    The drill exits 1; its verdict names the one expectation that failed and why, in the output
    and in the report; everything else still passes.
    """
    shutil.copytree(ROOT / "deploy" / "agreements", tmp_path / "agreements")
    shutil.copytree(ROOT / "deploy" / "scenarios", tmp_path / "scenarios")
    agreement = tmp_path / "agreements" / "torino.yaml"
    text = agreement.read_text(encoding="utf-8")
    seen = "personal_data: [caller, persons, vehicles, free_text, media]   # not the network location (IMSI)"
    assert seen in text, "the Torino agreement changed: update this test"
    agreement.write_text(
        text.replace(seen, "personal_data: [caller, network_location, persons, vehicles, free_text, media]"),
        encoding="utf-8",
    )
    result, report = simulate(tmp_path / "scenarios" / "torino-demo.yaml", tmp_path)
    assert 1 == result.returncode, result.stdout + result.stderr
    checks = report["checks"]
    assert isinstance(checks, list)
    failed = [c for c in checks if not c["passed"]]
    assert [
        {
            "step": "contact-card",
            "what": "incident.call.network_location withheld from it.pl.001272",
            "passed": False,
            "why": "it.pl.001272's copy holds incident.call.network_location",
        }
    ] == failed
    assert report["passed"] is False
    assert (
        "FAIL  contact-card: incident.call.network_location withheld from it.pl.001272 "
        "(it.pl.001272's copy holds incident.call.network_location)"
    ) in result.stdout
    assert f"{len(checks) - 1} of {len(checks)} expectations passed, 1 FAILED" in result.stdout


def test_a_scenario_that_cannot_run_exits_2_naming_the_value(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: bad\ntitle: x\nrooms: []\nsteps: []\n", encoding="utf-8")
    result, report = simulate(bad, tmp_path)
    assert 2 == result.returncode
    assert f"opsroom: {bad}: rooms: [] should be non-empty" in result.stderr
    assert {} == report
