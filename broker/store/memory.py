"""Owns MemoryStore: the store in memory, with the JetStream semantics the publish path relies on (tests only).

What the publish path asks of the store (the Store protocol, broker/store/model.py) without a
server: two streams (urgent deliveries and the records; bulk deliveries), sequences, message-id
de-duplication (AlreadyStored), expected last subject sequences, with or without a subject
filter (WrongLastSequence: how an envelope's first delivery claims its id), atomic batches (all
or nothing), direct reads by subject filter. And one fault: `fail_after` writes, the store stops
answering (StoreUnavailable), as nats-server does when it dies between two writes.

It is not JetStream: no consumers, no retention, no duplicate window (an id is remembered for
good). The hub runs on broker/store/jetstream.py; unit tests of the pure core and of the
publisher run on this.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from broker.errors import StoreUnavailable
from broker.lanes import LANES, Lane
from broker.store.layout import Layout
from broker.store.model import AlreadyStored, BatchAck, OutMsg, StoredMsg, WrongLastSequence, find_deliveries

_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_EXPECTED_LAST_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
_MSG_ID = "Nats-Msg-Id"


def subject_matches(subject: str, subject_filter: str) -> bool:
    """Whether subject matches a NATS subject filter (`*` one token, `>` the rest)."""
    parts, wanted = subject.split("."), subject_filter.split(".")
    for index, part in enumerate(wanted):
        if part == ">":
            return len(parts) > index
        if index >= len(parts) or (part not in ("*", parts[index])):
            return False
    return len(parts) == len(wanted)


class MemoryStore:
    """Both lane streams in memory; see the module docstring for what it does and does not do."""

    def __init__(
        self, layout: Layout | None = None, stream: str = "OPSROOM", clock_ns: Callable[[], int] = time.time_ns
    ) -> None:
        """Empty streams named stream and stream_BULK; clock_ns stamps the stored messages."""
        self.layout = layout if layout is not None else Layout()
        self._stream = stream
        self._clock_ns = clock_ns
        self.streams: dict[str, list[StoredMsg]] = {self.stream_of(lane): [] for lane in LANES}
        self._msg_ids: dict[str, set[str]] = {name: set() for name in self.streams}
        self._last_seq: dict[str, int] = dict.fromkeys(self.streams, 0)
        self.writes = 0  # messages stored so far, all streams
        self.fail_after: int | None = None  # stop answering once this many messages are stored

    def stream_of(self, lane: Lane) -> str:
        """The stream holding a lane's deliveries: the main stream (urgent) or <stream>_BULK."""
        return self._stream if lane is Lane.URGENT else f"{self._stream}_BULK"

    def stream_for(self, subject: str) -> str:
        """The stream that captures subject (the bulk deliveries go to the bulk stream, all else to the main)."""
        bulk = any(subject_matches(subject, f) for f in self.layout.bulk_stream_subjects)
        return self.stream_of(Lane.BULK if bulk else Lane.URGENT)

    # -- writes --------------------------------------------------------------------------------

    def _check(self, msg: OutMsg, pending: Sequence[StoredMsg] = ()) -> str:
        """The stream msg goes to, or the error JetStream would answer (with pending as if stored)."""
        if self.fail_after is not None and self.writes + len(pending) >= self.fail_after:
            raise StoreUnavailable("the store stopped answering (MemoryStore.fail_after)")
        stream = self.stream_for(msg.subject)
        msg_id = msg.headers.get(_MSG_ID)
        if msg_id and (msg_id in self._msg_ids[stream] or any(p.headers.get(_MSG_ID) == msg_id for p in pending)):
            raise AlreadyStored(f"message id {msg_id} stored before")
        expected = msg.headers.get(_EXPECTED_LAST)
        if expected is not None:
            subject_filter = msg.headers.get(_EXPECTED_LAST_SUBJECT, msg.subject)
            candidates = [*self.streams[stream], *(p for p in pending if self.stream_for(p.subject) == stream)]
            last = max((m.seq for m in candidates if subject_matches(m.subject, subject_filter)), default=0)
            if last != int(expected):
                raise WrongLastSequence(f"last sequence of {subject_filter} is {last}, not {expected}")
        return stream

    def _append(self, msg: OutMsg, stream: str) -> StoredMsg:
        self._last_seq[stream] += 1
        stored = StoredMsg(msg.subject, self._last_seq[stream], msg.payload, self._clock_ns(), dict(msg.headers))
        self.streams[stream].append(stored)
        if _MSG_ID in msg.headers:
            self._msg_ids[stream].add(msg.headers[_MSG_ID])
        self.writes += 1
        return stored

    async def commit(self, msgs: Sequence[OutMsg]) -> BatchAck:
        """Store msgs as one atomic batch: all, or none and the first message's error."""
        if not msgs:
            raise ValueError("empty batch")
        pending: list[StoredMsg] = []
        streams = []
        for msg in msgs:
            stream = self._check(msg, pending)
            streams.append(stream)
            pending.append(
                StoredMsg(msg.subject, self._last_seq[stream] + 1 + len(pending), msg.payload, 0, msg.headers)
            )
        stored = [self._append(msg, stream) for msg, stream in zip(msgs, streams, strict=True)]
        return BatchAck(stored[-1].seq, len(stored))

    async def publish_each(self, msgs: Sequence[OutMsg]) -> list[int | Exception]:
        """Store msgs one by one; per message its sequence, or the error (the others go on, as pipelined)."""
        out: list[int | Exception] = []
        for msg in msgs:
            try:
                out.append(self._append(msg, self._check(msg)).seq)
            except (AlreadyStored, WrongLastSequence, StoreUnavailable) as exc:
                out.append(exc)
        return out

    # -- reads ---------------------------------------------------------------------------------

    def messages(self, stream: str = "") -> list[StoredMsg]:
        """Every stored message of a stream (the main one by default), in order."""
        return list(self.streams[stream or self._stream])

    async def claimed(self, filters: Sequence[str]) -> set[str]:
        """The subject filters that some stored message matches, in either lane's stream."""
        return {
            f
            for f in filters
            for name in self.streams
            if any(subject_matches(m.subject, f) for m in self.streams[name])
        }

    async def last_by_subject(self, subject: str, stream: str = "") -> StoredMsg | None:
        """The last message stored under subject (a filter is allowed, as JetStream's last_by_subj)."""
        found = [m for m in self.streams[stream or self._stream] if subject_matches(m.subject, subject)]
        return found[-1] if found else None

    async def last_per_subject(self, subject_filter: str, limit: int = 1000, stream: str = "") -> list[StoredMsg]:
        """The last message of each subject matching the filter, in stream order."""
        last: dict[str, StoredMsg] = {}
        for m in self.streams[stream or self._stream]:
            if subject_matches(m.subject, subject_filter):
                last.pop(m.subject, None)
                last[m.subject] = m
        return sorted(last.values(), key=lambda m: m.seq)[:limit]

    async def next_by_subject(self, subject_filter: str, start_seq: int, stream: str = "") -> StoredMsg | None:
        """The first message matching the filter at or after start_seq."""
        return next(
            (
                m
                for m in self.streams[stream or self._stream]
                if m.seq >= start_seq and subject_matches(m.subject, subject_filter)
            ),
            None,
        )

    async def deliveries_of(self, distribution_id: str, lane: Lane | None = None) -> list[StoredMsg]:
        """The stored deliveries of an envelope, in its lane's stream (both when the lane is unknown)."""
        return await find_deliveries(self, distribution_id, lane)
