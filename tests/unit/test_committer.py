"""broker.publish.committer: group commit into atomic batches, with a fake JetStream commit function (no servers)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit.log import Draft
from broker.errors import OpsroomError, Reason, Refused, StoreFull, StoreUnavailable
from broker.ops.metrics import Metrics
from broker.publish.committer import Committer, GroupResult, Outcome
from broker.store.model import BatchAck, DuplicateInBatch, OutMsg

WAIT = 5.0


def msg(name: str, size: int = 1) -> OutMsg:
    """A message whose JetStream message id is its name, with a payload of `size` bytes.

    "a/0" goes to subject opsroom.test.a.0: the messages of one group share an order key (opsroom.test.a).
    """
    return OutMsg(f"opsroom.test.{name.replace('/', '.')}", b"x" * size, {"Nats-Msg-Id": name})


def group(prefix: str, count: int = 1, size: int = 1) -> list[OutMsg]:
    """`count` messages named prefix/0, prefix/1, ..."""
    return [msg(f"{prefix}/{i}", size) for i in range(count)]


def names(batch: Sequence[OutMsg]) -> list[str]:
    return [m.headers["Nats-Msg-Id"] for m in batch]


class FakeStore:
    """A stream that numbers stored messages from `first_seq`, refuses batches repeating a stored message id
    (as JetStream does with DuplicateInBatch), can fail on demand, and can hold a commit in flight.
    """

    def __init__(self, first_seq: int = 1, stored_ids: Sequence[str] = ()) -> None:
        self.next_seq = first_seq
        self.ids: set[str] = set(stored_ids)
        self.calls: list[list[str]] = []
        self.stored: list[str] = []
        self.errors: dict[int, Exception] = {}  # call index -> exception to raise
        self.each_calls: list[list[str]] = []
        self.each_errors: dict[str, Exception] = {}  # message name -> error publish_each reports for it
        self.in_flight = asyncio.Event()
        self.gate: asyncio.Event | None = None

    def hold(self) -> None:
        """Make commits wait until release()."""
        self.gate = asyncio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()

    async def commit(self, msgs: Sequence[OutMsg]) -> BatchAck:
        call = len(self.calls)
        self.calls.append(names(msgs))
        self.in_flight.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        if call in self.errors:
            raise self.errors[call]
        batch = names(msgs)
        if self.ids.intersection(batch):
            raise DuplicateInBatch("duplicate message id in batch")
        self.ids.update(batch)
        self.stored.extend(batch)
        self.next_seq += len(msgs)
        return BatchAck(self.next_seq - 1, len(msgs))

    async def publish_each(self, msgs: Sequence[OutMsg]) -> list[int | Exception]:
        """Plain publishes: per message its sequence, or its error (DuplicateInBatch if already stored)."""
        batch = names(msgs)
        self.each_calls.append(batch)
        await asyncio.sleep(0)
        out: list[int | Exception] = []
        for name in batch:
            if name in self.each_errors:
                out.append(self.each_errors[name])
            elif name in self.ids:
                out.append(DuplicateInBatch("expected-absent subject exists"))
            else:
                self.ids.add(name)
                self.stored.append(name)
                out.append(self.next_seq)
                self.next_seq += 1
        return out


@contextlib.asynccontextmanager
async def running(committer: Committer) -> AsyncIterator[asyncio.Task[None]]:
    """Run committer.run() as a task for the body; cancel and await it afterwards."""
    task = asyncio.create_task(committer.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def outcomes(futures: Sequence[asyncio.Future[GroupResult]]) -> list[GroupResult | BaseException]:
    async with asyncio.timeout(WAIT):
        return await asyncio.gather(*futures, return_exceptions=True)


async def test_single_group_is_stored_with_its_last_sequence() -> None:
    """One group is committed as one batch; its result is STORED with the sequence of its last message."""
    store = FakeStore(first_seq=41)
    committer = Committer(store.commit, Metrics())
    async with running(committer):
        async with asyncio.timeout(WAIT):
            result = await committer.submit(group("a", 3))
    assert GroupResult(Outcome.STORED, 43) == result
    assert [["a/0", "a/1", "a/2"]] == store.calls


async def test_groups_queued_during_a_commit_go_together_in_the_next_batch() -> None:
    """Groups queued while a batch is in flight are committed together, in queue order, as the next batch."""
    store = FakeStore(first_seq=10)
    store.hold()
    committer = Committer(store.commit, Metrics())
    async with running(committer):
        first = await committer.enqueue(group("a"))
        async with asyncio.timeout(WAIT):
            await store.in_flight.wait()
        later = [await committer.enqueue(group(p, n)) for p, n in (("b", 2), ("c", 1), ("d", 3))]
        store.release()
        results = await outcomes([first, *later])
    assert [["a/0"], ["b/0", "b/1", "c/0", "d/0", "d/1", "d/2"]] == store.calls
    assert [
        GroupResult(Outcome.STORED, 10),
        GroupResult(Outcome.STORED, 12),
        GroupResult(Outcome.STORED, 13),
        GroupResult(Outcome.STORED, 16),
    ] == results


async def test_last_seq_comes_from_the_batch_ack() -> None:
    """Each group's last_seq counts back from the BatchAck's seq, which is the batch's last message."""
    seen: list[int] = []

    async def commit(msgs: Sequence[OutMsg]) -> BatchAck:
        seen.append(len(msgs))
        return BatchAck(1000, len(msgs))

    committer = Committer(commit, Metrics())
    futures = [await committer.enqueue(group(p, n)) for p, n in (("a", 1), ("b", 2), ("c", 3))]
    async with running(committer):
        results = await outcomes(futures)
    assert [6] == seen
    assert [995, 997, 1000] == [r.last_seq for r in results if isinstance(r, GroupResult)]


async def test_duplicate_batch_is_retried_group_by_group() -> None:
    """After DuplicateInBatch, groups are committed one at a time, in order; only the stored ones are DUPLICATE."""
    store = FakeStore(first_seq=1, stored_ids=["b/1", "d/0"])
    metrics = Metrics()
    committer = Committer(store.commit, metrics)
    futures = [await committer.enqueue(group(p, 2)) for p in "abcde"]
    async with running(committer):
        results = await outcomes(futures)
    assert [
        ["a/0", "a/1", "b/0", "b/1", "c/0", "c/1", "d/0", "d/1", "e/0", "e/1"],
        ["a/0", "a/1"],
        ["b/0", "b/1"],
        ["c/0", "c/1"],
        ["d/0", "d/1"],
        ["e/0", "e/1"],
    ] == store.calls
    assert [
        GroupResult(Outcome.STORED, 2),
        GroupResult(Outcome.DUPLICATE),
        GroupResult(Outcome.STORED, 4),
        GroupResult(Outcome.DUPLICATE),
        GroupResult(Outcome.STORED, 6),
    ] == results
    assert ["a/0", "a/1", "c/0", "c/1", "e/0", "e/1"] == store.stored
    assert 3.0 == metrics.registry.get_sample_value("opsroom_commit_failures_total", {"kind": "duplicate"})


async def test_duplicate_single_group_is_not_retried() -> None:
    """A batch of one group refused as duplicate resolves to DUPLICATE without another commit."""
    store = FakeStore(stored_ids=["a/0"])
    committer = Committer(store.commit, Metrics())
    async with running(committer):
        async with asyncio.timeout(WAIT):
            result = await committer.submit(group("a", 2))
    assert GroupResult(Outcome.DUPLICATE) == result
    assert [["a/0", "a/1"]] == store.calls


async def test_error_during_duplicate_retry_fails_only_that_group() -> None:
    """When a group-by-group retry fails with a store error, only that group gets the error."""
    store = FakeStore(stored_ids=["a/0"])
    boom = StoreUnavailable("no quorum")
    store.errors[2] = boom  # call 0: whole batch, call 1: group a, call 2: group b
    committer = Committer(store.commit, Metrics())
    futures = [await committer.enqueue(group(p)) for p in "abc"]
    async with running(committer):
        results = await outcomes(futures)
    assert [GroupResult(Outcome.DUPLICATE), boom, GroupResult(Outcome.STORED, 1)] == results


@pytest.mark.parametrize("error", [StoreUnavailable("no ack"), StoreFull("stream full")])
async def test_store_error_fails_every_group_of_the_batch(error: OpsroomError) -> None:
    """An OpsroomError from the commit fails each group of that batch with the same error; later batches go on."""
    store = FakeStore()
    store.errors[0] = error
    metrics = Metrics()
    committer = Committer(store.commit, metrics)
    futures = [await committer.enqueue(group(p, 2)) for p in "abc"]
    async with running(committer):
        results = await outcomes(futures)
        async with asyncio.timeout(WAIT):
            after = await committer.submit(group("d"))
    assert [error, error, error] == results
    assert GroupResult(Outcome.STORED, 1) == after
    assert ["d/0"] == store.stored
    assert 1.0 == metrics.registry.get_sample_value(
        "opsroom_commit_failures_total", {"kind": error.reason.name.lower()}
    )


async def test_unexpected_exception_becomes_store_unavailable() -> None:
    """A non-hub exception from the commit fails the batch's groups with StoreUnavailable."""

    async def commit(msgs: Sequence[OutMsg]) -> BatchAck:
        raise RuntimeError("bug in the transport")

    committer = Committer(commit, Metrics())
    futures = [await committer.enqueue(group(p)) for p in "ab"]
    async with running(committer):
        results = await outcomes(futures)
    assert [StoreUnavailable, StoreUnavailable] == [type(r) for r in results]
    assert all(isinstance(r, OpsroomError) and r.reason is Reason.STORE_UNAVAILABLE for r in results)


async def test_max_messages_splits_batches_and_carries_groups() -> None:
    """A group that would overflow max_messages starts the next batch; nothing is lost or reordered."""
    store = FakeStore()
    committer = Committer(store.commit, Metrics(), max_messages=4)
    sizes = (("a", 2), ("b", 2), ("c", 1), ("d", 3), ("e", 4), ("f", 1))
    futures = [await committer.enqueue(group(p, n)) for p, n in sizes]
    async with running(committer):
        results = await outcomes(futures)
    assert [
        ["a/0", "a/1", "b/0", "b/1"],
        ["c/0", "d/0", "d/1", "d/2"],
        ["e/0", "e/1", "e/2", "e/3"],
        ["f/0"],
    ] == store.calls
    assert [2, 4, 5, 8, 12, 13] == [r.last_seq for r in results if isinstance(r, GroupResult)]


async def test_max_bytes_splits_batches_and_carries_groups() -> None:
    """A group that would overflow max_bytes starts the next batch; a group alone above the limit still goes."""
    store = FakeStore()
    committer = Committer(store.commit, Metrics(), max_bytes=10)
    sizes = (("a", 4), ("b", 4), ("c", 4), ("d", 15), ("e", 1), ("f", 1))
    futures = [await committer.enqueue([msg(p, n)]) for p, n in sizes]
    async with running(committer):
        results = await outcomes(futures)
    assert [["a", "b"], ["c"], ["d"], ["e", "f"]] == store.calls
    assert [GroupResult(Outcome.STORED, i) for i in range(1, 7)] == results


def batches_respect(calls: list[list[str]], groups: list[list[OutMsg]], max_messages: int, max_bytes: int) -> None:
    """Batches hold whole groups, in order, within the limits unless a batch is one group."""
    flat = [n for call in calls for n in call]
    assert [n for g in groups for n in names(g)] == flat
    starts = {names(g)[0]: len(g) for g in groups}
    sizes = {names(g)[0]: sum(len(m.payload) for m in g) for g in groups}
    for call in calls:
        i, count, size, parts = 0, 0, 0, 0
        while i < len(call):
            assert call[i] in starts, "a batch starts in the middle of a group"
            count += starts[call[i]]
            size += sizes[call[i]]
            i += starts[call[i]]
            parts += 1
        assert i == len(call), "a group was split across batches"
        assert parts == 1 or (count <= max_messages and size <= max_bytes)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 6)), min_size=1, max_size=25),
    max_messages=st.integers(5, 9),
    max_bytes=st.integers(4, 30),
    held=st.booleans(),
)
def test_batches_keep_groups_whole_ordered_and_within_limits(
    shape: list[tuple[int, int]], max_messages: int, max_bytes: int, held: bool
) -> None:
    """For random group shapes and limits, every group is stored once, whole, in order, within the limits."""

    async def scenario() -> tuple[list[list[str]], list[GroupResult | BaseException], list[list[OutMsg]]]:
        store = FakeStore()
        committer = Committer(store.commit, Metrics(), max_messages=max_messages, max_bytes=max_bytes)
        groups = [group(f"g{i}", count, size) for i, (count, size) in enumerate(shape)]
        async with running(committer):
            if held:
                store.hold()
            futures = []
            for g in groups:
                futures.append(await committer.enqueue(g))
                await asyncio.sleep(0)
            if held:
                store.release()
            results = await outcomes(futures)
        return store.calls, results, groups

    calls, results, groups = asyncio.run(scenario())
    batches_respect(calls, groups, max_messages, max_bytes)
    expected_last = list(itertools.accumulate(len(g) for g in groups))
    assert [GroupResult(Outcome.STORED, seq) for seq in expected_last] == results


async def test_close_lets_run_return_after_committing_the_queue() -> None:
    """After close(), run() commits what was queued (carried groups included) and returns."""
    store = FakeStore()
    committer = Committer(store.commit, Metrics(), max_messages=2)
    futures = [await committer.enqueue(group(p, 2)) for p in "abc"]
    committer.close()
    async with running(committer) as task:
        async with asyncio.timeout(WAIT):
            await task
        results = await outcomes(futures)
    assert [["a/0", "a/1"], ["b/0", "b/1"], ["c/0", "c/1"]] == store.calls
    assert [GroupResult(Outcome.STORED, n) for n in (2, 4, 6)] == results


async def test_close_while_idle_ends_run() -> None:
    """close() on an idle committer makes run() return."""
    committer = Committer(FakeStore().commit, Metrics())
    async with running(committer) as task:
        await asyncio.sleep(0)
        committer.close()
        async with asyncio.timeout(WAIT):
            await task
        assert task.done()
        assert task.exception() is None


async def test_enqueue_after_close_raises_store_unavailable() -> None:
    """A closed committer refuses new groups with StoreUnavailable, and commits nothing."""
    store = FakeStore()
    committer = Committer(store.commit, Metrics())
    committer.close()
    with pytest.raises(StoreUnavailable) as info:
        await committer.enqueue(group("a"))
    assert Reason.STORE_UNAVAILABLE == info.value.reason
    with pytest.raises(StoreUnavailable):
        await committer.submit(group("b"))
    async with running(committer) as task:
        async with asyncio.timeout(WAIT):
            await task
    assert [] == store.calls


async def test_group_larger_than_max_messages_is_refused() -> None:
    """A group with more messages than one batch may hold is refused at once; one of exactly max_messages is not."""
    store = FakeStore()
    committer = Committer(store.commit, Metrics(), max_messages=3)
    with pytest.raises(Refused) as info:
        await committer.enqueue(group("a", 4))
    assert Reason.ENVELOPE_TOO_LARGE == info.value.reason
    async with running(committer):
        async with asyncio.timeout(WAIT):
            result = await committer.submit(group("b", 3))
    assert GroupResult(Outcome.STORED, 3) == result
    assert [["b/0", "b/1", "b/2"]] == store.calls


async def test_commit_metrics_observe_each_batch() -> None:
    """Each stored batch is observed in the commit size and duration histograms."""
    store = FakeStore()
    metrics = Metrics()
    committer = Committer(store.commit, metrics)
    futures = [await committer.enqueue(group(p, 3)) for p in "ab"]
    async with running(committer):
        await outcomes(futures)
    atomic = {"lane": "urgent", "mode": "atomic"}
    assert 1.0 == metrics.registry.get_sample_value("opsroom_commit_messages_count", atomic)
    assert 6.0 == metrics.registry.get_sample_value("opsroom_commit_messages_sum", atomic)
    assert 1.0 == metrics.registry.get_sample_value("opsroom_commit_seconds_count", atomic)


# -- plain publishes below atomic_threshold ------------------------------------------------


async def test_small_batches_are_single_publishes_in_one_pipelined_call() -> None:
    """Below atomic_threshold, every message of every group goes in one pipelined publish_each call, in order."""
    store = FakeStore(first_seq=50)
    metrics = Metrics()
    committer = Committer(store.commit, metrics, publish_each=store.publish_each, atomic_threshold=8)
    futures = [await committer.enqueue(group(p, n)) for p, n in (("a", 3), ("b", 1), ("c", 2))]
    async with running(committer):
        results = await outcomes(futures)
    assert [] == store.calls
    assert [["a/0", "a/1", "a/2", "b/0", "c/0", "c/1"]] == store.each_calls
    assert [GroupResult(Outcome.STORED, n) for n in (52, 53, 55)] == results
    single = {"lane": "urgent", "mode": "single"}
    assert 6.0 == metrics.registry.get_sample_value("opsroom_commit_messages_sum", single)


async def test_a_tail_is_written_after_the_rest_of_its_group() -> None:
    """A group with a tail gets its last message written in a second call, after its others are stored."""
    store = FakeStore()
    committer = Committer(store.commit, Metrics(), publish_each=store.publish_each, atomic_threshold=8)
    futures = [await committer.enqueue(group("a", 3), tail=True), await committer.enqueue(group("b", 2))]
    async with running(committer):
        results = await outcomes(futures)
    assert [["a/0", "a/1", "b/0", "b/1"], ["a/2"]] == store.each_calls
    assert [GroupResult(Outcome.STORED, 5), GroupResult(Outcome.STORED, 4)] == results


async def test_batches_at_the_threshold_are_atomic() -> None:
    """A batch of atomic_threshold messages or more goes as one atomic batch."""
    store = FakeStore()
    committer = Committer(store.commit, Metrics(), publish_each=store.publish_each, atomic_threshold=4)
    futures = [await committer.enqueue(group(p, 2)) for p in "ab"]
    async with running(committer):
        results = await outcomes(futures)
    assert [["a/0", "a/1", "b/0", "b/1"]] == store.calls
    assert [] == store.each_calls
    assert [GroupResult(Outcome.STORED, 2), GroupResult(Outcome.STORED, 4)] == results


async def test_failed_message_fails_its_group_and_skips_its_tail() -> None:
    """When a message of a group is not stored, that group fails and its tail is not written; others are unharmed."""
    store = FakeStore()
    boom = StoreUnavailable("no quorum")
    store.each_errors["a/1"] = boom
    committer = Committer(store.commit, Metrics(), publish_each=store.publish_each, atomic_threshold=8)
    futures = [await committer.enqueue(group("a", 3), tail=True), await committer.enqueue(group("b", 2), tail=True)]
    async with running(committer):
        results = await outcomes(futures)
    assert [["a/0", "a/1", "b/0"], ["b/1"]] == store.each_calls
    assert [boom, GroupResult(Outcome.STORED, 3)] == results


async def test_duplicate_means_every_message_was_stored_before() -> None:
    """All stored before: DUPLICATE; some stored before: STORED (the retry completed it); an error fails the group."""
    store = FakeStore(stored_ids=["b/0", "b/1", "c/0"])
    full = StoreFull("stream full")
    store.each_errors["d/0"] = full
    committer = Committer(store.commit, Metrics(), publish_each=store.publish_each, atomic_threshold=10)
    futures = [await committer.enqueue(group(p, n)) for p, n in (("a", 1), ("b", 2), ("c", 2), ("d", 1))]
    async with running(committer):
        results = await outcomes(futures)
    assert [["a/0", "b/0", "b/1", "c/0", "c/1", "d/0"]] == store.each_calls
    assert [
        GroupResult(Outcome.STORED, 1),
        GroupResult(Outcome.DUPLICATE),
        GroupResult(Outcome.STORED, 2),
        full,
    ] == results


async def test_duplicate_atomic_batch_is_written_again_group_by_group() -> None:
    """After DuplicateInBatch, each group is written again message by message, in order, whatever its size."""
    store = FakeStore(stored_ids=["b/0", "b/1", "b/2"])
    committer = Committer(store.commit, Metrics(), publish_each=store.publish_each, atomic_threshold=2)
    futures = [await committer.enqueue(group(p, 3)) for p in "ab"]
    async with running(committer):
        results = await outcomes(futures)
    assert [["a/0", "a/1", "a/2", "b/0", "b/1", "b/2"]] == store.calls
    assert [["a/0", "a/1", "a/2"], ["b/0", "b/1", "b/2"]] == store.each_calls
    assert [GroupResult(Outcome.STORED, 3), GroupResult(Outcome.DUPLICATE)] == results


# -- claims and writes in stages -----------------------------------------------------------


def delivery(room: str, dist: str, claim: bool = False) -> OutMsg:
    """A delivery of envelope dist to room; a claimed first delivery expects no delivery of dist stored yet."""
    headers = {"Nats-Msg-Id": f"{dist}:{room}"}
    if claim:
        headers["Claim"] = dist
    return OutMsg(f"opsroom.dlv.{room}.urgent.{dist}", b"x", headers)


def envelope_group(dist: str, rooms: Sequence[str]) -> list[OutMsg]:
    return [delivery(room, dist, claim=i == 0) for i, room in enumerate(rooms)]


class ClaimStore(FakeStore):
    """A FakeStore whose first deliveries check their claim as nats-server does (expected last subject sequence)."""

    def __init__(self, taken: Sequence[str] = ()) -> None:
        super().__init__()
        self.taken: set[str] = set(taken)  # claims a stored message matches
        self.looked_up: list[list[str]] = []
        self.lookup_error: Exception | None = None

    async def claimed(self, claims: Sequence[str]) -> set[str]:
        self.looked_up.append(list(claims))
        await asyncio.sleep(0)
        if self.lookup_error is not None:
            raise self.lookup_error
        return self.taken.intersection(claims)

    async def publish_each(self, msgs: Sequence[OutMsg]) -> list[int | Exception]:
        self.each_calls.append(names(msgs))
        await asyncio.sleep(0)
        out: list[int | Exception] = []
        for m in msgs:
            name, claim = m.headers["Nats-Msg-Id"], m.headers.get("Claim")
            if claim is not None and claim in self.taken:
                out.append(DuplicateInBatch("wrong last sequence"))
            elif name in self.each_errors:
                out.append(self.each_errors[name])
            else:
                self.taken.update([claim] if claim is not None else [])
                self.stored.append(name)
                out.append(self.next_seq)
                self.next_seq += 1
        return out


def claimed_committer(store: ClaimStore, **kwargs: object) -> Committer:
    return Committer(
        store.commit,
        Metrics(),
        publish_each=store.publish_each,
        claimed=store.claimed,
        atomic_threshold=64,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_a_taken_claim_writes_nothing_not_even_its_audit_records() -> None:
    """The batch's claims are looked up once; a taken one is DUPLICATE with no record and no delivery written."""
    store = ClaimStore(taken=["old"])
    drafts: list[bytes] = []

    async def audit(batch: Sequence[Draft]) -> list[OpsroomError | None]:
        drafts.extend(d.records for d in batch)
        return [None] * len(batch)

    committer = claimed_committer(store, audit=audit)
    futures = [
        await committer.enqueue(envelope_group("old", ["q"]), claim="old", audit=Draft(b"old")),
        await committer.enqueue(envelope_group("new", ["q"]), claim="new", audit=Draft(b"new")),
        await committer.enqueue([msg("ack/0")]),
    ]
    async with running(committer):
        results = await outcomes(futures)
    assert [["old", "new"]] == store.looked_up
    assert [b"new"] == drafts
    assert ["new:q", "ack/0"] == store.stored
    assert [GroupResult(Outcome.DUPLICATE), GroupResult(Outcome.STORED, 1), GroupResult(Outcome.STORED, 2)] == results


async def test_a_failed_claim_lookup_fails_only_the_claimed_groups() -> None:
    """Without the lookup nothing claimed may be written; a receipt record in the same batch is."""
    store = ClaimStore()
    store.lookup_error = StoreUnavailable("no answer")
    committer = claimed_committer(store)
    futures = [await committer.enqueue(envelope_group("e", ["q"]), claim="e"), await committer.enqueue([msg("ack/0")])]
    async with running(committer):
        results = await outcomes(futures)
    assert [store.lookup_error, GroupResult(Outcome.STORED, 1)] == results
    assert ["ack/0"] == store.stored


async def test_a_claimed_first_delivery_is_stored_before_the_others_are_sent() -> None:
    """First delivery alone, then the rest: whatever is stored of the envelope holds its first delivery."""
    store = ClaimStore()
    committer = claimed_committer(store)
    future = await committer.enqueue(envelope_group("e", ["q", "cc", "pl"]), claim="e")
    async with running(committer):
        [result] = await outcomes([future])
    assert [["e:q"], ["e:cc", "e:pl"]] == store.each_calls
    assert GroupResult(Outcome.STORED, 3) == result


async def test_a_cut_after_the_first_delivery_stores_only_the_first() -> None:
    """The connection drops after the first delivery: the group fails, the store holds exactly the first."""
    store = ClaimStore()
    cut = StoreUnavailable("connection lost")
    store.each_errors.update({"e:cc": cut, "e:pl": cut})
    committer = claimed_committer(store)
    future = await committer.enqueue(envelope_group("e", ["q", "cc", "pl"]), claim="e")
    async with running(committer):
        assert [cut] == await outcomes([future])
    assert ["e:q"] == store.stored


async def test_a_claim_taken_at_the_write_stops_the_rest_of_the_envelope() -> None:
    """Another writer took the id between lookup and write: DUPLICATE, and nothing after the first is sent."""
    store = ClaimStore()
    store.claimed = _nothing  # type: ignore[method-assign]  # the lookup saw nothing
    committer = claimed_committer(store)
    store.taken.add("e")  # ... but the write finds it taken
    future = await committer.enqueue(envelope_group("e", ["q", "cc"]), claim="e")
    async with running(committer):
        assert [GroupResult(Outcome.DUPLICATE)] == await outcomes([future])
    assert [["e:q"]] == store.each_calls
    assert [] == store.stored


async def _nothing(_claims: Sequence[str]) -> set[str]:
    return set()


async def test_staged_writes_never_let_a_later_envelope_overtake_an_earlier_one_at_a_room() -> None:
    """Two envelopes whose recipients come in opposite orders: each room still stores them in arrival order."""
    store = ClaimStore()
    committer = claimed_committer(store)
    futures = [
        await committer.enqueue(envelope_group("e1", ["q", "cc"]), claim="e1"),
        await committer.enqueue(envelope_group("e2", ["cc", "q"]), claim="e2"),
    ]
    async with running(committer):
        await outcomes(futures)
    assert ["e1:cc", "e2:cc"] == [n for n in store.stored if n.endswith(":cc")]
    assert ["e1:q", "e2:q"] == [n for n in store.stored if n.endswith(":q")]


ROOMS = ("q", "cc", "pl")


@settings(max_examples=150, deadline=None)
@given(
    envelopes=st.lists(
        st.tuples(st.permutations(ROOMS).flatmap(lambda p: st.integers(1, 3).map(lambda n: p[:n])), st.integers(0, 3)),
        min_size=1,
        max_size=12,
    )
)
def test_every_room_stores_envelopes_in_arrival_order(envelopes: list[tuple[Sequence[str], int]]) -> None:
    """Whatever the recipients' orders and however the envelopes fall into batches, per room the order is kept."""

    async def scenario() -> list[str]:
        store = ClaimStore()
        committer = claimed_committer(store, max_in_flight=4)
        futures = []
        async with running(committer):
            for number, (rooms, pause) in enumerate(envelopes):
                futures.append(await committer.enqueue(envelope_group(f"e{number}", rooms), claim=f"e{number}"))
                for _ in range(pause):
                    await asyncio.sleep(0)
            results = await outcomes(futures)
        assert all(isinstance(r, GroupResult) and r.outcome is Outcome.STORED for r in results), results
        return store.stored

    stored = asyncio.run(scenario())
    for room in ROOMS:
        expected = [f"e{n}:{room}" for n, (rooms, _) in enumerate(envelopes) if room in rooms]
        assert expected == [name for name in stored if name.endswith(f":{room}")]


async def test_another_sender_s_group_joins_the_next_batch_not_behind_a_sender_s_backlog() -> None:
    """While a batch is in flight, one sender queues 30 groups and another one: the other's goes into the next batch.

    Batches hold 10 messages; the senders are taken in turn, so the late sender's group is second
    in the next batch, and the flooding sender's groups keep their order across the batches.
    """
    store = FakeStore()
    store.hold()
    committer = Committer(store.commit, Metrics(), max_messages=10)
    async with running(committer):
        first = await committer.enqueue(group("x"), sender="flood")
        async with asyncio.timeout(WAIT):
            await store.in_flight.wait()
        backlog = [await committer.enqueue(group(f"f{i}"), sender="flood") for i in range(30)]
        late = await committer.enqueue(group("good"), sender="good")
        store.release()
        results = await outcomes([first, *backlog, late])
    assert all(isinstance(r, GroupResult) and r.outcome is Outcome.STORED for r in results)
    assert ["f0/0", "good/0", *(f"f{i}/0" for i in range(1, 9))] == store.calls[1]
    assert [f"f{i}/0" for i in range(30)] == [n for n in store.stored if n.startswith("f")]
