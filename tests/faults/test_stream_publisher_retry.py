"""The client's StreamPublisher when the hub drops a PublishStream (as when it dies) or refuses envelopes for a while, against a stand-in hub."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, RetryPolicy

from broker.dev.certs import make_dev_pki
from broker.dev.testing import credentials
from tests.faults.agreement import CUR
from tests.faults.load import close_publisher, event, incident_id

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]


class FlakyHub:
    """A hub stand-in serving PublishStream only.

    With fail_first_stream, its first call ends with UNAVAILABLE after one request is read, as
    when the hub dies. Until refuse_until (monotonic clock) it answers every envelope with
    UNAVAILABLE STORE_UNAVAILABLE, as the hub does while JetStream elects a stream leader. Then
    it accepts everything.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.fail_first_stream = True
        self.refuse_until = 0.0
        self.refusals = 0

    def refusal(self) -> hub_pb2.PublishResult:
        self.refusals += 1
        info = error_details_pb2.ErrorInfo(reason="STORE_UNAVAILABLE", domain="opsroom")
        status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message="JetStream is not available")
        status.details.add().Pack(info)
        return hub_pb2.PublishResult(error=status)

    async def publish_stream(
        self, requests: AsyncIterator[hub_pb2.PublishStreamRequest], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[hub_pb2.PublishStreamResponse]:
        self.calls += 1
        async for request in requests:
            if self.calls == 1 and self.fail_first_stream:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the hub went away")
            refuse = time.monotonic() < self.refuse_until
            results = [
                self.refusal()
                if refuse
                else hub_pb2.PublishResult(acceptance=hub_pb2.Acceptance(distribution_id=e.distribution_id))
                for e in request.envelopes
            ]
            yield hub_pb2.PublishStreamResponse(request_id=request.request_id, results=results)


@pytest.fixture
async def flaky(tmp_path: Path) -> AsyncIterator[tuple[FlakyHub, HubClient]]:
    """The stand-in on a TLS loopback port, and a client of it."""
    pki = make_dev_pki(tmp_path / "pki", [CUR])
    hub = FlakyHub()
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        hub.publish_stream,
        request_deserializer=hub_pb2.PublishStreamRequest.FromString,
        response_serializer=hub_pb2.PublishStreamResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("opsroom.hub.v1.HubService", {"PublishStream": handler})]
    )
    tls = grpc.ssl_server_credentials(
        [(pki.hub.key.read_bytes(), pki.hub.cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", tls)
    await server.start()
    retry = RetryPolicy(attempts=5, first_delay=0.05, max_delay=0.1, timeout=5)
    client = HubClient(f"127.0.0.1:{port}", credentials(pki, CUR), server_name="localhost", retry=retry)
    yield hub, client
    await client.close()
    await server.stop(0)


async def test_a_publish_after_a_failed_stream_is_answered(flaky: tuple[FlakyHub, HubClient]) -> None:
    """The first publish rides out the failed stream; the next one, on the new stream, must be answered too."""
    hub, client = flaky
    publisher = client.stream_publisher()
    incident = incident_id(CUR, 1)
    try:
        first = event(CUR, 1, incident, 1)
        assert first.distribution_id == (await asyncio.wait_for(publisher.publish(first), 10)).distribution_id
        assert hub.calls == 2  # the first stream failed, the retry went out on a second one
        second = event(CUR, 1, incident, 2)
        assert second.distribution_id == (await asyncio.wait_for(publisher.publish(second), 5)).distribution_id
    finally:
        await close_publisher(publisher, timeout=2)


async def test_publishes_in_flight_when_a_stream_fails_are_retried(flaky: tuple[FlakyHub, HubClient]) -> None:
    """Many publishes on the wire when the hub drops the stream: all are sent again on a new stream and accepted."""
    hub, client = flaky
    publisher = client.stream_publisher(max_batch=10)
    sent = [event(CUR, i, incident_id(CUR, i), 1) for i in range(1, 201)]
    for env in sent:  # large requests: the client is still writing (held by flow control) when the stream ends
        env.incident.description = "x" * 30_000
    try:
        results = await asyncio.wait_for(asyncio.gather(*(publisher.publish(e) for e in sent)), 10)
    finally:
        await close_publisher(publisher, timeout=2)
    assert [e.distribution_id for e in sent] == [r.distribution_id for r in results]
    assert hub.calls == 2


async def test_refused_publishes_are_retried_with_the_policys_delays(flaky: tuple[FlakyHub, HubClient]) -> None:
    """The hub refuses every envelope for one second: a policy of ten seconds of retries rides it out."""
    hub, client = flaky
    hub.fail_first_stream = False
    client.retry = RetryPolicy(attempts=20, first_delay=0.1, max_delay=1.0, timeout=5)
    publisher = client.stream_publisher()
    hub.refuse_until = time.monotonic() + 1.0
    env = event(CUR, 1, incident_id(CUR, 1), 1)
    try:
        acceptance = await asyncio.wait_for(publisher.publish(env), 15)
    finally:
        await close_publisher(publisher, timeout=2)
    assert env.distribution_id == acceptance.distribution_id
    assert hub.refusals < client.retry.attempts
