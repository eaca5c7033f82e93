"""Owns StreamPublisher: many publishes over one long-lived PublishStream, batched while earlier ones fly.

Envelopes submitted while a request is on its way travel together in the next one, so a busy
sender pays one gRPC message and one hub commit for many envelopes. Refusals with a retry delay
wait it out; transient failures are retried with the same ids, in order, on a new stream.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2

from opsroom_client.errors import HubError
from opsroom_client.retry import RetryPolicy

# Starts a PublishStream call with these requests (HubClient.publish_stream_call).
OpenStream = Callable[[AsyncIterator[hub_pb2.PublishStreamRequest]], Any]


@dataclass(eq=False)
class _Pending:
    envelope: envelope_pb2.Envelope
    future: asyncio.Future[hub_pb2.Acceptance]
    attempts: int = 0
    first_refused: float = 0.0  # loop time of its first refusal with a retry delay (0: none yet)


class StreamPublisher:
    """Publishes over one PublishStream, batching publish() calls made while earlier ones are in flight.

    Envelopes submitted while a request is on its way travel together in the next one (up to
    max_batch), so a busy sender pays one gRPC message and one hub commit for many envelopes.
    Transient failures are retried with the same ids, in order, on a new stream.
    """

    def __init__(
        self, open_stream: OpenStream, retry: Callable[[], RetryPolicy], *, max_batch: int, max_requests_in_flight: int
    ) -> None:
        """Idle until the first publish; open_stream starts a PublishStream call, retry gives the current policy."""
        self._open_stream = open_stream
        self._retry = retry
        self._max_batch = max_batch
        self._max_requests = max_requests_in_flight
        self._slots = asyncio.Semaphore(max_requests_in_flight)
        self._queue: list[_Pending] = []
        self._ready = asyncio.Event()
        self._in_flight: dict[int, list[_Pending]] = {}
        self._next_id = 0
        self._generation = 0  # of the current stream; a request generator of an older one takes nothing
        self._waiting = 0  # refused envelopes waiting out their retry delay
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def publish(self, envelope: envelope_pb2.Envelope) -> hub_pb2.Acceptance:
        """Publish envelope; raises HubError when refused or when retries are exhausted."""
        if self._closed:
            raise RuntimeError("publisher closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="opsroom-publisher")
        pending = _Pending(envelope, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._ready.set()
        return await pending.future

    async def close(self) -> None:
        """Stop after what was submitted is answered (or failed)."""
        self._closed = True
        self._ready.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delays = iter(self._retry().delays())
        while self._queue or self._in_flight or self._waiting or not self._closed:
            try:
                await self._stream()
                delays = iter(self._retry().delays())
                if self._in_flight:  # the hub ended the stream (draining) before answering these
                    self._requeue(HubError(grpc.StatusCode.UNAVAILABLE, "", "the stream ended unanswered"))
            except grpc.aio.AioRpcError as exc:
                error = HubError.from_rpc_error(exc)
                self._requeue(error)
                delay = next(delays, None)
                if delay is None or not error.stream_broken:
                    self._fail_all(error)
                    delays = iter(self._retry().delays())
                else:
                    await asyncio.sleep(error.backoff(delay))
            if self._closed and not self._queue and not self._waiting:
                return

    def _requeue(self, error: HubError) -> None:
        """Envelopes in flight on a failed stream go back to the front, in order."""
        back = [p for request in sorted(self._in_flight) for p in self._in_flight[request]]
        self._in_flight.clear()
        keep = []
        for pending in back:
            pending.attempts += 1
            if pending.attempts >= self._retry().attempts and not pending.future.done():
                pending.future.set_exception(error)
            else:
                keep.append(pending)
        self._queue[:0] = keep

    def _later(self, pending: _Pending, error: HubError) -> None:
        """Send pending again after the retry policy's delay for its attempt count, or the hub's longer one."""
        delay = error.backoff(next(itertools.islice(self._retry().delays(), max(0, pending.attempts - 1), None), 0.0))
        self._waiting += 1

        def again() -> None:
            self._waiting -= 1
            if not pending.future.done():
                self._queue.insert(0, pending)
            self._ready.set()

        asyncio.get_running_loop().call_later(delay, again)

    def _fail_all(self, error: HubError) -> None:
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(error)
        self._queue.clear()

    async def _requests(self, generation: int, slots: asyncio.Semaphore) -> AsyncIterator[hub_pb2.PublishStreamRequest]:
        """The requests of one stream; ends as soon as that stream is no longer the current one."""
        while generation == self._generation:
            while not self._queue:
                if (self._closed and not self._waiting) or generation != self._generation:
                    return
                self._ready.clear()
                await self._ready.wait()
            await slots.acquire()
            if generation != self._generation or not self._queue:
                slots.release()
                continue
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            self._next_id += 1
            self._in_flight[self._next_id] = batch
            yield hub_pb2.PublishStreamRequest(
                request_id=self._next_id,
                envelopes=[p.envelope for p in batch],
                resent=[i for i, p in enumerate(batch) if p.attempts],
            )

    async def _stream(self) -> None:
        self._generation += 1
        self._slots = asyncio.Semaphore(self._max_requests)
        call = self._open_stream(self._requests(self._generation, self._slots))
        try:
            await self._answers(call)
        finally:
            self._generation += 1  # the call's request generator stops taking envelopes
            self._ready.set()
            call.cancel()

    async def _answers(self, call: Any) -> None:
        async for response in call:
            batch = self._in_flight.pop(response.request_id, [])
            self._slots.release()
            retry: list[tuple[_Pending, HubError]] = []
            for pending, result in zip(batch, response.results, strict=False):
                if pending.future.done():
                    continue
                if result.WhichOneof("result") == "acceptance":
                    pending.future.set_result(result.acceptance)
                    continue
                error = HubError.from_status(result.error)
                pending.attempts += 1
                now = asyncio.get_running_loop().time()
                if error.retry_after is not None:
                    pending.first_refused = pending.first_refused or now
                    if self._retry().patient(pending.first_refused, now):
                        pending.attempts -= 1  # "come back later": not an attempt, within the patience
                if error.retryable and pending.attempts < self._retry().attempts:
                    retry.append((pending, error))
                else:
                    pending.future.set_exception(error)
            for pending, error in retry:  # each after its delay, at the front of the queue again
                self._later(pending, error)
            if self._closed and not self._queue and not self._in_flight and not self._waiting:
                call.cancel()
                return
