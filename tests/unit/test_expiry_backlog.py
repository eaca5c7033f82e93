"""broker.delivery.expiry.Backlog: what the expiry worker keeps of a room's consumer (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.delivery.expiry import Backlog, OldestUnacked
from broker.lanes import Lane

S = 1_000_000_000


def test_due_gives_the_expired_in_order_of_expiry_once() -> None:
    """Expired strictly before now, earliest first; what is given is forgotten."""
    backlog = Backlog()
    backlog.read(10, 30 * S)
    backlog.read(11, 10 * S)
    backlog.read(12, 20 * S)
    assert [] == backlog.due(10 * S, 1000)  # expires at 10 s: not before now > 10 s (as a session judges it)
    assert [11, 12] == backlog.due(25 * S, 1000)
    assert [] == backlog.due(25 * S, 1000)
    assert [10] == backlog.due(31 * S, 1000)
    assert 0 == len(backlog)


def test_deliveries_without_an_expiry_are_not_kept() -> None:
    """Expiry 0 means none: only the cursor moves."""
    backlog = Backlog()
    backlog.read(5, 0)
    assert (0, 5) == (len(backlog), backlog.cursor)


def test_a_new_ack_floor_forgets_what_is_at_or_below_it_and_moves_the_cursor() -> None:
    """The room came back and acknowledged (or its session dropped) up to 11: those are not the worker's any more."""
    backlog = Backlog()
    for seq in (10, 11, 12):
        backlog.read(seq, seq * S)
    backlog.floor(11)
    assert [12] == backlog.due(100 * S, 1000)
    backlog.floor(40)
    assert 40 == backlog.cursor
    backlog.read(3, 1 * S)  # below the floor: never due
    assert [] == backlog.due(100 * S, 1000)


def test_due_gives_at_most_limit_and_keeps_the_rest() -> None:
    """A pass deals with a bounded number: the later-expiring wait for the next one."""
    backlog = Backlog()
    for seq in (1, 2, 3):
        backlog.read(seq, seq * S)
    assert [1, 2] == backlog.due(10 * S, 2)
    assert [3] == backlog.due(10 * S, 2)


def test_a_delivery_read_again_is_kept_once() -> None:
    """Reading overlaps (a retry of a pass): a sequence at or before the cursor is not kept twice."""
    backlog = Backlog()
    backlog.read(8, 5 * S)
    backlog.read(8, 5 * S)
    backlog.read(7, 5 * S)
    assert [8] == backlog.due(6 * S, 1000)


def test_reading_again_is_needed_when_the_consumers_count_changes_or_the_floor_moves() -> None:
    """The consumer held 3 when reading reached the end: nothing to read while it still holds 3."""
    backlog = Backlog()
    assert backlog.needs_reading(3)
    backlog.read_to_end(3)
    assert not backlog.needs_reading(3)
    assert backlog.needs_reading(4)
    backlog.floor(7)
    assert backlog.needs_reading(3)


@given(
    st.dictionaries(st.integers(1, 10_000), st.integers(0, 100), max_size=50),
    st.integers(0, 10_000),
    st.integers(0, 100),
)
def test_due_is_exactly_the_expired_above_the_floor(expiries: dict[int, int], floor: int, now: int) -> None:
    """Deliveries read in stream order, then a floor: due(now) holds every one above it that expired before now,
    in order of expiry, and reading one again (or one below the floor) changes nothing.
    """
    backlog = Backlog()
    for seq in sorted(expiries):
        backlog.read(seq, expiries[seq])
    backlog.floor(floor)
    for seq in sorted(expiries):
        backlog.read(seq, expiries[seq])
    expected = sorted((e, s) for s, e in expiries.items() if e and s > floor and e < now)
    assert [s for _, s in expected] == backlog.due(now, 1000)


def test_the_oldest_is_read_once_per_ack_floor_never_read_first_and_at_most_limit() -> None:
    oldest = OldestUnacked()
    a, b, c = ("a", Lane.URGENT), ("b", Lane.URGENT), ("c", Lane.BULK)
    assert oldest.to_read([(a, 0), (b, 5)], 10) == [(a, 0), (b, 5)]
    oldest.learn(a, 0, 1_000_000_000)
    oldest.learn(b, 5, 2_000_000_000)
    assert oldest.to_read([(a, 0), (b, 5)], 10) == []  # known at these floors
    assert oldest.to_read([(a, 3), (b, 5), (c, 0)], 10) == [(c, 0), (a, 3)]  # never read first
    assert oldest.to_read([(a, 3), (b, 5), (c, 0)], 1) == [(c, 0)]


def test_the_oldest_age_is_zero_with_nothing_held_and_unknown_until_read() -> None:
    oldest = OldestUnacked()
    key = ("a", Lane.URGENT)
    assert oldest.age(key, 3, 10_000_000_000) is None
    oldest.learn(key, 0, 4_000_000_000)
    assert oldest.age(key, 3, 10_000_000_000) == 6.0
    assert oldest.age(key, 3, 1_000_000_000) == 0.0  # a clock behind the store: never negative
    assert oldest.age(key, 0, 10_000_000_000) == 0.0  # all acknowledged, and forgotten
    assert oldest.age(key, 3, 10_000_000_000) is None
    oldest.learn(key, 7, 4_000_000_000)
    oldest.learn(key, 8, None)  # nothing above the floor stored (gone by the stream's max age)
    assert oldest.age(key, 1, 10_000_000_000) is None
    oldest.learn(key, 9, 4_000_000_000)
    oldest.keep_only(set())
    assert oldest.to_read([(key, 9)], 5) == [(key, 9)]
