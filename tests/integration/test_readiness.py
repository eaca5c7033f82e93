"""Readiness without a client certificate: /livez and /readyz on the ops HTTP port of a real hub, and gRPC health agreeing.

/readyz answers 200 "ready" only while the hub takes work: not while it starts (NATS not reached yet), not while
its NATS connection is down, not while it stops (after a background task failed, too), and nothing answers once
it stopped.
"""

from __future__ import annotations

import asyncio
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opsroom_client import HubClient

from broker.delivery.escalation import Escalator
from broker.delivery.expiry import Expirer
from broker.dev.certs import make_dev_pki
from broker.dev.embedded import NatsServer, free_port
from broker.dev.testing import credentials, dev_config, local_hub
from broker.edge.servicer import SERVICE
from broker.hub import Hub
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW

pytestmark = pytest.mark.integration

WAIT = 30.0  # liveness: the hub notices a change of NATS or of its tasks and says so
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()


async def probe(port: int, path: str = "/readyz") -> tuple[int, str]:
    """GET path on the ops port, plain HTTP, no certificate: (status, body)."""
    return await asyncio.to_thread(_get, port, path)


async def until(port: int, expected: tuple[int, str]) -> None:
    """Poll /readyz until it answers expected (fails after WAIT seconds with the last answer)."""
    last: tuple[int, str] | str = "no answer"
    try:
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    last = await probe(port)
                except urllib.error.URLError as exc:
                    last = repr(exc)
                if last == expected:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"/readyz answered {last!r}, expected {expected!r}") from None


async def health(client: HubClient) -> int:
    stub = health_pb2_grpc.HealthStub(client._channel)
    return int((await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)).status)


async def test_readyz_follows_start_nats_and_stop(tmp_path: Path) -> None:
    """Starting (NATS not answering yet): 503 "starting", /livez 200; started: 200 "ready" and health SERVING; NATS
    down: 503 "nats disconnected" and health NOT_SERVING; NATS back: ready again; stopped: nothing listens.
    """
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    port = free_port()
    pki = make_dev_pki(tmp_path / "pki", list(AGENCIES))
    hub = Hub(dev_config(pki, nats, AGENCIES, ALLOW, metrics_listen=f"127.0.0.1:{port}"))
    client: HubClient | None = None
    starting: asyncio.Task[None] | None = None
    try:
        nats.signal(signal.SIGSTOP)  # accepts the connection, answers nothing: the hub waits in start()
        try:
            starting = asyncio.get_running_loop().create_task(hub.start())
            await until(port, (503, "starting"))
            assert (200, "alive") == await probe(port, "/livez")
        finally:
            nats.signal(signal.SIGCONT)
        async with asyncio.timeout(WAIT):
            await starting
        assert (200, "ready") == await probe(port)
        client = HubClient(f"127.0.0.1:{hub.port}", credentials(pki, f.CUR), server_name="localhost")
        assert SERVING == await health(client)
        assert 'opsroom_publishes_in_flight{lane="urgent"}' in (await probe(port, "/metrics"))[1]

        nats.stop()  # SIGTERM: the hub's connection drops and it reconnects in a loop
        await until(port, (503, "nats disconnected"))
        assert NOT_SERVING == await health(client)
        assert (200, "alive") == await probe(port, "/livez")

        nats.start()  # same port, same store
        await until(port, (200, "ready"))
        assert SERVING == await health(client)
        assert [f.QUESTURA] == list((await client.publish(f.envelope(f.CUR, (f.QUESTURA,)))).recipients)

        await hub.stop(grace=1)
        with pytest.raises(urllib.error.URLError):  # stopped: the port is closed, a balancer sees it down
            await probe(port)
    finally:
        if client is not None:
            await client.close()
        if starting is not None and not starting.done():
            starting.cancel()
        await hub.stop(grace=1)
        nats.stop()


async def test_readyz_says_stopping_after_a_background_task_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The escalation worker dies: while the hub stops (an expiry worker slow to end holds the stop), /readyz answers
    503 "stopping: a background task failed" and gRPC health NOT_SERVING; the reason names no agency or content.
    """
    fail, release = asyncio.Event(), asyncio.Event()

    async def dying(_self: Escalator) -> None:
        await fail.wait()
        raise RuntimeError(f"failed on {f.CALLER_SURNAME}")

    async def slow_to_stop(_self: Expirer) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # the hub stays in its stop until the test has looked
            raise

    monkeypatch.setattr(Escalator, "run", dying)
    monkeypatch.setattr(Expirer, "run", slow_to_stop)
    async with local_hub(tmp_path, AGENCIES, ALLOW, metrics_listen="127.0.0.1:0") as env:
        port = env.hub.metrics_port
        client = env.client(f.CUR)
        try:
            assert (200, "ready") == await probe(port)
            assert SERVING == await health(client)
            fail.set()
            await until(port, (503, "stopping: a background task failed"))
            assert NOT_SERVING == await health(client)
            assert (200, "alive") == await probe(port, "/livez")
        finally:
            release.set()
            await client.close()
        async with asyncio.timeout(WAIT):
            await env.hub.wait()
        assert "escalations" == getattr(env.hub.failure, "task", None)
        with pytest.raises(urllib.error.URLError):
            await probe(port)
