"""Owns the transport's reads: direct gets by subject, sequence and time, batched, and the claim lookup."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from broker.errors import StoreUnavailable
from broker.lanes import Lane
from broker.ops.logging import get_logger
from broker.store.model import StoredMsg, find_deliveries
from broker.store.nats_api import NANOS, NatsApi

log = get_logger(__name__)


# A batched direct get of the last message per subject matching more subjects than nats-server
# returns at once (1,024 in 2.15) answers status 413.
TOO_MANY_RESULTS = "413"
# The longest one batched direct get may take in all (each answer is also given 5 s at most).
DIRECT_BATCH_DEADLINE = 30.0


def _stored(msg: Msg) -> StoredMsg | None:
    headers = msg.headers or {}
    if "Status" in headers:
        return None
    return StoredMsg(
        subject=headers.get("Nats-Subject", ""),
        seq=int(headers.get("Nats-Sequence", "0")),
        data=msg.data,
        time_ns=_parse_rfc3339_ns(headers.get("Nats-Time-Stamp", "")),
        headers=dict(headers),
    )


def _parse_rfc3339_ns(value: str) -> int:
    """Nanoseconds since the epoch from a JetStream RFC 3339 timestamp with up to 9 fractional digits."""
    if not value:
        return 0
    from datetime import datetime  # noqa: PLC0415 - only on the read path

    main, _, frac = value.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(main + "+00:00").timestamp())
    nanos = int((frac + "000000000")[:9]) if frac else 0
    return seconds * NANOS + nanos


class Reads(NatsApi):
    """Direct reads of stored messages (no consumer), one or many per request."""

    async def deliveries_of(self, distribution_id: str, lane: Lane | None = None) -> list[StoredMsg]:
        """The stored deliveries of an envelope, looked for in its lane's stream (both when the lane is unknown)."""
        return await find_deliveries(self, distribution_id, lane)

    async def last_by_subject(self, subject: str, stream: str = "") -> StoredMsg | None:
        """The last message on subject (direct get), or None."""
        return await self._direct_get({"last_by_subj": subject}, stream)

    async def next_by_subject(self, subject_filter: str, start_seq: int, stream: str = "") -> StoredMsg | None:
        """The first message matching the filter at or after start_seq (direct get), or None."""
        return await self._direct_get({"seq": start_seq, "next_by_subj": subject_filter}, stream)

    async def next_by_subject_since(self, subject_filter: str, time_ns: int, stream: str = "") -> StoredMsg | None:
        """The first message matching the filter stored at or after time_ns (direct get), or None."""
        start = datetime.fromtimestamp(time_ns // NANOS, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        body = {"start_time": f"{start}.{time_ns % NANOS:09d}Z", "next_by_subj": subject_filter}
        return await self._direct_get(body, stream)

    async def _direct_get(self, body: dict[str, Any], stream: str = "") -> StoredMsg | None:
        return (await self._direct_get_status(body, stream))[0]

    async def _direct_get_status(self, body: dict[str, Any], stream: str = "") -> tuple[StoredMsg | None, str]:
        """The first message a direct get answers, or None and the status it answered instead ("404": none)."""
        try:
            msg = await self.nc.request(
                f"{self._api}.DIRECT.GET.{stream or self.cfg.stream}", json.dumps(body).encode(), timeout=5
            )
        except (TimeoutError, NatsError, OSError) as exc:
            raise StoreUnavailable(f"direct get failed: {type(exc).__name__}") from exc
        stored = _stored(msg)
        return stored, "" if stored is not None else (msg.headers or {}).get("Status", "")

    async def last_per_subject(self, subject_filter: str, limit: int = 1000, stream: str = "") -> list[StoredMsg]:
        """The last message of every subject matching the filter (batched direct get)."""
        return await self._direct_batch({"multi_last": [subject_filter], "batch": limit}, limit, stream)

    async def last_of_each(self, subjects: Sequence[str], stream: str = "") -> list[StoredMsg]:
        """The last message of each of these subjects that has one (batched direct get; at most 1,000 subjects)."""
        if len(subjects) > 1000:
            raise ValueError("at most 1,000 subjects per read (nats-server answers more results with status 413)")
        if not subjects:
            return []
        return await self._direct_batch({"multi_last": list(subjects), "batch": len(subjects)}, len(subjects), stream)

    async def read_range(self, stream: str, start_seq: int, limit: int = 1000) -> list[StoredMsg]:
        """Up to limit stored messages of a stream from start_seq on, in order (batched direct get)."""
        return await self._direct_batch({"seq": start_seq, "batch": limit}, limit, stream)

    async def read_matching(self, stream: str, subject_filter: str, start_seq: int, limit: int) -> list[StoredMsg]:
        """Up to limit messages of a stream matching the filter, from start_seq on, in order (batched direct get)."""
        body = {"seq": start_seq, "next_by_subj": subject_filter, "batch": limit}
        return await self._direct_batch(body, limit, stream)

    async def read_through(
        self, stream: str, start_seq: int, last_seq: int, max_messages: int | None = None
    ) -> list[StoredMsg]:
        """The stored messages of a stream from start_seq to last_seq, in order (at most max_messages)."""
        out: list[StoredMsg] = []
        start = start_seq
        while start <= last_seq and (max_messages is None or len(out) < max_messages):
            batch = await self.read_range(stream, start, 1000)
            if not batch:
                break
            out.extend(m for m in batch if m.seq <= last_seq)
            start = batch[-1].seq + 1
        return out

    async def _direct_batch(self, body: dict[str, Any], limit: int, stream: str = "") -> list[StoredMsg]:
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        out: list[StoredMsg] = []
        try:
            await self.nc.publish(
                f"{self._api}.DIRECT.GET.{stream or self.cfg.stream}", json.dumps(body).encode(), reply=inbox
            )
            # Each answer within 5 s, and the whole batch within a deadline of its own: a server
            # trickling answers cannot hold the caller for (limit + 1) x 5 s.
            async with asyncio.timeout(DIRECT_BATCH_DEADLINE):
                for _ in range(limit + 1):
                    msg = await sub.next_msg(timeout=5)
                    stored = _stored(msg)
                    if stored is None:
                        break
                    out.append(stored)
        except (TimeoutError, NatsError, OSError) as exc:
            raise StoreUnavailable(f"direct get failed: {type(exc).__name__}") from exc
        finally:
            await sub.unsubscribe()
        return out

    async def claimed(self, filters: Sequence[str]) -> set[str]:
        """The subject filters that some stored delivery matches, in either lane's stream.

        The committer asks this of every batch's claims (broker.publish.committer) before writing it: one
        request per stream says whether any filter matches (the common answer: none); only then
        is each filter asked about on its own.
        """
        wanted = list(dict.fromkeys(filters))
        found = await asyncio.gather(*(self._claimed_in(wanted, self.stream_of(lane)) for lane in Lane))
        return set().union(*found)

    async def _claimed_in(self, filters: list[str], stream: str) -> set[str]:
        """claimed() in one stream."""
        first, status = await self._direct_get_status({"multi_last": filters, "batch": 1}, stream)
        if first is None and status == "404":
            return set()
        if first is None and status != TOO_MANY_RESULTS:
            raise StoreUnavailable(f"claim lookup in {stream} answered status {status}")
        if len(filters) == 1:
            return set(filters)
        taken = await asyncio.gather(*(self._direct_get({"last_by_subj": f}, stream) for f in filters))
        return {f for f, message in zip(filters, taken, strict=True) if message is not None}

    async def follow(
        self, subject_filter: str, on_message: Callable[[str, bytes], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """Call on_message(subject, data) for every message published on the filter (core NATS, not stored replay).

        Returns the function that stops following.
        """

        async def deliver(msg: Msg) -> None:
            await on_message(msg.subject, msg.data)

        try:
            sub = await self.nc.subscribe(subject_filter, cb=deliver)
        except (NatsError, OSError) as exc:
            raise StoreUnavailable(f"cannot subscribe: {type(exc).__name__}") from exc

        async def stop() -> None:
            try:
                await sub.unsubscribe()
            except (NatsError, OSError):
                log.warning("unsubscribe_failed")

        return stop
