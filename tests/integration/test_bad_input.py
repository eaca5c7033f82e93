"""Bad input through real gRPC: precise statuses naming the field, and no harm to other agencies' traffic."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, HubError

from broker.dev.testing import LocalHub
from tests import factories as f
from tests.integration.conftest import nothing_more, take

pytestmark = pytest.mark.integration

Mutation = Callable[[envelope_pb2.Envelope], object]


def _set(path: str, value: object) -> Mutation:
    def mutate(env: envelope_pb2.Envelope) -> None:
        *parents, leaf = path.split(".")
        target: object = env
        for part in parents:
            name, _, index = part.partition("[")
            target = getattr(target, name)
            if index:
                target = target[int(index.rstrip("]"))]  # type: ignore[index]
        setattr(target, leaf, value)

    return mutate


# (mutation, expected field paths in BadRequest, relative to the PublishRequest)
INVALID_CASES: list[tuple[str, Mutation, list[str]]] = [
    ("uuid", _set("distribution_id", "not-a-uuid"), ["envelope.distribution_id"]),
    ("sender", lambda e: e.ClearField("sender"), ["envelope.sender"]),
    ("status", _set("status", 0), ["envelope.status"]),
    ("kind", _set("kind", 42), ["envelope.kind"]),
    ("recipient format", lambda e: e.recipients.append("Questura Torino"), ["envelope.recipients[2]"]),
    ("recipient unknown", lambda e: e.recipients.append("it.pl.099999"), ["envelope.recipients[2]"]),
    ("comune", _set("incident.locations[0].comune_istat", "999999"), ["envelope.incident.locations[0].comune_istat"]),
    ("latitude", _set("incident.locations[0].point.latitude", 91.0), ["envelope.incident.locations[0].point.latitude"]),
    ("incident type", _set("incident.type.eido_code", "RISSA"), ["envelope.incident.type.eido_code"]),
    ("phone", _set("incident.call.caller.phone", "tel 333"), ["envelope.incident.call.caller.phone"]),
    ("plate", _set("incident.vehicles[0].plate", "qq 123"), ["envelope.incident.vehicles[0].plate"]),
    ("legal basis", lambda e: e.ClearField("legal_basis"), ["envelope.legal_basis"]),
    ("incident id", _set("incident.id", "urn:other"), ["envelope.incident.id"]),
    (
        "two at once",
        lambda e: (e.ClearField("sent_at"), setattr(e.incident, "priority", 0)),
        ["envelope.sent_at", "envelope.incident.priority"],
    ),
]


@pytest.mark.parametrize(("name", "mutate", "fields"), INVALID_CASES, ids=[c[0] for c in INVALID_CASES])
async def test_invalid_envelope_names_its_fields(
    clients: dict[str, HubClient], name: str, mutate: Mutation, fields: list[str]
) -> None:
    """INVALID_ARGUMENT, reason INVALID_ENVELOPE, with a BadRequest naming exactly the broken fields."""
    env = f.envelope(f.CUR, (f.QUESTURA, f.PL))
    mutate(env)
    with pytest.raises(HubError) as caught:
        await clients[f.CUR].publish(env)
    error = caught.value
    assert (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ENVELOPE") == (error.code, error.reason)
    assert fields == [p.field for p in error.fields]
    assert all(p.rule and p.description for p in error.fields)
    assert error.message.startswith(fields[0])


async def test_batch_paths_point_into_the_request(clients: dict[str, HubClient]) -> None:
    """In PublishStream results, paths are relative to the request: envelopes[i]...."""
    good = f.envelope(f.CUR, (f.QUESTURA,))
    bad = f.envelope(f.CUR, (f.QUESTURA,))
    bad.incident.locations[0].comune_istat = "000000"
    [ok, refused] = await clients[f.CUR].publish_many([good, bad], batch_size=2)
    assert isinstance(ok, hub_pb2.Acceptance)
    assert isinstance(refused, HubError)
    assert ["envelopes[1].incident.locations[0].comune_istat"] == [p.field for p in refused.fields]


async def test_receipt_with_a_bad_id_names_the_field(clients: dict[str, HubClient]) -> None:
    """GetReceipt with a malformed id: INVALID_ARGUMENT on distribution_id."""
    with pytest.raises(HubError) as caught:
        await clients[f.CUR].receipt("DROP TABLE")
    assert (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", ["distribution_id"]) == (
        caught.value.code,
        caught.value.reason,
        [p.field for p in caught.value.fields],
    )


async def test_oversized_envelope_is_resource_exhausted(clients: dict[str, HubClient]) -> None:
    """An envelope above max_envelope_bytes gets RESOURCE_EXHAUSTED ENVELOPE_TOO_LARGE; a huge request too."""
    env = f.envelope(f.CUR, (f.QUESTURA,))
    for _ in range(20):
        env.incident.notes.add(text="x" * 4000)
    with pytest.raises(HubError) as caught:
        await clients[f.CUR].publish(env)
    assert (grpc.StatusCode.RESOURCE_EXHAUSTED, "ENVELOPE_TOO_LARGE") == (caught.value.code, caught.value.reason)

    huge = f.envelope(f.CUR, (f.QUESTURA,))
    huge.incident.description = "y" * (17 * 1024 * 1024)  # above the hub's max request size (16 MiB)
    with pytest.raises(HubError) as too_big:
        await clients[f.CUR].publish(huge)
    assert grpc.StatusCode.RESOURCE_EXHAUSTED == too_big.value.code


async def test_bytes_that_are_not_protobuf_get_invalid_argument(hub: LocalHub, clients: dict[str, HubClient]) -> None:
    """Garbage request bytes: INVALID_ARGUMENT MALFORMED_REQUEST (not INTERNAL), on each method."""
    channel = clients[f.CUR]._channel
    garbage = b"\xff\xff\xff\xff\x0f\x0a"
    for method in ("Publish", "GetReceipt"):
        call = channel.unary_unary(
            f"/opsroom.hub.v1.HubService/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(garbage, timeout=5)
        error = HubError.from_rpc_error(caught.value)
        assert (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST") == (error.code, error.reason)
    stream = channel.stream_stream(
        "/opsroom.hub.v1.HubService/PublishStream", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    call = stream()
    await call.write(garbage)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert grpc.StatusCode.INVALID_ARGUMENT == caught.value.code()


async def test_bad_input_does_not_disturb_other_agencies(hub: LocalHub, clients: dict[str, HubClient]) -> None:
    """While the PL floods the hub with bad requests, the CUR's 200 envelopes reach the Questura intact, in order."""
    good = [f.envelope(f.CUR, (f.QUESTURA,), kind=common_pb2.KIND_UPDATE) for _ in range(200)]
    refusals: list[str] = []

    async def flood() -> None:
        channel = clients[f.PL]._channel
        raw = channel.unary_unary(
            "/opsroom.hub.v1.HubService/Publish", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        for n in range(60):
            kind = n % 4
            try:
                if kind == 0:
                    await raw(b"\x0a\xff\xff\xff", timeout=5)
                elif kind == 1:
                    await clients[f.PL].publish(f.envelope(f.CUR, (f.QUESTURA,)))  # forged sender
                elif kind == 2:
                    bad = f.envelope(f.PL, (f.QUESTURA,))
                    bad.incident.locations[0].point.longitude = float("nan")
                    await clients[f.PL].publish(bad)
                else:
                    await clients[f.PL].publish(f.envelope(f.PL, ("it.zz.nobody",)))
            except HubError as exc:
                refusals.append(exc.reason)
            except grpc.aio.AioRpcError as exc:
                refusals.append(HubError.from_rpc_error(exc).reason)

    results, _ = await asyncio.gather(clients[f.CUR].publish_many(good, batch_size=10), flood())
    assert all(isinstance(r, hub_pb2.Acceptance) for r in results)
    assert {"MALFORMED_REQUEST", "SENDER_MISMATCH", "INVALID_ENVELOPE"} == set(refusals)
    assert 60 == len(refusals)
    deliveries = await take(clients[f.QUESTURA].inbox(window=256), 200)
    assert [e.distribution_id for e in good] == [d.envelope.distribution_id for d in deliveries]
    await nothing_more(clients[f.QUESTURA].inbox(), 0.5)


async def test_routing_refusals(clients: dict[str, HubClient]) -> None:
    """A recipient no rule allows: PERMISSION_DENIED naming it; the whole envelope is refused."""
    env = f.envelope(f.CUR, (f.QUESTURA, f.PL_MILANO))
    with pytest.raises(HubError) as caught:
        await clients[f.CUR].publish(env)
    assert (grpc.StatusCode.PERMISSION_DENIED, "RECIPIENT_NOT_ALLOWED") == (caught.value.code, caught.value.reason)
    assert {"recipients": f.PL_MILANO} == caught.value.metadata
    assert "envelope.recipients[1]" in caught.value.message
    await nothing_more(clients[f.QUESTURA].inbox(), 1.0)

    nobody = f.envelope(f.CUR, ())
    with pytest.raises(HubError) as none:
        await clients[f.CUR].publish(nobody)
    assert (grpc.StatusCode.FAILED_PRECONDITION, "NO_RECIPIENTS") == (none.value.code, none.value.reason)
