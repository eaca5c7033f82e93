"""JetStream access for the hub: the stream, atomic batch commits, direct reads, and per-agency pull consumers.

JetStream is made of its parts: NatsApi (broker/store/nats_api.py: the connection, the JSON
API, connection events), Reads (reads.py: direct gets), Consumers (consumers.py: the rooms'
pull consumers, the Puller); this module adds connecting, the streams and the writes.
Everything here speaks the JetStream JSON API directly over a nats-py connection, so that the
hub uses the server features it relies on (atomic batches, nats-server 2.12; consumer reset,
2.14) without waiting for client support. nats errors become broker.errors exceptions here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from broker.config import NatsConfig
from broker.errors import ServerUnreachable, StoreFull, StoreUnavailable
from broker.lanes import Lane
from broker.ops.logging import get_logger
from broker.store.consumers import Consumers
from broker.store.model import (
    AlreadyStored,
    BatchAck,
    ConnectionLost,
    DuplicateInBatch,
    OutMsg,
    WrongLastSequence,
)
from broker.store.nats_api import (
    ERR_BATCH_DUPLICATE_MSG_ID,
    ERR_STREAM_NAME_IN_USE,
    ERR_WRONG_LAST_MSG_ID,
    ERR_WRONG_LAST_SEQUENCE,
    FULL_CODES,
    NANOS,
    ConnectionEvents,
    api_error,
)
from broker.store.nats_client import HubClient
from broker.store.reads import Reads

log = get_logger(__name__)


__all__ = ["JetStream", "check_sync_always"]


def check_sync_always(monitor_url: str, timeout: float = 5.0) -> bool:
    """True if the nats-server behind monitor_url runs JetStream with sync_interval: always (reads /varz)."""
    url = monitor_url.rstrip("/") + "/varz"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) monitoring URL: {monitor_url}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked above
        varz = json.load(response)
    return bool(varz.get("jetstream", {}).get("config", {}).get("sync_always"))


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


class JetStream(Reads, Consumers):
    """The hub's connection to JetStream and its one stream."""

    @classmethod
    async def connect(cls, cfg: NatsConfig, name: str = "opsroom-hub") -> JetStream:
        """Connect to the configured servers, reconnecting for as long as the hub runs afterwards.

        At first it tries for cfg.connect_timeout at most: a warning naming each server that does
        not answer, each attempt; then ServerUnreachable naming them all.
        """
        events = ConnectionEvents(cfg.servers)
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
        if cfg.user and cfg.password_file is not None:  # the hub's own NATS user (docs/security.md#transport)
            try:
                options["user"] = cfg.user
                options["password"] = cfg.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ServerUnreachable(f"cannot read nats.password_file {cfg.password_file}: {exc.strerror}") from exc
        nc = HubClient()
        try:
            # nats-py tries the servers in turn until one answers: bounded by what is left of the wait.
            async with asyncio.timeout(max(deadline - loop.time(), _LAST_TRY)):
                await nc.connect(**options)
        except (TimeoutError, OSError, NatsError) as exc:
            events.closing = True
            with contextlib.suppress(Exception):
                await nc.close()
            if "authorization" in str(exc).lower() or "authorization" in events.last_error.lower():
                raise ServerUnreachable(
                    f"NATS at {', '.join(cfg.servers)} refused the hub's credentials: check nats.user and "
                    "nats.password_file against nats-server's authorization"
                ) from exc
            raise _unreachable(cfg) from exc
        return cls(cfg, nc, events)

    def stream_config(self, lane: Lane = Lane.URGENT) -> dict[str, Any]:
        """The configuration of a lane's stream as the hub wants it (the urgent lane's is the main stream)."""
        c = self.cfg
        return {
            "name": self.stream_of(lane),
            "subjects": self.layout.stream_subjects if lane is Lane.URGENT else self.layout.bulk_stream_subjects,
            "retention": "limits",
            "storage": "file",
            "num_replicas": c.replicas,
            "duplicate_window": int(c.duplicate_window.total_seconds() * NANOS),
            "max_age": int(c.max_age.total_seconds() * NANOS),
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
            "duplicate_window": int(duplicate_window_seconds * NANOS),
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
        err = api_error(reply)
        if err is not None and err[0] == ERR_STREAM_NAME_IN_USE:
            reply = await self.api(f"STREAM.UPDATE.{name}", config)
            err = api_error(reply)
        if err is not None:
            raise StoreUnavailable(f"cannot create or update stream {name}: {err[1]} ({err[0]})")
        log.info("stream_ready", stream=name)
        return reply

    async def stream_state(self, stream: str) -> dict[str, Any]:
        """The stream's state (first_seq, last_seq, messages, ...)."""
        reply = await self.api(f"STREAM.INFO.{stream}")
        err = api_error(reply)
        if err is not None:
            raise StoreUnavailable(f"cannot read stream {stream}: {err[1]} ({err[0]})")
        state: dict[str, Any] = reply.get("state", {})
        return state

    async def purge_before(self, stream: str, seq: int) -> int:
        """Remove every message of the stream before seq; returns how many were removed."""
        reply = await self.api(f"STREAM.PURGE.{stream}", {"seq": seq})
        err = api_error(reply)
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
        err = api_error(ack)
        if err is not None:
            code, description = err
            if code in (ERR_WRONG_LAST_SEQUENCE, ERR_WRONG_LAST_MSG_ID):
                raise WrongLastSequence(description)
            if code == ERR_BATCH_DUPLICATE_MSG_ID:
                raise AlreadyStored(description)
            if code in FULL_CODES or "maximum" in description:
                raise StoreFull(f"stream {self.cfg.stream} refused {what}: {description}")
            raise StoreUnavailable(f"stream {self.cfg.stream} refused {what}: {description} ({code})")
        if "seq" not in ack:
            raise StoreUnavailable(f"JetStream answered {what} without a sequence")
        if ack.get("duplicate"):
            raise AlreadyStored("message id seen within the duplicate window")
        return ack
