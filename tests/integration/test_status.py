"""`opsroom status` against a running hub: a room online, one offline with deliveries waiting, as text and JSON."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opsroom_client import HubClient

from broker.dev.testing import LocalHub
from tests import factories as f
from tests.integration.conftest import AGENCIES

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ONLINE_LIVENESS = 60.0  # the room's session is recorded within this (well under a second)


def config(env: LocalHub, path: Path) -> Path:
    agencies = "".join(f'[[agencies]]\nid = "{agency}"\nname = "{name}"\n' for agency, name in AGENCIES.items())
    path.write_text(
        f"""[hub]
listen = "127.0.0.1:0"
[tls]
ca_file = "{env.pki.ca}"
cert_file = "{env.pki.hub.cert}"
key_file = "{env.pki.hub.key}"
[nats]
servers = ["{env.nats.url}"]
monitor_urls = ["{env.nats.monitor_url}"]
[audit]
signing_key = "{env.pki.audit_key}"
{agencies}[[allow]]
from = ["{f.CUR}"]
to = ["{f.CUR}"]
""",
        encoding="utf-8",
    )
    return path


def status(cfg: Path, *extra: str) -> str:
    done = subprocess.run([sys.executable, "-m", "broker", "status", "--config", str(cfg), *extra],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_status_shows_who_is_online_and_what_waits_for_whom(
    hub: LocalHub, clients: dict[str, HubClient], tmp_path: Path
) -> None:
    cfg = config(hub, tmp_path / "hub.toml")
    inbox = clients[f.PL].inbox()
    before = datetime.now(UTC)
    for _ in range(3):
        await clients[f.CUR].publish(f.envelope(f.CUR, (f.QUESTURA,), sent=datetime.now(UTC)))
    await clients[f.CUR].publish(f.envelope(f.CUR, (f.PL,), sent=datetime.now(UTC)))
    async with asyncio.timeout(ONLINE_LIVENESS):
        delivery = await inbox.__anext__()  # the Polizia Locale's room is connected and acknowledges it
    inbox.ack(delivery)
    pending = asyncio.ensure_future(inbox.__anext__())
    try:
        async with asyncio.timeout(ONLINE_LIVENESS):
            while True:
                data = json.loads(await asyncio.to_thread(status, cfg, "--json"))
                rooms = {a["agency_id"]: a for a in data["agencies"]}
                if rooms[f.PL]["online"] and rooms[f.PL]["last_ack"] is not None:
                    break
                await asyncio.sleep(0.2)
    finally:
        pending.cancel()
    assert rooms[f.QUESTURA]["online"] is False
    assert rooms[f.QUESTURA]["waiting"]["urgent"] == 3
    oldest = rooms[f.QUESTURA]["oldest_unacked"]["urgent"]
    assert 0 <= oldest <= (datetime.now(UTC) - before).total_seconds() + 1
    assert rooms[f.QUESTURA]["last_ack"] is None
    assert datetime.fromisoformat(rooms[f.PL]["last_ack"]) >= before - timedelta(seconds=1)
    assert rooms[f.PL]["oldest_unacked"] == {}
    assert rooms[f.PL]["replica"] in data["replicas"]
    assert {s["name"] for s in data["streams"]} >= {"OPSROOM", "OPSROOM_BULK", "OPSROOM_AUDIT"}
    assert data["servers"][0]["reachable"] is True
    assert data["escalation_timers"] == 0

    text = await asyncio.to_thread(status, cfg)
    first_row = next(line for line in text.splitlines() if line.startswith("it."))
    assert first_row.split()[:2] == [f.QUESTURA, "OFFLINE"]
    assert f"room(s) offline with deliveries waiting: {f.QUESTURA}" in text
    assert "escalation deadlines running: 0" in text


async def test_the_waiting_metric_counts_an_offline_rooms_deliveries(
    hub: LocalHub, clients: dict[str, HubClient]
) -> None:
    for _ in range(3):
        await clients[f.CUR].publish(f.envelope(f.CUR, (f.QUESTURA,), sent=datetime.now(UTC)))
    url = f"http://127.0.0.1:{hub.hub.metrics_port}/metrics"
    line = f'opsroom_waiting{{agency="{f.QUESTURA}",lane="urgent"}} 3.0'
    oldest_of = f'opsroom_oldest_unacked_seconds{{agency="{f.QUESTURA}",lane="urgent"}} '

    def oldest(text: str) -> float:
        return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(oldest_of)), 0.0)

    async with asyncio.timeout(ONLINE_LIVENESS):  # the expiry worker reads the consumers every second
        # (it sets the oldest after the waiting counts of both lanes: a scrape may fall in between)
        while (
            line
            not in (text := await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode()))
            or oldest(text) == 0.0
        ):
            await asyncio.sleep(0.2)
    assert 0 < oldest(text) < ONLINE_LIVENESS
    assert f'opsroom_redelivered{{agency="{f.QUESTURA}",lane="urgent"}} 0.0' in text


async def test_the_hub_reports_each_nats_servers_storage(hub: LocalHub) -> None:
    url = f"http://127.0.0.1:{hub.hub.metrics_port}/metrics"
    server = hub.nats.monitor_url
    async with asyncio.timeout(ONLINE_LIVENESS):  # read at the hub's start, then every 30 s
        while f'opsroom_nats_monitor_up{{server="{server}"}} 1.0' not in (
            text := await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        ):
            await asyncio.sleep(0.2)
    [limit] = [
        line
        for line in text.splitlines()
        if line.startswith(f'opsroom_jetstream_max_storage_bytes{{server="{server}"}}')
    ]
    assert float(limit.split()[-1]) > 0
    assert f'opsroom_jetstream_storage_bytes{{server="{server}"}}' in text
