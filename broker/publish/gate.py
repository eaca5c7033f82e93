"""Owns LaneGate: urgent first at the hub's door, and the bulk lane's ceiling (the lanes: broker/lanes.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class LaneGate:
    """Urgent first at the hub's door: bulk envelopes wait while urgent ones are being accepted.

    The hub is one event loop; a flood of bulk envelopes keeps it busy validating, routing and
    writing, and an urgent envelope arriving meanwhile would queue behind that work. Each bulk
    envelope therefore takes its turn (bulk_turn) before the hub works on it: it yields to
    whatever else is ready, waits while any urgent envelope is between arrival and acceptance,
    and, with a ceiling set, keeps the bulk lane under bulk_per_second so that the hub keeps
    room for urgent traffic. Waiting bulk envelopes count as in flight (broker/edge/admission.py):
    past the hub's bounds, further ones are refused at once with HUB_OVERLOADED and a retry
    delay (on this lane, at least the time the ceiling needs to let the waiting ones through);
    each call that reaches the hub is answered, none is reset or dropped unanswered. A
    PublishStream's bulk envelopes wait in a line of their own (broker/edge/servicer.py), so the urgent
    envelopes sent after them on the same stream go ahead.
    """

    def __init__(self, bulk_per_second: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        """A gate; bulk_per_second of 0 sets no ceiling."""
        self._interval = 1.0 / bulk_per_second if bulk_per_second > 0 else 0.0
        self._clock = clock
        self._next = 0.0
        self._urgent = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def urgent_in_flight(self) -> int:
        """Urgent envelopes being accepted now."""
        return self._urgent

    def urgent_started(self, done: asyncio.Future[Any]) -> None:
        """An urgent envelope entered; it counts until done resolves."""
        self._urgent += 1
        self._idle.clear()
        done.add_done_callback(self._urgent_finished)

    def _urgent_finished(self, _done: object) -> None:
        self._urgent -= 1
        if self._urgent == 0:
            self._idle.set()

    async def bulk_turn(self) -> None:
        """Return when a bulk envelope may be worked on."""
        await asyncio.sleep(0)
        for _ in range(10_000):  # bounded: each round waits for urgent work to end or for the ceiling
            if self._urgent:
                await self._idle.wait()
                continue
            if self._interval:
                now = self._clock()
                wait = self._next - now
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                self._next = max(self._next, now - 10 * self._interval) + self._interval
            return
