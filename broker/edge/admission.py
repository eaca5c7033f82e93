"""Admission of publishes: the bounds on envelopes in flight, checked before any other work, and the refusals' log.

An envelope is in flight from the moment the hub takes it (once the caller's identity is known,
before validation and routing) until it is answered. Each lane has a bound for all agencies
together and one for each agency, so that bulk traffic waiting at the lane gate never crowds
out urgent traffic, and one agency cannot take the whole hub. An envelope over a bound is
refused at once with HUB_OVERLOADED and a retry delay: nothing queues in the hub beyond the
bounds. The refusal costs a few counters and a status; it is logged once a second per agency
and lane with the count, never once per envelope (a flood would flood the log).

Per-agency limits beside the bounds (docs/architecture.md#per-agency-limits): each connection (as
gRPC names its peer) has a bound of its own on each lane, so that one integration of an agency
cannot take the agency's whole room; and each agency has a publish rate per lane (a token bucket
on the hub's one clock, broker/edge/limits.py): an envelope over it is refused with
AGENCY_RATE_LIMITED and a retry delay saying when the bucket will hold a token again. Refusals
of either kind cost the same as an overload refusal and are logged the same way.

Those refusals are for unary Publish calls. A PublishStream over its agency's own limits (the
agency's or the connection's bound, the agency's rate) is slowed, not refused (wait_enter): its
reader waits for room before it takes the next envelope and reads nothing meanwhile, so HTTP/2
flow control holds the rest of the flood in the sender's own transport, where it costs the hub
nothing; reading and refusing each envelope would keep the one event loop busy with refusals.
Only the hub-wide bound refuses a stream's envelope (scope hub). Waits are logged once a second
per agency, lane and scope with their count (publish_streams_slowed).

Bounds on calls (as opposed to envelopes) are the transport's: each connection may have at most
`hub.max_calls_per_connection` calls open (HTTP/2 MAX_CONCURRENT_STREAMS); further calls wait in
the client's transport instead of in the hub (see broker/hub.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from broker.errors import Overloaded
from broker.lanes import Lane
from broker.limits import RateLimited, RateLimiter
from broker.ops.logging import get_logger

log = get_logger(__name__)

# The longest retry delay the hub asks for.
MAX_RETRY_AFTER = 30.0
# How often refusals are logged (one event per agency, lane and scope with the count).
LOG_INTERVAL = 1.0
# The scope under which rate refusals are counted for the log.
RATE = "rate"
# Longest a waiting stream sleeps before it checks the bounds and the rate again (seconds).
STREAM_RECHECK = 0.1


def _drop(table: dict[tuple[str, Lane], int], key: tuple[str, Lane]) -> None:
    """One fewer under key; the key goes when none are left."""
    left = table[key] - 1
    if left > 0:
        table[key] = left
    else:
        table.pop(key, None)


@dataclass(frozen=True, slots=True)
class Bounds:
    """How many envelopes may be in flight per lane (all agencies, and each agency), and the retry delay.

    retry_after is the delay asked of a refused sender; on the bulk lane with a ceiling
    (bulk_per_second) it is at least the time the lane gate needs to let through the bulk
    envelopes already in flight.
    """

    per_lane: int = 10_000
    per_agency: int = 4_000
    retry_after: float = 1.0
    bulk_per_second: float = 0.0
    # Envelopes in flight per lane from one connection; publish rate per agency and lane (0: none).
    per_connection: int = 4_000
    agency_rate: float = 0.0
    agency_burst: float = 0.0


class Admission:
    """Counts envelopes in flight per lane, agency and connection, and each agency's rate; refuses those over a limit.

    Over a bound of envelopes in flight: HUB_OVERLOADED; over the agency's rate: AGENCY_RATE_LIMITED.
    """

    def __init__(self, bounds: Bounds, clock: Callable[[], float] = time.monotonic) -> None:
        """Nothing in flight yet; clock is the hub's monotonic clock (the rate's buckets fill on it)."""
        self.bounds = bounds
        self._clock = clock
        self._lane: dict[Lane, int] = collections.Counter()
        self._agency: dict[tuple[str, Lane], int] = collections.Counter()
        self._connection: dict[tuple[str, Lane], int] = collections.Counter()
        self.rate = RateLimiter(bounds.agency_rate, bounds.agency_burst)
        self._refusals: collections.Counter[tuple[str, Lane, str]] = collections.Counter()
        self._flush: asyncio.TimerHandle | None = None
        self._freed: asyncio.Event | None = None  # set on the next leave(), while a stream waits for room
        self._slowed: collections.Counter[tuple[str, Lane, str]] = collections.Counter()
        # Waits of streams over their agency's limits since the start, by agency, lane and scope.
        self.waits: collections.Counter[tuple[str, Lane, str]] = collections.Counter()

    def in_flight(self, lane: Lane | None = None) -> int:
        """Envelopes in flight on lane (on both when None)."""
        return sum(self._lane.values()) if lane is None else self._lane[lane]

    def in_flight_of(self, agency: str, lane: Lane) -> int:
        """Envelopes of agency in flight on lane."""
        return self._agency[agency, lane]

    def in_flight_on(self, connection: str, lane: Lane) -> int:
        """Envelopes taken on connection (a gRPC peer) in flight on lane."""
        return self._connection[connection, lane]

    def enter(self, agency: str, lane: Lane, connection: str = "") -> None:
        """Take one envelope of agency on lane from connection (a gRPC peer, "" for none).

        Raises Overloaded over a bound of envelopes in flight (hub, agency, connection), and
        RateLimited over the agency's rate on the lane; a refusal is counted for the log and
        takes nothing (no place, no token).
        """
        key = (agency, lane)
        scope = ""
        if self._lane[lane] >= self.bounds.per_lane:
            scope = "hub"
        elif self._agency[key] >= self.bounds.per_agency:
            scope = "agency"
        elif connection and self._connection[connection, lane] >= self.bounds.per_connection:
            scope = "connection"
        if scope:
            self._note_refusal(agency, lane, scope)
            raise Overloaded(scope, lane.value, self.retry_after(lane))
        try:
            self.rate.take(agency, lane.value, self._clock())
        except RateLimited:
            self._note_refusal(agency, lane, RATE)
            raise
        self._lane[lane] += 1
        self._agency[key] += 1
        if connection:
            self._connection[connection, lane] += 1

    def leave(self, agency: str, lane: Lane, connection: str = "") -> None:
        """One envelope of agency on lane from connection was answered (accepted or refused after it was taken)."""
        self._lane[lane] -= 1
        _drop(self._agency, (agency, lane))  # keeps the table to the agencies with envelopes in flight
        if connection:
            _drop(self._connection, (connection, lane))
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    async def wait_enter(self, agency: str, lane: Lane, connection: str = "") -> None:
        """Take one envelope of a stream, waiting (not refusing) while the agency is over its own limits.

        Over the agency's or the connection's bound of envelopes in flight, the caller waits for
        one of them to be answered; over the agency's rate, it waits for the next token. The
        PublishStream reader calls this before it reads on, so a stream over its agency's limits
        is slowed: its requests stay in its own transport (HTTP/2 flow control), costing the hub
        nothing, instead of being read and refused. Over the hub-wide bound (every agency's
        envelopes together) it raises Overloaded as enter() does: that bound is not the agency's
        own doing, and a refusal with a retry delay tells the sender so. Waits are counted for
        the log (one event a second per agency, lane and scope), like refusals.
        """
        while True:
            scope = ""
            if self._lane[lane] >= self.bounds.per_lane:
                self.enter(agency, lane, connection)  # raises Overloaded (scope hub), counted
            if self._agency[agency, lane] >= self.bounds.per_agency:
                scope = "agency"
            elif connection and self._connection[connection, lane] >= self.bounds.per_connection:
                scope = "connection"
            if scope:
                self._waited(agency, lane, scope)
                if self._freed is None:
                    self._freed = asyncio.Event()
                with contextlib.suppress(TimeoutError):  # a bounded wait: the bounds are checked again
                    await asyncio.wait_for(self._freed.wait(), STREAM_RECHECK)
                continue
            wait = self.rate.wait(agency, lane.value, self._clock())
            if wait > 0:
                self._waited(agency, lane, RATE)
                await asyncio.sleep(min(wait, STREAM_RECHECK))  # the clock may be another than the loop's
                continue
            self.enter(agency, lane, connection)
            return

    def retry_after(self, lane: Lane) -> float:
        """The delay to ask of a sender refused on lane (seconds)."""
        delay = self.bounds.retry_after
        if lane is Lane.BULK and self.bounds.bulk_per_second > 0:
            delay = max(delay, self._lane[lane] / self.bounds.bulk_per_second)
        return min(delay, MAX_RETRY_AFTER)

    def _waited(self, agency: str, lane: Lane, scope: str) -> None:
        self.waits[agency, lane, scope] += 1
        self._note(self._slowed, agency, lane, scope)

    def _note_refusal(self, agency: str, lane: Lane, scope: str) -> None:
        self._note(self._refusals, agency, lane, scope)

    def _note(self, table: collections.Counter[tuple[str, Lane, str]], agency: str, lane: Lane, scope: str) -> None:
        table[agency, lane, scope] += 1
        if self._flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a unit test): flush_log() is called by hand
                return
            self._flush = loop.call_later(LOG_INTERVAL, self.flush_log)

    def flush_log(self) -> None:
        """Log the refusals counted since the last flush: one event per agency, lane and scope."""
        self._flush = None
        refusals, self._refusals = self._refusals, collections.Counter()
        slowed, self._slowed = self._slowed, collections.Counter()
        for (agency, lane, scope), count in sorted(slowed.items(), key=lambda item: (item[0][0], item[0][1].value)):
            log.info("publish_streams_slowed", agency=agency, lane=lane.value, scope=scope, waits=count)
        for (agency, lane, scope), count in sorted(refusals.items(), key=lambda item: (item[0][0], item[0][1].value)):
            if scope == RATE:
                log.warning(
                    "publishes_refused_rate_limited",
                    agency=agency,
                    lane=lane.value,
                    count=count,
                    rate=self.bounds.agency_rate,
                    burst=self.bounds.agency_burst,
                    reason="AGENCY_RATE_LIMITED",
                )
                continue
            log.warning(
                "publishes_refused_overloaded",
                agency=agency,
                lane=lane.value,
                scope=scope,
                count=count,
                in_flight=self._agency[agency, lane],
                reason="HUB_OVERLOADED",
            )

    def close(self) -> None:
        """Log what is still counted and stop the timer."""
        if self._flush is not None:
            self._flush.cancel()
        self.flush_log()
