"""What the platform team and the DPO rely on: health, graceful drain, metrics, and logs free of personal data."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opsroom.common.v1 import common_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, HubError

from broker.dev.testing import LocalHub, credentials, local_hub
from broker.edge.servicer import SERVICE
from broker.hub import Hub
from broker.ops import logging as hub_logging
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW, take

pytestmark = pytest.mark.integration


async def health_status(client: HubClient, service: str = SERVICE) -> int:
    stub = health_pb2_grpc.HealthStub(client._channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


def scrape(hub: LocalHub) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.hub.metrics_port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_health_serving_then_not_serving_while_draining(hub: LocalHub, clients: dict[str, HubClient]) -> None:
    """The gRPC health service says SERVING, and NOT_SERVING as soon as a drain starts."""
    assert health_pb2.HealthCheckResponse.SERVING == await health_status(clients[f.CUR])
    assert health_pb2.HealthCheckResponse.SERVING == await health_status(clients[f.CUR], "")
    hub.hub._servicer.draining = True  # type: ignore[union-attr]
    await hub.hub._server.draining()
    assert health_pb2.HealthCheckResponse.NOT_SERVING == await health_status(clients[f.CUR])
    with pytest.raises(HubError) as caught:
        await clients[f.CUR].publish(f.envelope(f.CUR, (f.QUESTURA,)))
    assert (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE") == (caught.value.code, caught.value.reason)


async def test_graceful_stop_loses_no_acknowledged_publish(hub: LocalHub) -> None:
    """Stopping the hub under load: every publish it acknowledged is delivered by the next hub; none twice."""
    sender = hub.client(f.CUR)
    envelopes = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(300)]

    async def publish(env: object) -> bool:
        try:
            await sender.publish(env)  # type: ignore[arg-type]
        except HubError:
            return False
        return True

    sending = asyncio.gather(*(publish(e) for e in envelopes))
    await asyncio.sleep(0.3)
    await hub.hub.stop(grace=5)
    outcomes = await sending
    acknowledged = [e.distribution_id for e, ok in zip(envelopes, outcomes, strict=True) if ok]
    assert acknowledged, "the load started before the stop"
    await sender.close()

    successor = Hub(hub.hub.cfg)
    await successor.start()
    try:
        room = HubClient(f"127.0.0.1:{successor.port}", credentials(hub.pki, f.QUESTURA), server_name="localhost")
        inbox = room.inbox(window=1024)
        got = await take(inbox, len(acknowledged), timeout=30)
        delivered = [d.envelope.distribution_id for d in got]
        assert set(acknowledged) <= set(delivered)
        assert len(delivered) == len(set(delivered))
        await room.close()
    finally:
        await successor.stop(grace=1)
        hub.hub = Hub(hub.hub.cfg)


async def test_metrics_count_by_agency_and_reason(hub: LocalHub, clients: dict[str, HubClient]) -> None:
    """/metrics counts publishes, refusals by code and reason, deliveries, acks and latencies."""
    await clients[f.CUR].publish(f.envelope(f.CUR, (f.QUESTURA,)))
    bad = f.envelope(f.CUR, (f.QUESTURA,))
    bad.status = common_pb2.STATUS_UNSPECIFIED
    with pytest.raises(HubError):
        await clients[f.CUR].publish(bad)
    await take(clients[f.QUESTURA].inbox(), 1)
    await clients[f.QUESTURA].close()
    text = scrape(hub)
    expected = [
        f'opsroom_publishes_total{{agency="{f.CUR}",outcome="accepted"}} 1.0',
        f'opsroom_publishes_total{{agency="{f.CUR}",outcome="refused"}} 1.0',
        f'opsroom_refusals_total{{agency="{f.CUR}",code="INVALID_ARGUMENT",reason="INVALID_ENVELOPE"}} 1.0',
        f'opsroom_deliveries_total{{agency="{f.QUESTURA}"}} 1.0',
        f'opsroom_acks_total{{agency="{f.QUESTURA}"}} 1.0',
        "opsroom_publish_to_ack_seconds_count 1.0",
        "opsroom_publish_to_delivery_seconds_count 1.0",
    ]
    missing = [line for line in expected if line not in text]
    assert [] == missing


async def test_no_personal_data_in_logs_or_metrics(hub: LocalHub, clients: dict[str, HubClient]) -> None:
    """Publishing, refusing and delivering envelopes full of personal data leaves none of it in logs or metrics."""
    out = io.StringIO()
    hub_logging.configure(json=True, level=logging.DEBUG, stream=out)
    try:
        env = f.envelope(f.CUR, (f.QUESTURA, f.PL))
        await clients[f.CUR].publish(env)
        bad = f.envelope(f.CUR, (f.QUESTURA,))
        bad.incident.call.caller.phone = f"tel {f.CALLER_PHONE}"  # invalid, and personal
        with pytest.raises(HubError) as caught:
            await clients[f.CUR].publish(bad)
        forged = f.envelope(f.PL, (f.QUESTURA,))
        with pytest.raises(HubError):
            await clients[f.CUR].publish(forged)
        await take(clients[f.QUESTURA].inbox(), 1)
        await clients[f.CUR].receipt(env.distribution_id)
        await clients[f.QUESTURA].close()
    finally:
        structlog.reset_defaults()
    logs = out.getvalue()
    assert "envelope_accepted" in logs
    assert "publish_refused" in logs
    leaked = [value for value in f.PERSONAL_VALUES if value in logs or value in scrape(hub)]
    assert [] == leaked
    # The refusal names the field, not the value, to the sender too.
    assert f.CALLER_PHONE not in str(caught.value)
    assert ["envelope.incident.call.caller.phone"] == [p.field for p in caught.value.fields]


async def test_heartbeat_on_an_idle_session(tmp_path: Path) -> None:
    """An idle Connect stream gets heartbeats, so both ends notice a dead peer."""
    async with local_hub(tmp_path, AGENCIES, ALLOW, heartbeat=timedelta(seconds=0.3)) as env:
        client = env.client(f.PL)
        call = client.connect_call()
        await call.write(hub_pb2.ConnectRequest(open=hub_pb2.OpenSession()))
        async with asyncio.timeout(5):
            opened = await call.read()
            beat = await call.read()
        assert ("opened", "heartbeat") == (opened.WhichOneof("response"), beat.WhichOneof("response"))
        assert beat.heartbeat.sent_at.seconds > 0
        call.cancel()
        await client.close()


async def test_one_distribution_id_follows_an_envelope_from_publish_to_delivery_to_ack(
    hub: LocalHub, clients: dict[str, HubClient]
) -> None:
    """The distribution id is the correlation id of the log: accepted, sent to the room, acknowledged by it."""
    out = io.StringIO()
    hub_logging.configure(json=True, level=logging.DEBUG, stream=out)
    try:
        env = f.envelope(f.CUR, (f.QUESTURA,))
        await clients[f.CUR].publish(env)
        await take(clients[f.QUESTURA].inbox(), 1)

        def events() -> list[str]:
            lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
            return [line["event"] for line in lines if line.get("distribution_id") == env.distribution_id]

        async with asyncio.timeout(30):  # liveness: the acknowledgement reaches the hub in well under a second
            while "delivery_acknowledged" not in events():
                await asyncio.sleep(0.1)
    finally:
        structlog.reset_defaults()
    seen = events()
    assert seen.index("envelope_accepted") < seen.index("delivery_sent") < seen.index("delivery_acknowledged")
