"""An earlier session's pull request, still waiting at nats-server, cannot take the deliveries of the next session."""

from __future__ import annotations

import asyncio

import pytest
from opsroom_client import HubClient

from broker.dev.testing import LocalHub
from broker.lanes import Lane
from broker.store.jetstream import JetStream
from broker.store.model import ConsumerGone
from tests import factories as f
from tests.integration.conftest import take

pytestmark = pytest.mark.integration

SESSION_OPEN_WAIT = 15.0  # liveness: the room's first session opens


async def test_an_earlier_sessions_pull_request_still_waiting_takes_nothing_from_the_next_session(
    hub: LocalHub, clients: dict[str, HubClient]
) -> None:
    """An earlier session's pull request, still waiting at nats-server when the room's next session opens.

    With one consumer reset for each session, such a request took the first delivery after the
    reset: the new session saw the gap and ended (and, with a larger window, a room could stall
    until the ack wait ran out). Each session now pulls from consumers of its own and deletes the
    earlier ones: the earlier request is told its consumer is gone, and the room gets both
    deliveries, in order, in its first session.
    """
    earlier = await JetStream.connect(hub.hub.cfg.nats, name="earlier-session")
    try:
        await earlier.ensure_consumer(f.QUESTURA, Lane.URGENT)  # the agency's consumer before any session
        stale = earlier.puller(f.QUESTURA, Lane.URGENT)
        await stale.start()
        await stale.request(10)  # waits at the server (Puller.EXPIRES, 30 s) for the next deliveries
        await earlier.nc.flush()

        inbox = clients[f.QUESTURA].inbox()
        inbox.start()
        async with asyncio.timeout(SESSION_OPEN_WAIT):
            await inbox.opened.wait()
        first, second = f.envelope(f.CUR, (f.QUESTURA,)), f.envelope(f.CUR, (f.QUESTURA,))
        await clients[f.CUR].publish(first)
        await clients[f.CUR].publish(second)

        got = await take(inbox, 2)
        assert [first.distribution_id, second.distribution_id] == [d.envelope.distribution_id for d in got]
        assert 0 == inbox.reconnects, "the room's session ended: a delivery went to the earlier request"
        async with asyncio.timeout(SESSION_OPEN_WAIT):
            told = await stale.queue.get()
        assert isinstance(told, ConsumerGone), f"the earlier request got {told!r}"
        assert stale.queue.empty()
        registry = hub.hub.metrics.registry
        assert 0.0 == (registry.get_sample_value("opsroom_session_gaps_total", {"agency": f.QUESTURA}) or 0.0)
    finally:
        await earlier.close()
