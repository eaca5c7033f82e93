"""Watches nats-server's monitoring endpoints for the metrics: up or not, JetStream storage used and allowed.

A background task of the hub (under its supervisor): every interval it reads each configured
/varz and sets the gauges; a server that does not answer is reported down, never an error that
stops the hub. The store-disk alerts (deploy/prometheus) are made of these gauges.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Sequence
from typing import NamedTuple

from broker.ops.metrics import Metrics

INTERVAL = 30.0  # seconds between readings


class Storage(NamedTuple):
    """What one nats-server's /varz says of its JetStream storage (bytes)."""

    used: int
    limit: int


def read_storage(monitor_url: str, timeout: float = 5.0) -> Storage | None:
    """The server's JetStream storage, or None when its monitoring endpoint does not answer."""
    url = monitor_url.rstrip("/") + "/varz"
    if not url.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked above
            varz = json.load(response)
    except (OSError, ValueError):
        return None
    jetstream = varz.get("jetstream", {})
    return Storage(
        int(jetstream.get("stats", {}).get("storage", 0)), int(jetstream.get("config", {}).get("max_storage", 0))
    )


async def watch_storage(monitor_urls: Sequence[str], metrics: Metrics, interval: float = INTERVAL) -> None:
    """Read every server's storage, set the gauges, wait, again: until cancelled at the hub's stop."""
    while True:  # bounded by the hub's life: its supervisor cancels this task when the hub stops
        readings = await asyncio.gather(*(asyncio.to_thread(read_storage, url) for url in monitor_urls))
        for url, storage in zip(monitor_urls, readings, strict=True):
            metrics.nats_monitor_up.labels(url).set(0 if storage is None else 1)
            if storage is not None:
                metrics.jetstream_storage.labels(url).set(storage.used)
                metrics.jetstream_max_storage.labels(url).set(storage.limit)
        await asyncio.sleep(interval)
