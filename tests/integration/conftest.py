"""Fixtures: a real nats-server on a free loopback port and the real hub over mTLS, per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, Inbox, RetryPolicy

from broker.dev.testing import LocalHub, local_hub
from broker.policy.routing import AllowRule
from tests import factories as f

AGENCIES = {
    f.CUR: "112 NUE - CUR Torino",
    f.PL: "Polizia Locale di Torino",
    f.CC: "Carabinieri - Comando Provinciale di Torino",
    f.QUESTURA: "Questura di Torino",
    f.PL_MILANO: "Polizia Locale di Milano",
}
TORINO = frozenset({f.CUR, f.PL, f.CC, f.QUESTURA})
ALLOW = (
    AllowRule("torino", TORINO, TORINO),
    # Milano's local police may write to the Torino CUR only (not the other way round).
    AllowRule("milano-to-cur", frozenset({f.PL_MILANO}), frozenset({f.CUR})),
)
FAST_RETRY = RetryPolicy(attempts=3, first_delay=0.05, max_delay=0.2, timeout=10)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    """nats-server (sync_interval: always) and the hub, with the Torino rooms and Milano's PL registered."""
    async with local_hub(tmp_path, AGENCIES, ALLOW, extra_certs=[f.ROGUE], metrics_listen="127.0.0.1:0") as env:
        yield env


@pytest.fixture
async def clients(hub: LocalHub) -> AsyncIterator[dict[str, HubClient]]:
    """One client per agency (and one for the unregistered rogue certificate)."""
    made = {agency: hub.client(agency, retry=FAST_RETRY) for agency in [*AGENCIES, f.ROGUE]}
    yield made
    for client in made.values():
        await client.close()


async def take(inbox: Inbox, count: int, timeout: float = 15.0) -> list[hub_pb2.Delivery]:
    """The next count deliveries of an inbox, acknowledged."""
    out: list[hub_pb2.Delivery] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            delivery = await inbox.__anext__()
            inbox.ack(delivery)
            out.append(delivery)
    return out


async def nothing_more(inbox: Inbox, wait: float = 1.0) -> None:
    """Assert the inbox stays empty for `wait` seconds."""
    try:
        async with asyncio.timeout(wait):
            extra = await inbox.__anext__()
    except TimeoutError:
        return
    raise AssertionError(f"unexpected delivery {extra.envelope.distribution_id}")
