"""The audit log writer: appends entries to the audit stream as links of one hash chain, signed, in one total order.

Each entry holds the SHA-256 of the one before and is written with JetStream's "expected last
sequence", so two hub replicas appending at once cannot fork the chain: the one that loses
reads what the other wrote, checks it (links and signatures by trusted keys) and writes again
after it. An entry written on its own is signed; a batch of entries is written atomically and
its last entry (and every checkpoint_every-th) is signed, so no unsigned entry of a hub is ever
visible. Entries found in the log that no trusted key vouches for are kept, and the writer
records their positions in a TAMPER_DETECTED record that its own signature then covers.

The records of many envelopes written together share entries (up to max_entry_bytes each):
an entry's cost (a message, a hash, a signature now and then) is paid per batch, not per
envelope.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from opsroom.audit.v1 import audit_pb2

from broker.audit import records as audit_records
from broker.audit.chain import GENESIS, entry_sha256, seal_bytes, seal_problem
from broker.audit.verify import Stored, verify
from broker.errors import OpsroomError, StoreUnavailable
from broker.ops.logging import get_logger
from broker.ops.metrics import Metrics
from broker.store.jetstream import JetStream
from broker.store.model import AlreadyStored, OutMsg, WrongLastSequence
from broker.times import timestamp

log = get_logger(__name__)

_ATTEMPTS = 8
# Records (encoded bytes) that drafts sharing an entry may hold together: well under nats-server's
# default max_payload (1 MiB), so that a batch of a thousand envelopes makes a few entries.
ENTRY_MAX_BYTES = 256 * 1024


class Draft(NamedTuple):
    """The records of one entry to write, serialized, and its dedup id if it must be written once only ("esc:<id>").

    records holds the entry's field 5 as it is encoded (made by of()): the writer puts the
    entry's other fields around it without decoding or copying the records again.
    """

    records: bytes
    msg_id: str = ""

    @classmethod
    def of(cls, records: Sequence[audit_pb2.AuditRecord], msg_id: str = "") -> Draft:
        """A draft of these records."""
        return cls.of_entry(audit_pb2.AuditEntry(records=records), msg_id)

    @classmethod
    def of_entry(cls, entry: audit_pb2.AuditEntry, msg_id: str = "") -> Draft:
        """A draft of the records of entry, an entry that holds nothing else."""
        return cls(entry.SerializeToString(deterministic=True), msg_id)


def pack(drafts: Sequence[Draft], max_bytes: int) -> tuple[list[Draft], list[list[int]]]:
    """Entries for drafts, in order, and for each the indices of the drafts it holds.

    Consecutive drafts without a message id are joined (their encoded records concatenated, which
    is the encoding of all their records) while the entry stays within max_bytes; a draft with a
    message id, or one larger than max_bytes, is an entry alone.
    """
    entries: list[Draft] = []
    members: list[list[int]] = []
    parts: list[bytes] = []
    size = 0

    def close() -> None:
        nonlocal size
        if parts:
            entries.append(Draft(b"".join(parts)))
            parts.clear()
            size = 0

    for i, draft in enumerate(drafts):
        if draft.msg_id:
            close()
            entries.append(draft)
            members.append([i])
            continue
        if parts and size + len(draft.records) > max_bytes:
            close()
        if not parts:
            members.append([])
        parts.append(draft.records)
        size += len(draft.records)
        members[-1].append(i)
    close()
    return entries, members


@dataclass
class _Head:
    """The last entry of the chain as this writer knows it."""

    seq: int = 0
    position: int = 0
    sha: bytes = GENESIS
    # The entry's message id while it is only sent, not confirmed: the next entry expects it.
    msg_id: str = ""


class _Encoded(NamedTuple):
    data: bytes
    position: int
    sha: bytes
    headers: dict[str, str]
    msg_id: str


class _Failed(Exception):
    def __init__(self, indices: list[int], error: OpsroomError) -> None:
        super().__init__(error.message)
        self.indices = indices
        self.error = error


class AuditLog:
    """Appends to the audit chain; one per hub replica."""

    def __init__(
        self,
        js: JetStream,
        key: Ed25519PrivateKey,
        trusted: Mapping[str, Ed25519PublicKey],
        metrics: Metrics,
        clock: Callable[[], datetime],
        *,
        writer: str,
        atomic_threshold: int = 64,
        checkpoint_every: int = 1000,
        pipelined: bool = True,
        max_entry_bytes: int = ENTRY_MAX_BYTES,
    ) -> None:
        """A writer for js's audit stream, signing with key, trusting entries signed by trusted keys.

        pipelined=False (a replicated stream): one write at a time, on a confirmed head, several
        entries only as an atomic batch, and no entry ever expects its predecessor by message id
        (nats-server 2.15 replicas may fail to apply such an entry after a node was lost, "last
        msgid mismatch", which stops the stream).
        """
        self._pipelined = pipelined
        self._max_entry_bytes = max_entry_bytes
        self._js = js
        self._stream = js.audit_stream
        self._subject = js.layout.audit_subject
        self._key = key
        self._trusted = trusted
        self._metrics = metrics
        self._clock = clock
        self._writer = writer
        self._atomic_threshold = atomic_threshold
        self._checkpoint_every = checkpoint_every
        self._head = _Head()  # predicted: the last entry sent
        self._confirmed = _Head()  # the last entry the stream confirmed
        self._broken = False  # a write failed: the predicted head must be read again
        self._sending: set[asyncio.Future[Any]] = set()
        self._lock = asyncio.Lock()
        self._alerts: list[str] = []

    @property
    def key(self) -> Ed25519PrivateKey:
        """The signing key."""
        return self._key

    @property
    def trusted(self) -> Mapping[str, Ed25519PublicKey]:
        """The keys whose signatures this writer trusts."""
        return self._trusted

    async def open(self) -> None:
        """Find the chain's head; check that it carries a trusted signature."""
        async with self._lock:
            last = await self._js.last_by_subject(self._subject, self._stream)
            if last is None:
                self._head = self._confirmed = _Head()
                return
            entry = audit_pb2.AuditEntry.FromString(last.data)
            if seal_problem(self._stream, entry, self._trusted):
                self._alert(f"the last entry (position {entry.position}, seq {last.seq}) carries no trusted signature")
            self._head = self._confirmed = _Head(last.seq, int(entry.position), entry_sha256(last.data))

    async def append(self, records: Sequence[audit_pb2.AuditRecord], msg_id: str = "") -> None:
        """Write one entry; raises StoreUnavailable if it could not be stored."""
        [result] = await self.write([Draft.of(records, msg_id)])
        if result is not None:
            raise result

    async def write(self, drafts: Sequence[Draft]) -> list[OpsroomError | None]:
        """Write drafts in order; per draft None (stored now or before) or the error that kept it out.

        Consecutive drafts without a message id share entries of at most max_entry_bytes of
        records (one entry for a batch of envelopes, not one each); a draft with a message id
        is an entry of its own, which a retry finds stored. A shared entry's outcome is each of
        its drafts' outcome.
        """
        entries, members = pack(drafts, self._max_entry_bytes)
        stored = await self._write_entries(entries)
        results: list[OpsroomError | None] = [None] * len(drafts)
        for result, indices in zip(stored, members, strict=True):
            for i in indices:
                results[i] = result
        return results

    async def _write_entries(self, drafts: Sequence[Draft]) -> list[OpsroomError | None]:
        """Write each draft as one entry, in order; per entry None (stored now or before) or the error.

        Writes are pipelined: the next write is encoded on the predicted head and sent while
        this one is still being stored; the stream's expected-last-sequence check refuses any
        entry whose prediction turned out wrong, and the writer then catches up and sends again.
        """
        results: list[OpsroomError | None] = [None] * len(drafts)
        started = time.perf_counter()
        pending = list(range(len(drafts)))
        atomic = len(drafts) >= self._atomic_threshold
        for _ in range(_ATTEMPTS):
            if not pending:
                break
            try:
                pending = await self._attempt(drafts, pending, atomic=atomic)
            except AlreadyStored:
                self._broken = True
                atomic = False  # a batch repeating an entry: write them one by one to see which
                if not self._pipelined and len(pending) > 1:
                    for i in pending:  # unpipelined, one entry per write
                        results[i] = (await self._write_entries([drafts[i]]))[0]
                    pending = []
            except WrongLastSequence:
                self._broken = True
            except _Failed as failed:
                self._broken = True
                for i in failed.indices:
                    results[i] = failed.error
                pending = []
        for i in pending:
            results[i] = StoreUnavailable("the audit log kept changing under this writer; retry")
        self._metrics.audit_write_seconds.observe(time.perf_counter() - started)
        return results

    async def _attempt(self, drafts: Sequence[Draft], pending: list[int], *, atomic: bool) -> list[int]:
        """One try; returns the drafts still to write (raises to say why a whole try failed)."""
        async with self._lock:
            if self._broken:
                # A write failed: the predicted head is wrong. Let everything sent settle, then
                # read where the log really ends.
                await self._settle()
                self._head = self._confirmed
                await self._resync()
                self._broken = False
            if atomic or not self._pipelined:
                await self._settle()  # a batch checks only its first entry: it goes on a confirmed head
                if not self._pipelined:
                    self._head = self._confirmed
            if not self._sending and self._confirmed.position == self._head.position:
                self._head = self._confirmed
            alert = self._take_alert()
            lead = [Draft.of([alert])] if alert is not None else []
            if not self._pipelined and len(lead) + len(pending) > 1:
                atomic = True
            encoded = self._encode([*lead, *(drafts[i] for i in pending)], atomic=atomic)
            msgs = [OutMsg(self._subject, e.data, e.headers) for e in encoded]
            sending: asyncio.Future[Any]
            if atomic:
                sending = asyncio.ensure_future(self._js.commit(msgs))
            else:
                sending = asyncio.ensure_future(self._js.publish_each(msgs))
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)
            head = self._head
            self._head = _Head(head.seq + len(encoded), encoded[-1].position, encoded[-1].sha, encoded[-1].msg_id)
            await asyncio.sleep(0)  # the messages go on the wire before the next write's
        if atomic:
            try:
                ack = await sending
            except BaseException:
                self._keep_alert(alert)
                raise
            self._confirm(_Head(ack.seq, encoded[-1].position, encoded[-1].sha))
            self._metrics.audit_entries.inc(len(encoded))
            self._metrics.audit_last_write.set(self._clock().timestamp())
            return []
        return self._after_singles(await sending, encoded, pending, len(lead), alert)

    def _after_singles(
        self,
        results: list[int | Exception],
        encoded: list[_Encoded],
        pending: list[int],
        leading: int,
        alert: audit_pb2.AuditRecord | None,
    ) -> list[int]:
        """Confirm what single publishes stored; returns the drafts to write again (raises _Failed)."""
        stored = 0
        for k, result in enumerate(results):
            if not isinstance(result, int):
                break
            self._confirm(_Head(result, encoded[k].position, encoded[k].sha))
            self._metrics.audit_entries.inc()
            self._metrics.audit_last_write.set(self._clock().timestamp())
            stored = k + 1
        if stored == len(results):
            return []
        self._broken = True
        # Everything after the first entry not stored now was linked to it: write those again.
        if stored < leading:
            self._keep_alert(alert)
        first = max(0, stored - leading)  # index into pending of the first draft not stored now
        problem = results[stored]
        if isinstance(problem, AlreadyStored):
            return pending[first + 1 :]  # that draft was written before (a retry); the rest follow it
        if isinstance(problem, WrongLastSequence):
            return pending[first:]
        error = problem if isinstance(problem, OpsroomError) else StoreUnavailable(f"audit write failed: {problem}")
        raise _Failed(pending[first:], error)

    def _confirm(self, head: _Head) -> None:
        if head.seq > self._confirmed.seq:
            self._confirmed = head

    async def _settle(self) -> None:
        """Wait until every write sent has been answered."""
        while self._sending:
            await asyncio.wait(set(self._sending))

    def _keep_alert(self, alert: audit_pb2.AuditRecord | None) -> None:
        if alert is not None:
            self._alerts.insert(0, alert.detail)

    def _encode(self, batch: Sequence[Draft], *, atomic: bool) -> list[_Encoded]:
        now = self._clock()
        ts = timestamp(now)
        position, prev, seq, last_id = self._head.position, self._head.sha, self._head.seq, self._head.msg_id
        out: list[_Encoded] = []
        for k, draft in enumerate(batch):
            position += 1
            # Fields 1-4, then the records (5): the entry's deterministic encoding, unsigned.
            head = audit_pb2.AuditEntry(position=position, prev_sha256=prev, written_at=ts, writer=self._writer)
            unsigned = head.SerializeToString(deterministic=True) + draft.records
            sign = not atomic or k == len(batch) - 1 or (k + 1) % self._checkpoint_every == 0
            data = seal_bytes(self._stream, unsigned, position, self._key, ts) if sign else unsigned
            headers: dict[str, str] = {}
            sha = entry_sha256(data)
            msg_id = draft.msg_id or f"aud:{self._writer}:{position}:{sha[:8].hex()}"
            headers["Nats-Msg-Id"] = msg_id
            # Each entry expects the one it links to: by sequence when that one is confirmed
            # (its content is known), by message id when it is only sent (a sequence alone would
            # let an entry follow another writer's entry that took its predecessor's place).
            if k == 0 and not last_id:
                headers["Nats-Expected-Last-Sequence"] = str(seq)
            elif not atomic:
                headers["Nats-Expected-Last-Msg-Id"] = last_id
            last_id = msg_id
            prev = sha
            out.append(_Encoded(data, position, prev, headers, msg_id))
        return out

    async def _resync(self) -> None:
        """Read what others appended since our head; check it; continue after it."""
        last = await self._js.last_by_subject(self._subject, self._stream)
        if last is None or last.seq <= self._head.seq:
            return
        read = await self._js.read_through(self._stream, self._head.seq or 1, last.seq, max_messages=100_000)
        items = [Stored(m.seq, m.data) for m in read]
        report = verify(self._stream, items, self._trusted, segment=True)
        if not report.ok:
            first = self._head.position + 1
            self._alert(
                f"entries {first} to {report.last_position} (seqs {self._head.seq + 1}-{last.seq}) are not vouched "
                f"for by a trusted key: {'; '.join(str(f) for f in report.findings[:3])}"
            )
        tail = audit_pb2.AuditEntry.FromString(items[-1].data) if items else None
        if tail is not None:
            self._head = self._confirmed = _Head(items[-1].seq, int(tail.position), entry_sha256(items[-1].data))

    def _alert(self, detail: str) -> None:
        log.critical("audit_tamper_detected", stream=self._stream, reason=detail[:300])
        self._metrics.audit_tamper_alerts.inc()
        self._alerts.append(detail)

    def _take_alert(self) -> audit_pb2.AuditRecord | None:
        if not self._alerts:
            return None
        detail = "; ".join(self._alerts)
        self._alerts.clear()
        return audit_records.hub_record(audit_pb2.ACTION_TAMPER_DETECTED, self._clock(), detail[:2000])
