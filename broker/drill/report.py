"""Owns the drill report people read: one self-contained HTML file (plots inlined), and its data as JSON.

What it shows: the verdict; a timeline of the incident across rooms (each publish on its sender's
line, each delivery on its recipient's, joined); publish-to-delivery latency per lane; the table of
expectations with why each failed one failed; the steps (who sent what kind, refused or delivered
to whom after how long); and the audit entries the drill produced. Only ids, agency names, kinds,
field paths and times: never a payload's values (names, phone numbers, plates, free text).
matplotlib (the `reports` extra) draws the plots, off screen.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from broker.audit.query import Row
from broker.drill.expect import Check, Observations
from broker.drill.scenario import Scenario

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1f24; max-width: 72rem; }
h1 { margin-bottom: .2rem; } .sub { color: #57606a; margin-top: 0; }
.verdict { font-size: 1.2rem; padding: .6rem 1rem; border-radius: .4rem; display: inline-block; }
.pass { background: #dafbe1; color: #116329; } .fail { background: #ffebe9; color: #a40e26; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; width: 100%; font-size: .9rem; }
th, td { border-bottom: 1px solid #d0d7de; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.ok { color: #116329; font-weight: 600; } td.ko { color: #a40e26; font-weight: 600; }
img { max-width: 100%; border: 1px solid #d0d7de; border-radius: .3rem; }
code { font-size: .85rem; }
"""


def report_data(
    scenario: Scenario, seen: Observations, checks: Sequence[Check], audit: Sequence[Row] = ()
) -> dict[str, Any]:
    """The report as data: the verdict, per step when it was published and who received it when, the audit rows.

    A published step's at_s is its time in seconds from the first publish of the drill.
    """
    first = min((p.at for p in seen.published.values()), default=0.0)
    steps = []
    for step in scenario.steps:
        published = seen.published.get(step.id)
        deliveries = []
        if published is not None and published.distribution_id:
            got: set[str] = set()
            for r in seen.received:
                if r.envelope.distribution_id != published.distribution_id:
                    continue
                deliveries.append(
                    {
                        "agency": r.agency,
                        "after_ms": round((r.at - published.at) * 1000, 1),
                        "lane": r.lane,
                        "again": r.agency in got,  # a copy the room's client received before (not acknowledged)
                    }
                )
                got.add(r.agency)
        steps.append(
            {
                "step": step.id,
                **({"at_s": round(published.at - first, 3)} if published is not None else {}),
                "say": step.say,
                "from": step.sender,
                "kind": step.kind,
                "payload": next(iter(step.payload), ""),
                "distribution_id": published.distribution_id if published else "",
                "refused": " ".join(published.refused) if published and published.refused else "",
                "refusal": published.message if published and published.refused else "",
                "deliveries": deliveries,
            }
        )
    return {
        "scenario": scenario.id,
        "title": scenario.title,
        "status": scenario.status,
        "rooms": [{"agency": r.agency, "name": r.name, "kind": r.kind} for r in scenario.rooms],
        "passed": all(c.passed for c in checks),
        "checks": [{"step": c.step, "what": c.what, "passed": c.passed, "why": c.why} for c in checks],
        "steps": steps,
        "audit": [asdict(row) for row in audit],
    }


def _png(figure: Any) -> str:
    """A matplotlib figure as a data: URI (the report carries its images)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(data: dict[str, Any]) -> tuple[str, str]:
    """The timeline and the latency plot, as data: URIs."""
    import matplotlib as mpl  # noqa: PLC0415 - only the report needs it (the `reports` extra)

    mpl.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    rooms = [r["agency"] for r in data["rooms"]]
    names = {r["agency"]: r["name"] for r in data["rooms"]}
    row = {agency: i for i, agency in enumerate(reversed(rooms))}
    published_at = {s["step"]: s["at_s"] for s in data["steps"] if "at_s" in s}
    figure, axes = plt.subplots(figsize=(10, 0.6 * len(rooms) + 1.6))
    for step in data["steps"]:
        start = published_at.get(step["step"])
        if start is None:
            continue
        y = row[step["from"]]
        colour = "#a40e26" if step["refused"] else "#0969da"
        axes.plot([start], [y], marker="s" if not step["refused"] else "X", color=colour, markersize=8, zorder=3)
        axes.annotate(step["step"], (start, y), textcoords="offset points", xytext=(4, 6), fontsize=7, color=colour)
        for delivery in step["deliveries"]:
            at = start + delivery["after_ms"] / 1000
            axes.plot([start, at], [y, row[delivery["agency"]]], color="#8c959f", linewidth=0.8, zorder=1)
            axes.plot([at], [row[delivery["agency"]]], marker="o", color="#1a7f37", markersize=5, zorder=2)
    axes.set_yticks(range(len(rooms)), [names[a] for a in reversed(rooms)], fontsize=8)
    axes.set_xlabel("seconds since the first step (square: published, cross: refused, dot: delivered)")
    axes.set_title("The incident across rooms")
    axes.grid(axis="x", alpha=0.3)
    timeline = _png(figure)
    plt.close(figure)

    lanes: dict[str, list[float]] = {}
    for step in data["steps"]:
        for delivery in step["deliveries"]:
            lanes.setdefault(delivery["lane"] or "?", []).append(delivery["after_ms"])
    figure, axes = plt.subplots(figsize=(10, 2.8))
    names_of_lanes = sorted(lanes)
    if names_of_lanes:
        axes.boxplot([lanes[n] for n in names_of_lanes], vert=False, showfliers=True)
        for i, name in enumerate(names_of_lanes, 1):
            axes.scatter(lanes[name], [i] * len(lanes[name]), s=12, color="#0969da", alpha=0.7, zorder=3)
        axes.set_yticks(range(1, len(names_of_lanes) + 1), names_of_lanes)
    axes.set_xlabel("publish to delivery, ms (each dot one delivery)")
    axes.set_title("Latency per lane")
    axes.grid(axis="x", alpha=0.3)
    latency = _png(figure)
    plt.close(figure)
    return timeline, latency


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()) -> str:
    out = ["<table><thead><tr>", *(f"<th>{html.escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for i, cells in enumerate(rows):
        out.append("<tr>")
        for j, cell in enumerate(cells):
            cls = f' class="{classes[i]}"' if classes and j == 2 else ""
            out.append(f"<td{cls}>{html.escape(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(data: dict[str, Any], when: datetime | None = None) -> str:
    """The self-contained HTML report of a drill's data (report_data)."""
    timeline, latency = _plots(data)
    checks = data["checks"]
    failed = [c for c in checks if not c["passed"]]
    verdict = (
        f'<p class="verdict pass" id="verdict">PASSED: {len(checks)} of {len(checks)} expectations</p>'
        if not failed
        else f'<p class="verdict fail" id="verdict">FAILED: {len(failed)} of {len(checks)} expectations failed</p>'
    )
    expectation_rows = [[c["step"], c["what"], "PASS" if c["passed"] else "FAIL", c["why"]] for c in checks]
    step_rows = []
    for s in data["steps"]:
        outcome = (
            f"refused {s['refused']}: {s['refusal']}"
            if s["refused"]
            else ", ".join(
                f"{d['agency']}{' again' if d['again'] else ''} {d['after_ms']:.0f} ms ({d['lane']})"
                for d in s["deliveries"]
            )
        )
        step_rows.append([s["step"], s["from"], f"{s['kind']} {s['payload']}", outcome or "nothing delivered"])
    audit_rows = [
        [str(r["position"]), r["action"], r["agency"], r["recipient"], r["distribution_id"], r["rule"],
         ", ".join(r["withheld"])]
        for r in data["audit"]
    ]  # fmt: skip
    rooms = ", ".join(f"{r['name']} ({r['agency']})" for r in data["rooms"])
    stamp = (when or datetime.now(UTC)).isoformat(timespec="seconds")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Drill {html.escape(data["scenario"])}</title>
<style>{_STYLE}</style></head>
<body onload="document.body.dataset.images=[...document.images].filter(i=>i.complete&&i.naturalWidth>0).map(i=>i.id).join(',')">
<h1>Drill: {html.escape(data["title"])}</h1>
<p class="sub">scenario <code>{html.escape(data["scenario"])}</code>, traffic {html.escape(data["status"])}, run {stamp}; rooms: {html.escape(rooms)}</p>
{verdict}
<h2>Timeline</h2>
<img id="timeline" alt="timeline of the incident across rooms" src="{timeline}">
<h2>Latency per lane</h2>
<img id="latency" alt="publish to delivery latency per lane" src="{latency}">
<h2>Expectations</h2>
{_table(["step", "expectation", "verdict", "why"], expectation_rows, ["ok" if c["passed"] else "ko" for c in checks])}
<h2>Steps</h2>
{_table(["step", "from", "what", "outcome"], step_rows)}
<h2>Audit entries of the drill</h2>
<p class="sub">The records the hub's audit log holds for the drill's envelopes: ids and field paths, never values.</p>
{_table(["position", "action", "agency", "recipient", "distribution id", "rule", "withheld"], audit_rows)}
</body></html>
"""  # noqa: E501 - HTML template


def render_load_html(data: dict[str, Any], summary: Sequence[str], when: datetime | None = None) -> str:
    """The load mode's page: what was offered, per lane the deliveries and their latency, the hub's cost."""
    lanes = [
        [lane, str(v["deliveries"]), f"{v['p50_ms']:.1f}", f"{v['p99_ms']:.1f}", f"{v['p999_ms']:.1f}"]
        for lane, v in data["lanes"].items()
    ]
    stamp = (when or datetime.now(UTC)).isoformat(timespec="seconds")
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in (summary[0], summary[-1]))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Load drill</title><style>{_STYLE}</style></head>
<body><h1>Load drill: {data["rooms"]} rooms, {data["rate"]:g} events/s, {data["duration_s"]:g} s</h1>
<p class="sub">run {stamp}; the hub in its own process, measured from /proc</p>
<ul>{lines}</ul>
<h2>Publish to delivery, per lane</h2>
{_table(["lane", "deliveries", "p50 ms", "p99 ms", "p999 ms"], lanes)}
</body></html>
"""
