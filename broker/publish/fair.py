"""Owns FairQueue: write groups queued per sender, first in first out per sender, taken round robin across senders.

The commit loop (broker/publish/committer.py) takes its batches from here, so that one agency's
flood cannot put thousands of its envelopes ahead of another agency's: each batch takes one group
of each waiting sender in turn, and a sender that has just had a group taken goes to the back of
the line. A sender's groups keep their order (the stored order per recipient is, for the groups
of one sender, the order they were queued in); groups of different senders may be taken in
another order than they arrived. Pure: no I/O, no asyncio; the committer does the waiting.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Items queued per sender; batch() takes them round robin across senders, in order within one sender."""

    def __init__(self) -> None:
        """Empty: no sender waiting."""
        self._queues: dict[str, collections.deque[T]] = {}
        self._turns: collections.deque[str] = collections.deque()  # senders with items, whose turn is next first
        self._count = 0

    def __len__(self) -> int:
        """Items queued, all senders together."""
        return self._count

    def senders(self) -> int:
        """Senders with items queued."""
        return len(self._turns)

    def push(self, sender: str, item: T) -> None:
        """Queue item after sender's earlier ones; a sender new to the line gets its turn after those waiting."""
        queue = self._queues.get(sender)
        if queue is None:
            queue = self._queues[sender] = collections.deque()
            self._turns.append(sender)
        queue.append(item)
        self._count += 1

    def batch(self, weight: Callable[[T], tuple[int, int]], max_count: int, max_size: int) -> list[T]:
        """Take items round robin, one per sender in turn, while they fit: at most max_count and max_size in all.

        weight gives an item's (count, size). The first item is always taken, whatever its
        weight; the batch ends at the first item that would not fit, which stays first of its
        sender's queue and its sender first in line, so no sender is passed over for a smaller
        one. Each sender whose item is taken goes to the back of the line.
        """
        out: list[T] = []
        count = size = 0
        while self._turns:
            sender = self._turns[0]
            queue = self._queues[sender]
            item_count, item_size = weight(queue[0])
            if out and (count + item_count > max_count or size + item_size > max_size):
                break
            out.append(queue.popleft())
            count += item_count
            size += item_size
            self._count -= 1
            self._turns.popleft()
            if queue:
                self._turns.append(sender)
            else:
                del self._queues[sender]
        return out
