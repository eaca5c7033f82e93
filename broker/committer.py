"""Group commit: writes from many callers gathered into JetStream atomic batches, one fsync each, in arrival order.

Each caller submits a WriteGroup (all the messages of one envelope, or of one receipt) and
waits for its own outcome. One loop takes whatever has queued up while the previous batch was
being stored and commits it as the next batch, so batches grow with the load and nothing waits
for a timer. If a batch is refused because part of it was stored before (a retried envelope),
its groups are committed again one by one, in order, and only the repeated ones come back as
DUPLICATE. Only one batch is in flight at a time, which keeps the stored order equal to the
arrival order.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from broker.errors import OpsroomError, Reason, Refused, StoreUnavailable
from broker.logging import get_logger
from broker.metrics import Metrics
from broker.transport.jetstream import BatchAck, DuplicateInBatch, OutMsg

log = get_logger(__name__)

CommitFn = Callable[[Sequence[OutMsg]], Awaitable[BatchAck]]


class Outcome(enum.Enum):
    """What happened to a write group."""

    STORED = "stored"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class GroupResult:
    """A group's outcome; for STORED, the stream sequence of its last message."""

    outcome: Outcome
    last_seq: int = 0


@dataclass(eq=False)
class WriteGroup:
    """Messages that must be stored together or not at all."""

    messages: Sequence[OutMsg]
    future: asyncio.Future[GroupResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def size(self) -> int:
        """Bytes of payload in the group."""
        return sum(len(m.payload) for m in self.messages)


class Committer:
    """Owns the commit loop; run() must be running (in the hub's task group) for submit() to complete."""

    def __init__(
        self,
        commit: CommitFn,
        metrics: Metrics,
        *,
        max_messages: int = 1000,
        max_bytes: int = 8 * 1024 * 1024,
        queue_size: int = 20_000,
    ) -> None:
        """A committer writing through commit, at most max_messages and max_bytes per batch."""
        self._commit = commit
        self._metrics = metrics
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._queue: asyncio.Queue[WriteGroup] = asyncio.Queue(maxsize=queue_size)
        self._carry: WriteGroup | None = None
        self._closed = False

    async def enqueue(self, messages: Sequence[OutMsg]) -> asyncio.Future[GroupResult]:
        """Queue messages for atomic storage (waiting while the queue is full); returns the future outcome.

        Groups are stored in the order they were queued. The future resolves to STORED or
        DUPLICATE, or fails with the store's error.
        """
        if self._closed:
            raise StoreUnavailable("the hub is stopping")
        if len(messages) > self._max_messages:
            raise Refused(Reason.ENVELOPE_TOO_LARGE, f"{len(messages)} messages exceed one batch")
        group = WriteGroup(messages)
        await self._queue.put(group)
        return group.future

    async def submit(self, messages: Sequence[OutMsg]) -> GroupResult:
        """Store messages atomically and wait; returns STORED or DUPLICATE, raises the store's errors."""
        return await (await self.enqueue(messages))

    async def run(self) -> None:
        """The commit loop; returns after close() once the queue is empty."""
        while True:
            if self._carry is not None:
                first, self._carry = self._carry, None
            else:
                if self._closed and self._queue.empty():
                    return
                try:
                    first = await asyncio.wait_for(self._queue.get(), timeout=0.5)
                except TimeoutError:
                    continue
            groups = [first]
            count, size = len(first.messages), first.size
            while not self._queue.empty():
                nxt = self._queue.get_nowait()
                if count + len(nxt.messages) > self._max_messages or size + nxt.size > self._max_bytes:
                    self._carry = nxt
                    break
                groups.append(nxt)
                count += len(nxt.messages)
                size += nxt.size
            await self._commit_groups(groups)

    def close(self) -> None:
        """Refuse new groups; run() returns once the queued ones are committed."""
        self._closed = True

    async def _commit_groups(self, groups: list[WriteGroup]) -> None:
        messages = [m for g in groups for m in g.messages]
        started = time.perf_counter()
        try:
            ack = await self._commit(messages)
        except DuplicateInBatch:
            self._metrics.commit_failures.labels("duplicate").inc()
            if len(groups) == 1:
                _resolve(groups[0], GroupResult(Outcome.DUPLICATE))
                return
            for group in groups:
                await self._commit_groups([group])
            return
        except OpsroomError as exc:
            self._metrics.commit_failures.labels(exc.reason.name.lower()).inc()
            log.warning("commit_failed", reason=exc.reason.name, messages=len(messages), error=exc.message)
            for group in groups:
                _fail(group, exc)
            return
        except Exception as exc:
            self._metrics.commit_failures.labels("unexpected").inc()
            log.exception("commit_crashed", messages=len(messages), error_type=type(exc).__name__)
            for group in groups:
                _fail(group, StoreUnavailable(f"unexpected {type(exc).__name__} while storing"))
            return
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        self._metrics.commit_messages.observe(len(messages))
        first_seq = ack.seq - len(messages) + 1
        for group in groups:
            first_seq += len(group.messages)
            _resolve(group, GroupResult(Outcome.STORED, first_seq - 1))


def _resolve(group: WriteGroup, result: GroupResult) -> None:
    if not group.future.done():
        group.future.set_result(result)


def _fail(group: WriteGroup, exc: BaseException) -> None:
    if not group.future.done():
        group.future.set_exception(exc)
