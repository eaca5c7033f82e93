"""The Grafana dashboards (deploy/grafana): current with their code, valid Grafana models, and every query on real metrics."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.models.dashboard import Dashboard
from opsroom_client import HubClient

from broker.dev.testing import LocalHub
from tests import factories as f
from tests.integration.conftest import take

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
_QUOTED = re.compile(r'"[^"]*"')
_NAME = re.compile(r"\b(opsroom[a-z0-9_:]*|up)\b")


def expressions(node: Any) -> list[str]:
    """Every PromQL expression of a dashboard (panel targets and query variables)."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            found.append(node["expr"])
        if node.get("type") == "query" and isinstance(node.get("query"), str):
            found.append(node["query"])
        for value in node.values():
            found += expressions(value)
    elif isinstance(node, list):
        for value in node:
            found += expressions(value)
    return found


_SUFFIXES = {
    "counter": ("", "_total"),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
    "summary": ("_count", "_sum"),
}


def exported_names(scrape: str) -> set[str]:
    """The series names a scrape declares (by its TYPE lines: a labelled counter not yet counted has no sample)."""
    names: set[str] = set()
    for line in scrape.splitlines():
        if line.startswith("# TYPE "):
            _hash, _type, name, kind = line.split()
            names.update(name + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names


def names_in(expr: str) -> set[str]:
    return set(_NAME.findall(_QUOTED.sub("", expr)))


def test_the_dashboards_are_current_with_their_code() -> None:
    done = subprocess.run([sys.executable, str(GRAFANA / "generate.py"), "--check"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [p.name for p in DASHBOARDS] == ["opsroom-health.json", "opsroom-overview.json", "opsroom-rooms.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_each_dashboard_loads_as_a_grafana_dashboard(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    model = Dashboard.from_json(data)
    assert model.uid == data["uid"]
    assert model.panels
    assert expressions(data)


async def test_every_query_names_only_metrics_the_hub_exports_or_the_rules_record(
    hub: LocalHub, clients: dict[str, HubClient]
) -> None:
    await clients[f.CUR].publish(f.envelope(f.CUR, (f.QUESTURA,), sent=datetime.now(UTC)))
    await take(clients[f.QUESTURA].inbox(), 1)
    url = f"http://127.0.0.1:{hub.hub.metrics_port}/metrics"
    scrape = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    exported = exported_names(scrape)
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "opsroom-rules.yml").read_text(encoding="utf-8"))
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    known = exported | recorded | {"up"}
    unknown = {
        (path.name, name)
        for path in DASHBOARDS
        for expr in expressions(json.loads(path.read_text(encoding="utf-8")))
        for name in names_in(expr)
        if name not in known
    }
    assert unknown == set()


def test_the_name_check_can_fail() -> None:
    assert names_in('sum(rate(opsroom_nope_total{agency="opsroom_x"}[5m]))') == {"opsroom_nope_total"}
