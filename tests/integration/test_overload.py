"""Overload through the real hub: a burst from one agency ends, call by call, accepted or refused with a catalogued reason.

The hub's bound of envelopes in flight per agency is set small (8) so that a burst of a few
thousand calls from a client in the same process overloads it for sure; the default bounds
are larger, the mechanism the same. A raw stub made from the generated code, with gRPC's own
retries off, shows each call's real outcome; the project's client shows that backing off by
the hub's retry delay gets every envelope accepted.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2, status_pb2
from opsroom.hub.v1 import hub_pb2, hub_pb2_grpc
from opsroom_client import HubClient, HubError

from broker.dev.testing import LocalHub, credentials, local_hub
from broker.lanes import Lane
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW

pytestmark = pytest.mark.integration

PER_AGENCY = 8
RETRY_AFTER = 0.2
# Liveness bound for a whole burst: ten times what it takes on a quiet 2-core machine.
BURST_WITHIN = 120.0


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    """The hub with at most PER_AGENCY envelopes in flight per agency and lane, and a short retry delay."""
    async with local_hub(
        tmp_path,
        AGENCIES,
        ALLOW,
        metrics_listen="127.0.0.1:0",
        max_inflight_publishes_per_agency=PER_AGENCY,
        overload_retry_after=timedelta(seconds=RETRY_AFTER),
    ) as env:
        yield env


def raw_stub(hub: LocalHub, agency: str) -> tuple[grpc.aio.Channel, hub_pb2_grpc.HubServiceStub]:
    """A generated stub on its own channel, gRPC's own retries off: what any generated client sees."""
    creds = credentials(hub.pki, agency)
    channel = grpc.aio.secure_channel(
        hub.target,
        grpc.ssl_channel_credentials(creds.ca, creds.key, creds.cert),
        options=[("grpc.ssl_target_name_override", "localhost"), ("grpc.enable_retries", 0)],
    )
    return channel, hub_pb2_grpc.HubServiceStub(channel)


def details_of(status: status_pb2.Status) -> tuple[error_details_pb2.ErrorInfo | None, float | None]:
    """The ErrorInfo and the RetryInfo delay (seconds) of a status, None for what it lacks."""
    info, delay = None, None
    for detail in status.details:
        candidate, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(candidate):
            info = candidate
        elif detail.Unpack(retry):
            delay = retry.retry_delay.ToNanoseconds() / 1e9
    return info, delay


def status_of_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status a failed call carried (an empty one with only the code if none)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


def overload_refusals(hub: LocalHub, agency: str) -> float:
    value = hub.hub.metrics.registry.get_sample_value(
        "opsroom_refusals_total", {"agency": agency, "code": "RESOURCE_EXHAUSTED", "reason": "HUB_OVERLOADED"}
    )
    return value or 0.0


def assert_overloaded(status: status_pb2.Status, lane: str) -> None:
    """A HUB_OVERLOADED refusal as the catalogue says: RESOURCE_EXHAUSTED, ErrorInfo, RetryInfo."""
    info, delay = details_of(status)
    assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] == status.code
    assert info is not None, status
    assert ("HUB_OVERLOADED", "opsroom.hub") == (info.reason, info.domain)
    assert {"scope": "agency", "lane": lane} == dict(info.metadata)
    assert RETRY_AFTER == pytest.approx(delay)


async def test_a_burst_of_publishes_ends_each_accepted_or_refused_with_a_catalogued_reason(hub: LocalHub) -> None:
    """3,000 Publish calls at once from one agency: each is OK or HUB_OVERLOADED with its details; none bare.

    The refusals are counted in opsroom_refusals_total, logged as a few aggregated events, and
    nothing of a refused envelope is stored.
    """
    channel, stub = raw_stub(hub, f.CUR)
    envelopes = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(3000)]
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(BURST_WITHIN):
            outcomes = await asyncio.gather(
                *(stub.Publish(hub_pb2.PublishRequest(envelope=env), timeout=BURST_WITHIN) for env in envelopes),
                return_exceptions=True,
            )
        hub.hub.admission.flush_log()
    accepted = [env for env, o in zip(envelopes, outcomes, strict=True) if isinstance(o, hub_pb2.PublishResponse)]
    refused = [(env, o) for env, o in zip(envelopes, outcomes, strict=True) if isinstance(o, grpc.aio.AioRpcError)]
    assert len(envelopes) == len(accepted) + len(refused), [o for o in outcomes if not isinstance(o, grpc.RpcError)][:3]
    assert accepted, "the hub took none of the burst"
    assert refused, "the burst did not overload the hub: the test proves nothing"
    for _env, error in refused:
        assert_overloaded(status_of_error(error), "urgent")
    assert len(refused) == overload_refusals(hub, f.CUR)
    events = [e for e in logs if e["event"] == "publishes_refused_overloaded"]
    assert len(refused) == sum(e["count"] for e in events)
    assert len(events) <= 2 + BURST_WITHIN, "refusals are logged once a second, not once each"
    assert {(f.CUR, "urgent", "agency")} == {(e["agency"], e["lane"], e["scope"]) for e in events}

    client = hub.client(f.CUR)
    with pytest.raises(HubError) as caught:
        await client.receipt(refused[0][0].distribution_id)
    assert "RECEIPT_NOT_FOUND" == caught.value.reason  # a refused envelope left nothing behind
    receipt = await client.receipt(accepted[-1].distribution_id)
    assert [f.QUESTURA] == [r.agency_id for r in receipt.recipients]
    assert 0 == hub.hub.admission.in_flight()
    await client.close()
    await channel.close()


async def test_a_publish_stream_flood_is_slowed_to_its_agency_s_bound_not_refused(hub: LocalHub) -> None:
    """30 requests of 100 envelopes sent at once on one stream: every envelope accepted, in order, none refused.

    The agency may have PER_AGENCY envelopes in flight: the stream's reader waits for one of them
    to be answered before it takes the next (backpressure), so the agency never has more in
    flight, the waits are counted, and nothing is refused HUB_OVERLOADED.
    """
    channel, stub = raw_stub(hub, f.PL)
    batches = [[f.envelope(f.PL, (f.QUESTURA,)) for _ in range(100)] for _ in range(30)]
    admission = hub.hub.admission
    most = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, admission.in_flight_of(f.PL, Lane.URGENT))
            await asyncio.sleep(0.001)

    async def requests() -> AsyncIterator[hub_pb2.PublishStreamRequest]:
        for number, batch in enumerate(batches):
            yield hub_pb2.PublishStreamRequest(request_id=number, envelopes=batch)

    watcher = asyncio.get_running_loop().create_task(watch())
    outcomes: collections.Counter[str] = collections.Counter()
    answered: list[int] = []
    async with asyncio.timeout(BURST_WITHIN):
        async for response in stub.PublishStream(requests(), timeout=BURST_WITHIN):
            answered.append(response.request_id)
            assert len(batches[response.request_id]) == len(response.results)
            for result in response.results:
                outcomes[result.WhichOneof("result") or ""] += 1
    stop.set()
    await watcher
    assert list(range(len(batches))) == answered
    assert {"acceptance": 3000} == dict(outcomes)
    assert 0 == overload_refusals(hub, f.PL)
    assert 0 < most <= PER_AGENCY
    assert admission.waits[f.PL, Lane.URGENT, "agency"] > 0, "the stream never waited: the test proves nothing"
    await channel.close()


async def test_the_client_backs_off_by_the_retry_delay_until_every_envelope_is_accepted(hub: LocalHub) -> None:
    """HubClient, default retry policy: a burst of 600 publishes and a publish_many of 600 all end accepted.

    The hub refused some of them on the way (counted), so the client did go through refusals
    and retried them, after the delay the hub asked for.
    """
    client: HubClient = hub.client(f.CC)
    burst = [f.envelope(f.CC, (f.QUESTURA,)) for _ in range(600)]
    many = [f.envelope(f.CC, (f.QUESTURA,)) for _ in range(600)]
    async with asyncio.timeout(BURST_WITHIN):
        acceptances = await asyncio.gather(*(client.publish(env) for env in burst))
        results = await client.publish_many(many, batch_size=50)
    assert [e.distribution_id for e in burst] == [a.distribution_id for a in acceptances]
    assert [e.distribution_id for e in many] == [
        r.distribution_id for r in results if isinstance(r, hub_pb2.Acceptance)
    ]
    assert overload_refusals(hub, f.CC) > 0, "the client was never refused: the test proves nothing"
    await client.close()
