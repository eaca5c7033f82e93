"""A real Prometheus, with the shipped scrape config and rules, scraping a running hub.

Prometheus (Debian's package; .ci/run installs it) is started on 127.0.0.1 with
deploy/prometheus/prometheus.yml, its target moved to the test hub's ops endpoint and its
intervals shortened; after traffic the target is up, the service-level recording rules return
data, and no alert of the shipped rules fires. `promtool check metrics` on a real scrape is clean.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from opsroom_client import HubClient

from broker.dev.embedded import free_port
from broker.dev.testing import LocalHub
from tests import factories as f
from tests.integration.conftest import take

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "prometheus"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
READY_LIVENESS = 60.0  # Prometheus is ready and has scraped and evaluated within this (a few seconds)

if (PROMETHEUS is None or PROMTOOL is None) and os.environ.get("OPSROOM_REQUIRE_PROMTOOL") != "1":
    pytest.skip("prometheus not installed (Debian: apt install prometheus)", allow_module_level=True)


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def answer_or_nothing(port: int, expr: str) -> list[dict[str, Any]]:
    """The query's result, or nothing while Prometheus is not listening yet."""
    try:
        return query(port, expr)
    except OSError:
        return []


async def until(port: int, expr: str) -> list[dict[str, Any]]:
    """The query's result once it is not empty (within the liveness bound)."""
    try:
        async with asyncio.timeout(READY_LIVENESS):
            while not (result := await asyncio.to_thread(answer_or_nothing, port, expr)):
                await asyncio.sleep(0.5)
    except TimeoutError:
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=10))
        health = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets["data"]["activeTargets"]]
        raise AssertionError(f"no result for {expr} within {READY_LIVENESS} s; targets: {health}") from None
    return result


async def test_prometheus_scrapes_the_hub_and_the_rules_return_data(
    hub: LocalHub, clients: dict[str, HubClient], tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    metrics_port = hub.hub.metrics_port
    assert metrics_port
    config = yaml.safe_load((SHIPPED / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(SHIPPED / "opsroom-rules.yml")]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    assert PROMETHEUS is not None
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    processes.append(proc)

    async def traffic() -> None:  # a rate needs traffic while Prometheus scrapes (without, the ratios are NaN)
        while True:
            await clients[f.CUR].publish(f.envelope(f.CUR, (f.QUESTURA,), sent=datetime.now(UTC)))
            await take(clients[f.QUESTURA].inbox(), 1)
            await asyncio.sleep(0.2)

    sender = asyncio.create_task(traffic())
    try:
        [up] = await until(port, 'up{job="opsroom-hub"} == 1')
        assert up["value"][1] == "1"
        [delivered] = await until(port, "opsroom:delivery_over_1s:ratio_rate5m >= 0")
        assert float(delivered["value"][1]) < 0.5
        await until(port, "opsroom:publish_ack_over_500ms:ratio_rate5m >= 0")
        [failures] = await until(port, "opsroom:publish_hub_failures:ratio_rate5m >= 0")
        assert float(failures["value"][1]) == 0
        firing = await asyncio.to_thread(query, port, 'ALERTS{alertstate="firing"}')
        assert firing == []
    finally:
        sender.cancel()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


async def test_promtool_finds_the_hubs_metrics_clean(hub: LocalHub, clients: dict[str, HubClient]) -> None:
    await clients[f.CUR].publish(f.envelope(f.CUR, (f.QUESTURA,), sent=datetime.now(UTC)))
    url = f"http://127.0.0.1:{hub.hub.metrics_port}/metrics"
    scrape = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
