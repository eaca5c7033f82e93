"""Several hub replicas against one nats-server: any replica serves any room, one session per agency across them,
and a room whose replica stops reconnects to another without losing anything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import grpc
import pytest
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, HubError, RetryPolicy

from broker.delivery import handoff
from broker.dev.testing import LocalHub, credentials
from broker.hub import Hub
from broker.lanes import Lane
from tests import factories as f
from tests.integration.conftest import take

pytestmark = pytest.mark.integration

PATIENT = RetryPolicy(attempts=40, first_delay=0.05, max_delay=0.5, timeout=10)


@dataclass
class Replicas:
    """The fixture's first hub (from local_hub) and a second one on the same nats-server."""

    env: LocalHub
    second: Hub

    def client(self, agency: str, *hubs: Hub) -> HubClient:
        """A client of the given replicas: gRPC tries their addresses in order and moves on when one fails."""
        target = "ipv4:" + ",".join(f"127.0.0.1:{h.port}" for h in hubs)
        return HubClient(target, credentials(self.env.pki, agency), server_name="localhost", retry=PATIENT)


@pytest.fixture
async def replicas(hub: LocalHub) -> AsyncIterator[Replicas]:
    """A second replica: the same config but its own port and audit writer name."""
    cfg = hub.hub.cfg
    assert cfg.audit is not None
    second = Hub(replace(cfg, listen="127.0.0.1:0", metrics_listen="", audit=replace(cfg.audit, writer="hub-b")))
    await second.start()
    yield Replicas(hub, second)
    await second.stop(grace=1)


async def acked_on_consumer(hub: Hub, agency: str, distribution_id: str) -> None:
    """Wait until the agency's consumer is acknowledged past the envelope's delivery to it (liveness: 10 s)."""
    stored = await hub.js.deliveries_of(distribution_id)
    [delivery] = [d for d in stored if hub.js.layout.parse_delivery(d.subject)[0] == agency]
    async with asyncio.timeout(10):
        while await handoff.agency_floor(hub.js, agency, Lane.URGENT) < delivery.seq:
            await asyncio.sleep(0.02)


async def test_a_room_moving_to_another_replica_ends_its_old_session(replicas: Replicas) -> None:
    """The same agency opening a session on replica B ends its session on replica A; B serves the backlog."""
    first, second = replicas.env.hub, replicas.second
    sender = replicas.client(f.CUR, first)
    on_a = replicas.client(f.QUESTURA, first)
    inbox_a = on_a.inbox(window=16)
    sent = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(6)]
    await sender.publish(sent[0])
    got = await take(inbox_a, 1)
    assert [sent[0].distribution_id] == [d.envelope.distribution_id for d in got]
    # The room on A acknowledged it; once A acked the consumer, B's session starts after it.
    # (Had B opened with the acknowledgement still on its way, B would be handed it again: at least once.)
    await acked_on_consumer(first, f.QUESTURA, sent[0].distribution_id)

    on_b = replicas.client(f.QUESTURA, second)
    inbox_b = on_b.inbox(window=16)
    inbox_b.start()
    await asyncio.wait_for(inbox_b.opened.wait(), 10)

    async def drain_a() -> None:
        async for _ in inbox_a:
            pass

    with pytest.raises(HubError) as ended:
        await asyncio.wait_for(drain_a(), 10)
    assert ("ABORTED", "SESSION_SUPERSEDED") == (ended.value.code.name, ended.value.reason)

    other_sender = replicas.client(f.CUR, second)
    for index, env in enumerate(sent[1:]):
        await (sender if index % 2 else other_sender).publish(env)  # either replica accepts
    rest = await take(inbox_b, 5)
    assert [e.distribution_id for e in sent[1:]] == [d.envelope.distribution_id for d in rest]
    for client in (sender, other_sender, on_a, on_b):
        await client.close()


async def test_a_replica_stopping_under_load_loses_nothing(replicas: Replicas) -> None:
    """Sender and room are connected to replica A (listed first) when it stops; they go on through B: all arrive once, in order."""
    first, second = replicas.env.hub, replicas.second
    sender = replicas.client(f.CUR, first, second)
    room = replicas.client(f.QUESTURA, first, second)
    inbox = room.inbox(window=64)
    sent = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(120)]
    received: list[str] = []

    async def receive() -> None:
        async for delivery in inbox:
            inbox.ack(delivery)
            received.append(delivery.envelope.distribution_id)
            if len(received) >= len(sent):
                return

    receiving = asyncio.get_running_loop().create_task(receive())
    accepted: list[hub_pb2.Acceptance] = []
    for index, env in enumerate(sent):
        if index == 40:
            stopping = asyncio.get_running_loop().create_task(first.stop(grace=0.5))
        accepted.append(await sender.publish(env))
    await stopping
    await asyncio.wait_for(receiving, 30)
    assert [e.distribution_id for e in sent] == [a.distribution_id for a in accepted]
    assert [e.distribution_id for e in sent] == received
    assert inbox.reconnects >= 1
    await sender.close()
    await room.close()


async def test_a_stopped_replica_refuses_and_the_client_says_which(replicas: Replicas) -> None:
    """A client of a single stopped replica gets UNAVAILABLE (retryable), not a hang."""
    first = replicas.env.hub
    port = first.port
    await first.stop(grace=0.5)
    client = HubClient(
        f"127.0.0.1:{port}",
        credentials(replicas.env.pki, f.CUR),
        server_name="localhost",
        retry=RetryPolicy(attempts=2, first_delay=0.05, max_delay=0.1, timeout=2),
    )
    with pytest.raises(HubError) as refused:
        await client.publish(f.envelope(f.CUR, (f.QUESTURA,)))
    assert grpc.StatusCode.UNAVAILABLE == refused.value.code
    assert refused.value.retryable
    await client.close()
