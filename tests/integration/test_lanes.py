"""Priority lanes through the real hub: urgent deliveries overtake a bulk backlog; each lane keeps its order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opsroom.common.v1 import common_pb2
from opsroom.hub.v1 import hub_pb2, hub_pb2_grpc
from opsroom_client import HubClient

from broker.dev.testing import LocalHub, credentials, local_hub
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW, nothing_more, take

pytestmark = pytest.mark.integration

READ_INCIDENT = "urn:emergency:uid:incidentid:transits:pl.torino.it"
# Liveness bound for waits on a flood: ten times what the flood takes at its ceiling.
LIVENESS = 60.0


async def publish_reads(sender: HubClient, count: int) -> list[str]:
    """count plate reads (bulk) to the Questura; their distribution ids in publish order."""
    reads = [
        f.envelope(f.CUR, (f.QUESTURA,), incident_ids=(READ_INCIDENT,), alert=f.plate_read()) for _ in range(count)
    ]
    results = await sender.publish_many(reads)
    assert all(isinstance(r, hub_pb2.Acceptance) for r in results), results[:3]
    return [r.distribution_id for r in reads]


async def test_urgent_events_overtake_a_waiting_bulk_backlog(hub: LocalHub) -> None:
    """Reads sent first wait; the incident's three events sent after them are handed over first, in order."""
    sender = hub.client(f.CUR)
    reads = await publish_reads(sender, 300)
    events = [f.envelope(f.CUR, (f.QUESTURA,), kind=k) for k in (common_pb2.KIND_REPORT, common_pb2.KIND_UPDATE)]
    events.append(f.envelope(f.CUR, (f.QUESTURA,), kind=common_pb2.KIND_UPDATE))
    for env in events:
        await sender.publish(env)

    room = hub.client(f.QUESTURA)
    inbox = room.inbox(window=64, max_batch=16)
    inbox.start()
    await asyncio.wait_for(inbox.opened.wait(), 10)
    assert 303 == inbox.backlog_at_open  # backlog itself moves with each frame read meanwhile
    await asyncio.sleep(0.5)  # both lanes' first frames are in
    got = await take(inbox, 303)
    assert [e.distribution_id for e in events] == [d.envelope.distribution_id for d in got[:3]]
    assert {hub_pb2.LANE_URGENT} == {d.lane for d in got[:3]}
    assert reads == [d.envelope.distribution_id for d in got[3:]]
    assert {hub_pb2.LANE_BULK} == {d.lane for d in got[3:]}
    await nothing_more(inbox, 0.3)
    await room.close()

    receipt = await sender.receipt(reads[-1])  # acknowledged on the bulk lane's consumer
    for _ in range(100):
        if receipt.recipients[0].state == hub_pb2.DELIVERY_STATE_DELIVERED:
            break
        await asyncio.sleep(0.05)
        receipt = await sender.receipt(reads[-1])
    assert hub_pb2.DELIVERY_STATE_DELIVERED == receipt.recipients[0].state
    await sender.close()


async def test_an_urgent_event_is_not_stuck_behind_a_long_bulk_backlog(hub: LocalHub) -> None:
    """While a room works through 1,000 reads, an incident published meanwhile arrives within about a window."""
    sender = hub.client(f.CUR)
    reads = await publish_reads(sender, 1000)
    room = hub.client(f.QUESTURA)
    inbox = room.inbox(window=64, max_batch=16)
    first = await take(inbox, 10)
    assert reads[:10] == [d.envelope.distribution_id for d in first]

    urgent = f.envelope(f.CUR, (f.QUESTURA,))
    await sender.publish(urgent)
    position = None
    seen: list[str] = []
    for index in range(1000):
        [delivery] = await take(inbox, 1)
        if delivery.envelope.distribution_id == urgent.distribution_id:
            position = index
            break
        seen.append(delivery.envelope.distribution_id)
    assert position is not None
    assert position < 4 * 64, f"the urgent event came after {position} reads"
    assert reads[10 : 10 + len(seen)] == seen  # the bulk lane kept its order around it
    rest = await take(inbox, 1000 - 10 - len(seen))
    assert reads[10 + len(seen) :] == [d.envelope.distribution_id for d in rest]
    await room.close()
    await sender.close()


async def test_both_lanes_resume_from_their_own_acknowledgements(hub: LocalHub) -> None:
    """A room that took part of each lane and left gets exactly the rest of each, nothing twice."""
    sender = hub.client(f.CUR)
    reads = await publish_reads(sender, 40)
    events = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(20)]
    for env in events:
        await sender.publish(env)
    room = hub.client(f.QUESTURA)
    inbox = room.inbox(window=16, max_batch=4)
    inbox.start()
    await asyncio.wait_for(inbox.opened.wait(), 10)
    await asyncio.sleep(0.5)
    first = await take(inbox, 25)  # the 20 urgent ones, then 5 reads
    await room.close()

    again = hub.client(f.QUESTURA)
    rest = await take(again.inbox(window=16, max_batch=4), 35)
    got = [d.envelope.distribution_id for d in first + rest]
    assert sorted(got) == sorted([e.distribution_id for e in events] + reads)
    assert [e.distribution_id for e in events] == [d for d in got if d not in set(reads)]
    assert reads == [d for d in got if d in set(reads)]
    await nothing_more(again.inbox(), 0.3)
    await again.close()
    await sender.close()


class RawRoom:
    """A room's Connect stream on a generated stub: records the order in which the hub sends deliveries, acks each frame."""

    def __init__(self, hub: LocalHub, agency: str) -> None:
        creds = credentials(hub.pki, agency)
        self.channel = grpc.aio.secure_channel(
            hub.target,
            grpc.ssl_channel_credentials(creds.ca, creds.key, creds.cert),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        self.order: list[str] = []  # distribution ids, as the hub sent them
        self.arrived = asyncio.Event()
        self._acks: asyncio.Queue[hub_pb2.ConnectRequest | None] = asyncio.Queue()
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._acks.put_nowait(hub_pb2.ConnectRequest(open=hub_pb2.OpenSession(max_batch=16, window=64)))
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self._opened.wait(), 10)

    async def _requests(self) -> AsyncIterator[hub_pb2.ConnectRequest]:
        while (request := await self._acks.get()) is not None:
            yield request

    async def _run(self) -> None:
        stub = hub_pb2_grpc.HubServiceStub(self.channel)
        async for response in stub.Connect(self._requests()):
            which = response.WhichOneof("response")
            if which == "opened":
                self._opened.set()
            elif which == "heartbeat":
                self._acks.put_nowait(hub_pb2.ConnectRequest(keepalive=hub_pb2.KeepAlive()))
            elif which == "deliveries":
                batch = response.deliveries.deliveries
                self.order.extend(d.envelope.distribution_id for d in batch)
                ack = hub_pb2.AckDeliveries(sequences=[d.sequence for d in batch])
                self._acks.put_nowait(hub_pb2.ConnectRequest(ack=ack))
                self.arrived.set()

    async def wait_for(self, count: int, within: float) -> None:
        """Until count deliveries have arrived (at most within seconds)."""
        async with asyncio.timeout(within):
            while len(self.order) < count:
                self.arrived.clear()
                await self.arrived.wait()

    async def close(self) -> None:
        self._acks.put_nowait(None)
        if self._task is not None:
            await asyncio.wait_for(asyncio.gather(self._task, return_exceptions=True), 10)
        await self.channel.close()


async def test_urgent_events_overtake_a_live_bulk_flood_at_its_ceiling(tmp_path: Path) -> None:
    """While one agency floods the bulk lane above its ceiling to a connected room, urgent events sent later arrive first.

    The Polizia Locale's plate reader sends 1,000 reads over one PublishStream, four times what
    the bulk ceiling (250/s) lets in per second; once the room has some of them, the CUR
    publishes an incident and the plate reader sends a hit (urgent) on the same stream, behind
    its own queued reads. Each urgent event reaches the room before the reads sent before it
    have all been delivered: at least half of the reads the room did not have yet when it was
    sent arrive after it (the ceiling holds those for seconds; the urgent lane takes
    milliseconds). Each lane keeps its order.
    """
    async with local_hub(tmp_path, AGENCIES, ALLOW, bulk_max_per_second=250) as hub:
        room = RawRoom(hub, f.QUESTURA)
        await room.open()
        reader = hub.client(f.PL)
        stream = reader.stream_publisher(max_batch=100, max_requests_in_flight=32)
        reads = [
            f.envelope(f.PL, (f.QUESTURA,), incident_ids=(READ_INCIDENT,), alert=f.plate_read()) for _ in range(1000)
        ]
        flood = [asyncio.get_running_loop().create_task(stream.publish(read)) for read in reads]
        await room.wait_for(50, within=LIVENESS)  # the flood is live: the room is taking reads

        cur = hub.client(f.CUR)
        incident = f.envelope(f.CUR, (f.QUESTURA,))
        had = {incident.distribution_id: len(room.order)}  # deliveries the room had when it was sent
        await cur.publish(incident)
        hit = f.envelope(f.PL, (f.QUESTURA,), incident_ids=(READ_INCIDENT,), alert=f.alert())
        had[hit.distribution_id] = len(room.order)
        await stream.publish(hit)

        async with asyncio.timeout(LIVENESS):
            await asyncio.gather(*flood)
        await room.wait_for(1002, within=LIVENESS)
        order = room.order
        read_ids = [r.distribution_id for r in reads]
        for urgent, name in ((incident, "the incident"), (hit, "the hit")):
            position = order.index(urgent.distribution_id)
            later_reads = [d for d in order[position + 1 :] if d in set(read_ids)]
            waiting = len(reads) - had[urgent.distribution_id]  # reads sent before it, not delivered yet
            assert len(later_reads) >= waiting // 2, f"{name} came after {waiting - len(later_reads)} of {waiting}"
        assert read_ids == [d for d in order if d in set(read_ids)]  # the bulk lane kept its order
        assert sorted([*read_ids, incident.distribution_id, hit.distribution_id]) == sorted(order)
        await stream.close()
        await room.close()
        await reader.close()
        await cur.close()
