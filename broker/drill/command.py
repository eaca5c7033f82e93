"""Owns `opsroom simulate SCENARIO`: a drill against the embedded hub, its progress, its verdict, its report.

Exit status 0 when every expectation passed, 1 when one failed, 2 when the scenario file cannot be run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from broker.drill.expect import Check, Observations, judge
from broker.drill.run import embedded_hub, play
from broker.drill.scenario import Scenario, ScenarioError, load


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The simulate command's arguments on the CLI's subparsers."""
    p = commands.add_parser("simulate", help="run a drill scenario (deploy/scenarios/*.yaml) and check what it expects")
    p.add_argument("scenario", type=Path, help="the scenario file")
    p.add_argument("--data", type=Path, help="folder for nats-server and the certificates (default: a temporary one)")
    p.add_argument("--report", type=Path, help="write the verdict and the observations as JSON here")
    p.add_argument("--patience", type=float, default=30.0, help="seconds a step waits for what it expects (default 30)")


def _print(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the command's output


def run(args: argparse.Namespace) -> int:
    """Run the drill; 0 if every expectation passed, 1 if one failed, 2 if the scenario cannot be run."""
    try:
        scenario = load(args.scenario)
    except ScenarioError as exc:
        print(f"opsroom: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    _print(f"drill {scenario.id}: {scenario.title} ({len(scenario.rooms)} rooms, {len(scenario.steps)} steps)")
    if args.data is not None:
        seen = asyncio.run(_play(scenario, args.data, args.patience))
    else:
        with tempfile.TemporaryDirectory(prefix="opsroom-drill-") as work:
            seen = asyncio.run(_play(scenario, Path(work), args.patience))
    checks = judge(scenario, seen)
    for line in verdict_lines(checks):
        _print(line)
    if args.report is not None:
        args.report.write_text(json.dumps(report_data(scenario, seen, checks), indent=2) + "\n", encoding="utf-8")
        _print(f"report: {args.report}")
    return 0 if all(c.passed for c in checks) else 1


async def _play(scenario: Scenario, work: Path, patience: float) -> Observations:
    async with embedded_hub(scenario, work) as client_of:
        return await play(scenario, client_of, _print, patience=patience)


def verdict_lines(checks: list[Check]) -> list[str]:
    """The expectation table as text: one line per check, failures with why, then the count."""
    out = ["", "expectations:"]
    out += [
        f"  {'PASS' if c.passed else 'FAIL'}  {c.step}: {c.what}" + (f" ({c.why})" if c.why else "") for c in checks
    ]
    failed = sum(not c.passed for c in checks)
    out.append(
        f"{len(checks) - failed} of {len(checks)} expectations passed" + (f", {failed} FAILED" if failed else "")
    )
    return out


def report_data(scenario: Scenario, seen: Observations, checks: list[Check]) -> dict[str, Any]:
    """The report as data: the verdict, and per step when it was published and who received it when (ids only)."""
    steps = []
    for step in scenario.steps:
        published = seen.published.get(step.id)
        deliveries = []
        if published is not None and published.distribution_id:
            deliveries = [
                {"agency": r.agency, "after_ms": round((r.at - published.at) * 1000, 1)}
                for r in seen.received
                if r.envelope.distribution_id == published.distribution_id
            ]
        steps.append(
            {
                "step": step.id,
                "from": step.sender,
                "kind": step.kind,
                "distribution_id": published.distribution_id if published else "",
                "refused": " ".join(published.refused) if published and published.refused else "",
                "deliveries": deliveries,
            }
        )
    return {
        "scenario": scenario.id,
        "title": scenario.title,
        "passed": all(c.passed for c in checks),
        "checks": [{"step": c.step, "what": c.what, "passed": c.passed, "why": c.why} for c in checks],
        "steps": steps,
    }
