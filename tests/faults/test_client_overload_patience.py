"""The client against a stand-in hub that answers HUB_OVERLOADED with a retry delay for a while, then accepts.

A refusal that carries the hub's retry delay says "come back then": the client waits that long
and tries again without spending its attempts, for as long as its policy's patience; past the
patience such refusals count like any other and the client gives up.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, HubError, RetryPolicy

from broker.dev.certs import make_dev_pki
from broker.dev.testing import credentials
from tests.faults.agreement import CUR
from tests.faults.load import close_publisher, event, incident_id

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

RETRY_AFTER = 0.05
# Few attempts, so that a client spending one per refusal would give up long before the hub accepts.
POLICY = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.02, timeout=5, patience=30)


class BusyHub:
    """Refuses every envelope with HUB_OVERLOADED (RetryInfo RETRY_AFTER) until busy_until, then accepts."""

    def __init__(self) -> None:
        self.busy_until = 0.0
        self.refusals = 0

    def overloaded(self) -> status_pb2.Status:
        self.refusals += 1
        status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="overloaded")
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason="HUB_OVERLOADED", domain="opsroom.hub"))
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(RETRY_AFTER * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return status

    async def publish(self, request: hub_pb2.PublishRequest, context: Any) -> hub_pb2.PublishResponse:
        if time.monotonic() < self.busy_until:
            status = rpc_status.to_status(self.overloaded())
            await context.abort(status.code, status.details, status.trailing_metadata)
        return hub_pb2.PublishResponse(acceptance=hub_pb2.Acceptance(distribution_id=request.envelope.distribution_id))

    async def publish_stream(self, requests: AsyncIterator[hub_pb2.PublishStreamRequest], _context: Any) -> Any:
        async for request in requests:
            busy = time.monotonic() < self.busy_until
            results = [
                hub_pb2.PublishResult(error=self.overloaded())
                if busy
                else hub_pb2.PublishResult(acceptance=hub_pb2.Acceptance(distribution_id=e.distribution_id))
                for e in request.envelopes
            ]
            yield hub_pb2.PublishStreamResponse(request_id=request.request_id, results=results)


@pytest.fixture
async def busy(tmp_path: Path) -> AsyncIterator[tuple[BusyHub, HubClient]]:
    pki = make_dev_pki(tmp_path / "pki", [CUR])
    hub = BusyHub()
    server = grpc.aio.server()
    handlers = {
        "Publish": grpc.unary_unary_rpc_method_handler(
            hub.publish,
            request_deserializer=hub_pb2.PublishRequest.FromString,
            response_serializer=hub_pb2.PublishResponse.SerializeToString,
        ),
        "PublishStream": grpc.stream_stream_rpc_method_handler(
            hub.publish_stream,
            request_deserializer=hub_pb2.PublishStreamRequest.FromString,
            response_serializer=hub_pb2.PublishStreamResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("opsroom.hub.v1.HubService", handlers)])
    tls = grpc.ssl_server_credentials(
        [(pki.hub.key.read_bytes(), pki.hub.cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", tls)
    await server.start()
    client = HubClient(f"127.0.0.1:{port}", credentials(pki, CUR), server_name="localhost", retry=POLICY)
    yield hub, client
    await client.close()
    await server.stop(0)


def envelopes(count: int) -> list[Any]:
    return [event(CUR, i, incident_id(CUR, i), 1) for i in range(1, count + 1)]


@pytest.mark.parametrize("how", ["publish", "publish_many", "stream_publisher"])
async def test_overload_refusals_are_waited_out_without_spending_attempts(
    busy: tuple[BusyHub, HubClient], how: str
) -> None:
    """Busy for 0.5 s (about ten refusals each, far more than the 3 attempts): every envelope ends accepted."""
    hub, client = busy
    hub.busy_until = time.monotonic() + 0.5
    sent = envelopes(5)
    if how == "publish":
        results: list[Any] = [await client.publish(e) for e in sent[:1]]
        sent = sent[:1]
    elif how == "publish_many":
        results = await client.publish_many(sent, batch_size=2)
    else:
        publisher = client.stream_publisher(max_batch=2)
        try:
            results = [await publisher.publish(e) for e in sent]
        finally:
            await close_publisher(publisher, timeout=2)
    assert [e.distribution_id for e in sent] == [r.distribution_id for r in results], results
    assert hub.refusals > POLICY.attempts  # the client did wait out refusals beyond its attempts


async def test_past_its_patience_the_client_gives_up_with_the_hubs_refusal(busy: tuple[BusyHub, HubClient]) -> None:
    """A hub busy for good: after the patience, the refusals count as attempts and the last one is raised."""
    hub, client = busy
    client.retry = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.02, timeout=5, patience=0.3)
    hub.busy_until = time.monotonic() + 3600
    started = time.monotonic()
    with pytest.raises(HubError) as refused:
        await client.publish(envelopes(1)[0])
    assert "HUB_OVERLOADED" == refused.value.reason
    assert time.monotonic() - started >= 0.3  # it waited out its patience first
