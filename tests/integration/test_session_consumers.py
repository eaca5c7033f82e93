"""The rooms' consumers on a real nats-server: one pair per session, the previous deleted, leftovers swept, none recreated."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from opsroom_client import HubClient

from broker.delivery import handoff
from broker.delivery.expiry import Expirer
from broker.dev.testing import LocalHub
from broker.lanes import LANES, Lane
from broker.store.jetstream import JetStream
from tests import factories as f
from tests.integration.conftest import take

pytestmark = pytest.mark.integration

SESSION_OPEN_WAIT = 15.0  # liveness: a room's session opens


async def names(js: JetStream, agency: str, lane: Lane) -> set[str]:
    """The names of the agency's delivery consumers on lane."""
    filter_subject = js.layout.deliveries_of_agency(agency, lane)
    return {c.name for c in await js.consumers(js.stream_of(lane)) if c.filter_subject == filter_subject}


async def settle(js: JetStream, agency: str, lane: Lane, expected: set[str]) -> None:
    """Wait until the agency's consumers on lane are expected (liveness: SESSION_OPEN_WAIT).

    A first consumer the hub's expiry worker made while the session took over is swept on its next pass.
    """
    async with asyncio.timeout(SESSION_OPEN_WAIT):
        while await names(js, agency, lane) != expected:
            await asyncio.sleep(0.1)


async def session_of(client: HubClient) -> str:
    inbox = client.inbox()
    inbox.start()
    async with asyncio.timeout(SESSION_OPEN_WAIT):
        await inbox.opened.wait()
    return inbox.session_id


def expirer(hub: LocalHub, clock: datetime) -> Expirer:
    """A pass of the expiry worker on the hub's store, at clock (nothing expires here: no notices are written)."""
    return Expirer(
        hub.hub.js,
        None,  # type: ignore[arg-type]  # the committer writes notices only
        hub.hub.metrics,
        lambda: clock,
        agencies=lambda: hub.hub.cfg.agency_ids,
        presence_timeout=60.0,
    )


async def test_each_session_has_consumers_of_its_own_and_deletes_the_previous_ones(
    hub: LocalHub, clients: dict[str, HubClient]
) -> None:
    js = hub.hub.js
    first = await session_of(clients[f.QUESTURA])
    for lane in LANES:
        await settle(js, f.QUESTURA, lane, {js.layout.consumer_name(f.QUESTURA, lane, first)})
    await clients[f.CUR].publish(f.envelope(f.CUR, (f.QUESTURA,)))
    await take(clients[f.QUESTURA].inbox(), 1)
    await clients[f.QUESTURA].close()

    again = hub.client(f.QUESTURA)
    second = await session_of(again)
    assert first != second
    for lane in LANES:
        await settle(js, f.QUESTURA, lane, {js.layout.consumer_name(f.QUESTURA, lane, second)})
    await again.close()


async def test_the_expiry_worker_creates_no_first_consumer_for_an_agency_that_had_a_session(
    hub: LocalHub, clients: dict[str, HubClient]
) -> None:
    """Its consumers missing from a listing (a cluster node away, here: deleted) must not bring back a first consumer."""
    js = hub.hub.js
    session = await session_of(clients[f.QUESTURA])
    await clients[f.QUESTURA].close()
    for lane in LANES:
        assert await js.delete_consumer(js.layout.consumer_name(f.QUESTURA, lane, session), lane)
        # A first consumer the hub's own worker made at start, racing the session's take-over, goes too.
        await js.delete_consumer(js.layout.consumer_name(f.QUESTURA, lane), lane)
    await expirer(hub, datetime.now(UTC)).check()
    for lane in LANES:
        assert set() == await names(js, f.QUESTURA, lane)
        # An agency that never connected gets its first consumer, which its first session takes over from.
        assert {js.layout.consumer_name(f.CC, lane)} == await names(js, f.CC, lane)


async def test_a_consumer_left_behind_is_swept_once_old_enough_and_the_current_one_kept(
    hub: LocalHub, clients: dict[str, HubClient]
) -> None:
    js = hub.hub.js
    session = await session_of(clients[f.QUESTURA])
    await clients[f.QUESTURA].close()
    await js.create_session_consumer(f.QUESTURA, Lane.URGENT, "leftover0000000a", 1)  # a take-over cut short
    current = js.layout.consumer_name(f.QUESTURA, Lane.URGENT, session)
    leftover = js.layout.consumer_name(f.QUESTURA, Lane.URGENT, "leftover0000000a")

    await expirer(hub, datetime.now(UTC)).check()  # too young: kept, a take-over may be using it
    assert {current, leftover} == await names(js, f.QUESTURA, Lane.URGENT)

    await expirer(hub, datetime.now(UTC) + handoff.SWEEP_AFTER + timedelta(seconds=1)).check()
    assert {current} == await names(js, f.QUESTURA, Lane.URGENT)
