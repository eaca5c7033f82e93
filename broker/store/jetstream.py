"""JetStream access for the hub: the stream, atomic batch commits, direct reads, and per-agency pull consumers.

Everything here speaks the JetStream JSON API directly over a nats-py connection, so that the
hub uses the server features it relies on (atomic batches, nats-server 2.12; consumer reset,
2.14) without waiting for client support. nats errors become broker.errors exceptions here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from broker.config import NatsConfig
from broker.errors import ServerUnreachable, StoreFull, StoreUnavailable
from broker.lanes import Lane
from broker.ops.logging import get_logger
from broker.store.layout import Layout
from broker.store.model import (
    AlreadyStored,
    BatchAck,
    ConnectionLost,
    ConsumerGone,
    ConsumerReset,
    ConsumerState,
    DuplicateInBatch,
    OutMsg,
    Pulled,
    StoredMsg,
    WrongLastSequence,
)

log = get_logger(__name__)

_NS = 1_000_000_000
# JetStream error codes the hub acts on (nats-server errors.json).
ERR_WRONG_LAST_SEQUENCE = 10071
ERR_WRONG_LAST_MSG_ID = 10070
ERR_BATCH_DUPLICATE_MSG_ID = 10201
ERR_STREAM_NOT_FOUND = 10059
ERR_CONSUMER_NOT_FOUND = 10014
ERR_STREAM_NAME_IN_USE = 10058
ERR_CONSUMER_EXISTS = 10148
ERR_CONSUMER_EXISTS_OLD = 10013
_FULL_CODES = frozenset({10047, 10027, 10028})  # storage resources exceeded, max bytes, max msgs
# A batched direct get of the last message per subject matching more subjects than nats-server
# returns at once (1,024 in 2.15) answers status 413.
_TOO_MANY_RESULTS = "413"
_MAX_PAGES = 1000  # of a paged JetStream listing (256 items a page)


def _api_error(reply: dict[str, Any]) -> tuple[int, str] | None:
    err = reply.get("error")
    if not err:
        return None
    return int(err.get("err_code", 0)), str(err.get("description", ""))


def _parse_ack_subject(reply: str) -> tuple[int, int, int, int, int]:
    """(delivered, stream seq, time ns, pending, consumer seq) of a $JS.ACK subject, old (9 tokens) or new form."""
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        base = 4
    elif len(tokens) >= 11:  # $JS.ACK.<domain>.<acc hash>.<stream>.<consumer>.<delivered>...
        base = 6
    else:
        raise ValueError("not a JetStream ack subject")
    return int(tokens[base]), int(tokens[base + 1]), int(tokens[base + 3]), int(tokens[base + 4]), int(tokens[base + 2])


def check_sync_always(monitor_url: str, timeout: float = 5.0) -> bool:
    """True if the nats-server behind monitor_url runs JetStream with sync_interval: always (reads /varz)."""
    url = monitor_url.rstrip("/") + "/varz"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) monitoring URL: {monitor_url}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked above
        varz = json.load(response)
    return bool(varz.get("jetstream", {}).get("config", {}).get("sync_always"))


class JetStream:
    """The hub's connection to JetStream and its one stream."""

    def __init__(self, cfg: NatsConfig, nc: Client, events: _ConnectionEvents) -> None:
        """Use an open connection; see connect()."""
        self.cfg = cfg
        self.nc = nc
        self.layout = Layout(cfg.subject_prefix)
        self._api = "$JS.API"
        self._events = events
        events.pullers = set()

    @classmethod
    async def connect(cls, cfg: NatsConfig, name: str = "opsroom-hub") -> JetStream:
        """Connect to the configured servers, reconnecting for as long as the hub runs afterwards.

        At first it tries for cfg.connect_timeout at most: a warning naming each server that does
        not answer, each attempt; then ServerUnreachable naming them all.
        """
        events = _ConnectionEvents(cfg.servers)
        tls: ssl.SSLContext | None = None
        if cfg.tls is not None:
            tls = ssl.create_default_context(cafile=str(cfg.tls.ca_file))
            tls.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.connect_timeout.total_seconds()
        await _reach_one(cfg, deadline)
        options: dict[str, Any] = {  # nats-py types reconnect_time_wait as int; it takes seconds as a float
            "servers": list(cfg.servers),
            "name": name,
            "tls": tls,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            "allow_reconnect": True,
            "pending_size": 64 * 1024 * 1024,
            "error_cb": events.on_error,
            "disconnected_cb": events.on_disconnected,
            "reconnected_cb": events.on_reconnected,
        }
        nc = Client()
        try:
            # nats-py tries the servers in turn until one answers: bounded by what is left of the wait.
            async with asyncio.timeout(max(deadline - loop.time(), _LAST_TRY)):
                await nc.connect(**options)
        except (TimeoutError, OSError, NatsError) as exc:
            events.closing = True
            with contextlib.suppress(Exception):
                await nc.close()
            raise _unreachable(cfg) from exc
        return cls(cfg, nc, events)

    @property
    def connected(self) -> bool:
        """Whether the connection to NATS is up now (False while it reconnects, and once closed)."""
        return bool(self.nc.is_connected)

    def on_connection_change(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call listener (on the event loop) after the connection drops and after it comes back; not while closing."""
        self._events.listeners.append(listener)

    async def close(self) -> None:
        """Flush and close the connection."""
        self._events.closing = True
        try:
            await self.nc.drain()
        except (TimeoutError, NatsError, OSError):
            await self.nc.close()

    # -- JSON API --------------------------------------------------------------------------

    async def api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A JetStream API request; returns the decoded reply (which may hold an "error")."""
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            msg = await self.nc.request(f"{self._api}.{subject}", payload, timeout=5.0)
        except (TimeoutError, NatsError, OSError) as exc:
            raise StoreUnavailable(
                f"JetStream API {subject.split('.', maxsplit=1)[0]} failed: {type(exc).__name__}"
            ) from exc
        reply: dict[str, Any] = json.loads(msg.data)
        return reply

    def stream_of(self, lane: Lane) -> str:
        """The stream holding a lane's deliveries: the main stream (urgent) or <stream>_BULK."""
        return self.cfg.stream if lane is Lane.URGENT else f"{self.cfg.stream}_BULK"

    def stream_config(self, lane: Lane = Lane.URGENT) -> dict[str, Any]:
        """The configuration of a lane's stream as the hub wants it (the urgent lane's is the main stream)."""
        c = self.cfg
        return {
            "name": self.stream_of(lane),
            "subjects": self.layout.stream_subjects if lane is Lane.URGENT else self.layout.bulk_stream_subjects,
            "retention": "limits",
            "storage": "file",
            "num_replicas": c.replicas,
            "duplicate_window": int(c.duplicate_window.total_seconds() * _NS),
            "max_age": int(c.max_age.total_seconds() * _NS),
            "max_bytes": c.max_bytes,
            # A full stream refuses new envelopes (STORE_FULL) rather than dropping undelivered ones.
            "discard": "new",
            "allow_atomic": True,
            "allow_direct": True,
        }

    @property
    def audit_stream(self) -> str:
        """Name of the audit stream."""
        return f"{self.cfg.stream}_AUDIT"

    def audit_stream_config(self, duplicate_window_seconds: float) -> dict[str, Any]:
        """The audit stream: every entry kept until the retention purge; deleting one message is refused."""
        return {
            "name": self.audit_stream,
            "subjects": [self.layout.audit_subject],
            "retention": "limits",
            "storage": "file",
            "num_replicas": self.cfg.replicas,
            "duplicate_window": int(duplicate_window_seconds * _NS),
            "max_age": 0,
            "discard": "new",
            "deny_delete": True,
            "allow_atomic": True,
            "allow_direct": True,
        }

    async def ensure_stream(self, audit_duplicate_window: float | None = None) -> dict[str, Any]:
        """Create the streams (the audit one too when a window is given) or update them; returns the main one's."""
        reply = await self._ensure(self.cfg.stream, self.stream_config())
        await self._ensure(self.stream_of(Lane.BULK), self.stream_config(Lane.BULK))
        if audit_duplicate_window is not None:
            await self._ensure(self.audit_stream, self.audit_stream_config(audit_duplicate_window))
        return reply

    async def _ensure(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        reply = await self.api(f"STREAM.CREATE.{name}", config)
        err = _api_error(reply)
        if err is not None and err[0] == ERR_STREAM_NAME_IN_USE:
            reply = await self.api(f"STREAM.UPDATE.{name}", config)
            err = _api_error(reply)
        if err is not None:
            raise StoreUnavailable(f"cannot create or update stream {name}: {err[1]} ({err[0]})")
        log.info("stream_ready", stream=name)
        return reply

    async def stream_state(self, stream: str) -> dict[str, Any]:
        """The stream's state (first_seq, last_seq, messages, ...)."""
        reply = await self.api(f"STREAM.INFO.{stream}")
        err = _api_error(reply)
        if err is not None:
            raise StoreUnavailable(f"cannot read stream {stream}: {err[1]} ({err[0]})")
        state: dict[str, Any] = reply.get("state", {})
        return state

    async def purge_before(self, stream: str, seq: int) -> int:
        """Remove every message of the stream before seq; returns how many were removed."""
        reply = await self.api(f"STREAM.PURGE.{stream}", {"seq": seq})
        err = _api_error(reply)
        if err is not None:
            raise StoreUnavailable(f"cannot purge stream {stream}: {err[1]} ({err[0]})")
        return int(reply.get("purged", 0))

    async def verify_sync_always(self) -> None:
        """Refuse to run unless every configured monitoring endpoint reports sync_always."""
        for url in self.cfg.monitor_urls:
            try:
                ok = await asyncio.to_thread(check_sync_always, url)
            except (OSError, ValueError) as exc:
                raise StoreUnavailable(f"cannot read {url}/varz to check sync_always: {exc}") from exc
            if not ok:
                raise StoreUnavailable(
                    f"the nats-server at {url} does not run with jetstream sync_interval: always; "
                    "acknowledged events could be lost on power failure"
                )
            log.info("sync_always_verified", url=url)

    # -- writes ----------------------------------------------------------------------------

    async def commit(self, msgs: Sequence[OutMsg]) -> BatchAck:
        """Store msgs as one atomic batch (all or none, one fsync).

        Raises DuplicateInBatch, StoreFull or StoreUnavailable.
        """
        if not msgs:
            raise ValueError("empty batch")
        batch_id = uuid.uuid4().hex
        last = len(msgs)
        publish = self.nc.publish
        try:
            for i, m in enumerate(msgs[:-1], start=1):
                await publish(
                    m.subject,
                    m.payload,
                    headers={**m.headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)},
                )
            tail = msgs[-1]
            headers = {
                **tail.headers,
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(last),
                "Nats-Batch-Commit": "1",
            }
            reply = await self._write(tail.subject, tail.payload, headers)
        except (TimeoutError, NatsError, OSError) as exc:
            raise StoreUnavailable(f"JetStream did not confirm the batch: {type(exc).__name__}") from exc
        ack = self._pub_ack(reply.data, "the batch")
        return BatchAck(int(ack["seq"]), int(ack.get("count", last)))

    async def publish_each(self, msgs: Sequence[OutMsg]) -> list[int | Exception]:
        """Store msgs one by one, pipelined on the connection (the server keeps their order).

        One fsync per message, no batch overhead: cheaper than an atomic batch for a few
        messages. Returns, per message, its new stream sequence, DuplicateInBatch when it was
        stored before (repeated message id, or an expected-absent subject that exists), or the
        error.
        """
        replies = await asyncio.gather(
            *(self._write(m.subject, m.payload, m.headers) for m in msgs),
            return_exceptions=True,
        )
        out: list[int | Exception] = []
        for reply in replies:
            if isinstance(reply, BaseException):
                if not isinstance(reply, (TimeoutError, NatsError, OSError)):
                    raise reply
                out.append(StoreUnavailable(f"JetStream did not confirm a write: {type(reply).__name__}"))
                continue
            try:
                out.append(int(self._pub_ack(reply.data, "a write")["seq"]))
            except (DuplicateInBatch, StoreFull, StoreUnavailable) as exc:
                out.append(exc)
        return out

    async def _write(self, subject: str, payload: bytes, headers: dict[str, str]) -> Msg:
        """A write's request, awaited until its answer, the commit timeout, or the loss of the connection.

        A write in flight when the connection drops is never answered (the reply had nowhere to
        go): it fails at once with ConnectionLost rather than after the commit timeout. It may
        have been stored; a retry with the same message ids finds out.
        """
        request = asyncio.ensure_future(
            self.nc.request(subject, payload, timeout=self.cfg.commit_timeout.total_seconds(), headers=headers)
        )
        writes = self._events.writes
        writes.add(request)
        try:
            return await request
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller is being cancelled
            # Only the request was cancelled: the connection dropped (on_disconnected).
            raise ConnectionLost("the connection to nats-server dropped with this write in flight") from None
        finally:
            writes.discard(request)

    def _pub_ack(self, data: bytes, what: str) -> dict[str, Any]:
        ack: dict[str, Any] = json.loads(data) if data else {}
        err = _api_error(ack)
        if err is not None:
            code, description = err
            if code in (ERR_WRONG_LAST_SEQUENCE, ERR_WRONG_LAST_MSG_ID):
                raise WrongLastSequence(description)
            if code == ERR_BATCH_DUPLICATE_MSG_ID:
                raise AlreadyStored(description)
            if code in _FULL_CODES or "maximum" in description:
                raise StoreFull(f"stream {self.cfg.stream} refused {what}: {description}")
            raise StoreUnavailable(f"stream {self.cfg.stream} refused {what}: {description} ({code})")
        if "seq" not in ack:
            raise StoreUnavailable(f"JetStream answered {what} without a sequence")
        if ack.get("duplicate"):
            raise AlreadyStored("message id seen within the duplicate window")
        return ack

    # -- reads -----------------------------------------------------------------------------

    async def last_by_subject(self, subject: str, stream: str = "") -> StoredMsg | None:
        """The last message on subject (direct get), or None."""
        return await self._direct_get({"last_by_subj": subject}, stream)

    async def next_by_subject(self, subject_filter: str, start_seq: int, stream: str = "") -> StoredMsg | None:
        """The first message matching the filter at or after start_seq (direct get), or None."""
        return await self._direct_get({"seq": start_seq, "next_by_subj": subject_filter}, stream)

    async def next_by_subject_since(self, subject_filter: str, time_ns: int, stream: str = "") -> StoredMsg | None:
        """The first message matching the filter stored at or after time_ns (direct get), or None."""
        start = datetime.fromtimestamp(time_ns // _NS, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        body = {"start_time": f"{start}.{time_ns % _NS:09d}Z", "next_by_subj": subject_filter}
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
        if first is None and status != _TOO_MANY_RESULTS:
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

    # -- consumers -------------------------------------------------------------------------

    def consumer_config(self, agency_id: str, lane: Lane) -> dict[str, Any]:
        """The durable consumer of an agency's deliveries on one lane."""
        return {
            "durable_name": self.layout.consumer_name(agency_id, lane),
            "filter_subject": self.layout.deliveries_of_agency(agency_id, lane),
            "deliver_policy": "all",
            # Acknowledging a delivery acknowledges all before it: the room's client acknowledges
            # in order, and the ack floor is exactly "where it acked" for the next session.
            "ack_policy": "all",
            "ack_wait": int(self.cfg.ack_wait.total_seconds() * _NS),
            "max_ack_pending": self.cfg.max_ack_pending,
            "max_deliver": -1,
            "replay_policy": "instant",
            "num_replicas": 0,
        }

    async def ensure_consumer(self, agency_id: str, lane: Lane) -> None:
        """Create the agency's consumer for lane, or update it to the wanted configuration."""
        await self._create_consumer(self.stream_of(lane), self.consumer_config(agency_id, lane))

    async def _create_consumer(self, stream: str, config: dict[str, Any]) -> None:
        """Create a durable consumer, or update it to config."""
        name = config["durable_name"]
        body: dict[str, Any] = {"stream_name": stream, "config": config}
        reply = await self.api(f"CONSUMER.CREATE.{stream}.{name}", body)
        err = _api_error(reply)
        if err is not None and err[0] in (ERR_CONSUMER_EXISTS, ERR_CONSUMER_EXISTS_OLD):
            reply = await self.api(f"CONSUMER.CREATE.{stream}.{name}", {**body, "action": "update"})
            err = _api_error(reply)
        if err is not None:
            raise StoreUnavailable(f"cannot create consumer {name}: {err[1]} ({err[0]})")

    async def ack_floor(self, agency_id: str, lane: Lane) -> int:
        """Stream sequence up to which the agency's client acknowledged everything on lane (0 if no consumer)."""
        name = self.layout.consumer_name(agency_id, lane)
        reply = await self.api(f"CONSUMER.INFO.{self.stream_of(lane)}.{name}")
        err = _api_error(reply)
        if err is not None:
            if err[0] == ERR_CONSUMER_NOT_FOUND:
                return 0
            raise StoreUnavailable(f"cannot read consumer {name}: {err[1]} ({err[0]})")
        return int(reply.get("ack_floor", {}).get("stream_seq", 0))

    async def consumers(self, stream: str) -> list[ConsumerState]:
        """Every consumer of a stream, with its filter, ack floor and the messages it still holds (paged list)."""
        out: list[ConsumerState] = []
        for _ in range(_MAX_PAGES):
            reply = await self.api(f"CONSUMER.LIST.{stream}", {"offset": len(out)})
            err = _api_error(reply)
            if err is not None:
                raise StoreUnavailable(f"cannot list the consumers of {stream}: {err[1]} ({err[0]})")
            page = reply.get("consumers") or []
            out.extend(
                ConsumerState(
                    name=str(info.get("name", "")),
                    filter_subject=str(info.get("config", {}).get("filter_subject", "")),
                    ack_floor=int(info.get("ack_floor", {}).get("stream_seq", 0)),
                    waiting=int(info.get("num_pending", 0)) + int(info.get("num_ack_pending", 0)),
                )
                for info in page
            )
            if not page or len(out) >= int(reply.get("total", 0)):
                break
        return out

    async def reset_consumer(self, agency_id: str, lane: Lane) -> ConsumerReset:
        """Forget unacknowledged deliveries so the next pull starts after the ack floor; returns the backlog.

        Also the consumer sequence the reset left (nats-server 2.15 sets it to 0): the next
        message the consumer sends has one more, whoever pulled it.
        """
        name = self.layout.consumer_name(agency_id, lane)
        reply = await self.api(f"CONSUMER.RESET.{self.stream_of(lane)}.{name}")
        err = _api_error(reply)
        if err is not None:
            raise StoreUnavailable(f"cannot reset consumer {name}: {err[1]} ({err[0]})")
        backlog = int(reply.get("num_pending", 0)) + int(reply.get("num_ack_pending", 0))
        return ConsumerReset(backlog, int(reply.get("delivered", {}).get("consumer_seq", 0)))

    async def ensure_work_consumer(self, name: str, subject_filter: str, ack_wait: float = 30.0) -> None:
        """A durable consumer of the main stream shared by the replicas: each message to one, acked one by one."""
        config = {
            "durable_name": name,
            "filter_subject": subject_filter,
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": int(ack_wait * _NS),
            "max_ack_pending": self.cfg.max_ack_pending,
            "max_deliver": -1,
            "replay_policy": "instant",
            "num_replicas": 0,
        }
        await self._create_consumer(self.cfg.stream, config)

    def work_puller(self, name: str) -> Puller:
        """A continuous pull on a work consumer of the main stream."""
        puller = Puller(self, name, Lane.URGENT)  # the urgent lane's stream is the main stream
        self._events.pullers.add(puller)
        return puller

    async def nak(self, reply: str, delay: float) -> None:
        """Give a message back to its consumer, to be delivered again in delay seconds."""
        try:
            await self.nc.publish(reply, b"-NAK " + json.dumps({"delay": int(max(0.0, delay) * _NS)}).encode())
        except (NatsError, OSError) as exc:
            raise StoreUnavailable(f"cannot give back: {type(exc).__name__}") from exc

    async def ack(self, reply: str) -> None:
        """Acknowledge a delivery and, the policy being ack-all, every one before it."""
        try:
            await self.nc.publish(reply, b"+ACK")
        except (NatsError, OSError) as exc:
            raise StoreUnavailable(f"cannot acknowledge: {type(exc).__name__}") from exc

    def puller(self, agency_id: str, lane: Lane, ready: asyncio.Event | None = None) -> Puller:
        """A continuous pull on the agency's consumer for lane (told to pull again after a reconnect).

        ready, if given, is set whenever something is queued (one event may serve several pullers).
        """
        puller = Puller(self, self.layout.consumer_name(agency_id, lane), lane, ready)
        self._events.pullers.add(puller)
        return puller

    def forget(self, puller: Puller) -> None:
        """Stop telling puller about reconnects."""
        self._events.pullers.discard(puller)


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
    return seconds * _NS + nanos


class Puller:
    """Keeps pull requests outstanding on one durable consumer and queues what arrives.

    The owner asks for credits with request(n) whenever it has room; messages arrive on an
    inbox and wait in a queue no larger than the credits asked for, so memory stays bounded.
    """

    EXPIRES = 30.0
    HEARTBEAT = 5.0

    def __init__(self, js: JetStream, consumer: str, lane: Lane, ready: asyncio.Event | None = None) -> None:
        """A puller on consumer (of lane); call start() before use."""
        self.js = js
        self.consumer = consumer
        self.lane = lane
        self.ready = ready if ready is not None else asyncio.Event()
        self.queue: asyncio.Queue[Pulled | BaseException] = asyncio.Queue()
        self.outstanding = 0
        self.last_seen = time.monotonic()
        self._inbox = ""
        self._sub: Any = None

    async def start(self) -> None:
        """Subscribe to the inbox the server delivers to."""
        self._inbox = self.js.nc.new_inbox()
        self._sub = await self.js.nc.subscribe(self._inbox, cb=self._on_msg)

    async def stop(self) -> None:
        """Stop receiving; unacknowledged deliveries stay with the consumer."""
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except (NatsError, OSError):
                log.warning("pull_unsubscribe_failed", consumer=self.consumer)
            self._sub = None

    async def request(self, count: int) -> None:
        """Ask the server for up to count more messages."""
        if count <= 0:
            return
        body = {
            "batch": count,
            "expires": int(self.EXPIRES * _NS),
            "idle_heartbeat": int(self.HEARTBEAT * _NS),
        }
        try:
            await self.js.nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.js.stream_of(self.lane)}.{self.consumer}",
                json.dumps(body).encode(),
                reply=self._inbox,
            )
        except (NatsError, OSError) as exc:
            raise StoreUnavailable(f"cannot pull: {type(exc).__name__}") from exc
        self.outstanding += count

    def stalled(self) -> bool:
        """True when credits are outstanding but the server has been silent past two heartbeats."""
        return self.outstanding > 0 and time.monotonic() - self.last_seen > 2.5 * self.HEARTBEAT

    def forget_outstanding(self) -> None:
        """Treat outstanding requests as lost (after a stall), so the owner asks again."""
        self.outstanding = 0
        self.last_seen = time.monotonic()

    async def _on_msg(self, msg: Msg) -> None:
        self.last_seen = time.monotonic()
        headers = msg.headers
        if headers and "Status" in headers:
            self._on_status(headers)
            return
        try:
            delivered, seq, ts, pending, consumer_seq = _parse_ack_subject(msg.reply)
        except ValueError:
            log.warning("pull_unexpected_message", consumer=self.consumer)
            return
        self.outstanding = max(0, self.outstanding - 1)
        dist = msg.subject.rpartition(".")[2]
        self.put(Pulled(seq, delivered, ts, pending, msg.reply, dist, msg.data, headers or {}, consumer_seq))

    def put(self, item: Pulled | BaseException) -> None:
        """Queue item for the owner and wake it."""
        self.queue.put_nowait(item)
        self.ready.set()

    def _on_status(self, headers: dict[str, str]) -> None:
        status = headers.get("Status", "")
        if status == "100":  # idle heartbeat or flow control
            return
        if status in ("404", "408"):  # no messages / request expired: its credits are void
            pending = headers.get("Nats-Pending-Messages")
            self.outstanding = max(0, self.outstanding - int(pending)) if pending else 0
            return
        description = headers.get("Description", "")
        if status == "409" and ("Deleted" in description or "Leadership" in description):
            self.put(ConsumerGone(description))
            return
        # Other 409s (exceeded max waiting or max bytes) void the request.
        log.warning("pull_status", consumer=self.consumer, code=status, reason=description)
        pending = headers.get("Nats-Pending-Messages")
        self.outstanding = max(0, self.outstanding - int(pending)) if pending else 0


class Wake(Exception):
    """The connection came back: pull requests made before are lost, ask again."""


_RETRY_PAUSE = 1.0  # seconds between rounds of attempts to reach a server at start
_LAST_TRY = 1.0  # seconds the NATS handshake is given at least, once a server took a TCP connection


def _host_port(url: str) -> tuple[str, int]:
    """The host and port of a NATS server URL (nats://host:port, tls://host:port or host:port)."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"nats://{url}")
    return parts.hostname or "localhost", parts.port or 4222


def _unreachable(cfg: NatsConfig) -> ServerUnreachable:
    return ServerUnreachable(
        f"cannot reach NATS at {', '.join(cfg.servers)} within {cfg.connect_timeout.total_seconds():g} s "
        "(nats.connect_timeout_seconds): start nats-server there, or correct nats.servers"
    )


async def _reach_one(cfg: NatsConfig, deadline: float) -> None:
    """Wait until one of the servers takes a TCP connection, logging each that does not, every attempt.

    Raises ServerUnreachable at the deadline. (nats-py, left alone, retries forever and names none.)
    """
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        attempt += 1
        for url in cfg.servers:
            host, port = _host_port(url)
            try:
                async with asyncio.timeout(max(0.1, min(5.0, deadline - loop.time()))):
                    _, writer = await asyncio.open_connection(host, port)
            except (OSError, TimeoutError) as exc:
                log.warning("nats_unreachable", url=url, attempt=attempt, error_type=type(exc).__name__)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        left = deadline - loop.time()
        if left <= 0:
            log.error("nats_unreachable_giving_up", servers=list(cfg.servers), attempt=attempt)
            raise _unreachable(cfg)
        await asyncio.sleep(min(_RETRY_PAUSE, left))


class _ConnectionEvents:
    """Connection callbacks: logs, ends the writes in flight on a drop, wakes the pullers after a reconnect."""

    def __init__(self, servers: Sequence[str]) -> None:
        self.servers = list(servers)
        self.closing = False
        self.pullers: set[Puller] = set()
        self.writes: set[asyncio.Future[Any]] = set()  # write requests waiting for their answer
        self.listeners: list[Callable[[], Awaitable[None]]] = []  # told of drops and reconnections

    async def on_error(self, exc: Exception) -> None:
        if not self.closing:
            log.warning("nats_error", servers=self.servers, error_type=type(exc).__name__)

    async def on_disconnected(self) -> None:
        if not self.closing:
            log.warning("nats_disconnected", writes_in_flight=len(self.writes))
        for request in list(self.writes):
            request.cancel()
        await self._tell_listeners()

    async def on_reconnected(self) -> None:
        log.info("nats_reconnected")
        for puller in list(self.pullers):
            puller.forget_outstanding()
            puller.put(Wake())
        await self._tell_listeners()

    async def _tell_listeners(self) -> None:
        if self.closing:
            return
        for listener in list(self.listeners):
            await listener()
