"""Presence through the real hub: which rooms are connected, in metrics and in senders' receipts; silent rooms go offline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from opsroom.hub.v1 import hub_pb2

from broker.dev.testing import LocalHub, local_hub
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW, take

pytestmark = pytest.mark.integration


@pytest.fixture
async def quick_hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    """A hub with a heartbeat every 0.2 s and a presence timeout of 1 s."""
    async with local_hub(
        tmp_path, AGENCIES, ALLOW, heartbeat=timedelta(seconds=0.2), presence_timeout=timedelta(seconds=1)
    ) as env:
        yield env


def online(env: LocalHub, agency: str) -> float | None:
    return env.hub.metrics.registry.get_sample_value("opsroom_room_online", {"agency": agency})


async def test_receipts_and_metrics_say_who_is_connected(quick_hub: LocalHub) -> None:
    """Connected: online with a recent last_seen; after it leaves: offline, last_seen kept; never connected: neither."""
    sender = quick_hub.client(f.CUR)
    room = quick_hub.client(f.QUESTURA)
    inbox = room.inbox()
    env = f.envelope(f.CUR, (f.QUESTURA, f.PL))
    await sender.publish(env)
    await take(inbox, 1)
    await asyncio.sleep(1.5)  # longer than the presence timeout: keepalives keep it online
    receipt = await sender.receipt(env.distribution_id)
    by_agency = {r.agency_id: r for r in receipt.recipients}
    assert by_agency[f.QUESTURA].online
    assert by_agency[f.QUESTURA].last_seen.seconds > 0
    assert not by_agency[f.PL].online
    assert not by_agency[f.PL].HasField("last_seen")
    assert 1.0 == online(quick_hub, f.QUESTURA)
    assert 0 == inbox.reconnects

    await room.close()
    receipt = await sender.receipt(env.distribution_id)
    left = {r.agency_id: r for r in receipt.recipients}[f.QUESTURA]
    assert not left.online
    assert left.last_seen.seconds > 0
    assert 0.0 == online(quick_hub, f.QUESTURA)
    await sender.close()


async def test_a_silent_room_goes_offline_and_its_session_ends(quick_hub: LocalHub) -> None:
    """A client that opens a session and then never answers a heartbeat is ended with ROOM_SILENT."""
    room = quick_hub.client(f.QUESTURA)
    call = room.connect_call()  # a bare Connect stream: no keepalive answers
    await call.write(hub_pb2.ConnectRequest(open=hub_pb2.OpenSession()))
    started = asyncio.get_running_loop().time()

    async def read_to_end() -> None:
        while await call.read() is not grpc.aio.EOF:
            pass

    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(read_to_end(), 10)
    assert grpc.StatusCode.UNAVAILABLE == ended.value.code()
    assert "presence timeout" in (ended.value.details() or "")
    assert 0.9 <= asyncio.get_running_loop().time() - started <= 5
    assert 0.0 == online(quick_hub, f.QUESTURA)
    sender = quick_hub.client(f.CUR)
    env = f.envelope(f.CUR, (f.QUESTURA,))
    await sender.publish(env)
    receipt = await sender.receipt(env.distribution_id)
    assert not receipt.recipients[0].online
    await room.close()
    await sender.close()
