"""A delivery lost on its way to a session is noticed, also when it is the first one after the session's reset."""

from __future__ import annotations

import asyncio

import pytest
from opsroom_client import HubClient

from broker.dev.testing import LocalHub
from broker.lanes import Lane
from broker.store.jetstream import JetStream
from broker.store.model import Pulled
from tests import factories as f
from tests.integration.conftest import take

pytestmark = pytest.mark.integration

SESSION_OPEN_WAIT = 15.0  # liveness: the room's first session opens


async def test_a_delivery_taken_before_the_sessions_first_one_is_noticed(
    hub: LocalHub, clients: dict[str, HubClient]
) -> None:
    """An earlier session's pull request, still waiting at nats-server, takes the first delivery after the reset.

    The new session's first delivery then skips a consumer sequence: the session must end
    (acknowledging the second would acknowledge the first, which the room never got), and the
    next session gets both, in order.
    """
    earlier = await JetStream.connect(hub.hub.cfg.nats, name="earlier-session")
    try:
        await earlier.ensure_consumer(f.QUESTURA, Lane.URGENT)
        stale = earlier.puller(f.QUESTURA, Lane.URGENT)
        await stale.start()
        await stale.request(1)  # waits at the server (Puller.EXPIRES, 30 s) for the next delivery
        await earlier.nc.flush()

        inbox = clients[f.QUESTURA].inbox()
        inbox.start()
        async with asyncio.timeout(SESSION_OPEN_WAIT):
            await inbox.opened.wait()
        first, second = f.envelope(f.CUR, (f.QUESTURA,)), f.envelope(f.CUR, (f.QUESTURA,))
        await clients[f.CUR].publish(first)
        await clients[f.CUR].publish(second)

        [got_first] = await take(inbox, 1)
        assert first.distribution_id == got_first.envelope.distribution_id, "the room was handed the second first"
        [got_second] = await take(inbox, 1)
        assert second.distribution_id == got_second.envelope.distribution_id
        # The scenario did happen: the earlier request took the first delivery, and the session saw the gap.
        taken = stale.queue.get_nowait()
        assert isinstance(taken, Pulled)
        assert first.distribution_id == taken.distribution_id
        assert 1 <= inbox.reconnects
        registry = hub.hub.metrics.registry
        assert 1.0 <= (registry.get_sample_value("opsroom_session_gaps_total", {"agency": f.QUESTURA}) or 0.0)
    finally:
        await earlier.close()
