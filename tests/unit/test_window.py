"""broker.delivery.window: a lane's deliveries sent, acknowledged, recorded, and how far the consumer is acked (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.delivery.window import LaneWindow
from broker.lanes import Lane
from broker.store.model import Pulled


def pulled(stream_seq: int, consumer_seq: int, pending: int = 0) -> Pulled:
    return Pulled(stream_seq, 1, 0, pending, f"reply.{stream_seq}", f"d{stream_seq}", b"", {}, consumer_seq)


def test_the_consumer_is_acked_only_up_to_where_every_delivery_is_recorded() -> None:
    window = LaneWindow(Lane.URGENT)
    for n, seq in enumerate((10, 12, 15), start=1):
        assert 0 == window.follow(pulled(seq, n))
        window.sent(pulled(seq, n))
    assert window.acknowledge(12)
    assert window.acknowledge(15)
    assert None is window.recorded([12, 15])  # 10 is not acknowledged: nothing may be acked yet
    assert window.acknowledge(10)
    highest = window.recorded([10])
    assert highest is not None
    assert 15 == highest.stream_seq  # now all three at once
    assert {} == window.unacked


def test_an_acknowledgement_counts_once_and_only_for_what_was_sent() -> None:
    window = LaneWindow(Lane.BULK)
    window.sent(pulled(4, 1))
    assert not window.acknowledge(5)  # never sent
    assert window.acknowledge(4)
    assert not window.acknowledge(4)  # being recorded
    window.recorded([4])
    assert not window.acknowledge(4)  # recorded and acked


def test_recording_what_is_not_being_recorded_moves_nothing() -> None:
    window = LaneWindow(Lane.URGENT)
    window.sent(pulled(1, 1))
    assert None is window.recorded([1])  # not acknowledged by the room
    assert 1 in window.unacked


def test_a_skipped_or_repeated_consumer_sequence_is_reported() -> None:
    window = LaneWindow(Lane.URGENT)
    assert 0 == window.follow(pulled(7, 1))
    assert 2 == window.follow(pulled(11, 4))  # 2 and 3 went elsewhere
    assert -3 == window.follow(pulled(8, 2))  # an older sequence


def test_room_in_the_window() -> None:
    window = LaneWindow(Lane.URGENT)
    window.sent(pulled(1, 1, pending=9))
    assert 9 == window.pending
    assert 1024 - 1 - 100 == window.room(1024, in_flight=100)


@given(st.permutations(list(range(1, 21))), st.integers(min_value=1, max_value=5))
def test_whatever_order_acknowledgements_are_recorded_in_the_consumer_is_acked_to_a_prefix(
    order: list[int], chunk: int
) -> None:
    """The consumer's ack floor never passes a delivery that is not recorded; it reaches the last once all are."""
    window = LaneWindow(Lane.URGENT)
    for seq in range(1, 21):
        window.sent(pulled(seq, seq))
    floor, recorded = 0, set()
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        for seq in part:
            assert window.acknowledge(seq)
        recorded.update(part)
        highest = window.recorded(part)
        if highest is not None:
            assert highest.stream_seq > floor
            floor = highest.stream_seq
        assert all(seq in recorded for seq in range(1, floor + 1))
        assert floor + 1 not in recorded or floor == 20
    assert 20 == floor
