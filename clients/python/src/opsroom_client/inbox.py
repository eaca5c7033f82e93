"""Owns Inbox: an agency's deliveries as an async iterator, acknowledgements sent in the background.

One background task owns the Connect stream: it opens the session, reconnects after failures,
queues what arrives (urgent before bulk) and writes acknowledgements and keepalives. A
redelivered envelope (same distribution id) is never handed to the application twice.
A delivery's sequence is its session's: an acknowledgement is sent on the session that
delivered it, or not at all (the next session delivers it again, and that copy is acknowledged).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from opsroom.hub.v1 import hub_pb2

from opsroom_client.errors import HubError


@dataclass
class _Seen:
    """Distribution ids already handed to the application (bounded)."""

    limit: int = 100_000
    acked: OrderedDict[str, None] = field(default_factory=OrderedDict)
    open: dict[str, tuple[int, int]] = field(default_factory=dict)  # handed over, not acked: (session, sequence)

    def remember_ack(self, distribution_id: str) -> None:
        self.open.pop(distribution_id, None)
        self.acked[distribution_id] = None
        if len(self.acked) > self.limit:
            self.acked.popitem(last=False)


class _Closed(Exception):
    """The inbox was closed."""


class Inbox:
    """An agency's deliveries as an async iterator: backlog first, in order, then live; urgent first.

    Deliveries of the urgent lane that wait in the inbox are handed over before bulk ones (plate
    reads) that arrived earlier; within a lane the order is the hub's.

    A background task owns the Connect stream: it reconnects after failures (backoff, at most
    max_reconnects consecutive failures) and queues what arrives, so a caller may put a timeout
    around iteration without disturbing the stream. A redelivered envelope (same distribution
    id) is never handed over twice; if it was already acknowledged it is acknowledged again.
    """

    def __init__(self, connect: Callable[[], Any], *, max_batch: int, window: int, max_reconnects: int) -> None:
        """Not connected until first iterated (or started); connect opens a Connect call (HubClient.connect_call)."""
        self._connect = connect
        self._max_batch = max_batch
        self._window = window
        self._max_reconnects = max_reconnects
        # (rank, arrival, session, item): urgent deliveries first, then bulk, then the end of the inbox.
        self._queue: asyncio.PriorityQueue[tuple[int, int, int, hub_pb2.Delivery | BaseException]] = (
            asyncio.PriorityQueue()
        )
        self._arrivals = itertools.count()
        self._seen = _Seen()
        self._sessions = 0  # sessions opened so far: the current one's number
        self._acks: list[tuple[int, int]] = []  # (session, sequence) to send
        self._keepalive = False
        self._ack_ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._call: Any = None
        self._closed = False
        self.session_id = ""
        self.backlog = 0  # deliveries still waiting at the hub, as of the last frame
        self.backlog_at_open = 0  # as the hub counted them when the current session opened
        self.reconnects = 0
        self.duplicates_dropped = 0
        self.heartbeats = 0  # heartbeats received from the hub (each answered with a keepalive)
        self.max_batch = max_batch  # as the hub applies them (SessionOpened), once a session opened
        self.window = window
        self.opened = asyncio.Event()

    def __aiter__(self) -> Inbox:
        """Iterate deliveries."""
        return self

    def is_closed(self) -> bool:
        """True once close() was called (a method, so that checks are never narrowed away)."""
        return self._closed

    def start(self) -> None:
        """Open the session now (iteration does it too)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="opsroom-inbox")

    async def __anext__(self) -> hub_pb2.Delivery:
        """The next new delivery (never one already handed over)."""
        self.start()
        while True:
            if self._closed and self._queue.empty():
                raise StopAsyncIteration
            _rank, _arrival, session, item = await self._queue.get()
            if isinstance(item, _Closed):
                raise StopAsyncIteration
            if isinstance(item, BaseException):
                raise item
            dist = item.envelope.distribution_id
            if dist in self._seen.acked:
                self.duplicates_dropped += 1
                self._queue_ack(session, item.sequence)
                continue
            if dist in self._seen.open:
                self.duplicates_dropped += 1
                self._seen.open[dist] = (session, item.sequence)
                continue
            self._seen.open[dist] = (session, item.sequence)
            return item

    def ack(self, delivery: hub_pb2.Delivery) -> None:
        """Acknowledge a delivery (sent in the background, batched with others)."""
        dist = delivery.envelope.distribution_id
        session, sequence = self._seen.open.get(dist, (self._sessions, delivery.sequence))
        self._seen.remember_ack(dist)
        self._queue_ack(session, sequence)

    def _put(self, item: hub_pb2.Delivery | BaseException) -> None:
        """Queue what the session received: urgent deliveries overtake bulk ones still waiting."""
        rank = (1 if item.lane == hub_pb2.LANE_BULK else 0) if isinstance(item, hub_pb2.Delivery) else 2
        self._queue.put_nowait((rank, next(self._arrivals), self._sessions, item))

    def _queue_keepalive(self) -> None:
        self._keepalive = True
        self._ack_ready.set()

    def _queue_ack(self, session: int, sequence: int) -> None:
        self._acks.append((session, sequence))
        self._ack_ready.set()

    def _take_acks(self) -> list[int]:
        """The sequences to acknowledge on the current session; those of earlier sessions are dropped.

        The hub numbers deliveries per session: an earlier session's delivery comes again on
        this one (acknowledged then, as a copy of one acknowledged already).
        """
        acks, self._acks = self._acks, []
        return [sequence for session, sequence in acks if session == self._sessions]

    async def _run(self) -> None:
        failures = 0
        try:
            while not self.is_closed():
                try:
                    await self._session()
                    failures = 0
                except HubError as error:
                    if self.is_closed():
                        return
                    if not error.retryable:  # e.g. ABORTED: another session of this agency took over
                        self._put(error)
                        return
                    failures += 1
                if self.is_closed():
                    return
                if failures > self._max_reconnects:
                    self._put(HubError(grpc.StatusCode.UNAVAILABLE, "", "too many failed reconnects"))
                    return
                self.reconnects += 1
                await asyncio.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)) * (0.5 + random.random()))  # noqa: S311
        finally:
            self._put(_Closed())

    async def _session(self) -> None:
        """One Connect stream, until it ends; raises HubError if it failed."""
        self._sessions += 1
        call = self._connect()
        self._call = call
        writer: asyncio.Task[None] | None = None
        try:
            await call.write(
                hub_pb2.ConnectRequest(open=hub_pb2.OpenSession(max_batch=self._max_batch, window=self._window))
            )
            writer = asyncio.get_running_loop().create_task(self._write_acks(call))
            if self._acks:
                self._ack_ready.set()
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                assert isinstance(response, hub_pb2.ConnectResponse)
                which = response.WhichOneof("response")
                if which == "deliveries":
                    self.backlog = response.deliveries.backlog
                    for delivery in response.deliveries.deliveries:
                        self._put(delivery)
                elif which == "heartbeat":  # say the room is alive (the hub ends silent sessions)
                    self.heartbeats += 1
                    self._queue_keepalive()
                elif which == "opened":
                    self._opened(response.opened)
        except grpc.aio.AioRpcError as exc:
            raise HubError.from_rpc_error(exc) from None
        finally:
            self.opened.clear()
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            self._call = None
            call.cancel()

    def _opened(self, opened: hub_pb2.SessionOpened) -> None:
        """The session is open: what the hub says of it."""
        self.session_id = opened.session_id
        self.backlog = self.backlog_at_open = opened.backlog
        if opened.max_batch:  # the values in effect; a hub from before it said so leaves them 0
            self.max_batch, self.window = opened.max_batch, opened.window
        self.opened.set()

    async def _write_acks(self, call: Any) -> None:
        while True:
            await self._ack_ready.wait()
            self._ack_ready.clear()
            sequences = self._take_acks()
            keepalive, self._keepalive = self._keepalive, False
            try:
                if sequences:
                    await call.write(hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=sequences)))
                elif keepalive:  # an acknowledgement says as much
                    await call.write(hub_pb2.ConnectRequest(keepalive=hub_pb2.KeepAlive()))
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError):
                return  # not sent: the next session delivers them again

    async def close(self, grace: float = 5.0) -> None:
        """Send pending acknowledgements, end the session cleanly (the hub records them) and stop."""
        if self._closed:
            return
        self._closed = True
        call, task = self._call, self._task
        if call is not None and task is not None:
            try:
                sequences = self._take_acks()
                if sequences:
                    await call.write(hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=sequences)))
                await call.done_writing()
                async with asyncio.timeout(grace):
                    await asyncio.shield(task)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError, TimeoutError, HubError):
                pass
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._put(_Closed())
