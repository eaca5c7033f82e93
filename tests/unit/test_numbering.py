"""broker.delivery.numbering: the sequences a room sees are its session's own, and map back to what was sent (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.delivery import numbering
from broker.delivery.numbering import Numbering, NumbersExhausted, Sent, Unmapped
from broker.lanes import LANES, Lane


@given(st.lists(st.tuples(st.sampled_from(LANES), st.integers(min_value=1, max_value=10**12)), max_size=60))
def test_a_session_numbers_what_it_sends_one_two_three_whatever_the_stream_sequences(
    sent: list[tuple[Lane, int]],
) -> None:
    """However far apart the stream sequences (other agencies' traffic in between), the room sees 1, 2, 3..."""
    session = Numbering(epoch=3)
    sequences = [session.number(lane, stream_seq) for lane, stream_seq in sent]
    assert [session.sequence(n) for n in range(1, len(sent) + 1)] == sequences
    assert [3] * len(sent) == [s >> numbering.NUMBER_BITS for s in sequences]
    assert list(range(1, len(sent) + 1)) == [s & numbering.MAX_NUMBER for s in sequences]
    for (lane, stream_seq), sequence in zip(sent, sequences, strict=True):
        assert Sent(lane, stream_seq) == session.resolve(sequence)


def test_both_lanes_share_one_count_so_their_sequences_never_collide() -> None:
    session = Numbering(epoch=1)
    urgent = session.number(Lane.URGENT, 7)
    bulk = session.number(Lane.BULK, 7)  # the two lanes' streams number their messages independently
    assert urgent != bulk
    assert (Sent(Lane.URGENT, 7), Sent(Lane.BULK, 7)) == (session.resolve(urgent), session.resolve(bulk))


def test_the_sequences_of_a_later_session_are_all_above_an_earlier_ones() -> None:
    earlier, later = Numbering(epoch=4), Numbering(epoch=5)
    last_of_earlier = max(earlier.number(Lane.URGENT, seq) for seq in range(1, 1000))
    assert later.number(Lane.URGENT, 1000) > last_of_earlier
    assert Unmapped.EARLIER_SESSION is later.resolve(last_of_earlier)


@pytest.mark.parametrize(
    "sequence",
    [
        0,  # no number
        (3 << numbering.NUMBER_BITS) | 0,  # an earlier session's number 0: none is numbered 0
        (7 << numbering.NUMBER_BITS) | 0,  # this session, number 0
        (7 << numbering.NUMBER_BITS) | 3,  # this session, not numbered yet
        (8 << numbering.NUMBER_BITS) | 1,  # a later session's
        2**64 - 1,
    ],
)
def test_a_sequence_the_agency_was_never_sent_is_told_apart(sequence: int) -> None:
    session = Numbering(epoch=7)
    session.number(Lane.URGENT, 41)
    session.number(Lane.BULK, 9)
    assert Unmapped.NEVER_SENT is session.resolve(sequence)


def test_an_earlier_sessions_sequence_and_a_stream_based_one_from_before_numbering_are_earlier() -> None:
    session = Numbering(epoch=2)
    assert Unmapped.EARLIER_SESSION is session.resolve((1 << numbering.NUMBER_BITS) | 5)
    assert Unmapped.EARLIER_SESSION is session.resolve(2 * 123_456)  # the old lane-in-lowest-bit form


def test_a_number_is_forgotten_once_its_lanes_consumer_is_acked_past_it_and_then_reads_as_settled() -> None:
    session = Numbering(epoch=1)
    first = session.number(Lane.URGENT, 10)
    second = session.number(Lane.URGENT, 12)
    bulk = session.number(Lane.BULK, 3)
    session.settled(Lane.URGENT, 10)
    assert Unmapped.SETTLED is session.resolve(first)  # a repeated ack: fine, ignored
    assert Sent(Lane.URGENT, 12) == session.resolve(second)
    assert Sent(Lane.BULK, 3) == session.resolve(bulk)  # the other lane is not touched
    session.settled(Lane.URGENT, 12)
    session.settled(Lane.BULK, 3)
    assert 0 == session.waiting()


def test_a_delivery_sent_again_has_two_numbers_both_naming_it_until_both_are_settled() -> None:
    session = Numbering(epoch=1)
    first = session.number(Lane.URGENT, 5)
    session.number(Lane.URGENT, 6)
    again = session.number(Lane.URGENT, 5)  # its ack wait ran out: the consumer sent it again
    assert session.resolve(first) == session.resolve(again) == Sent(Lane.URGENT, 5)
    session.settled(Lane.URGENT, 6)
    assert Unmapped.SETTLED is session.resolve(first)
    assert Unmapped.SETTLED is session.resolve(again)
    assert 0 == session.waiting()


def test_a_session_ends_before_its_numbers_run_out() -> None:
    session = Numbering(epoch=1)
    session.count = numbering.MAX_NUMBER - 1
    last = session.number(Lane.URGENT, 1)
    assert numbering.MAX_NUMBER == last & numbering.MAX_NUMBER
    assert 1 == last >> numbering.NUMBER_BITS  # never into the next session's numbers
    with pytest.raises(NumbersExhausted):
        session.number(Lane.URGENT, 2)


def test_an_epoch_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="epoch"):
        Numbering(epoch=0)
