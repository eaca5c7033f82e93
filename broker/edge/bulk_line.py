"""Owns BulkLine: a PublishStream's bulk envelopes begun in order by a task of their own (urgent ones go ahead)."""

from __future__ import annotations

import asyncio
import functools

from opsroom.envelope.v1 import envelope_pb2

from broker.audit.records import Caller
from broker.edge.requests import internal
from broker.errors import OpsroomError
from broker.publish.publisher import Accepted, Publisher


class BulkLine:
    """A PublishStream's bulk envelopes, begun one after the other by a task of their own, in the stream's order.

    Each bulk envelope waits its turn at the lane gate (the bulk ceiling, and urgent work first)
    before the hub works on it. Done inline by the stream's reader, that wait would hold up the
    urgent envelopes sent after it on the same stream; here the reader goes on while the line
    begins the bulk envelopes in order.
    """

    def __init__(self, publisher: Publisher, caller: Caller) -> None:
        """An idle line; its task starts with the first bulk envelope."""
        self._publisher = publisher
        self._caller = caller
        self._queue: asyncio.Queue[tuple[envelope_pb2.Envelope, bool, asyncio.Future[Accepted]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def begin(self, env: envelope_pb2.Envelope, *, resend: bool) -> asyncio.Future[Accepted]:
        """Queue env; returns its future acceptance (or refusal)."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Accepted] = loop.create_future()
        self._queue.put_nowait((env, resend, result))
        if self._task is None:
            self._task = loop.create_task(self._run(), name="publish-stream-bulk")
        return result

    async def _run(self) -> None:
        while True:
            env, resend, result = await self._queue.get()
            if result.done():
                continue
            try:
                accepted = await self._publisher.begin(env, self._caller, resend=resend)
            except OpsroomError as err:
                settle_refused(result, err)
            except Exception as exc:
                settle_refused(result, internal(exc))
            else:
                accepted.add_done_callback(functools.partial(copy_outcome, result))

    def close(self) -> None:
        """Stop the line; envelopes it has not begun are cancelled (the stream is gone)."""
        if self._task is not None:
            self._task.cancel()
        while not self._queue.empty():
            _env, _resend, result = self._queue.get_nowait()
            result.cancel()


def settle_refused(result: asyncio.Future[Accepted], err: OpsroomError) -> None:
    """Refuse result with err, unless it is settled already."""
    if not result.done():
        result.set_exception(err)


def copy_outcome(result: asyncio.Future[Accepted], done: asyncio.Future[Accepted]) -> None:
    """Give result the outcome of done (the publisher's future)."""
    if done.cancelled():
        if not result.done():
            result.cancel()
        return
    exc = done.exception()
    if result.done():
        return
    if exc is not None:
        result.set_exception(exc)
    else:
        result.set_result(done.result())
