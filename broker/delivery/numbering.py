"""Owns the sequences a room sees on a delivery session, and what the room's acknowledgements name (pure).

A room must learn nothing about other agencies' traffic from its sequences, so they are not the
stores' (a stream sequence counts every agency's deliveries and records: its gaps would tell a
room the hub's traffic). A session numbers what it sends itself: 1, 2, 3... in the order it
sends, both lanes in one count (a sequence names one delivery, whatever its lane), with the
agency's session number (its epoch, one more than the previous session's, kept in the session
record) in the high bits. So a room's sequences increase and never repeat across its sessions,
and an acknowledgement names either a delivery this session sent, one an earlier session of
the agency sent (whose delivery comes again on this session: the ack is ignored), or nothing
the agency was ever sent (refused).

    sequence = epoch * 2**32 + number    (number: 1 .. 2**32 - 1 within the session)

The session maps each number back to its lane and stream sequence (what it acknowledges on
JetStream) until the lane's consumer is acknowledged past it.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from broker.lanes import LANES, Lane

NUMBER_BITS = 32
MAX_NUMBER = (1 << NUMBER_BITS) - 1  # deliveries one session may send; the session then ends (reconnect)
_NUMBER_MASK = MAX_NUMBER


class Unmapped(enum.Enum):
    """What an acknowledged sequence is, when it names no delivery this session still waits on."""

    SETTLED = "settled"  # sent on this session and acknowledged already: a repeated ack, ignored
    EARLIER_SESSION = "earlier_session"  # sent (if ever) on an earlier session: ignored, the delivery comes again
    NEVER_SENT = "never_sent"  # not a sequence the agency was ever sent: refused


@dataclass(frozen=True, slots=True)
class Sent:
    """A delivery this session sent and the lane's consumer still holds: its lane and stream sequence."""

    lane: Lane
    stream_seq: int


class NumbersExhausted(Exception):
    """The session sent MAX_NUMBER deliveries: it must end, and the room reconnect (a new epoch)."""


class Numbering:
    """One session's numbering of the deliveries it sends, and the way back from a sequence to a delivery."""

    def __init__(self, epoch: int) -> None:
        """Numbering for the agency's session number epoch (1 for its first session); nothing sent yet."""
        if epoch < 1:
            raise ValueError("a session's epoch is at least 1")
        self.epoch = epoch
        self.count = 0  # deliveries numbered so far (the last number given)
        self._sent: dict[int, Sent] = {}  # number -> delivery, until its lane's consumer is acked past it
        # Per lane, (number, stream sequence) in the order sent: what `settled` forgets first.
        self._order: dict[Lane, deque[tuple[int, int]]] = {lane: deque() for lane in LANES}

    def sequence(self, number: int) -> int:
        """The sequence the room sees for this session's number."""
        return (self.epoch << NUMBER_BITS) | number

    def number(self, lane: Lane, stream_seq: int) -> int:
        """The sequence of the next delivery sent (stream_seq on lane); raises NumbersExhausted past MAX_NUMBER."""
        if self.count >= MAX_NUMBER:
            raise NumbersExhausted(f"this session sent {MAX_NUMBER} deliveries, as many as a session numbers")
        self.count += 1
        self._sent[self.count] = Sent(lane, stream_seq)
        self._order[lane].append((self.count, stream_seq))
        return self.sequence(self.count)

    def resolve(self, sequence: int) -> Sent | Unmapped:
        """The delivery an acknowledged sequence names, or why it names none (nothing changes)."""
        epoch, number = sequence >> NUMBER_BITS, sequence & _NUMBER_MASK
        if number == 0:  # no session numbers a delivery 0
            return Unmapped.NEVER_SENT
        if epoch < self.epoch:
            return Unmapped.EARLIER_SESSION
        if epoch > self.epoch or not 1 <= number <= self.count:
            return Unmapped.NEVER_SENT
        return self._sent.get(number, Unmapped.SETTLED)

    def settled(self, lane: Lane, stream_seq: int) -> None:
        """Lane's consumer is acknowledged up to stream_seq: forget the numbers of deliveries up to it (sent in order).

        A delivery sent again on this session (its ack wait ran out) has a number of its own
        after later ones: it is forgotten once those before it are. Until then an ack of it
        resolves to a delivery already acknowledged, which the lane ignores.
        """
        order = self._order[lane]
        while order and order[0][1] <= stream_seq:
            number, _ = order.popleft()
            del self._sent[number]

    def waiting(self) -> int:
        """How many numbers still map to a delivery (bounded by the window, plus deliveries sent again)."""
        return len(self._sent)
