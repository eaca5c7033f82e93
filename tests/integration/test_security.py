"""Identity from the client certificate: impersonation refused, each room reaches only its own deliveries."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from opsroom.hub.v1 import hub_pb2
from opsroom_client import Credentials, HubClient, HubError, RetryPolicy

from broker.dev.certs import make_dev_pki
from broker.dev.testing import LocalHub, credentials
from tests import factories as f
from tests.integration.conftest import nothing_more, take

pytestmark = pytest.mark.integration

NO_RETRY = RetryPolicy(attempts=1, timeout=5)


async def test_sender_must_be_the_certificate_agency(clients: dict[str, HubClient]) -> None:
    """An envelope claiming another sender is refused with PERMISSION_DENIED SENDER_MISMATCH; nothing is stored."""
    forged = f.envelope(f.PL, (f.QUESTURA,))  # says Polizia Locale ...
    with pytest.raises(HubError) as caught:
        await clients[f.CUR].publish(forged)  # ... but comes with the CUR's certificate
    assert (grpc.StatusCode.PERMISSION_DENIED, "SENDER_MISMATCH") == (caught.value.code, caught.value.reason)
    assert {"certificate_agency": f.CUR} == caught.value.metadata
    await nothing_more(clients[f.QUESTURA].inbox(), 1.0)


async def test_unregistered_agency_is_refused_everywhere(clients: dict[str, HubClient]) -> None:
    """A certificate from the CA for an agency the hub does not know gets PERMISSION_DENIED on every call."""
    rogue = clients[f.ROGUE]
    with pytest.raises(HubError) as publish:
        await rogue.publish(f.envelope(f.ROGUE, (f.QUESTURA,)))
    with pytest.raises(HubError) as receipt:
        await rogue.receipt(f.envelope().distribution_id)
    with pytest.raises(HubError) as connect:
        async with asyncio.timeout(10):
            await rogue.inbox().__anext__()
    for caught in (publish, receipt, connect):
        assert (grpc.StatusCode.PERMISSION_DENIED, "AGENCY_NOT_REGISTERED") == (caught.value.code, caught.value.reason)


async def test_certificate_from_another_ca_cannot_connect(hub: LocalHub, tmp_path: Path) -> None:
    """A client whose certificate another CA signed fails the TLS handshake (UNAVAILABLE); nothing is stored."""
    other = make_dev_pki(tmp_path / "other-ca", [f.CUR])
    pair = other.agency(f.CUR)
    creds = Credentials(hub.pki.ca.read_bytes(), pair.cert.read_bytes(), pair.key.read_bytes())
    intruder = HubClient(hub.target, creds, server_name="localhost", retry=NO_RETRY)
    with pytest.raises(HubError) as caught:
        await intruder.publish(f.envelope(f.CUR, (f.QUESTURA,)))
    assert grpc.StatusCode.UNAVAILABLE == caught.value.code
    await intruder.close()


async def test_client_without_certificate_cannot_connect(hub: LocalHub) -> None:
    """TLS without a client certificate is refused at the handshake."""
    channel = grpc.aio.secure_channel(
        hub.target,
        grpc.ssl_channel_credentials(hub.pki.ca.read_bytes()),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    publish = channel.unary_unary(
        "/opsroom.hub.v1.HubService/Publish",
        request_serializer=hub_pb2.PublishRequest.SerializeToString,
        response_deserializer=hub_pb2.PublishResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await publish(hub_pb2.PublishRequest(envelope=f.envelope()), timeout=5)
    assert grpc.StatusCode.UNAVAILABLE == caught.value.code()
    await channel.close()


async def test_a_room_receives_only_its_own_deliveries(clients: dict[str, HubClient]) -> None:
    """Envelopes for the Questura never reach the Polizia Locale, whose inbox stays empty."""
    for _ in range(5):
        await clients[f.CUR].publish(f.envelope(f.CUR, (f.QUESTURA,)))
    await take(clients[f.QUESTURA].inbox(), 5)
    await nothing_more(clients[f.PL].inbox(), 1.5)


async def test_acking_another_rooms_sequences_is_refused_and_neither_acks_nor_hides_them(
    hub: LocalHub, clients: dict[str, HubClient]
) -> None:
    """The Polizia Locale acknowledging the Questura's sequences (and a range around them) is refused with
    INVALID_ARGUMENT ACK_NOT_SENT; the Questura's delivery is neither acknowledged nor hidden.
    """
    env = f.envelope(f.CUR, (f.QUESTURA, f.PL))
    await clients[f.CUR].publish(env)
    questura_call = clients[f.QUESTURA].connect_call()
    await questura_call.write(hub_pb2.ConnectRequest(open=hub_pb2.OpenSession()))
    questura_sequence = await first_sequence(questura_call)
    questura_call.cancel()  # received, not acknowledged
    call = clients[f.PL].connect_call()
    await call.write(hub_pb2.ConnectRequest(open=hub_pb2.OpenSession()))
    pl_sequence = await first_sequence(call)
    guesses = [questura_sequence + k for k in range(-2, 40) if questura_sequence + k not in {0, pl_sequence}]
    await call.write(hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=guesses)))
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await read_to_the_end(call)
    refused = HubError.from_rpc_error(ended.value)
    assert (grpc.StatusCode.INVALID_ARGUMENT, "ACK_NOT_SENT") == (refused.code, refused.reason)
    assert refused.fields[0].field.startswith("ack.sequences[")

    receipt = await clients[f.CUR].receipt(env.distribution_id)
    states = {r.agency_id: r.state for r in receipt.recipients}
    assert hub_pb2.DELIVERY_STATE_STORED == states[f.QUESTURA]
    [questura_delivery] = await take(clients[f.QUESTURA].inbox(), 1)
    assert env.distribution_id == questura_delivery.envelope.distribution_id


async def read_to_the_end(call: Any) -> None:
    """Read a bare Connect call until its stream ends (a refusal raises)."""
    async with asyncio.timeout(10):
        while await call.read() is not grpc.aio.EOF:
            pass


async def first_sequence(call: Any) -> int:
    """The sequence of the first delivery on a bare Connect call."""
    async with asyncio.timeout(10):
        while True:
            response = await call.read()
            if response.WhichOneof("response") == "deliveries":
                return int(response.deliveries.deliveries[0].sequence)


async def test_receipts_are_for_the_sender_only(clients: dict[str, HubClient]) -> None:
    """A recipient (or anyone else) asking for the receipt of another agency's envelope is refused."""
    env = f.envelope(f.CUR, (f.QUESTURA,))
    await clients[f.CUR].publish(env)
    for agency in (f.QUESTURA, f.PL):
        with pytest.raises(HubError) as caught:
            await clients[agency].receipt(env.distribution_id)
        assert (grpc.StatusCode.PERMISSION_DENIED, "RECEIPT_NOT_YOURS") == (caught.value.code, caught.value.reason)
    with pytest.raises(HubError) as unknown:
        await clients[f.CUR].receipt(f.envelope().distribution_id)
    assert (grpc.StatusCode.NOT_FOUND, "RECEIPT_NOT_FOUND") == (unknown.value.code, unknown.value.reason)


async def test_a_new_session_replaces_the_old_one(hub: LocalHub) -> None:
    """A second Connect of the same agency takes over; the first ends with ABORTED SESSION_SUPERSEDED."""
    first = hub.client(f.QUESTURA)
    first_inbox = first.inbox()
    first_inbox.start()
    async with asyncio.timeout(10):
        await first_inbox.opened.wait()
    second = HubClient(hub.target, credentials(hub.pki, f.QUESTURA), server_name="localhost")
    second_inbox = second.inbox()
    second_inbox.start()
    with pytest.raises(HubError) as caught:
        async with asyncio.timeout(10):
            await first_inbox.__anext__()
    assert (grpc.StatusCode.ABORTED, "SESSION_SUPERSEDED") == (caught.value.code, caught.value.reason)

    sender = hub.client(f.CUR)
    env = f.envelope(f.CUR, (f.QUESTURA,))
    await sender.publish(env)
    [delivery] = await take(second_inbox, 1)
    assert env.distribution_id == delivery.envelope.distribution_id
    for client in (first, second, sender):
        await client.close()


async def test_connect_must_open_first(clients: dict[str, HubClient]) -> None:
    """A Connect stream that starts with an ack is refused with FAILED_PRECONDITION SESSION_NOT_OPENED."""
    call = clients[f.PL].connect_call()
    await call.write(hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=[1])))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with asyncio.timeout(10):
            await call.read()
    error = HubError.from_rpc_error(caught.value)
    assert (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_NOT_OPENED") == (error.code, error.reason)
