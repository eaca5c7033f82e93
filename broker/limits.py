"""Owns the per-agency limits that are pure arithmetic: publish rate (token buckets), open streams, sizes by payload.

Everything here takes the time as an argument (seconds on the hub's one monotonic clock,
broker/times.py) and does no I/O: the edge (broker/edge/admission.py, broker/edge/common.py,
broker/edge/servicer.py) calls it and turns its refusals into statuses; the config loader
(broker/config.py) reads the sizes' defaults from here.

- TokenBucket: `rate` envelopes a second with bursts of up to `burst`; a refused take says how
  long until it would succeed (the RetryInfo of AGENCY_RATE_LIMITED).
- RateLimiter: one bucket per agency and lane, made on first use and forgotten once full again
  (the table holds only agencies that sent recently).
- StreamCount: streaming calls (Connect, PublishStream) open per agency, and the cap.
- SizeLimits: the largest envelope by payload (a plate read or an acknowledgement is much
  smaller than an incident with its media references), under the hub's overall limit.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from broker.errors import Reason, Refused, Violation

# The payloads of an envelope (the `payload` oneof of opsroom.envelope.v1.Envelope), by field name.
PAYLOADS = (
    "incident",
    "assistance_request",
    "assistance_response",
    "handover_request",
    "handover_response",
    "alert",
    "closure",
    "acknowledgement",
)

# Default largest envelope (bytes, serialized) by payload. An incident or a hand-over carries
# persons, vehicles, notes and media references: the hub's overall limit. Answers, closures and
# alerts (a plate read, a CAP alert with its areas) are smaller; an acknowledgement is a few fields.
DEFAULT_PAYLOAD_BYTES: Mapping[str, int] = {
    "incident": 64 * 1024,
    "assistance_request": 32 * 1024,
    "assistance_response": 16 * 1024,
    "handover_request": 64 * 1024,
    "handover_response": 16 * 1024,
    "alert": 32 * 1024,
    "closure": 16 * 1024,
    "acknowledgement": 8 * 1024,
}

# Tokens short of a whole one by less than this (floating-point residue) count as whole.
_EPSILON = 1e-9


@dataclass(slots=True)
class TokenBucket:
    """rate tokens a second, at most burst kept; starts full at `now`."""

    rate: float
    burst: float
    tokens: float
    at: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        """A bucket holding burst tokens at now."""
        return cls(rate, burst, burst, now)

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last reading (a clock read earlier than the last one adds none)."""
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def take(self, now: float, count: float = 1.0) -> float:
        """Take count tokens: 0.0 if taken, else the seconds until count tokens will be there (nothing taken)."""
        self.refill(now)
        if self.tokens >= count - _EPSILON:  # a token earned to the last float bit counts
            self.tokens = max(0.0, self.tokens - count)
            return 0.0
        return (count - self.tokens) / self.rate

    def is_full(self, now: float) -> bool:
        """True when the bucket holds burst tokens at now (forgetting it changes nothing)."""
        self.refill(now)
        return self.tokens >= self.burst - _EPSILON


class RateLimited(Refused):
    """Raised when an agency publishes faster than its rate on a lane (AGENCY_RATE_LIMITED); retry after retry_after.

    metadata: `lane`, `rate` (envelopes a second), `burst`.
    """

    def __init__(self, lane: str, rate: float, burst: float, retry_after: float) -> None:
        """Build with reason AGENCY_RATE_LIMITED."""
        super().__init__(
            Reason.AGENCY_RATE_LIMITED,
            f"this agency publishes {lane} envelopes faster than the {rate:g}/s (bursts of {burst:g}) the hub"
            f" takes from one agency; retry after {retry_after:.3f} s",
            {"lane": lane, "rate": f"{rate:g}", "burst": f"{burst:g}"},
            retry_after=retry_after,
        )


@dataclass
class RateLimiter:
    """A token bucket per (agency, lane); rate 0 takes everything (no limit)."""

    rate: float
    burst: float
    _buckets: dict[tuple[str, str], TokenBucket] = field(default_factory=dict)
    _taken: int = 0

    @property
    def enabled(self) -> bool:
        """False when rate is 0: take() never refuses."""
        return self.rate > 0

    def take(self, agency: str, lane: str, now: float) -> None:
        """One envelope of agency on lane at now; raises RateLimited (nothing taken) when its bucket is empty."""
        if not self.enabled:
            return
        key = (agency, lane)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket.full(self.rate, self.burst, now)
        wait = bucket.take(now)
        if wait > 0:
            raise RateLimited(lane, self.rate, self.burst, retry_delay(wait))
        self._taken += 1
        if self._taken >= 1024:  # now and then, forget the agencies whose bucket is full again
            self._taken = 0
            self.forget_idle(now)

    def wait(self, agency: str, lane: str, now: float) -> float:
        """Seconds until agency's bucket on lane holds a token at now (0.0: one is there; nothing is taken)."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get((agency, lane))
        if bucket is None:
            return 0.0
        bucket.refill(now)
        if bucket.tokens >= 1.0 - _EPSILON:
            return 0.0
        return (1.0 - bucket.tokens) / bucket.rate

    def forget_idle(self, now: float) -> None:
        """Drop the buckets that are full at now: they would behave the same made afresh."""
        for key in [k for k, b in self._buckets.items() if b.is_full(now)]:
            del self._buckets[key]

    def __len__(self) -> int:
        """Buckets held."""
        return len(self._buckets)


class TooManyStreams(Refused):
    """Raised when an agency opens a stream over its cap (TOO_MANY_STREAMS); metadata `cap`, `method`."""

    def __init__(self, method: str, cap: int, retry_after: float) -> None:
        """Build with reason TOO_MANY_STREAMS."""
        super().__init__(
            Reason.TOO_MANY_STREAMS,
            f"this agency has {cap} streams open (Connect and PublishStream together), the most the hub"
            f" allows one agency; close one, or retry after {retry_after:.1f} s",
            {"cap": str(cap), "method": method},
            retry_after=retry_after,
        )


@dataclass
class StreamCount:
    """Streaming calls open per agency; cap 0 counts without refusing."""

    cap: int
    retry_after: float = 1.0
    _open: collections.Counter[str] = field(default_factory=collections.Counter)

    def open(self, agency: str, method: str) -> None:
        """One more stream of agency; raises TooManyStreams (nothing counted) at the cap."""
        if self.cap and self._open[agency] >= self.cap:
            raise TooManyStreams(method, self.cap, self.retry_after)
        self._open[agency] += 1

    def close(self, agency: str) -> None:
        """One stream of agency ended."""
        left = self._open[agency] - 1
        if left > 0:
            self._open[agency] = left
        else:
            self._open.pop(agency, None)

    def of(self, agency: str) -> int:
        """Streams agency has open."""
        return self._open[agency]


@dataclass(frozen=True)
class SizeLimits:
    """The largest envelope overall and by payload (serialized bytes); a payload's limit is at most the overall one."""

    overall: int = 64 * 1024
    by_payload: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PAYLOAD_BYTES))

    def limit(self, payload: str | None) -> int:
        """The limit for an envelope with payload (a PAYLOADS name; None or unknown: the overall limit)."""
        if payload is None:
            return self.overall
        return min(self.overall, self.by_payload.get(payload, self.overall))

    def check(self, payload: str | None, size: int) -> None:
        """Raise ENVELOPE_TOO_LARGE naming the payload field (BadRequest) when size is over the limit for payload."""
        limit = self.limit(payload)
        if size <= limit:
            return
        what = f"an envelope with {payload}" if payload else "an envelope"
        raise Refused(
            Reason.ENVELOPE_TOO_LARGE,
            f"the envelope is {size} bytes; the limit for {what} is {limit}",
            {"payload": payload or "", "limit": str(limit), "size": str(size)},
            violations=(
                Violation(payload or "", "max_bytes", f"{what} may be at most {limit} bytes serialized, not {size}"),
            ),
        )


def retry_delay(seconds: float) -> float:
    """Seconds rounded up to the millisecond (a RetryInfo delay: a client that waits it finds the token there)."""
    return math.ceil(seconds * 1000) / 1000
