"""`opsroom simulate` through the real command: every shipped scenario passes; a broken agreement fails its expectation.

Each run is the CLI in its own process: an embedded nats-server and hub (stopped by PID), the
scenario's rooms as real clients with their own certificates, the verdict and the JSON report.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from broker.dev.testing import local_hub
from broker.drill.scenario import load

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "deploy" / "scenarios").glob("*.yaml"))
# liveness: a scenario of a few steps takes seconds on a quiet machine.
DRILL_LIVENESS = 300.0
CHROMIUM_LIVENESS = 120.0  # a page of a few hundred kilobytes renders in a second or two


def simulate(scenario: Path, work: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    """`opsroom simulate` as a process, its report in work/report; the result and report.json (empty if none)."""
    report = work / "report"
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
    path = report / "report.json"
    data: dict[str, object] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
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


# Values in the Torino scenario's payloads that are personal data or free text: no report may show them.
PERSONAL = ("Mario", "Esempio", "+390000000000", "ZZ000ZZ", "cella: area", "Persone che litigano", "1234567")


def chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("OPSROOM_REQUIRE_CHROMIUM") == "1":
        pytest.fail("chromium is required here (OPSROOM_REQUIRE_CHROMIUM=1): apt-get install chromium")
    return found


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_html_report_renders_in_chromium_with_its_timeline_and_plot_and_no_personal_data(tmp_path: Path) -> None:
    """The report of the Torino drill, opened by headless Chromium: a screenshot, and the DOM after load.

    The page records which of its images decoded (onload); both plots must have. The HTML and the
    JSON hold none of the scenario's personal values.
    """
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    result, report = simulate(ROOT / "deploy" / "scenarios" / "torino-demo.yaml", tmp_path)
    assert 0 == result.returncode, result.stdout + result.stderr
    page = tmp_path / "report" / "report.html"
    text = page.read_text(encoding="utf-8")
    raw = (tmp_path / "report" / "report.json").read_text(encoding="utf-8")
    assert [v for v in PERSONAL if v in text or v in raw] == []
    audit = report["audit"]
    assert isinstance(audit, list)
    assert {"collection", "disclosure"} <= {row["action"] for row in audit}
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ]
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=CHROMIUM_LIVENESS,
        check=True,
    )
    assert (1280, 2400) == png_size(shot)
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_LIVENESS,
        check=True,
    ).stdout
    assert 'data-images="timeline,latency"' in dom
    assert 'id="verdict">PASSED: ' in dom
    assert dom.count("<tr>") > 30  # the expectations, steps and audit tables


async def test_a_drill_against_a_running_hub_by_address_with_its_certificates(tmp_path: Path) -> None:
    """`--hub HOST:PORT --pki DIR`: the rooms connect to a hub already running (here one this test started)."""
    scenario = load(ROOT / "deploy" / "scenarios" / "torino-road-accident.yaml")
    agencies = {r.agency: r.name for r in scenario.rooms}
    async with local_hub(tmp_path / "hub", agencies, (), agreements=ROOT / "deploy" / "agreements") as hub:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker", "simulate", str(scenario.path),
            "--hub", hub.target, "--pki", str(hub.pki.root), "--report", str(tmp_path / "report"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        )  # fmt: skip
        async with asyncio.timeout(DRILL_LIVENESS):
            out, err = await proc.communicate()
    assert 0 == proc.returncode, out.decode() + err.decode()
    assert f"the hub at {hub.target} is serving" in out.decode()
    assert "15 of 15 expectations passed" in out.decode()
    report = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert [] == report["audit"]  # a remote hub's audit log is its own: not read


def test_a_drill_without_a_room_s_certificate_names_the_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broker", "simulate", str(ROOT / "deploy" / "scenarios" / "torino-demo.yaml"),
         "--hub", "127.0.0.1:9", "--pki", str(tmp_path / "nothing"), "--wait", "1"],
        capture_output=True, text=True, timeout=DRILL_LIVENESS, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert 2 == result.returncode
    assert f"opsroom: {tmp_path / 'nothing' / 'ca.pem'}: no such file" in result.stderr


def test_the_load_mode_runs_rooms_across_comuni_and_reports_per_lane(tmp_path: Path) -> None:
    """A small load drill (CI budget): 10 rooms, 20 events/s for 3 s; every accepted event reaches both State rooms."""
    result = subprocess.run(
        [sys.executable, "-m", "broker", "simulate", "--load", "--rooms", "10", "--rate", "20", "--duration", "3",
         "--data", str(tmp_path / "data"), "--report", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=DRILL_LIVENESS, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert 0 == result.returncode, result.stdout + result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    accepted = report["published"] - sum(report["refused"].values())
    assert report["published"] > 0
    assert {} == report["refused"]
    lanes = report["lanes"]
    assert {"urgent", "bulk"} == set(lanes)
    assert 2 * accepted == sum(lane["deliveries"] for lane in lanes.values())
    assert all(0 < lane["p50_ms"] <= lane["p99_ms"] <= lane["p999_ms"] for lane in lanes.values())
    assert report["hub_cpu_seconds"] > 0
    assert report["hub_rss_max_mb"] > 0
    assert "lane     deliveries" in result.stdout
    assert "<h2>Publish to delivery, per lane</h2>" in (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
