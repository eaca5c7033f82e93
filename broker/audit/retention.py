"""The retention purge of the audit log: records past the retention period are erased, and the erasure is recorded.

The log is cut in front of a signed entry, so what is left starts at an entry whose signature
vouches for the chain before it. Before cutting, the hub appends an ERASURE record naming the
positions and sequences removed and the entry the log then starts at; the verifier requires
that record for a log that does not start at position 1. Nothing younger than the retention
period is ever removed: the cut is at the last signed entry written before the cutoff, or
earlier.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from opsroom.audit.v1 import audit_pb2

from broker.audit.log import AuditLog
from broker.audit.records import HUB
from broker.errors import OpsroomError
from broker.ops.logging import get_logger
from broker.store.jetstream import JetStream
from broker.store.model import StoredMsg
from broker.times import timestamp

log = get_logger(__name__)

# Entries looked at, backwards from the cutoff, to find a signed one to cut in front of.
_SIGNED_SCAN = 5000


@dataclass(frozen=True)
class Purge:
    """What a purge removed (removed == 0: nothing was past the retention period)."""

    removed: int
    erasure: audit_pb2.Erasure | None = None


class Retention:
    """Purges the audit log of records older than the retention period."""

    def __init__(self, js: JetStream, audit: AuditLog, clock: Callable[[], datetime], retention: timedelta) -> None:
        """A purger for js's audit stream, recording its erasures through audit."""
        self._js = js
        self._audit = audit
        self._clock = clock
        self._retention = retention
        self._stream = js.audit_stream

    async def run_forever(self, interval: float) -> None:
        """Purge now and then every interval seconds, until cancelled; failures are logged and retried."""
        while True:
            try:
                await self.purge()
            except OpsroomError as exc:
                log.warning("audit_purge_failed", reason=exc.reason.name, error=exc.message)
            await asyncio.sleep(interval)

    async def purge(self) -> Purge:
        """Erase the entries older than the retention period (keeping a signed anchor); returns what it did."""
        cutoff = self._clock() - self._retention
        state = await self._js.stream_state(self._stream)
        first_seq, last_seq = int(state.get("first_seq", 0)), int(state.get("last_seq", 0))
        if not state.get("messages") or first_seq >= last_seq:
            return Purge(0)
        boundary = await self._first_not_older(first_seq, last_seq, cutoff)
        anchor = await self._signed_at_or_before(boundary, first_seq)
        if anchor is None or anchor.seq <= first_seq:
            return Purge(0)
        first = await self._entry_at(first_seq)
        if first is None:
            return Purge(0)
        anchor_entry = audit_pb2.AuditEntry.FromString(anchor.data)
        first_entry = audit_pb2.AuditEntry.FromString(first.data)
        erasure = audit_pb2.Erasure(
            first_position=first_entry.position,
            last_position=anchor_entry.position - 1,
            first_seq=first.seq,
            last_seq=anchor.seq - 1,
            next_position=anchor_entry.position,
            older_than=timestamp(cutoff),
        )
        record = audit_pb2.AuditRecord(
            action=audit_pb2.ACTION_ERASURE,
            at=timestamp(self._clock()),
            actor=audit_pb2.Actor(agency_id=HUB),
            detail=f"retention purge: records older than {self._retention.days} days",
            erased=erasure,
        )
        await self._audit.append([record])
        removed = await self._js.purge_before(self._stream, anchor.seq)
        log.info(
            "audit_purged",
            removed=removed,
            first_position=erasure.first_position,
            last_position=erasure.last_position,
            next_position=erasure.next_position,
        )
        return Purge(removed, erasure)

    async def _entry_at(self, seq: int) -> StoredMsg | None:
        found = await self._js.read_range(self._stream, seq, 1)
        return found[0] if found else None

    async def _first_not_older(self, low: int, high: int, cutoff: datetime) -> int:
        """The first sequence whose entry was written at or after cutoff (high + 1 if none); binary search."""
        end = high + 1
        while low < end:
            mid = (low + end) // 2
            stored = await self._entry_at(mid)
            if stored is None:
                return end
            entry = audit_pb2.AuditEntry.FromString(stored.data)
            if entry.written_at.ToDatetime(cutoff.tzinfo) < cutoff:
                low = stored.seq + 1
            else:
                end = mid
        return low

    async def _signed_at_or_before(self, boundary: int, first_seq: int) -> StoredMsg | None:
        """The last signed entry before boundary (the first entry not older than the cutoff), or at it."""
        end = boundary
        scanned = 0
        while end > first_seq and scanned < _SIGNED_SCAN:
            start = max(first_seq, end - 100)
            batch = [m for m in await self._js.read_range(self._stream, start, end - start + 1) if m.seq <= end]
            scanned += len(batch) or 1
            for stored in reversed(batch):
                if audit_pb2.AuditEntry.FromString(stored.data).HasField("checkpoint"):
                    return stored
            end = start - 1
        return None
