"""Group commit: writes from many callers gathered into few JetStream writes, in arrival order per sender.

Each caller queues a WriteGroup (all the messages of one envelope, or one receipt) under its
sender (an agency; the hub's own records under "") and waits for its own outcome. One loop takes
whatever queued up while the previous write was being stored and writes it next, so batches
grow with the load and nothing waits for a timer. A batch takes the waiting senders' groups in
turn, one each, round robin (broker/publish/fair.py): one agency's thousands of queued
envelopes do not go ahead of another agency's one, which joins the next write. The groups of
one sender keep their order; "arrival order" below means the order groups are taken in, which
for one sender's groups is the order they were queued in.

A group may carry a claim: a subject filter that no stored message may match yet (an envelope's
distribution id). Before anything of a batch is written, its claims are looked up in one read;
a group whose claim is taken is answered DUPLICATE and nothing of it is written, not even its
audit records. The claim is also the expectation of the group's first message, so that two
writers racing for one claim cannot both win.

Two ways to write, chosen per batch by its size:
- many messages: one JetStream atomic batch, all or nothing. nats-server 2.15 spends a fixed
  four fsyncs on a batch of any size, so under load this costs a few fsyncs per hundred events.
  If the batch is refused because part of it was stored before (a retried envelope), its groups
  are written again message by message, in order.
- a few messages (below atomic_threshold, at low load): single publishes, pipelined, one fsync
  each, which answer in a fraction of the batch's latency. A claimed group's first message is
  written, and stored, before the group's other messages are sent: if the writes are cut half
  way, what is stored always includes the first message (which carries what the group was meant
  to be, see broker.publish.plan). A group whose last message is a tail (a record about the others) gets
  it written only after the others are stored. Per subject (per recipient) the stored order is
  the arrival order: a batch whose groups would otherwise overtake one another on a subject is
  written in parts, and a batch written in stages is stored before the next batch is sent.
  Other batches may be in flight several at a time: the connection keeps their order.
A group comes back DUPLICATE if its claim was taken, or if every message of it was stored
before; an atomic batch is never overtaken by a later write, so the stored order is the
arrival order.

With an audit writer, a batch goes through two stages: first the audit records of its groups
are written (a few entries for the whole batch, one chained write), then its deliveries; the
next batch's records are written while this batch's deliveries are. A group whose records
could not be stored is failed without writing its deliveries: nothing reaches a room before
its disclosure is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.audit.log import Draft
from broker.errors import OpsroomError, Reason, Refused, StoreUnavailable
from broker.ops.logging import get_logger
from broker.ops.metrics import Metrics
from broker.publish.fair import FairQueue
from broker.store.model import BatchAck, DuplicateInBatch, OutMsg

log = get_logger(__name__)

CommitFn = Callable[[Sequence[OutMsg]], Awaitable[BatchAck]]
PublishEachFn = Callable[[Sequence[OutMsg]], Awaitable[list[int | Exception]]]
AuditFn = Callable[[Sequence[Draft]], Coroutine[Any, Any, Sequence[OpsroomError | None]]]
# Given claim filters, the ones some stored message already matches.
ClaimedFn = Callable[[Sequence[str]], Awaitable[set[str]]]


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
    """Messages written together: in one atomic batch, or one by one with a group outcome.

    With tail=True the last message is written only once all the others are stored (it
    records something about them, like an operator's answer about a delivered response).
    With a claim (a subject filter), nothing is written if a stored message matches it, and
    the first message, which must expect the claim, is stored before the others are sent.
    """

    messages: Sequence[OutMsg]
    tail: bool = False
    audit: Draft | None = None
    claim: str = ""
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
        publish_each: PublishEachFn | None = None,
        atomic_threshold: int = 64,
        max_in_flight: int = 4,
        audit: AuditFn | None = None,
        claimed: ClaimedFn | None = None,
        lane: str = "urgent",
        linger: float = 0.0,
    ) -> None:
        """A committer writing atomic batches through commit (at most max_messages and max_bytes each).

        With publish_each, batches of fewer than atomic_threshold messages are written as plain
        publishes instead. With audit, each batch's audit drafts are written through it first.
        With claimed, each batch's claims are looked up through it before anything is written.
        lane names the lane whose writes this committer makes, in its metrics; linger (seconds)
        is how long the loop waits after the first group for others to join its write.
        """
        self._audit = audit
        self._claimed = claimed
        self._lane = lane
        self._linger = linger
        self._commit = commit
        self._publish_each = publish_each
        self._atomic_threshold = atomic_threshold if publish_each is not None else 0
        self._max_in_flight = max_in_flight
        self._metrics = metrics
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._queue_size = queue_size
        self._queue: FairQueue[WriteGroup] = FairQueue()
        self._queued = asyncio.Event()  # set while groups are queued
        self._room = asyncio.Event()  # set while the queue is under queue_size
        self._room.set()
        self._closed = False

    async def enqueue(
        self,
        messages: Sequence[OutMsg],
        *,
        tail: bool = False,
        audit: Draft | None = None,
        claim: str = "",
        sender: str = "",
    ) -> asyncio.Future[GroupResult]:
        """Queue messages for atomic storage (waiting while the queue is full); returns the future outcome.

        The groups of one sender (an agency id; "" for the hub's own records) are stored in the
        order they were queued; batches take the waiting senders' groups in turn
        (broker/publish/fair.py), so one sender's backlog does not hold up another's group.
        The future resolves to STORED or DUPLICATE, or fails with the store's error.
        """
        if self._closed:
            raise StoreUnavailable("the hub is stopping")
        if len(messages) > self._max_messages:
            raise Refused(Reason.ENVELOPE_TOO_LARGE, f"{len(messages)} messages exceed one batch")
        group = WriteGroup(messages, tail, audit, claim)
        while len(self._queue) >= self._queue_size:
            self._room.clear()
            await self._room.wait()
        self._queue.push(sender, group)
        self._queued.set()
        return group.future

    async def submit(self, messages: Sequence[OutMsg], *, tail: bool = False) -> GroupResult:
        """Store messages and wait; returns STORED or DUPLICATE, raises the store's errors."""
        return await (await self.enqueue(messages, tail=tail))

    async def run(self) -> None:
        """The commit loop; returns after close() once the queue is empty and every write answered."""
        if self._audit is None and self._claimed is None:
            await self._write_batches(self._next_batch)
            return
        # Two stages: the claims and records of batch N+1 are checked and written while the
        # deliveries of batch N are; they run at most a batch ahead, so that batches keep growing
        # with the load. Batch N+1 is formed when the writer takes batch N, not before: a group
        # queued meanwhile (another sender's, while one sender floods) joins it, not a batch later.
        recorded: asyncio.Queue[asyncio.Task[list[WriteGroup]] | None] = asyncio.Queue(1)
        wanted = asyncio.Event()
        wanted.set()
        recorder = asyncio.get_running_loop().create_task(
            self._record_batches(recorded, wanted), name="committer-records"
        )

        async def next_recorded() -> list[WriteGroup] | None:
            task = await recorded.get()
            wanted.set()  # the next batch is formed and prepared while this one is written
            return None if task is None else await task

        try:
            await self._write_batches(next_recorded)
        finally:
            if not recorder.done():
                recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder
            while not recorded.empty():  # only when the writer stopped early (cancelled)
                task = recorded.get_nowait()
                if task is not None:
                    task.cancel()

    async def _record_batches(
        self, recorded: asyncio.Queue[asyncio.Task[list[WriteGroup]] | None], wanted: asyncio.Event
    ) -> None:
        """Take batches and start checking their claims and writing their audit records, in order; None at the end.

        A batch is taken when the writer wants the next one (wanted), so at most one batch
        waits formed ahead of the one being written.
        """
        while True:
            await wanted.wait()
            wanted.clear()
            groups = await self._next_batch()
            if groups is None:
                await recorded.put(None)
                return
            task = asyncio.get_running_loop().create_task(self._prepare(groups))
            await recorded.put(task)

    async def _prepare(self, groups: list[WriteGroup]) -> list[WriteGroup]:
        """Check the claims of groups, then write their audit drafts; returns the groups to write."""
        if self._claimed is not None:
            groups = await self._check_claims(groups)
        if self._audit is not None:
            groups = await self._record(groups)
        return groups

    async def _check_claims(self, groups: list[WriteGroup]) -> list[WriteGroup]:
        """Answer DUPLICATE, writing nothing, the groups whose claim a stored message matches; the rest go on."""
        assert self._claimed is not None
        claims = [g.claim for g in groups if g.claim]
        if not claims:
            return groups
        try:
            taken = await self._claimed(claims)
        except Exception as exc:
            if not isinstance(exc, OpsroomError):
                log.exception("claim_check_crashed", error_type=type(exc).__name__)
            error = exc if isinstance(exc, OpsroomError) else StoreUnavailable("the claim check failed; retry")
            self._metrics.commit_failures.labels("claim_check").inc()
            for group in groups:
                if group.claim:
                    _fail(group, error)
            return [g for g in groups if not g.claim]
        out = []
        for group in groups:
            if group.claim in taken:
                self._metrics.commit_failures.labels("duplicate").inc()
                _resolve(group, GroupResult(Outcome.DUPLICATE))
            else:
                out.append(group)
        return out

    async def _record(self, groups: list[WriteGroup]) -> list[WriteGroup]:
        """Write the audit drafts of groups; returns the groups whose deliveries may now be written.

        A group whose records could not be stored fails here and its deliveries are never
        written: nothing reaches a room before its disclosure is recorded.
        """
        assert self._audit is not None
        with_draft = [g for g in groups if g.audit is not None]
        if not with_draft:
            return groups
        try:
            results: Sequence[OpsroomError | None] = await self._audit(
                [g.audit for g in with_draft if g.audit is not None]
            )
        except Exception as exc:
            if not isinstance(exc, OpsroomError):
                log.exception("audit_write_crashed", error_type=type(exc).__name__)
            error = exc if isinstance(exc, OpsroomError) else StoreUnavailable("audit write failed; retry")
            results = [error] * len(with_draft)
        failed = set()
        for group, result in zip(with_draft, results, strict=True):
            if result is not None:
                self._metrics.commit_failures.labels("audit").inc()
                _fail(group, result)
                failed.add(group)
        return [g for g in groups if g not in failed] if failed else groups

    async def _write_batches(self, next_batch: Callable[[], Awaitable[list[WriteGroup] | None]]) -> None:
        """Write the deliveries of each batch next_batch gives, in order, until it gives None."""
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                groups = await next_batch()
                if groups is None:
                    return
                if not groups:
                    continue
                count = sum(len(g.messages) for g in groups)
                if count >= self._atomic_threshold:
                    # An atomic batch may be split and written again: nothing may overtake it.
                    await self._settle(in_flight, 0)
                    await self._commit_groups(groups)
                    continue
                # Single publishes keep their order on the connection, so several writes may be
                # in flight: each group's messages are queued here, before the next batch's. A batch
                # written in stages sends messages after its first answers: nothing may overtake it.
                staged = any(g.claim and len(g.messages) > 1 for g in groups)
                task = asyncio.get_running_loop().create_task(self._publish_groups(groups, count))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                await asyncio.sleep(0)  # let the task put its first messages on the wire
                await self._settle(in_flight, 0 if staged else self._max_in_flight - 1)
        finally:
            await self._settle(in_flight, 0)

    @staticmethod
    async def _settle(tasks: set[asyncio.Task[Any]], keep: int) -> None:
        """Wait until at most keep of the tasks are still running."""
        while len(tasks) > keep:
            await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)

    async def _next_batch(self) -> list[WriteGroup] | None:
        """The groups that queued up, within the batch limits, senders in turn; None once closed and empty."""
        while not self._queue:
            if self._closed:
                return None
            self._queued.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queued.wait(), timeout=0.5)
        if self._linger:
            await asyncio.sleep(self._linger)  # let more gather: fewer, larger writes (bulk lane)
        groups = self._queue.batch(_weight, self._max_messages, self._max_bytes)
        if len(self._queue) < self._queue_size:
            self._room.set()
        return groups

    def close(self) -> None:
        """Refuse new groups; run() returns once the queued ones are committed."""
        self._closed = True

    async def _commit_groups(self, groups: list[WriteGroup]) -> None:
        messages = [m for g in groups for m in g.messages]
        if len(messages) < self._atomic_threshold:
            await self._publish_groups(groups, len(messages))
            return
        started = time.perf_counter()
        try:
            ack = await self._commit(messages)
        except DuplicateInBatch:
            self._metrics.commit_failures.labels("duplicate").inc()
            await self._after_duplicate(groups)
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
        self._metrics.commit_seconds.labels(self._lane, "atomic").observe(time.perf_counter() - started)
        self._metrics.commit_messages.labels(self._lane, "atomic").observe(len(messages))
        first_seq = ack.seq - len(messages) + 1
        for group in groups:
            first_seq += len(group.messages)
            _resolve(group, GroupResult(Outcome.STORED, first_seq - 1))

    async def _after_duplicate(self, groups: list[WriteGroup]) -> None:
        """An atomic batch was refused because part of it was stored before: write it again, group by group."""
        if self._publish_each is not None:
            # Message by message: which were stored before is then known exactly.
            for group in groups:
                await self._publish_groups([group], len(group.messages))
        elif len(groups) == 1:
            _resolve(groups[0], GroupResult(Outcome.DUPLICATE))
        else:
            for group in groups:
                await self._commit_groups([group])

    async def _publish_groups(self, groups: list[WriteGroup], count: int) -> None:
        """Single pipelined publishes (claimed firsts, then the rest, then tails), then one outcome per group.

        A group is failed at its first error. A claimed group is DUPLICATE when its first message
        finds the claim taken (nothing else of it is written). Any other group is DUPLICATE when
        every message of it was stored before, STORED when at least one is new.
        """
        assert self._publish_each is not None
        started = time.perf_counter()
        outcomes: dict[WriteGroup, list[int | Exception]] = {g: [] for g in groups}
        try:
            for part in _parts(groups):
                await self._publish_part(part, outcomes)
        except Exception as exc:
            self._metrics.commit_failures.labels("unexpected").inc()
            log.exception("publish_crashed", messages=count, error_type=type(exc).__name__)
            for group in groups:
                _fail(group, StoreUnavailable(f"unexpected {type(exc).__name__} while storing"))
            return
        for group, results in outcomes.items():
            error = next((r for r in results if _is_error(r)), None)
            stored = [r for r in results if isinstance(r, int)]
            if isinstance(error, Exception):
                self._note_failure(error, count)
                _fail(group, error)
            elif stored and not (group.claim and not isinstance(results[0], int)):
                _resolve(group, GroupResult(Outcome.STORED, max(stored)))
            else:
                self._metrics.commit_failures.labels("duplicate").inc()
                _resolve(group, GroupResult(Outcome.DUPLICATE))
        self._metrics.commit_seconds.labels(self._lane, "single").observe(time.perf_counter() - started)
        self._metrics.commit_messages.labels(self._lane, "single").observe(count)

    async def _publish_part(self, part: list[WriteGroup], outcomes: dict[WriteGroup, list[int | Exception]]) -> None:
        """Write one part of a batch in up to three stages, recording each message's result in outcomes."""
        assert self._publish_each is not None
        firsts = [g for g in part if g.claim]
        if firsts:
            results = await self._publish_each([g.messages[0] for g in firsts])
            for group, result in zip(firsts, results, strict=True):
                outcomes[group].append(result)
        heads: list[tuple[WriteGroup, OutMsg]] = []
        for group in part:
            if group.claim and not isinstance(outcomes[group][0], int):
                continue  # claim taken, or the first write failed: nothing more of this group
            heads.extend((group, m) for m in _middle(group))
        if heads:
            results = await self._publish_each([m for _, m in heads])
            for (group, _), result in zip(heads, results, strict=True):
                outcomes[group].append(result)
        tails = [
            g
            for g in part
            if _has_tail(g)
            and not any(_is_error(r) for r in outcomes[g])
            and not (g.claim and not isinstance(outcomes[g][0], int))
        ]
        if tails:
            results = await self._publish_each([g.messages[-1] for g in tails])
            for group, result in zip(tails, results, strict=True):
                outcomes[group].append(result)

    def _note_failure(self, exc: Exception, count: int) -> None:
        reason = exc.reason.name if isinstance(exc, OpsroomError) else type(exc).__name__
        self._metrics.commit_failures.labels(reason.lower()).inc()
        log.warning("commit_failed", reason=reason, messages=count)


def _weight(group: WriteGroup) -> tuple[int, int]:
    """A group's messages and bytes, as a batch's limits count them."""
    return len(group.messages), group.size


def _has_tail(group: WriteGroup) -> bool:
    return group.tail and len(group.messages) > 1


def _middle(group: WriteGroup) -> Sequence[OutMsg]:
    """The messages of a group written in the second stage: after a claimed first, before a tail."""
    return group.messages[1 if group.claim else 0 : -1 if _has_tail(group) else None]


def _order_key(subject: str) -> str:
    """What the stored order is kept per: a subject without its last token (a recipient's lane, for deliveries)."""
    return subject.rpartition(".")[0]


def _parts(groups: list[WriteGroup]) -> list[list[WriteGroup]]:
    """Groups split, in order, where writing in stages would let a later message overtake an earlier one.

    Within a part, claimed firsts are stored before every other message, and tails after them:
    a group's first may not share an order key with an earlier group's later-stage message, nor
    its second-stage messages with an earlier tail.
    """
    parts: list[list[WriteGroup]] = []
    current: list[WriteGroup] = []
    second: set[str] = set()
    third: set[str] = set()
    for group in groups:
        first = {_order_key(group.messages[0].subject)} if group.claim else set()
        middle = {_order_key(m.subject) for m in _middle(group)}
        if current and (first & (second | third) or middle & third):
            parts.append(current)
            current, second, third = [], set(), set()
        current.append(group)
        second |= middle
        if _has_tail(group):
            third.add(_order_key(group.messages[-1].subject))
    if current:
        parts.append(current)
    return parts


def _is_error(result: int | Exception) -> bool:
    return isinstance(result, Exception) and not isinstance(result, DuplicateInBatch)


def _resolve(group: WriteGroup, result: GroupResult) -> None:
    if not group.future.done():
        group.future.set_result(result)


def _fail(group: WriteGroup, exc: BaseException) -> None:
    if not group.future.done():
        group.future.set_exception(exc)
