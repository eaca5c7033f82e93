"""Connections that misbehave at the HTTP/2 level, driven against the real gRPC server: silent, idle, ping flood.

A room's gRPC library answers pings and keeps to the ping rules by itself, so these tests speak
HTTP/2 frames themselves over the hub's mTLS port (a room's certificate, ALPN h2): the client
preface, SETTINGS and their ACK, then as the test says. Each test has a control: the same
connection behaving stays open past the time the misbehaving one is closed in.
The hub runs with limits of a second or two (`keepalive_options`, broker/edge/server.py), so that
a test takes seconds; the waits around them are liveness bounds, ten times or more.
Found by the first test: gRPC core waited a minute for an unanswered ping whatever
keepalive_timeout said (its own ping timeout); the hub now sets that to keepalive_timeout too.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from opsroom.hub.v1 import hub_pb2

from broker.dev.testing import LocalHub, local_hub
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW

pytestmark = pytest.mark.integration

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY = 0x4, 0x6, 0x7
ACK = 0x1
ENHANCE_YOUR_CALM = 0xB
# liveness: with limits of 1-2 s, the hub acts within a few seconds.
WITHIN = 30.0


@dataclass
class Seen:
    """What one raw connection saw: the server's pings, its GOAWAY error code, whether it closed, and when."""

    pings: int = 0
    goaway: int | None = None
    closed: bool = False
    seconds: float = 0.0
    frames: list[int] = field(default_factory=list)


def _frame(kind: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", 0) + payload


def _read_exact(tls: ssl.SSLSocket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = tls.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def raw_connection(
    hub: LocalHub, *, answer_pings: bool, ping_every: float | None, seconds: float, silent_after: float = 0.0
) -> Seen:
    """Open an HTTP/2 connection to the hub as the PL's host and keep it for up to seconds (blocking: run in a thread).

    answer_pings: ACK the server's pings (a healthy peer) or, after silent_after seconds of
    answering them, not any more (a host gone silent).
    ping_every: send a PING this often (a flood when short), or never.
    Ends early when the server sends GOAWAY or closes the connection.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(hub.pki.ca)
    pair = hub.pki.agency(f.PL)
    ctx.load_cert_chain(pair.cert, pair.key)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    host, _, port = hub.target.rpartition(":")
    seen = Seen()
    started = time.monotonic()
    with (
        socket.create_connection((host, int(port)), timeout=5) as plain,
        ctx.wrap_socket(plain, server_hostname="localhost") as tls,
    ):
        tls.sendall(PREFACE + _frame(SETTINGS, 0))
        tls.settimeout(0.05)
        next_ping = started + ping_every if ping_every is not None else float("inf")
        while (now := time.monotonic()) - started < seconds:
            if now >= next_ping:
                tls.sendall(_frame(PING, 0, struct.pack(">Q", int(now * 1000))))
                next_ping = now + (ping_every or 0.0)
            try:
                header = _read_exact(tls, 9)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except OSError:
                header = None
            if header is None:
                seen.closed = True
                break
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            tls.settimeout(5)
            payload = _read_exact(tls, length) if length else b""
            tls.settimeout(0.05)
            if payload is None:
                seen.closed = True
                break
            seen.frames.append(kind)
            if kind == SETTINGS and not flags & ACK:
                tls.sendall(_frame(SETTINGS, ACK))
            elif kind == PING and not flags & ACK:
                seen.pings += 1
                if answer_pings or time.monotonic() - started < silent_after:
                    tls.sendall(_frame(PING, ACK, payload))
            elif kind == GOAWAY:
                seen.goaway = int.from_bytes(payload[4:8], "big")
                break
    seen.seconds = time.monotonic() - started
    return seen


@pytest.fixture
async def keepalive_hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    """Pings after 1 s of silence, 1 s to answer; the idle limit off (so that only keepalive closes)."""
    async with local_hub(
        tmp_path,
        AGENCIES,
        ALLOW,
        keepalive_time=timedelta(seconds=1),
        keepalive_timeout=timedelta(seconds=1),
        max_connection_idle=timedelta(0),
    ) as hub:
        yield hub


async def test_a_host_that_stops_answering_pings_is_disconnected(keepalive_hub: LocalHub) -> None:
    """The hub pings a quiet connection; once the host stops answering (after 3 s) it is closed; one that answers stays.

    The first pings are answered, as a live host does (gRPC sends one with its first SETTINGS,
    and waits for its answer before sending the next).
    """
    silent, healthy = await asyncio.gather(
        asyncio.to_thread(
            raw_connection, keepalive_hub, answer_pings=False, ping_every=None, seconds=WITHIN, silent_after=3.0
        ),
        asyncio.to_thread(raw_connection, keepalive_hub, answer_pings=True, ping_every=None, seconds=8.0),
    )
    assert silent.pings >= 2, silent
    assert silent.closed or silent.goaway is not None, silent
    assert silent.seconds < WITHIN
    # The healthy peer was pinged too, answered, and was still connected after 8 s (the silent one
    # was closed after keepalive_time + keepalive_timeout, 2 s, plus the hub's timer granularity).
    assert healthy.pings >= 3, healthy
    assert (False, None) == (healthy.closed, healthy.goaway), healthy
    assert 3.0 < silent.seconds < healthy.seconds


async def test_a_connection_with_no_call_open_is_closed_after_the_idle_limit(tmp_path: Path) -> None:
    """max_connection_idle of 2 s: an HTTP/2 connection with no call gets GOAWAY; a room's open session is not ended."""
    async with local_hub(
        tmp_path, AGENCIES, ALLOW, max_connection_idle=timedelta(seconds=2), heartbeat=timedelta(seconds=30)
    ) as hub:
        # The control: a room's Connect session (a call) open on its own connection through the same time.
        receiver = hub.client(f.QUESTURA)
        call = receiver.connect_call()
        await call.write(hub_pb2.ConnectRequest(open=hub_pb2.OpenSession()))
        async with asyncio.timeout(WITHIN):
            assert "opened" == (await call.read()).WhichOneof("response")
        idle = await asyncio.to_thread(raw_connection, hub, answer_pings=True, ping_every=None, seconds=WITHIN)
        assert idle.goaway is not None, idle
        assert idle.seconds < WITHIN
        sender = hub.client(f.CUR)
        env = f.envelope(f.CUR, (f.QUESTURA,))
        await sender.publish(env)
        async with asyncio.timeout(WITHIN):
            response = await call.read()
        assert [env.distribution_id] == [d.envelope.distribution_id for d in response.deliveries.deliveries]
        call.cancel()
        await sender.close()
        await receiver.close()


async def test_a_ping_flood_gets_goaway_enhance_your_calm(tmp_path: Path) -> None:
    """Pings every 20 ms with no call open, against a minimum interval of 5 s and 2 strikes: GOAWAY ENHANCE_YOUR_CALM.

    The control, on the same hub: pings every 6 s (over the minimum interval) keep the connection.
    """
    async with local_hub(
        tmp_path,
        AGENCIES,
        ALLOW,
        min_ping_interval=timedelta(seconds=5),
        max_ping_strikes=2,
        max_connection_idle=timedelta(0),
    ) as hub:
        flood, calm = await asyncio.gather(
            asyncio.to_thread(raw_connection, hub, answer_pings=True, ping_every=0.02, seconds=WITHIN),
            asyncio.to_thread(raw_connection, hub, answer_pings=True, ping_every=6.0, seconds=13.0),
        )
    assert ENHANCE_YOUR_CALM == flood.goaway, flood
    assert flood.seconds < WITHIN
    assert (False, None) == (calm.closed, calm.goaway), calm
