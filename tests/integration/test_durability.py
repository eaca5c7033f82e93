"""Acknowledged means stored: the hub acknowledges only what a sync-always nats-server has stored, and it survives kill -9."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
from opsroom_client import HubClient, RetryPolicy

from broker.dev.certs import make_dev_pki
from broker.dev.embedded import NatsServer
from broker.dev.testing import LocalHub, credentials, dev_config
from broker.errors import StoreUnavailable
from broker.hub import Hub
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW, take

pytestmark = pytest.mark.integration

PATIENT = RetryPolicy(attempts=20, first_delay=0.1, max_delay=0.5, timeout=5)


def varz(monitor_url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{monitor_url}/varz", timeout=5) as response:
        data: dict[str, object] = json.load(response)
        return data


async def test_server_runs_with_sync_always(hub: LocalHub) -> None:
    """The test server, like every server the hub accepts, reports sync_always in its /varz."""
    jetstream = varz(hub.nats.monitor_url)["jetstream"]
    assert isinstance(jetstream, dict)
    assert jetstream["config"]["sync_always"] is True


async def test_acknowledged_event_survives_kill_9_of_nats(hub: LocalHub) -> None:
    """Right after the hub acknowledges, kill -9 the nats-server, restart it: every acknowledged event is delivered."""
    sender = hub.client(f.CUR, retry=PATIENT)
    sent = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(20)]
    results = await sender.publish_many(sent, batch_size=5)
    assert all(r.distribution_id == e.distribution_id for r, e in zip(results, sent, strict=True))  # type: ignore[union-attr]
    hub.nats.kill()  # SIGKILL: no flush, no clean shutdown
    hub.nats.start()  # same folder, same ports: the hub's connection comes back by itself

    room = hub.client(f.QUESTURA, retry=PATIENT)
    deliveries = await take(room.inbox(), 20, timeout=60)
    assert [e.distribution_id for e in sent] == [d.envelope.distribution_id for d in deliveries]

    after = f.envelope(f.CUR, (f.QUESTURA,))
    await sender.publish(after)  # the hub works again
    [late] = await take(room.inbox(), 1, timeout=30)
    assert after.distribution_id == late.envelope.distribution_id
    await room.close()
    await sender.close()


async def test_publish_during_outage_is_refused_then_stored_once(hub: LocalHub) -> None:
    """While nats-server is down the hub refuses with UNAVAILABLE; the client's retry with the same id lands once."""
    sender = hub.client(f.CUR, retry=PATIENT)
    env = f.envelope(f.CUR, (f.QUESTURA,))
    hub.nats.kill()
    publishing = asyncio.ensure_future(sender.publish(env))
    await asyncio.sleep(1.0)
    assert not publishing.done()  # the client keeps retrying: nothing was acknowledged
    hub.nats.start()
    acceptance = await asyncio.wait_for(publishing, timeout=60)
    assert env.distribution_id == acceptance.distribution_id

    room = hub.client(f.QUESTURA, retry=PATIENT)
    inbox = room.inbox()
    [delivery] = await take(inbox, 1, timeout=60)
    assert env.distribution_id == delivery.envelope.distribution_id
    await room.close()
    await sender.close()


async def test_hub_refuses_a_server_without_sync_always(tmp_path: Path) -> None:
    """A nats-server with the default sync interval is refused at hub start, with a message saying why."""
    nats = NatsServer(tmp_path / "nats", sync_always=False)
    nats.start()
    try:
        assert not varz(nats.monitor_url)["jetstream"]["config"].get("sync_always")  # type: ignore[index]
        pki = make_dev_pki(tmp_path / "pki", AGENCIES)
        hub = Hub(dev_config(pki, nats, AGENCIES, ALLOW))
        with pytest.raises(StoreUnavailable) as caught:
            await hub.start()
        assert "sync_interval: always" in caught.value.message
        await hub.stop(grace=0)
    finally:
        nats.stop()


async def test_stored_deliveries_survive_a_hub_restart(hub: LocalHub) -> None:
    """Stop the hub with deliveries pending, start a new one on the same stream: the room gets them all."""
    sender = hub.client(f.CUR)
    sent = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(10)]
    await sender.publish_many(sent)
    await sender.close()
    await hub.hub.stop(grace=1)

    replacement = Hub(hub.hub.cfg)
    await replacement.start()
    try:
        room = HubClient(f"127.0.0.1:{replacement.port}", credentials(hub.pki, f.QUESTURA), server_name="localhost")
        deliveries = await take(room.inbox(), 10)
        assert [e.distribution_id for e in sent] == [d.envelope.distribution_id for d in deliveries]
        await room.close()
    finally:
        await replacement.stop(grace=1)
        hub.hub = Hub(hub.hub.cfg)  # the fixture stops this one (never started: a no-op)
