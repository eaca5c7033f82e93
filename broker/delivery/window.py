"""Owns one lane of a delivery session's bookkeeping: what was sent, acknowledged, recorded, and what to ack (pure).

A delivery goes through three states: sent to the room (unacknowledged), acknowledged by the
room with its receipt being stored (recording), and recorded. The consumer is acknowledged
(ack policy *all*) only up to the highest delivery below which every one is recorded: a
delivery the room has not acknowledged is never acknowledged along with a later one.
Every delivery pulled must carry the consumer sequence after the previous one's: a skip means
one went elsewhere (see broker.delivery.sessions).
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.lanes import Lane
from broker.store.model import Pulled


class LaneWindow:
    """One lane of a session: deliveries sent and not yet acknowledged to the consumer, in stream order."""

    def __init__(self, lane: Lane) -> None:
        """Nothing sent yet; the lane's consumer is new (its first delivery carries consumer sequence 1)."""
        self.lane = lane
        self.unacked: dict[int, Pulled] = {}  # by stream sequence, in stream order
        self._recorded: set[int] = set()  # acknowledged by the room and recorded, not yet acked to the consumer
        self._recording: set[int] = set()  # acknowledged by the room (or dropped as expired), receipt not yet stored
        self.pending = 0  # deliveries the consumer still holds for the room, as of the last one pulled
        # The consumer counts every message it sends: the next one pulled must carry one more.
        self.consumer_seq = 0

    def follow(self, item: Pulled) -> int:
        """Take item as the lane's next delivery; returns how many the consumer sent in between (lost on the way).

        Negative: item carries a sequence already seen. Either way, the session must end.
        """
        lost = item.consumer_seq - self.consumer_seq - 1
        self.consumer_seq = item.consumer_seq
        return lost

    def sent(self, item: Pulled) -> None:
        """Item went out to the room (or is being dropped as expired: then `acknowledge` it at once)."""
        self.unacked[item.stream_seq] = item
        self.pending = item.pending

    def acknowledge(self, seq: int) -> bool:
        """The room acknowledged the delivery of stream sequence seq; False if unknown or acknowledged already."""
        if seq not in self.unacked or seq in self._recorded or seq in self._recording:
            return False
        self._recording.add(seq)
        return True

    def recorded(self, seqs: Iterable[int]) -> Pulled | None:
        """Receipts of seqs are stored; returns the delivery to acknowledge the consumer up to, if that moved."""
        mine = self._recording.intersection(seqs)
        if not mine:
            return None
        self._recording.difference_update(mine)
        self._recorded.update(mine)
        highest: Pulled | None = None
        for seq in list(self.unacked):
            if seq not in self._recorded:
                break
            highest = self.unacked.pop(seq)
            self._recorded.discard(seq)
        return highest

    def room(self, window: int, in_flight: int) -> int:
        """How many more deliveries may be asked for, given in_flight asked for or queued, within window."""
        return window - len(self.unacked) - in_flight
