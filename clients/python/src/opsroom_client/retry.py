"""Owns the retry policy: how many times, how long apart, and how patient with an overloaded hub."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class RetryPolicy:
    """How publishes are retried: the same envelope, with exponential backoff and jitter."""

    attempts: int = 8
    first_delay: float = 0.1
    max_delay: float = 2.0
    timeout: float = 10.0
    # Refusals that carry the hub's retry delay (HUB_OVERLOADED: "come back then") are retried
    # for this long after the first of them, whatever the attempts; then they count like others.
    patience: float = 120.0

    def patient(self, first_refused: float, now: float) -> bool:
        """Whether a refusal with a retry delay is still retried without counting an attempt."""
        return now - first_refused < self.patience

    def delays(self) -> Iterable[float]:
        """The waits between attempts."""
        delay = self.first_delay
        for _ in range(self.attempts - 1):
            yield delay * (0.5 + random.random())  # noqa: S311 - jitter, not security
            delay = min(delay * 2, self.max_delay)
