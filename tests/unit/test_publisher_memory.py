"""The publish path without a server: the real Publisher and Committer over the in-memory store.

What the integration tests prove against nats-server (tests/integration/test_partial_write.py,
test_id_reuse.py), here on broker.store.memory.MemoryStore in milliseconds: an envelope is one
delivery per recipient, the first one claiming its id and carrying its plan; a write cut after the
first delivery is finished by the resend from the plan; another agency's use of the id is refused
and writes nothing. Also the in-memory store's own JetStream semantics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from broker.errors import Reason, Refused, StoreUnavailable
from broker.lanes import LANES
from broker.ops.metrics import Metrics
from broker.policy.routing import AllowListRouter, AllowRule
from broker.publish.committer import Committer
from broker.publish.plan import PLAN_HEADER
from broker.publish.publisher import Publisher
from broker.store.memory import MemoryStore, subject_matches
from broker.store.model import AlreadyStored, OutMsg, WrongLastSequence
from broker.validate import codelists
from broker.validate.checker import ValidationContext
from tests import factories as f

TORINO = frozenset({f.CUR, f.PL, f.CC, f.QUESTURA})


@pytest.fixture
async def path() -> AsyncIterator[tuple[MemoryStore, Publisher]]:
    """A MemoryStore, a commit loop per lane over it, and the publisher."""
    store = MemoryStore()
    metrics = Metrics()
    committers = {
        lane: Committer(store.commit, metrics, publish_each=store.publish_each, claimed=store.claimed, lane=lane.value)
        for lane in LANES
    }
    loops = [asyncio.create_task(c.run()) for c in committers.values()]
    publisher = Publisher(
        store,
        committers,
        AllowListRouter([AllowRule("torino", TORINO, TORINO)]),
        ValidationContext(codelists.load(), lambda agency: agency in TORINO),
        lambda: datetime.now(UTC),
    )
    yield store, publisher
    for c in committers.values():
        c.close()
    await asyncio.gather(*loops)


def _deliveries(store: MemoryStore, distribution_id: str) -> list[str]:
    return [m.subject for m in store.messages() if m.subject.endswith("." + distribution_id)]


async def test_an_envelope_is_one_delivery_per_recipient_the_first_claiming_its_id_with_the_plan(
    path: tuple[MemoryStore, Publisher],
) -> None:
    store, publisher = path
    env = f.envelope(f.CUR, (f.QUESTURA, f.PL))
    accepted = await publisher.publish(env, f.CUR)
    assert list(accepted.acceptance.recipients) == [f.QUESTURA, f.PL]
    first, second = (m for m in store.messages() if m.subject.endswith(env.distribution_id))
    assert first.headers["Nats-Expected-Last-Subject-Sequence"] == "0"
    assert first.headers["Nats-Expected-Last-Subject-Sequence-Subject"].endswith(env.distribution_id)
    assert PLAN_HEADER in first.headers
    assert PLAN_HEADER not in second.headers


async def test_a_write_cut_after_the_first_delivery_is_finished_by_the_resend(
    path: tuple[MemoryStore, Publisher],
) -> None:
    store, publisher = path
    env = f.envelope(f.CUR, (f.QUESTURA, f.PL))
    store.fail_after = store.writes + 1  # the store dies after the first delivery
    with pytest.raises(StoreUnavailable):
        await publisher.publish(env, f.CUR)
    assert len(_deliveries(store, env.distribution_id)) == 1
    store.fail_after = None
    answer = await publisher.publish(env, f.CUR, resend=True)
    assert list(answer.acceptance.recipients) == [f.QUESTURA, f.PL]
    assert {store.layout.parse_delivery(s)[0] for s in _deliveries(store, env.distribution_id)} == {f.QUESTURA, f.PL}


async def test_another_agency_reusing_the_id_is_refused_and_nothing_is_written(
    path: tuple[MemoryStore, Publisher],
) -> None:
    store, publisher = path
    first = f.envelope(f.CUR, (f.QUESTURA,))
    await publisher.publish(first, f.CUR)
    before = store.messages()
    reuse = f.envelope(f.PL, (f.CC,), distribution_id=first.distribution_id)
    with pytest.raises(Refused) as caught:
        await publisher.publish(reuse, f.PL)
    assert caught.value.reason is Reason.DISTRIBUTION_ID_REUSED
    assert store.messages() == before


# -- the in-memory store's own semantics -------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "subject_filter", "matches"),
    [
        ("a.b.c", "a.b.c", True),
        ("a.b.c", "a.*.c", True),
        ("a.b.c", "a.>", True),
        ("a", "a.>", False),
        ("a.b", "a.b.c", False),
        ("a.b.c", "a.*", False),
    ],
)
def test_subject_filters(subject: str, subject_filter: str, matches: bool) -> None:
    assert subject_matches(subject, subject_filter) is matches


async def test_the_memory_store_refuses_a_repeated_id_and_a_wrong_last_sequence_and_keeps_batches_whole() -> None:
    store = MemoryStore()
    [seq] = await store.publish_each([OutMsg("opsroom.ack.x", b"1", {"Nats-Msg-Id": "m1"})])
    assert seq == 1
    [again] = await store.publish_each([OutMsg("opsroom.ack.x", b"1", {"Nats-Msg-Id": "m1"})])
    assert isinstance(again, AlreadyStored)
    [wrong] = await store.publish_each([OutMsg("opsroom.ack.x", b"2", {"Nats-Expected-Last-Subject-Sequence": "0"})])
    assert isinstance(wrong, WrongLastSequence)
    with pytest.raises(AlreadyStored):
        await store.commit([OutMsg("opsroom.ack.y", b"3"), OutMsg("opsroom.ack.z", b"4", {"Nats-Msg-Id": "m1"})])
    assert [m.subject for m in store.messages()] == ["opsroom.ack.x"]  # the batch stored nothing
    ack = await store.commit([OutMsg("opsroom.ack.y", b"3"), OutMsg("opsroom.dlv.a.bulk.d", b"4")])
    assert ack.count == 2
    assert [m.subject for m in store.messages(store.stream_of(LANES[1]))] == ["opsroom.dlv.a.bulk.d"]
