"""No side channels, through the real hub: a room's sequences are its own, session bounds are said, acks name only what was sent.

A room sees sequences its session numbers (1, 2, 3... in the low 32 bits, the agency's session
number above), never the stores' stream sequences, whose gaps would tell it how much the other
agencies receive. OpenSession values out of range are clamped and SessionOpened says the values
in effect. An ack of a sequence the agency was never sent ends the session with INVALID_ARGUMENT
ACK_NOT_SENT naming the field; other agencies' sessions go on as if nothing happened.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, HubError

from broker.delivery.numbering import MAX_NUMBER, NUMBER_BITS
from broker.delivery.sessions import MAX_BATCH, MAX_WINDOW
from broker.dev.testing import LocalHub
from broker.errors import Reason
from tests import factories as f
from tests.integration.conftest import nothing_more, take
from tests.integration.test_delivery import settled

pytestmark = pytest.mark.integration

# liveness: a frame or an end of stream on loopback comes in milliseconds; ten times more than ever seen.
LIVENESS = 15.0


def number(sequence: int) -> int:
    """The session's count in a sequence (its low bits)."""
    return sequence & MAX_NUMBER


def epoch(sequence: int) -> int:
    """The agency's session number in a sequence (its high bits)."""
    return sequence >> NUMBER_BITS


async def open_raw(client: HubClient, max_batch: int = 0, window: int = 0) -> tuple[Any, hub_pb2.SessionOpened]:
    """A bare Connect call, opened: the call and what the hub said of the session."""
    call = client.connect_call()
    await call.write(hub_pb2.ConnectRequest(open=hub_pb2.OpenSession(max_batch=max_batch, window=window)))
    async with asyncio.timeout(LIVENESS):
        first = await call.read()
    assert "opened" == first.WhichOneof("response")
    return call, first.opened


async def frames(call: Any, count: int) -> list[hub_pb2.DeliveryBatch]:
    """Delivery frames from a bare call until they hold count deliveries (heartbeats answered)."""
    out: list[hub_pb2.DeliveryBatch] = []
    async with asyncio.timeout(LIVENESS):
        while sum(len(frame.deliveries) for frame in out) < count:
            response = await call.read()
            assert response is not grpc.aio.EOF, "the session ended"
            if response.WhichOneof("response") == "heartbeat":
                await call.write(hub_pb2.ConnectRequest(keepalive=hub_pb2.KeepAlive()))
            elif response.WhichOneof("response") == "deliveries":
                out.append(response.deliveries)
    return out


async def deliveries(call: Any, count: int) -> list[hub_pb2.Delivery]:
    """The next count deliveries of a bare call."""
    return [d for frame in await frames(call, count) for d in frame.deliveries]


async def ended_with(call: Any) -> HubError:
    """How a bare call's stream ended (it must end with a refusal)."""
    async with asyncio.timeout(LIVENESS):
        while True:
            try:
                response = await call.read()
            except grpc.aio.AioRpcError as exc:
                return HubError.from_rpc_error(exc)
            assert response is not grpc.aio.EOF, "the stream ended without a status"


async def test_two_rooms_with_interleaved_traffic_each_see_their_own_gap_free_sequence(
    clients: dict[str, HubClient],
) -> None:
    """Questura and Polizia Locale get traffic in turns (some to both, bulk and urgent): each counts 1..n alone."""
    sender = clients[f.CUR]
    to_questura: list[str] = []
    to_pl: list[str] = []
    for i in range(24):
        recipients = ((f.QUESTURA,), (f.PL,), (f.QUESTURA, f.PL), (f.PL,))[i % 4]
        extra = {"alert": f.plate_read(), "incident_ids": ("urn:emergency:uid:incidentid:transits:pl.torino.it",)}
        env = f.envelope(f.CUR, recipients, **(extra if i % 3 == 0 else {}))  # every third one on the bulk lane
        await sender.publish(env)
        for agency, sent in ((f.QUESTURA, to_questura), (f.PL, to_pl)):
            if agency in recipients:
                sent.append(env.distribution_id)
    for agency, sent in ((f.QUESTURA, to_questura), (f.PL, to_pl)):
        got = await take(clients[agency].inbox(), len(sent))
        assert sorted(sent) == sorted(d.envelope.distribution_id for d in got)
        lanes = {d.lane for d in got}
        assert {hub_pb2.LANE_URGENT, hub_pb2.LANE_BULK} == lanes, "both lanes are in the count"
        sequences = sorted(d.sequence for d in got)
        assert list(range(1, len(sent) + 1)) == [number(s) for s in sequences], agency
        assert {1} == {epoch(s) for s in sequences}  # the agency's first session
        await nothing_more(clients[agency].inbox(), 0.5)


async def test_a_rooms_sequence_does_not_move_when_another_agency_receives_traffic(
    clients: dict[str, HubClient],
) -> None:
    """Between two deliveries to the Questura, 40 go to the Polizia Locale: the Questura's sequence moves by one."""
    sender = clients[f.CUR]
    questura, pl = clients[f.QUESTURA].inbox(), clients[f.PL].inbox()
    await sender.publish(f.envelope(f.CUR, (f.QUESTURA,)))
    [before] = await take(questura, 1)
    for _ in range(40):
        await sender.publish(f.envelope(f.CUR, (f.PL,)))
    await take(pl, 40)
    await sender.publish(f.envelope(f.CUR, (f.QUESTURA,)))
    [after] = await take(questura, 1)
    assert before.sequence + 1 == after.sequence
    assert (1, 2) == (number(before.sequence), number(after.sequence))


async def test_session_parameters_out_of_range_are_clamped_and_the_answer_says_to_what(
    clients: dict[str, HubClient],
) -> None:
    """4,000,000,000 for both: SessionOpened says 1000 and 10000; 0 says the defaults; in range, as asked."""
    client = clients[f.QUESTURA]
    for asked, effective in (
        ((4_000_000_000, 4_000_000_000), (MAX_BATCH, MAX_WINDOW)),
        ((0, 0), (64, 1024)),
        ((2, 300), (2, 300)),
    ):
        call, opened = await open_raw(client, *asked)
        assert effective == (opened.max_batch, opened.window), asked
        assert (1000, 10_000) == (MAX_BATCH, MAX_WINDOW)  # the bounds docs/contract.md and the proto state
        if asked == (2, 300):  # the values said are the values applied: batches of at most 2
            for _ in range(5):
                await clients[f.CUR].publish(f.envelope(f.CUR, (f.QUESTURA,)))
            batches = await frames(call, 5)
            assert all(len(batch.deliveries) <= 2 for batch in batches)
            assert 5 == sum(len(batch.deliveries) for batch in batches)
        call.cancel()


async def test_an_ack_of_a_sequence_never_sent_is_refused_naming_it_and_other_agencies_are_undisturbed(
    clients: dict[str, HubClient],
) -> None:
    """The Polizia Locale acks its own sequence, then one it was never sent: ACK_NOT_SENT on ack.sequences[1].

    Nothing of that ack counts (its delivery comes again); the Questura, whose session runs at the
    same time, gets its deliveries and acknowledges them as before.
    """
    sender = clients[f.CUR]
    questura = clients[f.QUESTURA].inbox()
    env = f.envelope(f.CUR, (f.QUESTURA, f.PL))
    await sender.publish(env)
    [questura_first] = await take(questura, 1)
    call, _opened = await open_raw(clients[f.PL])
    [pl_delivery] = await deliveries(call, 1)
    never_sent = pl_delivery.sequence + 1  # the next number: not sent yet
    await call.write(hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=[pl_delivery.sequence, never_sent])))
    refused = await ended_with(call)
    assert (grpc.StatusCode.INVALID_ARGUMENT, Reason.ACK_NOT_SENT.name) == (refused.code, refused.reason)
    assert ["ack.sequences[1]"] == [problem.field for problem in refused.fields]
    assert refused.message.startswith("ack.sequences[1]: ")

    receipt = await sender.receipt(env.distribution_id)
    states = {r.agency_id: r.state for r in receipt.recipients}
    assert hub_pb2.DELIVERY_STATE_STORED == states[f.PL]  # the refused message acknowledged nothing
    # The Questura's session went on: a new delivery arrives and its acks are recorded.
    later = f.envelope(f.CUR, (f.QUESTURA,))
    await sender.publish(later)
    [questura_second] = await take(questura, 1)
    assert later.distribution_id == questura_second.envelope.distribution_id
    assert questura_first.sequence + 1 == questura_second.sequence
    assert 0 == questura.reconnects
    await settled(sender, later.distribution_id)
    # The Polizia Locale's next session gets the delivery again.
    [again] = await take(clients[f.PL].inbox(), 1)
    assert env.distribution_id == again.envelope.distribution_id


async def test_a_repeated_ack_and_an_ack_of_an_earlier_session_are_harmless(clients: dict[str, HubClient]) -> None:
    """Acking twice is fine; after a reconnect, an ack of the previous session's sequence is ignored, not refused.

    The delivery comes again on the new session with a higher sequence (the session number grew),
    and acknowledging that one settles it.
    """
    sender = clients[f.CUR]
    first = f.envelope(f.CUR, (f.QUESTURA,))
    await sender.publish(first)
    call, _opened = await open_raw(clients[f.QUESTURA])
    [delivery] = await deliveries(call, 1)
    call.cancel()  # left without acknowledging it

    call, _opened = await open_raw(clients[f.QUESTURA])
    [again] = await deliveries(call, 1)
    assert first.distribution_id == again.envelope.distribution_id
    assert again.sequence > delivery.sequence
    assert (epoch(delivery.sequence) + 1, 1) == (epoch(again.sequence), number(again.sequence))
    await call.write(hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=[delivery.sequence])))  # earlier
    await call.write(hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=[again.sequence])))
    await call.write(hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=[again.sequence, again.sequence])))
    await settled(sender, first.distribution_id)
    second = f.envelope(f.CUR, (f.QUESTURA,))
    await sender.publish(second)
    [next_one] = await deliveries(call, 1)  # the session lives on
    assert (second.distribution_id, again.sequence + 1) == (next_one.envelope.distribution_id, next_one.sequence)
    call.cancel()


async def test_the_python_client_acking_a_delivery_of_its_previous_session_is_not_refused(hub: LocalHub) -> None:
    """The client's session ends (as a stopping replica ends it) before the application acks what it was handed.

    The client reconnects; the late ack names the previous session's sequence, which the client
    drops; the delivery comes again, is not handed over twice, and is acknowledged with the new
    session's sequence. The new session is never refused.
    """
    sender, room = hub.client(f.CUR), hub.client(f.QUESTURA)
    env = f.envelope(f.CUR, (f.QUESTURA,))
    await sender.publish(env)
    inbox = room.inbox()
    async with asyncio.timeout(LIVENESS):
        handed = await inbox.__anext__()
    hub.hub._sessions._by_agency[f.QUESTURA].supersede(Reason.SHUTTING_DOWN)  # what a stopping replica does
    async with asyncio.timeout(LIVENESS):
        while inbox.reconnects < 1 or not inbox.opened.is_set():
            await asyncio.sleep(0.02)
    inbox.ack(handed)  # late: its sequence is the previous session's
    later = f.envelope(f.CUR, (f.QUESTURA,))
    await sender.publish(later)
    [next_one] = await take(inbox, 1)
    assert later.distribution_id == next_one.envelope.distribution_id
    assert 1 == inbox.duplicates_dropped  # the copy of env, acknowledged on this session
    await settled(sender, env.distribution_id)
    await settled(sender, later.distribution_id)
    assert 1 == inbox.reconnects
    await room.close()
    await sender.close()
