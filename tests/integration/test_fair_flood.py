"""One agency's PublishStream flood does not take another agency's publishes: through the real hub.

The Polizia Locale floods a PublishStream (urgent incident reports to the Carabinieri, whose room
is not connected) well over its publish rate; while the flood is live, the CUR publishes
incident reports one after the other to the Questura, whose room takes them. Every one of the
CUR's publishes is accepted, none refused, and the Questura gets them all, in order. The flood
is slowed, not refused: the hub waits for the PL's tokens before it reads on, so all of the
PL's envelopes end accepted and the hub counted the waits. No timing is asserted beyond the
liveness bounds.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opsroom.hub.v1 import hub_pb2

from broker.dev.testing import local_hub
from broker.lanes import Lane
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW
from tests.integration.test_agency_limits import rate_refusals
from tests.integration.test_overload import overload_refusals, raw_stub

pytestmark = pytest.mark.integration

RATE = 200.0
BURST = 100
FLOOD_REQUESTS = 20
PER_REQUEST = 100
IN_FLIGHT_REQUESTS = 16
GOOD = 30
# liveness: the flood lasts at least (2,000 - 100) / 200 = 9.5 s by the token bucket; ten times that.
FLOOD_LIVENESS = 120.0
# liveness: one publish and its delivery take milliseconds on a quiet machine.
GOOD_LIVENESS = 60.0


async def test_a_stream_flood_is_slowed_while_another_agency_s_publishes_are_all_accepted_and_delivered(
    tmp_path: Path,
) -> None:
    async with local_hub(
        tmp_path,
        AGENCIES,
        ALLOW,
        metrics_listen="127.0.0.1:0",
        agency_publish_rate=RATE,
        agency_publish_burst=float(BURST),
    ) as hub:
        room = hub.client(f.QUESTURA)
        inbox = room.inbox(window=256, max_batch=64)
        inbox.start()
        await asyncio.wait_for(inbox.opened.wait(), GOOD_LIVENESS)

        flood_channel, flood_stub = raw_stub(hub, f.PL)
        slots = asyncio.Semaphore(IN_FLIGHT_REQUESTS)
        flood_outcomes: collections.Counter[str] = collections.Counter()

        async def requests() -> AsyncIterator[hub_pb2.PublishStreamRequest]:
            for number in range(FLOOD_REQUESTS):
                await slots.acquire()
                envelopes = [f.envelope(f.PL, (f.CC,)) for _ in range(PER_REQUEST)]
                yield hub_pb2.PublishStreamRequest(request_id=number, envelopes=envelopes)

        async def run_flood() -> None:
            async for response in flood_stub.PublishStream(requests(), timeout=FLOOD_LIVENESS):
                slots.release()
                for result in response.results:
                    flood_outcomes[result.WhichOneof("result") or ""] += 1

        flood = asyncio.get_running_loop().create_task(run_flood())
        waits = hub.hub.admission.waits
        async with asyncio.timeout(FLOOD_LIVENESS):  # the flood is live: it is over its rate
            while not waits[f.PL, Lane.URGENT, "rate"]:
                await asyncio.sleep(0.01)

        good_channel, good_stub = raw_stub(hub, f.CUR)
        sent = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(GOOD)]
        async with asyncio.timeout(GOOD_LIVENESS * GOOD):
            for env in sent:  # one after the other, no retries: a refusal would raise here
                response = await good_stub.Publish(hub_pb2.PublishRequest(envelope=env), timeout=GOOD_LIVENESS)
                assert env.distribution_id == response.acceptance.distribution_id
        assert not flood.done(), "the flood ended before the CUR's publishes: the test proves nothing"

        got: list[str] = []
        async with asyncio.timeout(GOOD_LIVENESS):
            while len(got) < GOOD:
                delivery = await inbox.__anext__()
                inbox.ack(delivery)
                got.append(delivery.envelope.distribution_id)
        assert [e.distribution_id for e in sent] == got

        async with asyncio.timeout(FLOOD_LIVENESS):
            await flood
        assert {"acceptance": FLOOD_REQUESTS * PER_REQUEST} == dict(flood_outcomes)  # slowed, never refused
        assert 0 == rate_refusals(hub, f.PL) == overload_refusals(hub, f.PL)
        assert 0 == rate_refusals(hub, f.CUR) == overload_refusals(hub, f.CUR)
        assert not any(agency == f.CUR for agency, _lane, _scope in waits)
        await flood_channel.close()
        await good_channel.close()
        await inbox.close()
        await room.close()
