"""Priority lanes through the real hub: urgent deliveries overtake a bulk backlog; each lane keeps its order."""

from __future__ import annotations

import asyncio

import pytest
from opsroom.common.v1 import common_pb2
from opsroom.hub.v1 import hub_pb2

from broker.client import HubClient
from broker.testing import LocalHub
from tests import factories as f
from tests.integration.conftest import nothing_more, take

pytestmark = pytest.mark.integration

READ_INCIDENT = "urn:emergency:uid:incidentid:transits:pl.torino.it"


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
