"""Owns the hub's NATS connection as the transport's parts share it: the JetStream API call, error codes, events.

NatsApi is the base of the transport (broker/store/jetstream.py): the connection, the JSON API
request, the stream of each lane, and the listeners told when the connection drops or returns.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from nats.aio.client import Client
from nats.errors import Error as NatsError

from broker.config import NatsConfig
from broker.errors import StoreUnavailable
from broker.lanes import Lane
from broker.ops.logging import get_logger
from broker.store.layout import Layout
from broker.store.model import Pulled, Wake

log = get_logger(__name__)

NANOS = 1_000_000_000

# JetStream error codes the hub acts on (nats-server errors.json).
ERR_WRONG_LAST_SEQUENCE = 10071

ERR_WRONG_LAST_MSG_ID = 10070

ERR_BATCH_DUPLICATE_MSG_ID = 10201

ERR_STREAM_NOT_FOUND = 10059

ERR_CONSUMER_NOT_FOUND = 10014

ERR_STREAM_NAME_IN_USE = 10058

ERR_CONSUMER_EXISTS = 10148

ERR_CONSUMER_EXISTS_OLD = 10013

FULL_CODES = frozenset({10047, 10027, 10028})  # storage resources exceeded, max bytes, max msgs


def api_error(reply: dict[str, Any]) -> tuple[int, str] | None:
    """The JetStream API error of a reply (err_code, description), or None if it succeeded."""
    err = reply.get("error")
    if not err:
        return None
    return int(err.get("err_code", 0)), str(err.get("description", ""))


class Waiting(Protocol):
    """A puller, as the connection events see it: told to ask again after a reconnection."""

    def forget_outstanding(self) -> None:
        """Treat outstanding pull requests as lost."""
        ...

    def put(self, item: Pulled | BaseException) -> None:
        """Queue item (here: Wake) for the puller's owner."""
        ...


class ConnectionEvents:
    """Connection callbacks: logs, ends the writes in flight on a drop, wakes the pullers after a reconnect."""

    def __init__(self, servers: Sequence[str]) -> None:
        """Events of a connection to servers (named in the log lines)."""
        self.servers = list(servers)
        self.closing = False
        self.last_error = ""  # the last error nats-py reported (an authorization violation at connect, say)
        self.pullers: set[Waiting] = set()
        self.writes: set[asyncio.Future[Any]] = set()  # write requests waiting for their answer
        self.listeners: list[Callable[[], Awaitable[None]]] = []  # told of drops and reconnections

    async def on_error(self, exc: Exception) -> None:
        """nats-py's error callback: logged (type only), unless closing."""
        self.last_error = str(exc)[:200]
        if not self.closing:
            log.warning("nats_error", servers=self.servers, error_type=type(exc).__name__)

    async def on_disconnected(self) -> None:
        """The connection dropped: writes waiting for an answer fail now; listeners are told."""
        if not self.closing:
            log.warning("nats_disconnected", writes_in_flight=len(self.writes))
        for request in list(self.writes):
            request.cancel()
        await self._tell_listeners()

    async def on_reconnected(self) -> None:
        """The connection is back: pullers ask again (their requests were lost); listeners are told."""
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


class NatsApi:
    """The connection and the JetStream JSON API; the transport's reads, consumers and writes build on it."""

    def __init__(self, cfg: NatsConfig, nc: Client, events: ConnectionEvents) -> None:
        """Use an open connection; see connect()."""
        self.cfg = cfg
        self.nc = nc
        self.layout = Layout(cfg.subject_prefix)
        self._api = "$JS.API"
        self._events = events
        events.pullers = set()

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
