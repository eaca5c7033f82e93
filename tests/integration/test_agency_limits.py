"""Per-agency limits through the real hub: the publish rate, sizes by payload, the cap on open streams.

The rate test runs the hub on a ManualClock that does not move: an agency's bucket then holds
exactly its burst, so what is accepted and what is refused is known to the envelope, and moving
the clock by the refusal's RetryInfo delay is what lets the next envelope in.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2, hub_pb2_grpc

from broker.dev.testing import LocalHub, credentials, local_hub
from broker.lanes import Lane
from broker.times import ManualClock
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW
from tests.integration.test_overload import details_of, raw_stub, status_of_error

pytestmark = pytest.mark.integration

RATE = 4.0
BURST = 6
# liveness: a handful of calls on a quiet machine take well under a second.
CALLS_WITHIN = 30.0
READ_INCIDENT = "urn:emergency:uid:incidentid:transits-001272:test"


def rate_refusals(hub: LocalHub, agency: str) -> float:
    value = hub.hub.metrics.registry.get_sample_value(
        "opsroom_refusals_total", {"agency": agency, "code": "RESOURCE_EXHAUSTED", "reason": "AGENCY_RATE_LIMITED"}
    )
    return value or 0.0


async def test_an_agency_over_its_rate_is_refused_with_retry_info_while_another_agency_s_publishes_all_succeed(
    tmp_path: Path,
) -> None:
    """The PL floods plate reads (bulk) and incidents (urgent) over its rate; the CUR publishes at the same moment.

    The PL gets exactly its burst accepted on each lane, the rest AGENCY_RATE_LIMITED
    (RESOURCE_EXHAUSTED, ErrorInfo with lane, rate and burst, RetryInfo of one token's time);
    every CUR publish is accepted. After the clock moves by the RetryInfo delay the PL's next
    envelope is accepted.
    """
    clock = ManualClock(datetime.now(UTC))
    async with local_hub(
        tmp_path, AGENCIES, ALLOW, clock=clock, agency_publish_rate=RATE, agency_publish_burst=float(BURST)
    ) as hub:
        flood_channel, flood = raw_stub(hub, f.PL)
        good_channel, good = raw_stub(hub, f.CUR)
        reads = [
            f.envelope(f.PL, (f.QUESTURA,), incident_ids=(READ_INCIDENT,), alert=f.plate_read()) for _ in range(20)
        ]
        incidents = [f.envelope(f.PL, (f.QUESTURA,)) for _ in range(20)]
        others = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(BURST)]
        async with asyncio.timeout(CALLS_WITHIN):
            outcomes = await asyncio.gather(
                *(
                    flood.Publish(hub_pb2.PublishRequest(envelope=env), timeout=CALLS_WITHIN)
                    for env in reads + incidents
                ),
                *(good.Publish(hub_pb2.PublishRequest(envelope=env), timeout=CALLS_WITHIN) for env in others),
                return_exceptions=True,
            )
        flooded, good_outcomes = outcomes[:40], outcomes[40:]
        assert all(isinstance(o, hub_pb2.PublishResponse) for o in good_outcomes), good_outcomes
        by_lane: dict[str, collections.Counter[str]] = {"bulk": collections.Counter(), "urgent": collections.Counter()}
        for index, outcome in enumerate(flooded):
            lane = "bulk" if index < 20 else "urgent"
            if isinstance(outcome, hub_pb2.PublishResponse):
                by_lane[lane]["accepted"] += 1
                continue
            assert isinstance(outcome, grpc.aio.AioRpcError), outcome
            status = status_of_error(outcome)
            info, delay = details_of(status)
            assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] == status.code
            assert info is not None
            assert ("AGENCY_RATE_LIMITED", "opsroom.hub") == (info.reason, info.domain)
            assert {"lane": lane, "rate": "4", "burst": "6"} == dict(info.metadata)
            assert pytest.approx(1 / RATE) == delay
            by_lane[lane]["refused"] += 1
        assert {"accepted": BURST, "refused": 20 - BURST} == by_lane["bulk"] == by_lane["urgent"]
        assert 2 * (20 - BURST) == rate_refusals(hub, f.PL)
        assert 0 == rate_refusals(hub, f.CUR)

        retry = f.envelope(f.PL, (f.QUESTURA,))
        with pytest.raises(grpc.aio.AioRpcError):
            await flood.Publish(hub_pb2.PublishRequest(envelope=retry), timeout=CALLS_WITHIN)
        clock.advance(1 / RATE)  # the RetryInfo delay
        await flood.Publish(hub_pb2.PublishRequest(envelope=retry, resend=True), timeout=CALLS_WITHIN)
        await flood_channel.close()
        await good_channel.close()


async def test_a_publish_stream_over_its_rate_is_slowed_not_refused(tmp_path: Path) -> None:
    """A batch of 10 over a burst of 6 on a clock that does not move: the stream waits, nothing is refused.

    The hub takes the burst, then waits for tokens before it takes (or reads) anything more of
    the stream: no answer comes while the clock stands still. Once the clock has moved by the
    time of the 4 missing tokens, the request is answered with 10 acceptances; no envelope was
    refused AGENCY_RATE_LIMITED, and the waits were counted.
    """
    clock = ManualClock(datetime.now(UTC))
    async with local_hub(
        tmp_path, AGENCIES, ALLOW, clock=clock, agency_publish_rate=RATE, agency_publish_burst=float(BURST)
    ) as hub:
        channel, stub = raw_stub(hub, f.CUR)
        batch = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(10)]

        async def requests() -> AsyncIterator[hub_pb2.PublishStreamRequest]:
            yield hub_pb2.PublishStreamRequest(request_id=1, envelopes=batch)

        async def answers() -> list[hub_pb2.PublishStreamResponse]:
            return [r async for r in stub.PublishStream(requests(), timeout=CALLS_WITHIN)]

        answered = asyncio.get_running_loop().create_task(answers())
        waits = hub.hub.admission.waits
        async with asyncio.timeout(CALLS_WITHIN):
            while not waits[f.CUR, Lane.URGENT, "rate"]:
                await asyncio.sleep(0.01)
        assert not answered.done(), "the stream was answered while its agency had no token"
        clock.advance((10 - BURST) / RATE)  # the time of the missing tokens
        async with asyncio.timeout(CALLS_WITHIN):
            [response] = await answered
        assert ["acceptance"] * 10 == [r.WhichOneof("result") for r in response.results]
        assert 0 == rate_refusals(hub, f.CUR)
        await channel.close()


def big_acknowledgement(sender: str, size: int) -> envelope_pb2.Envelope:
    """An acknowledgement envelope of at least size bytes (its description padded)."""
    ref = ((str(uuid.uuid4()), f.QUESTURA),)
    env = f.envelope(
        sender, (f.QUESTURA,), kind=common_pb2.KIND_ACK, references=ref, acknowledgement=f.acknowledgement()
    )
    env.acknowledgement.description = "x" * size
    return env


async def test_an_oversized_envelope_of_a_small_payload_is_refused_naming_the_payload_field(hub: LocalHub) -> None:
    """An acknowledgement over its 8 KiB: ENVELOPE_TOO_LARGE with BadRequest envelope.acknowledgement; an incident as big is not refused for its size.

    On a PublishStream the same envelope is refused at its index (envelopes[1].acknowledgement)
    and the others of the batch are accepted.
    """
    channel, stub = raw_stub(hub, f.CUR)
    ack = big_acknowledgement(f.CUR, 9000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(hub_pb2.PublishRequest(envelope=ack), timeout=CALLS_WITHIN)
    status = status_of_error(caught.value)
    assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] == status.code
    info, _ = details_of(status)
    assert info is not None
    assert "ENVELOPE_TOO_LARGE" == info.reason
    assert {"payload": "acknowledgement", "limit": "8192", "size": str(ack.ByteSize())} == dict(info.metadata)
    assert status.message.startswith("envelope.acknowledgement: ")
    violations = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations = [(v.field, v.reason) for v in bad.field_violations]
    assert [("envelope.acknowledgement", "max_bytes")] == violations

    incident = f.envelope(f.CUR, (f.QUESTURA,))
    for _ in range(3):
        incident.incident.notes.add(author_operator_id="OP-CUR-017", text="y" * 3000, created_at=f.ts())
    assert incident.ByteSize() > ack.ByteSize()
    await stub.Publish(hub_pb2.PublishRequest(envelope=incident), timeout=CALLS_WITHIN)

    batch = [f.envelope(f.CUR, (f.QUESTURA,)), big_acknowledgement(f.CUR, 9000), f.envelope(f.CUR, (f.QUESTURA,))]

    async def requests() -> AsyncIterator[hub_pb2.PublishStreamRequest]:
        yield hub_pb2.PublishStreamRequest(request_id=7, envelopes=batch)

    [response] = [r async for r in stub.PublishStream(requests(), timeout=CALLS_WITHIN)]
    assert ["acceptance", "error", "acceptance"] == [r.WhichOneof("result") for r in response.results]
    assert response.results[1].error.message.startswith("envelopes[1].acknowledgement: ")
    await channel.close()


async def test_the_stream_cap_refuses_the_extra_stream_and_leaves_the_others_open(tmp_path: Path) -> None:
    """With a cap of 2: the CUR's third stream gets TOO_MANY_STREAMS naming the cap; its two streams still publish.

    Another agency's stream is not counted against the CUR's cap; once a CUR stream closes, a new one opens.
    """
    async with local_hub(tmp_path, AGENCIES, ALLOW, max_streams_per_agency=2) as hub:
        channel, stub = raw_stub(hub, f.CUR)
        queues: list[asyncio.Queue[hub_pb2.PublishStreamRequest | None]] = [asyncio.Queue() for _ in range(3)]

        async def requests(queue: asyncio.Queue[hub_pb2.PublishStreamRequest | None]) -> AsyncIterator[object]:
            while (item := await queue.get()) is not None:
                yield item

        streams = []
        async with asyncio.timeout(CALLS_WITHIN):
            for number, queue in enumerate(queues[:2]):  # one after the other: the third is the one over the cap
                streams.append(stub.PublishStream(requests(queue), timeout=CALLS_WITHIN * 4))
                queue.put_nowait(
                    hub_pb2.PublishStreamRequest(request_id=number, envelopes=[f.envelope(f.CUR, (f.QUESTURA,))])
                )
                response = await streams[-1].read()
                assert "acceptance" == response.results[0].WhichOneof("result")
            streams.append(stub.PublishStream(requests(queues[2]), timeout=CALLS_WITHIN))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await streams[2].read()
        status = status_of_error(caught.value)
        info, delay = details_of(status)
        assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] == status.code
        assert info is not None
        assert ("TOO_MANY_STREAMS", {"cap": "2", "method": "PublishStream"}) == (info.reason, dict(info.metadata))
        assert "2 streams" in status.message
        assert delay is not None

        other_channel, other = raw_stub(hub, f.PL)
        async with asyncio.timeout(CALLS_WITHIN):
            for number, (queue, call) in enumerate(zip(queues[:2], streams[:2], strict=True)):
                queue.put_nowait(
                    hub_pb2.PublishStreamRequest(request_id=10 + number, envelopes=[f.envelope(f.CUR, (f.QUESTURA,))])
                )
                response = await call.read()
                assert (10 + number, "acceptance") == (response.request_id, response.results[0].WhichOneof("result"))

            assert 1 == len([r async for r in other.PublishStream(one_batch_of(f.PL), timeout=CALLS_WITHIN)])
            queues[0].put_nowait(None)  # the CUR closes a stream: room for a new one
            assert grpc.aio.EOF == await streams[0].read()
            again = await reopened(stub)
            assert "acceptance" == again.results[0].WhichOneof("result")
        queues[1].put_nowait(None)
        await channel.close()
        await other_channel.close()


async def reopened(stub: hub_pb2_grpc.HubServiceStub) -> hub_pb2.PublishStreamResponse:
    """The answer of a new CUR stream, opened again while the hub still counts the closed one (its handler ending)."""
    for _ in range(100):  # liveness: the closed stream's handler ends within milliseconds
        try:
            [response] = [r async for r in stub.PublishStream(one_batch_of(f.CUR), timeout=CALLS_WITHIN)]
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            await asyncio.sleep(0.05)
        else:
            return response
    raise AssertionError("the closed stream still counts against the cap")


async def one_batch_of(agency: str) -> AsyncIterator[hub_pb2.PublishStreamRequest]:
    """One PublishStream request of one incident from agency to the Questura."""
    yield hub_pb2.PublishStreamRequest(request_id=1, envelopes=[f.envelope(agency, (f.QUESTURA,))])


def own_connection_stub(hub: LocalHub, agency: str) -> tuple[grpc.aio.Channel, hub_pb2_grpc.HubServiceStub]:
    """A stub on a connection of its own (gRPC would otherwise share one connection between like channels)."""
    creds = credentials(hub.pki, agency)
    channel = grpc.aio.secure_channel(
        hub.target,
        grpc.ssl_channel_credentials(creds.ca, creds.key, creds.cert),
        options=[
            ("grpc.ssl_target_name_override", "localhost"),
            ("grpc.enable_retries", 0),
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )
    return channel, hub_pb2_grpc.HubServiceStub(channel)


async def test_one_connection_over_its_bound_is_refused_while_another_connection_of_the_agency_publishes(
    tmp_path: Path,
) -> None:
    """A bound of 2 envelopes in flight per connection: 40 publishes at once on one CUR connection meet it.

    Those over it get HUB_OVERLOADED (RESOURCE_EXHAUSTED) with scope "connection" and a retry
    delay, and at least the first two are accepted; meanwhile a second connection of the same
    agency, one publish at a time, has every publish accepted: one integration of an agency
    cannot take its whole room.
    """
    async with local_hub(tmp_path, AGENCIES, ALLOW, max_inflight_publishes_per_connection=2) as hub:
        busy_channel, busy = own_connection_stub(hub, f.CUR)
        calm_channel, calm = own_connection_stub(hub, f.CUR)

        async def publish(stub: hub_pb2_grpc.HubServiceStub) -> grpc.aio.AioRpcError | None:
            try:
                await stub.Publish(
                    hub_pb2.PublishRequest(envelope=f.envelope(f.CUR, (f.QUESTURA,))), timeout=CALLS_WITHIN
                )
            except grpc.aio.AioRpcError as error:
                return error
            return None

        async def one_at_a_time() -> list[grpc.aio.AioRpcError | None]:
            return [await publish(calm) for _ in range(10)]

        async with asyncio.timeout(CALLS_WITHIN * 2):
            busy_results, calm_results = await asyncio.gather(
                asyncio.gather(*(publish(busy) for _ in range(40))), one_at_a_time()
            )
        assert [None] * 10 == calm_results
        refused = [r for r in busy_results if r is not None]
        assert 2 <= busy_results.count(None) < 40
        for error in refused:
            status = status_of_error(error)
            info, delay = details_of(status)
            assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] == status.code
            assert info is not None
            assert ("HUB_OVERLOADED", "connection", "urgent") == (
                info.reason,
                info.metadata["scope"],
                info.metadata["lane"],
            )
            assert delay is not None
            assert delay > 0
        await busy_channel.close()
        await calm_channel.close()
