"""FairQueue: per-sender order kept, senders taken in turn, no sender starved, the batch limits kept."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.publish.fair import FairQueue

# An item: (sender, its number among that sender's items, message count, bytes).
Item = tuple[str, int, int, int]


def weight(item: Item) -> tuple[int, int]:
    return item[2], item[3]


def queued(pushes: list[tuple[str, int, int]]) -> tuple[FairQueue[Item], list[Item]]:
    queue: FairQueue[Item] = FairQueue()
    numbers: dict[str, int] = {}
    items = []
    for sender, count, size in pushes:
        item = (sender, numbers.get(sender, 0), count, size)
        numbers[sender] = item[1] + 1
        queue.push(sender, item)
        items.append(item)
    return queue, items


pushes_st = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", ""]), st.integers(1, 5), st.integers(0, 3000)), max_size=60
)


@settings(max_examples=300, deadline=None)
@given(pushes=pushes_st, max_count=st.integers(1, 12), max_size=st.integers(1, 8000))
def test_batches_keep_each_sender_s_order_and_the_limits_and_take_everything(
    pushes: list[tuple[str, int, int]], max_count: int, max_size: int
) -> None:
    queue, items = queued(pushes)
    taken: list[Item] = []
    while len(queue):
        before = len(queue)
        batch = queue.batch(weight, max_count, max_size)
        assert batch, "a non-empty queue gives a non-empty batch"
        assert len(queue) == before - len(batch)
        if len(batch) > 1:  # only a batch's first item may be over the limits alone
            assert sum(i[2] for i in batch) <= max_count
            assert sum(i[3] for i in batch) <= max_size
        taken.extend(batch)
    assert sorted(taken) == sorted(items)
    for sender in {i[0] for i in items}:
        assert [i[1] for i in taken if i[0] == sender] == sorted(i[1] for i in items if i[0] == sender)
    assert queue.senders() == 0


@settings(max_examples=300, deadline=None)
@given(pushes=pushes_st, max_count=st.integers(1, 12))
def test_no_sender_waits_more_than_one_turn_of_the_others(pushes: list[tuple[str, int, int]], max_count: int) -> None:
    """Between two items of a sender that still has items queued, each other sender gets at most one item."""
    queue, _items = queued(pushes)
    taken: list[Item] = []
    while len(queue):
        taken.extend(queue.batch(weight, max_count, 10**9))
    senders = {i[0] for i in taken}
    for sender in senders:
        positions = [n for n, i in enumerate(taken) if i[0] == sender]
        for start, end in itertools.pairwise(positions):
            between = [i[0] for i in taken[start + 1 : end]]
            assert len(between) == len(set(between)), (sender, between)


def test_a_late_sender_s_one_item_goes_into_the_next_batch_not_behind_a_flood() -> None:
    queue: FairQueue[Item] = FairQueue()
    for n in range(4000):
        queue.push("flood", ("flood", n, 1, 1000))
    first = queue.batch(weight, 1000, 10**9)
    queue.push("good", ("good", 0, 1, 1000))
    second = queue.batch(weight, 1000, 10**9)
    assert [i[1] for i in first] == list(range(1000))
    assert ("good", 0, 1, 1000) in second[:2]
    assert [i[1] for i in second if i[0] == "flood"] == list(range(1000, 1999))


def test_an_item_that_does_not_fit_stays_first_and_its_sender_keeps_its_turn() -> None:
    queue: FairQueue[Item] = FairQueue()
    queue.push("a", ("a", 0, 1, 10))
    queue.push("b", ("b", 0, 5, 10))
    queue.push("c", ("c", 0, 1, 10))
    assert [("a", 0, 1, 10)] == queue.batch(weight, 4, 10**9)
    assert [("b", 0, 5, 10)] == queue.batch(weight, 4, 10**9)  # alone over the limit: taken first, alone
    assert [("c", 0, 1, 10)] == queue.batch(weight, 4, 10**9)
    assert 0 == len(queue)
