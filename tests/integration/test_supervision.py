"""A background task of a running hub dies: the hub says NOT_SERVING, logs which task, and stops (no half-alive hub)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from broker.delivery.escalation import Escalator
from broker.delivery.expiry import Expirer
from broker.dev.embedded import NatsServer, free_port
from broker.dev.testing import local_hub
from broker.edge.servicer import SERVICE
from broker.ops.logging import drop_unlisted_keys, traceback_without_values
from broker.ops.supervisor import RETURNED, Failure
from broker.publish.committer import Committer
from tests import factories as f
from tests.faults.hubconf import write_hub_toml
from tests.integration.conftest import AGENCIES, ALLOW

pytestmark = pytest.mark.integration

STOP_WAIT = 30.0  # liveness: the hub notices the dead task and stops
EXIT_WAIT = 60.0  # liveness: the `opsroom serve` process starts, notices the dead task and exits
ROOT = Path(__file__).resolve().parents[2]
SECRET = f"failed on {f.CALLER_SURNAME} {f.PLATE}"  # an exception message quoting personal data


def rendered(event: dict[str, Any]) -> str:
    """The event as the hub's log processors leave it (exception type and stack, no message), as JSON."""
    return json.dumps(
        drop_unlisted_keys(None, "error", traceback_without_values(None, "error", dict(event))), default=str
    )


def failing_escalator(go: asyncio.Event) -> Callable[[Escalator], Coroutine[Any, Any, None]]:
    async def run(_self: Escalator) -> None:
        await go.wait()
        raise RuntimeError(SECRET)

    return run


def failing_expirer(go: asyncio.Event) -> Callable[[Expirer], Coroutine[Any, Any, None]]:
    async def run(_self: Expirer) -> None:
        await go.wait()
        # A worker loop that ends without an error leaves the hub without it just the same.

    return run


def failing_bulk_committer(go: asyncio.Event) -> Callable[[Committer], Coroutine[Any, Any, None]]:
    original = Committer.run

    async def run(self: Committer) -> None:
        if self._lane != "bulk":
            await original(self)
            return
        await go.wait()
        raise RuntimeError(SECRET)

    return run


@pytest.mark.parametrize(
    ("task", "target", "failing"),
    [
        pytest.param("escalations", Escalator, failing_escalator, id="escalation-worker"),
        pytest.param("committer-bulk", Committer, failing_bulk_committer, id="bulk-commit-loop"),
        pytest.param("expiries", Expirer, failing_expirer, id="expiry-worker-returns"),
    ],
)
async def test_a_dead_background_task_stops_the_hub(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    task: str,
    target: type,
    failing: Callable[[asyncio.Event], Callable[..., Coroutine[Any, Any, None]]],
) -> None:
    """The worker raises (or returns) while the hub serves: health goes SERVING -> NOT_SERVING, one
    background_task_failed line names the task and the error type (not its message), and the hub stops by itself.
    """
    go = asyncio.Event()
    monkeypatch.setattr(target, "run", failing(go))
    async with local_hub(tmp_path, AGENCIES, ALLOW, grace=timedelta(seconds=1)) as env:
        sender = env.client(f.CUR)
        acceptance = await sender.publish(f.envelope(f.CUR, (f.QUESTURA,)))  # the hub works before the failure
        assert [f.QUESTURA] == list(acceptance.recipients)
        health = health_pb2_grpc.HealthStub(sender._channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        statuses = [(await watch.read()).status]

        async def follow() -> None:
            try:
                while (response := await watch.read()) is not grpc.aio.EOF:
                    statuses.append(response.status)
            except grpc.aio.AioRpcError:
                pass  # the server stopped

        with capture_logs() as logs:
            following = asyncio.get_running_loop().create_task(follow())
            go.set()
            async with asyncio.timeout(STOP_WAIT):
                await env.hub.wait()
                await following

        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        assert [serving, not_serving] == statuses
        error_type = RETURNED if task == "expiries" else "RuntimeError"
        assert Failure(task, error_type) == env.hub.failure
        failed = [e for e in logs if e["event"] == "background_task_failed"]
        assert [(task, error_type)] == [(e["task"], e["error_type"]) for e in failed]
        assert f.CALLER_SURNAME not in rendered(failed[0])
        events = [e["event"] for e in logs]
        assert events.index("background_task_failed") < events.index("hub_draining") < events.index("hub_stopped")
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # nothing answers any more
            await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        assert grpc.StatusCode.UNAVAILABLE == caught.value.code()
        await sender.close()


async def test_opsroom_serve_exits_non_zero_when_a_background_task_dies(tmp_path: Path) -> None:
    """`opsroom serve` whose escalation worker raises as soon as it starts: the process exits 1, its JSON log names
    the task and error type, never the message.
    """
    from broker.dev.certs import make_dev_pki  # noqa: PLC0415
    from broker.dev.testing import dev_config  # noqa: PLC0415

    nats = NatsServer(tmp_path / "nats")
    nats.start()
    try:
        pki = make_dev_pki(tmp_path / "pki", list(AGENCIES))
        cfg = dev_config(pki, nats, AGENCIES, ALLOW, listen=f"127.0.0.1:{free_port()}")
        config = write_hub_toml(cfg, tmp_path / "hub.toml")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.failing_hub",
                "--log-level",
                "INFO",
                "serve",
                "--config",
                str(config),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.to_thread(proc.communicate, timeout=EXIT_WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=EXIT_WAIT)
    finally:
        nats.stop()
    assert 1 == proc.returncode, err.decode(errors="replace")
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    failed = [line for line in lines if line["event"] == "background_task_failed"]
    assert [("escalations", "RuntimeError")] == [(line["task"], line["error_type"]) for line in failed]
    assert f.CALLER_SURNAME not in err.decode() + out.decode()
    assert "hub_stopped" in [line["event"] for line in lines]
