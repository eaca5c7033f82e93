"""Publish, delivery, acknowledgement and receipts through the real hub and a real nats-server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from opsroom.common.v1 import common_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, HubError

from broker.dev.testing import LocalHub
from tests import factories as f
from tests.integration.conftest import nothing_more, take

pytestmark = pytest.mark.integration


async def settled(client: HubClient, distribution_id: str, timeout: float = 10.0) -> hub_pb2.Receipt:
    """The receipt once every recipient is DELIVERED (acks are recorded in the background)."""
    async with asyncio.timeout(timeout):
        while True:
            receipt = await client.receipt(distribution_id)
            if all(r.state == hub_pb2.DELIVERY_STATE_DELIVERED for r in receipt.recipients):
                return receipt
            await asyncio.sleep(0.05)


async def test_publish_deliver_ack_receipt(clients: dict[str, HubClient]) -> None:
    """An envelope reaches each recipient intact; acks turn the receipt from STORED to DELIVERED."""
    env = f.envelope(f.CUR, (f.QUESTURA, f.PL))
    acceptance = await clients[f.CUR].publish(env)
    assert (env.distribution_id, [f.QUESTURA, f.PL], False) == (
        acceptance.distribution_id,
        list(acceptance.recipients),
        acceptance.replayed,
    )

    before = await clients[f.CUR].receipt(env.distribution_id)
    assert [(f.QUESTURA, hub_pb2.DELIVERY_STATE_STORED), (f.PL, hub_pb2.DELIVERY_STATE_STORED)] == [
        (r.agency_id, r.state) for r in before.recipients
    ]

    for agency in (f.QUESTURA, f.PL):
        [delivery] = await take(clients[agency].inbox(), 1)
        assert env == delivery.envelope
        assert delivery.attempt == 1
        assert delivery.stored_at.seconds > 0

    receipt = await settled(clients[f.CUR], env.distribution_id)
    assert (f.CUR, common_pb2.KIND_REPORT) == (receipt.sender_agency_id, receipt.kind)
    assert all(r.delivered_at.seconds > 0 for r in receipt.recipients)
    assert not any(r.HasField("response") for r in receipt.recipients)


async def test_backlog_in_order_from_where_the_room_acked(hub: LocalHub) -> None:
    """A room offline gets its backlog in order; after a clean disconnect it resumes after its last ack."""
    sender = hub.client(f.CUR)
    sent = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(40)]
    for env in sent:
        await sender.publish(env)

    room = hub.client(f.QUESTURA)
    first = await take(room.inbox(window=64), 15)
    assert [e.distribution_id for e in sent[:15]] == [d.envelope.distribution_id for d in first]
    await room.close()  # the 15 acknowledgements are recorded before the session ends

    more = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(10)]
    for env in more:
        await sender.publish(env)

    again = hub.client(f.QUESTURA)
    rest = await take(again.inbox(window=64), 35)
    assert [e.distribution_id for e in (sent + more)[15:]] == [d.envelope.distribution_id for d in rest]
    assert [d.sequence for d in rest] == sorted(d.sequence for d in rest)
    await nothing_more(again.inbox(), 0.5)
    await again.close()
    await sender.close()


async def test_unacknowledged_deliveries_come_back_first_after_a_crash(hub: LocalHub) -> None:
    """Deliveries a room received but did not acknowledge are redelivered, in order, before newer ones."""
    sender = hub.client(f.CUR)
    sent = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(6)]
    for env in sent[:4]:
        await sender.publish(env)

    crashing = hub.client(f.QUESTURA)
    inbox = crashing.inbox()
    got = []
    async with asyncio.timeout(10):
        while len(got) < 4:
            got.append(await inbox.__anext__())
    inbox.ack(got[0])  # only the first is acknowledged before the "crash"
    await asyncio.sleep(0.5)
    await crashing._channel.close(grace=None)  # the connection drops without a clean end

    for env in sent[4:]:
        await sender.publish(env)
    recovered = hub.client(f.QUESTURA)
    rest = await take(recovered.inbox(), 5)
    assert [e.distribution_id for e in sent[1:]] == [d.envelope.distribution_id for d in rest]
    await recovered.close()
    await sender.close()


async def test_retry_returns_first_answer_and_is_delivered_once(clients: dict[str, HubClient]) -> None:
    """Publishing the same envelope again (also concurrently) returns the first acceptance, replayed."""
    env = f.envelope(f.CUR, (f.QUESTURA,))
    first = await clients[f.CUR].publish(env)
    again = await asyncio.gather(*(clients[f.CUR].publish(env) for _ in range(5)))
    for replay in again:
        assert replay.replayed
        replay.replayed = False
        assert first == replay

    inbox = clients[f.QUESTURA].inbox()
    [delivery] = await take(inbox, 1)
    assert env.distribution_id == delivery.envelope.distribution_id
    await nothing_more(inbox, 1.0)


async def test_concurrent_first_attempts_store_once(clients: dict[str, HubClient]) -> None:
    """Ten simultaneous first attempts with one id: one acceptance, nine replays, one delivery."""
    env = f.envelope(f.CUR, (f.QUESTURA,))
    answers = await asyncio.gather(*(clients[f.CUR].publish(env) for _ in range(10)))
    assert 9 == sum(a.replayed for a in answers)
    assert 1 == len({(a.distribution_id, a.accepted_at.seconds, a.accepted_at.nanos) for a in answers})
    inbox = clients[f.QUESTURA].inbox()
    await take(inbox, 1)
    await nothing_more(inbox, 1.0)


async def test_same_id_different_content_is_refused(clients: dict[str, HubClient]) -> None:
    """A distribution id reused for other content gets FAILED_PRECONDITION DISTRIBUTION_ID_REUSED."""
    env = f.envelope(f.CUR, (f.QUESTURA,))
    await clients[f.CUR].publish(env)
    env.incident.involved_count = 7
    with pytest.raises(HubError) as caught:
        await clients[f.CUR].publish(env)
    assert (grpc.StatusCode.FAILED_PRECONDITION, "DISTRIBUTION_ID_REUSED") == (caught.value.code, caught.value.reason)


async def test_id_is_never_reused_even_after_the_duplicate_window(tmp_path: object) -> None:
    """The acceptance record keeps an id taken after JetStream's duplicate window has passed."""
    from dataclasses import replace  # noqa: PLC0415
    from datetime import timedelta  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from broker.config import NatsConfig  # noqa: PLC0415
    from broker.dev.testing import local_hub  # noqa: PLC0415
    from tests.integration.conftest import AGENCIES, ALLOW  # noqa: PLC0415

    nats = replace(NatsConfig(), duplicate_window=timedelta(seconds=1))
    async with local_hub(Path(str(tmp_path)), AGENCIES, ALLOW, nats_config=nats) as env:
        client = env.client(f.CUR)
        envelope = f.envelope(f.CUR, (f.QUESTURA,))
        first = await client.publish(envelope)
        await asyncio.sleep(2.5)
        replay = await client.publish(envelope)
        assert replay.replayed
        assert first.accepted_at == replay.accepted_at
        room = env.client(f.QUESTURA)
        inbox = room.inbox()
        await take(inbox, 1)
        await nothing_more(inbox, 1.0)
        await room.close()
        await client.close()


async def test_publish_stream_answers_each_request_in_order(clients: dict[str, HubClient]) -> None:
    """PublishStream: many requests in flight, one response each, results in envelope order, delivery in order."""
    envelopes = [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(300)]
    bad = f.envelope(f.CUR, (f.QUESTURA,))
    bad.incident.type.eido_code = "NOT-A-CODE"
    envelopes.insert(150, bad)
    results = await clients[f.CUR].publish_many(envelopes, batch_size=25)

    assert 301 == len(results)
    error = results[150]
    assert isinstance(error, HubError)
    assert (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ENVELOPE") == (error.code, error.reason)
    assert ["envelopes[0].incident.type.eido_code"] == [p.field for p in error.fields]  # index within its request
    good = [e for i, e in enumerate(envelopes) if i != 150]
    assert [e.distribution_id for e in good] == [
        r.distribution_id for i, r in enumerate(results) if i != 150 and not isinstance(r, HubError)
    ]
    deliveries = await take(clients[f.QUESTURA].inbox(window=512, max_batch=100), 300)
    assert [e.distribution_id for e in good] == [d.envelope.distribution_id for d in deliveries]


async def test_events_of_one_incident_arrive_in_publish_order(clients: dict[str, HubClient]) -> None:
    """Updates of one incident, published back to back without waiting, reach the recipient in order."""
    updates = [f.envelope(f.CUR, (f.QUESTURA,), kind=common_pb2.KIND_UPDATE) for _ in range(50)]
    for n, env in enumerate(updates):
        env.incident.involved_count = n
    await clients[f.CUR].publish_many(updates, batch_size=7)
    deliveries = await take(clients[f.QUESTURA].inbox(), 50)
    assert list(range(50)) == [d.envelope.incident.involved_count for d in deliveries]


async def test_business_answer_is_kept_apart_from_delivery(clients: dict[str, HubClient]) -> None:
    """A request's receipt shows the technical delivery and, separately, the operator's rejection with its cause."""
    request = f.envelope(f.PL, (f.CC,), kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request())
    await clients[f.PL].publish(request)
    [delivered] = await take(clients[f.CC].inbox(), 1)
    receipt = await settled(clients[f.PL], request.distribution_id)
    assert not receipt.recipients[0].HasField("response")

    answer = f.envelope(
        f.CC,
        (f.PL,),
        kind=common_pb2.KIND_RESPONSE,
        references=((delivered.envelope.distribution_id, f.PL),),
        assistance_response=f.assistance_response(common_pb2.OUTCOME_REJECTED, "nessuna pattuglia libera"),
    )
    await clients[f.CC].publish(answer)
    receipt = await clients[f.PL].receipt(request.distribution_id)
    [entry] = receipt.recipients
    assert (f.CC, hub_pb2.DELIVERY_STATE_DELIVERED) == (entry.agency_id, entry.state)
    assert (common_pb2.OUTCOME_REJECTED, "nessuna pattuglia libera", answer.distribution_id) == (
        entry.response.outcome,
        entry.response.cause,
        entry.response.response_distribution_id,
    )
    [got] = await take(clients[f.PL].inbox(), 1)
    assert answer.distribution_id == got.envelope.distribution_id


async def test_answers_must_fit_the_request(clients: dict[str, HubClient]) -> None:
    """Answering an unknown message, a message sent elsewhere, or with the wrong payload is refused."""
    request = f.envelope(f.PL, (f.CC,), kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request())
    await clients[f.PL].publish(request)
    ref = ((request.distribution_id, f.PL),)
    cases = [
        (
            f.CC,
            f.envelope(
                f.CC, (f.PL,), kind=common_pb2.KIND_RESPONSE, references=((f.envelope().distribution_id, f.PL),),
                assistance_response=f.assistance_response(),
            ),
            (grpc.StatusCode.FAILED_PRECONDITION, "REFERENCE_NOT_FOUND"),
        ),
        (
            f.QUESTURA,
            f.envelope(
                f.QUESTURA, (f.PL,), kind=common_pb2.KIND_RESPONSE, references=ref,
                assistance_response=f.assistance_response(),
            ),
            (grpc.StatusCode.PERMISSION_DENIED, "NOT_A_RECIPIENT"),
        ),
        (
            f.CC,
            f.envelope(
                f.CC, (f.PL,), kind=common_pb2.KIND_RESPONSE, references=ref, handover_response=f.handover_response()
            ),
            (grpc.StatusCode.FAILED_PRECONDITION, "RESPONSE_MISMATCH"),
        ),
    ]  # fmt: skip
    for agency, env, expected in cases:
        with pytest.raises(HubError) as caught:
            await clients[agency].publish(env)
        assert expected == (caught.value.code, caught.value.reason)


async def test_reply_goes_back_without_an_allow_rule(clients: dict[str, HubClient]) -> None:
    """Milano's PL may write to the Torino CUR; the CUR may answer it only because it was written to."""
    report = f.envelope(f.PL_MILANO, (f.CUR,))
    await clients[f.PL_MILANO].publish(report)
    ack = f.envelope(
        f.CUR,
        (f.PL_MILANO,),
        kind=common_pb2.KIND_ACK,
        references=((report.distribution_id, f.PL_MILANO),),
        acknowledgement=f.acknowledgement(),
    )
    acceptance = await clients[f.CUR].publish(ack)
    assert [f.PL_MILANO] == list(acceptance.recipients)

    unprompted = f.envelope(f.CUR, (f.PL_MILANO,))
    with pytest.raises(HubError) as caught:
        await clients[f.CUR].publish(unprompted)
    assert (grpc.StatusCode.PERMISSION_DENIED, "RECIPIENT_NOT_ALLOWED") == (caught.value.code, caught.value.reason)
    assert f.PL_MILANO in caught.value.message
    assert "envelope.recipients[0]" in caught.value.message
