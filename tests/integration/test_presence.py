"""Presence through the real hub: which rooms are connected, in metrics and in senders' receipts; silent rooms go offline.

The presence timeout (60 s) runs on the hub's clock, which the tests move; heartbeats come every
0.2 s of real time, and the tests wait for them, not for a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from opsroom.hub.v1 import hub_pb2
from opsroom_client import Inbox

from broker.dev.testing import LocalHub, local_hub
from broker.times import ManualClock
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW, take

pytestmark = pytest.mark.integration


PRESENCE_TIMEOUT = 60.0  # seconds on the hub's clock (the default)
HEARTBEATS_WAIT = 10.0  # liveness: a few heartbeats arrive (one every 0.2 s)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC))


@pytest.fixture
async def quick_hub(tmp_path: Path, clock: ManualClock) -> AsyncIterator[LocalHub]:
    """A hub on a clock the test moves, with a heartbeat every 0.2 s."""
    async with local_hub(tmp_path, AGENCIES, ALLOW, heartbeat=timedelta(seconds=0.2), clock=clock) as env:
        yield env


async def heartbeats(inbox: Inbox, count: int) -> None:
    """Wait until the inbox has received (and answered) count more heartbeats."""
    target = inbox.heartbeats + count
    async with asyncio.timeout(HEARTBEATS_WAIT):
        while inbox.heartbeats < target:
            await asyncio.sleep(0.05)


def online(env: LocalHub, agency: str) -> float | None:
    return env.hub.metrics.registry.get_sample_value("opsroom_room_online", {"agency": agency})


async def test_receipts_and_metrics_say_who_is_connected(quick_hub: LocalHub, clock: ManualClock) -> None:
    """Connected: online with a recent last_seen; after it leaves: offline, last_seen kept; never connected: neither."""
    sender = quick_hub.client(f.CUR)
    room = quick_hub.client(f.QUESTURA)
    inbox = room.inbox()
    env = f.envelope(f.CUR, (f.QUESTURA, f.PL))
    await sender.publish(env)
    await take(inbox, 1)
    for _ in range(3):  # 120 s on the hub's clock, twice the presence timeout: keepalives keep it online
        clock.advance(PRESENCE_TIMEOUT * 2 / 3)
        await heartbeats(inbox, 3)  # answered: the room was heard from after the clock moved
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


async def test_a_silent_room_goes_offline_and_its_session_ends(quick_hub: LocalHub, clock: ManualClock) -> None:
    """A client that opens a session and then never answers a heartbeat is ended with ROOM_SILENT, once the timeout passed."""
    room = quick_hub.client(f.QUESTURA)
    call = room.connect_call()  # a bare Connect stream: no keepalive answers
    await call.write(hub_pb2.ConnectRequest(open=hub_pb2.OpenSession()))
    async with asyncio.timeout(HEARTBEATS_WAIT):
        assert "opened" == (await call.read()).WhichOneof("response")
        for _ in range(3):  # unanswered, but the hub's clock has not moved: the session goes on
            assert "heartbeat" == (await call.read()).WhichOneof("response")
    assert 1.0 == online(quick_hub, f.QUESTURA)

    async def read_to_end() -> None:
        while await call.read() is not grpc.aio.EOF:
            pass

    clock.advance(PRESENCE_TIMEOUT + 1)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(read_to_end(), HEARTBEATS_WAIT)
    assert grpc.StatusCode.UNAVAILABLE == ended.value.code()
    assert "presence timeout" in (ended.value.details() or "")
    assert 0.0 == online(quick_hub, f.QUESTURA)
    sender = quick_hub.client(f.CUR)
    env = f.envelope(f.CUR, (f.QUESTURA,))
    await sender.publish(env)
    receipt = await sender.receipt(env.distribution_id)
    assert not receipt.recipients[0].online
    await room.close()
    await sender.close()
