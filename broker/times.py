"""Owns time: the clock the hub reads (one, injected) and the conversions to protobuf Timestamps (pure).

Every part of the hub that needs the time takes a Clock: wall time (`now`, an aware datetime,
for what is recorded and compared with what senders wrote) and monotonic time (`monotonic`,
seconds, for intervals). The running hub uses SystemClock; tests pass a ManualClock and move it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp


class Clock(Protocol):
    """Where the hub reads the time."""

    def now(self) -> datetime:
        """The wall time, aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals only)."""
        ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> datetime:
        """datetime.now(UTC)."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()


class ShiftedClock:
    """The machine's clocks, the wall time moved so that it read `start` when the clock was made (drills).

    A drill set on a summer night runs in December: agreements whose rules have a schedule
    decide by this time, and it moves on as real time does.
    """

    def __init__(self, start: datetime) -> None:
        """Wall time start from now on."""
        self._offset = start - datetime.now(UTC)

    def now(self) -> datetime:
        """The machine's wall time plus the shift."""
        return datetime.now(UTC) + self._offset

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()


@dataclass
class ManualClock:
    """A clock that moves only when told (tests, benchmarks): both readings advance together."""

    at: datetime
    mono: float = 0.0

    def now(self) -> datetime:
        """The set wall time."""
        return self.at

    def monotonic(self) -> float:
        """The set monotonic time."""
        return self.mono

    def advance(self, seconds: float) -> None:
        """Move both readings forward."""
        self.at += timedelta(seconds=seconds)
        self.mono += seconds


def timestamp(at: datetime) -> Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


def timestamp_ns(nanos: int) -> Timestamp:
    """A protobuf Timestamp for nanoseconds since the epoch."""
    return Timestamp(seconds=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


def parse_rfc3339(text: str) -> datetime | None:
    """A time as nats-server writes it (RFC 3339, up to nanoseconds, Z or an offset); None if it is not one.

    Digits past the microsecond are dropped (datetime keeps no more).
    """
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}" if digits else f"{head}{rest}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
