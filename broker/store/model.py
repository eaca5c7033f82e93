"""The messages the hub writes to and reads from its store, the store's answers and its errors (pure).

What the transport (broker.store.jetstream) takes and gives, so that the code above it (the
committer, receipts, sessions, the audit log) needs neither nats-py nor the transport to build or
read a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from broker.lanes import LANES, Lane
from broker.store.layout import Layout


class ConnectionLost(OSError):
    """The connection dropped while a write waited for its answer (it may or may not be stored)."""


@dataclass(frozen=True, slots=True)
class OutMsg:
    """A message to write: subject, payload and JetStream headers (message id, expectations)."""

    subject: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchAck:
    """JetStream's answer to a committed batch: the sequence of its last message and the count."""

    seq: int
    count: int


class DuplicateInBatch(Exception):
    """The write repeats a message id or an expected-absent subject: it (or part of it) was stored before."""


class AlreadyStored(DuplicateInBatch):
    """JetStream saw this message id within its duplicate window and did not store it again."""


class WrongLastSequence(DuplicateInBatch):
    """An expected last sequence did not hold: another writer (or an earlier attempt) wrote first."""


@dataclass(frozen=True, slots=True)
class StoredMsg:
    """A message read back from the stream."""

    subject: str
    seq: int
    data: bytes
    time_ns: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pulled:
    """A message delivered by a pull consumer, with the metadata of its ack subject."""

    stream_seq: int
    delivered: int
    time_ns: int
    pending: int
    reply: str
    distribution_id: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    consumer_seq: int = 0  # the consumer's delivery count: +1 for every message it sends (a gap: one was lost)


@dataclass(frozen=True, slots=True)
class ConsumerState:
    """A consumer as a listing shows it: its filter, its ack floor (a stream sequence), what it still holds."""

    name: str
    filter_subject: str
    ack_floor: int
    waiting: int  # not yet delivered, or delivered and not acknowledged
    created: datetime | None = None
    last_ack: datetime | None = None  # when the ack floor last moved (nats-server's ack_floor.last_active)
    redelivered: int = 0  # delivered more than once and not yet acknowledged


class ConsumerGone(Exception):
    """The consumer was deleted or lost its leader: the session must end and the client reconnect."""


class Wake(Exception):
    """The connection came back: pull requests made before are lost, ask again."""


class Store(Protocol):
    """What the publish path asks of the store: the transport (jetstream.JetStream) and memory.MemoryStore."""

    @property
    def layout(self) -> Layout:
        """The subject and header scheme."""
        ...

    def stream_of(self, lane: Lane) -> str:
        """The stream holding a lane's deliveries."""
        ...

    async def commit(self, msgs: Sequence[OutMsg]) -> BatchAck:
        """Store msgs as one atomic batch (all or none)."""
        ...

    async def publish_each(self, msgs: Sequence[OutMsg]) -> list[int | Exception]:
        """Store msgs one by one; per message its sequence or its error."""
        ...

    async def claimed(self, filters: Sequence[str]) -> set[str]:
        """The subject filters some stored delivery matches."""
        ...

    async def deliveries_of(self, distribution_id: str, lane: Lane | None = None) -> list[StoredMsg]:
        """The stored deliveries of an envelope."""
        ...

    async def last_by_subject(self, subject: str, stream: str = "") -> StoredMsg | None:
        """The last message stored under a subject."""
        ...


class _LastPerSubject(Protocol):
    """A store that reads the last message of each subject matching a filter, in a lane's stream."""

    @property
    def layout(self) -> Layout: ...

    def stream_of(self, lane: Lane) -> str: ...

    async def last_per_subject(self, subject_filter: str, limit: int = 1000, stream: str = "") -> list[StoredMsg]: ...


async def find_deliveries(store: _LastPerSubject, distribution_id: str, lane: Lane | None = None) -> list[StoredMsg]:
    """The stored deliveries of an envelope, looked for in its lane's stream (in both when the lane is unknown)."""
    subject = store.layout.deliveries_of_envelope(distribution_id)
    for candidate in (lane,) if lane is not None else LANES:
        found = await store.last_per_subject(subject, stream=store.stream_of(candidate))
        if found:
            return found
    return []
