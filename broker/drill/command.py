"""Owns `opsroom simulate SCENARIO`: a drill against the embedded hub, its progress, its verdict, its report.

Exit status 0 when every expectation passed, 1 when one failed, 2 when the scenario file cannot be
run. The drill's modules are imported when the command runs, never when the CLI starts (`serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.drill.expect import Check
    from broker.drill.scenario import Scenario


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The simulate command's arguments on the CLI's subparsers."""
    p = commands.add_parser("simulate", help="run a drill scenario (deploy/scenarios/*.yaml) and check what it expects")
    p.add_argument("scenario", type=Path, nargs="?", help="the scenario file (not with --load)")
    load = p.add_argument_group("load mode: many rooms publishing (instead of a scenario)")
    load.add_argument("--load", action="store_true", help="run the load mode")
    load.add_argument("--rooms", type=int, default=50, help="Polizia Locale rooms, one per comune of Torino (<= 312)")
    load.add_argument("--rate", type=float, default=100.0, help="events a second, all rooms together (default 100)")
    load.add_argument("--duration", type=float, default=20.0, help="seconds of publishing (default 20)")
    load.add_argument("--bulk-share", type=float, default=0.5, help="share of bulk events (default 0.5)")
    p.add_argument("--data", type=Path, help="folder for nats-server and the certificates (default: a temporary one)")
    p.add_argument("--report", type=Path, help="folder for the report: report.html (self-contained) and report.json")
    p.add_argument("--patience", type=float, default=30.0, help="seconds a step waits for what it expects (default 30)")
    p.add_argument("--hub", help="host:port of a running hub to drill instead of an embedded one")
    p.add_argument("--pki", type=Path, default=Path("deploy/pki"), help="with --hub: the dev-certs folder (deploy/pki)")
    p.add_argument("--wait", type=float, default=30.0, help="with --hub: seconds to wait for it to serve (default 30)")


def _print(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the command's output


def run(args: argparse.Namespace) -> int:
    """Run the drill; 0 if every expectation passed, 1 if one failed, 2 if the scenario cannot be run."""
    from broker.drill.expect import judge  # noqa: PLC0415 - loaded for this command only
    from broker.drill.report import render_html, report_data  # noqa: PLC0415
    from broker.drill.scenario import ScenarioError, load  # noqa: PLC0415

    if args.load:
        return _run_load(args)
    if args.scenario is None:
        print("opsroom: simulate: give a scenario file, or --load", file=sys.stderr)  # noqa: T201
        return 2
    try:
        scenario = load(args.scenario)
    except ScenarioError as exc:
        print(f"opsroom: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    _print(f"drill {scenario.id}: {scenario.title} ({len(scenario.rooms)} rooms, {len(scenario.steps)} steps)")
    if args.hub is not None and scenario.at is not None:
        message = f"opsroom: {args.scenario}: at: a drill set in time needs the embedded hub (its clock)"
        print(message, file=sys.stderr)  # noqa: T201
        return 2
    seen, audit = _observe(args, scenario)
    checks = judge(scenario, seen)
    for line in verdict_lines(checks):
        _print(line)
    if args.report is not None:
        data = report_data(scenario, seen, checks, audit)
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "report.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        (args.report / "report.html").write_text(render_html(data), encoding="utf-8")
        _print(f"report: {args.report / 'report.html'} (and report.json)")
    return 0 if all(c.passed for c in checks) else 1


def _run_load(args: argparse.Namespace) -> int:
    """The load mode: a table, and with --report its data as report.json and a page."""
    from broker.drill.load import LoadPlan, run_load  # noqa: PLC0415 - loaded for this command only
    from broker.drill.report import render_load_html  # noqa: PLC0415

    if not (0 < args.rooms <= 312 and args.rate > 0 and args.duration > 0 and 0 <= args.bulk_share <= 1):
        message = "opsroom: simulate --load: 1-312 rooms, a positive rate and duration, a bulk share in 0-1"
        print(message, file=sys.stderr)  # noqa: T201
        return 2
    plan = LoadPlan(args.rooms, args.rate, args.duration, args.bulk_share)
    work_root = args.data
    with tempfile.TemporaryDirectory(prefix="opsroom-load-") as temporary:
        result = asyncio.run(run_load(plan, work_root or Path(temporary), _print))
    for line in result.table():
        _print(line)
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "report.json").write_text(json.dumps(result.data(), indent=2) + "\n", encoding="utf-8")
        (args.report / "report.html").write_text(render_load_html(result.data(), result.table()), encoding="utf-8")
        _print(f"report: {args.report / 'report.html'} (and report.json)")
    return 0


def _observe(args: argparse.Namespace, scenario: Scenario) -> tuple[Any, Any]:
    """Play the scenario against the hub the arguments say: what the rooms saw, and the audit rows."""
    if args.hub is not None:
        return asyncio.run(_play_remote(scenario, args.hub, args.pki, args.wait, args.patience))
    if args.data is not None:
        return asyncio.run(_play(scenario, args.data, args.patience))
    with tempfile.TemporaryDirectory(prefix="opsroom-drill-") as work:
        return asyncio.run(_play(scenario, Path(work), args.patience))


async def _play(scenario: Scenario, work: Path, patience: float) -> tuple[Any, Any]:
    from broker.drill.run import embedded_hub, play  # noqa: PLC0415 - loaded for this command only

    async with embedded_hub(scenario, work) as hub:
        seen = await play(scenario, hub.client_of, _print, clock=hub.clock, patience=patience)
        ids = [p.distribution_id for p in seen.published.values() if p.distribution_id and p.refused is None]
        return seen, await hub.audit_rows(ids)


async def _play_remote(scenario: Scenario, target: str, pki: Path, wait: float, patience: float) -> tuple[Any, Any]:
    from broker.drill.run import play, remote_hub  # noqa: PLC0415 - loaded for this command only

    async with remote_hub(scenario, target, pki, wait=wait) as hub:
        _print(f"the hub at {target} is serving; rooms connecting with the certificates in {pki}")
        return await play(scenario, hub.client_of, _print, clock=hub.clock, patience=patience), []


def verdict_lines(checks: list[Check]) -> list[str]:
    """The expectation table as text: one line per check, failures with why, then the count."""
    out = ["", "expectations:"]
    out += [f"  {'PASS' if c.passed else 'FAIL'}  {c.step}: {c.what}{f' ({c.why})' if c.why else ''}" for c in checks]
    failed = sum(not c.passed for c in checks)
    out.append(
        f"{len(checks) - failed} of {len(checks)} expectations passed" + (f", {failed} FAILED" if failed else "")
    )
    return out
