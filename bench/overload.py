"""Overload: an open-loop burst of publishes against the hub in its own process, every answer counted.

    .venv/bin/python bench/overload.py                 # 20,000 Publish calls offered at 2,000/s
    .venv/bin/python bench/overload.py --quick         # 3,000 at 1,500/s (CI smoke)
    .venv/bin/python bench/overload.py --hub "max_inflight_publishes = 0"   # try a [hub] setting

One room (the 112 CUR) offers Publish calls at a fixed rate without waiting for answers (open
loop: no cap on calls in flight), each a fresh ~1 KB incident report to the Questura. Three
clients, one after the other, on a hub with its audit log:

1. raw: a stub made from the generated code, no retries (gRPC's own retries off): every call's
   final status is counted by gRPC code and catalogue reason ("no ErrorInfo" when the status
   carries none), with how long refusals and acceptances took to come back;
2. client: the project's HubClient.publish (its retries and backoff), counting how many
   envelopes end accepted and how many end failed, and by which reason;
3. stream: PublishStream requests of 100 envelopes offered at the same rate in envelopes per
   second on one stream, each envelope's result counted like the raw calls.

Reported: the counts, the refusals the hub counted in opsroom_refusals_total, and the hub's
publishes by outcome. Results also go, as JSON, to bench/results/overload-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opsroom.hub.v1 import hub_pb2, hub_pb2_grpc  # noqa: E402
from opsroom_client import HubError  # noqa: E402

from bench.run import (  # noqa: E402
    RECEIVER,
    SENDER,
    bench_client,
    bench_envelope,
    cpu_seconds,
    hub_process,
    percentile,
    scrape,
    write_hub_config,
)
from broker.dev.certs import make_dev_pki  # noqa: E402
from broker.dev.embedded import NatsServer, free_port  # noqa: E402

ACCEPTED = "OK"


def outcome_of_status(status: status_pb2.Status) -> str:
    """ "<CODE> <REASON>" of a google.rpc.Status; the reason is "(no ErrorInfo)" when it carries none."""
    code = grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == status.code)).name
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return f"{code} {info.reason}"
    return f"{code} (no ErrorInfo)"


def outcome_of_error(error: grpc.aio.AioRpcError) -> str:
    """The outcome of a failed call, from its status details if it has them."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return outcome_of_status(status_pb2.Status.FromString(value))
    return f"{error.code().name} (no ErrorInfo)"


def raw_channel(target: str, pki_root: Path) -> grpc.aio.Channel:
    """A secure channel as the sender, with gRPC's own retries off: what a generated client gets."""
    creds = grpc.ssl_channel_credentials(
        (pki_root / "ca.pem").read_bytes(),
        (pki_root / "agencies" / f"{SENDER}-key.pem").read_bytes(),
        (pki_root / "agencies" / f"{SENDER}.pem").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", "localhost"), ("grpc.enable_retries", 0)]
    return grpc.aio.secure_channel(target, creds, options=options)


async def open_loop(count: int, rate: float, send: Callable[[int], Awaitable[None]]) -> float:
    """Start send(i) for i in range(count) at rate per second, never waiting for answers; seconds until all ended."""
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.get_running_loop().create_task(send(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return time.perf_counter() - start


def envelopes(count: int) -> list[Any]:
    """count fresh incident reports (50 incidents)."""
    return [bench_envelope(f"urn:emergency:uid:incidentid:overload-{i % 50}:bench") for i in range(count)]


async def run_raw(target: str, pki_root: Path, count: int, rate: float) -> dict[str, Any]:
    """Publish calls from a raw stub, no retries: the final status of every call."""
    channel = raw_channel(target, pki_root)
    stub = hub_pb2_grpc.HubServiceStub(channel)
    batch = envelopes(count)
    outcomes: collections.Counter[str] = collections.Counter()
    took: dict[str, list[float]] = collections.defaultdict(list)
    examples: dict[str, str] = {}

    async def send(i: int) -> None:
        started = time.perf_counter()
        try:
            await stub.Publish(hub_pb2.PublishRequest(envelope=batch[i]), timeout=60)
            outcome = ACCEPTED
        except grpc.aio.AioRpcError as exc:
            outcome = outcome_of_error(exc)
            examples.setdefault(outcome, exc.details() or "")
        outcomes[outcome] += 1
        took["accepted" if outcome == ACCEPTED else "refused"].append((time.perf_counter() - started) * 1000)

    seconds = await open_loop(count, rate, send)
    await channel.close()
    return {"outcomes": dict(outcomes), "examples": examples, "seconds": round(seconds, 2), **latencies(took)}


async def run_client(target: str, pki_root: Path, count: int, rate: float) -> dict[str, Any]:
    """HubClient.publish (its retries): how many envelopes end accepted, how many fail, and why."""
    client = bench_client(target, pki_root, SENDER)
    batch = envelopes(count)
    outcomes: collections.Counter[str] = collections.Counter()
    took: dict[str, list[float]] = collections.defaultdict(list)

    async def send(i: int) -> None:
        started = time.perf_counter()
        try:
            await client.publish(batch[i])
            outcome = ACCEPTED
        except HubError as exc:
            outcome = f"{exc.code.name} {exc.reason or '(no ErrorInfo)'}"
        outcomes[outcome] += 1
        took["accepted" if outcome == ACCEPTED else "refused"].append((time.perf_counter() - started) * 1000)

    seconds = await open_loop(count, rate, send)
    await client.close()
    return {"outcomes": dict(outcomes), "seconds": round(seconds, 2), **latencies(took)}


async def run_stream(target: str, pki_root: Path, count: int, rate: float, per_request: int = 100) -> dict[str, Any]:
    """PublishStream requests of per_request envelopes on one stream, offered at rate envelopes/s, no retries."""
    channel = raw_channel(target, pki_root)
    stub = hub_pb2_grpc.HubServiceStub(channel)
    batch = envelopes(count)
    requests = (count + per_request - 1) // per_request
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()

    async def offered() -> Any:
        for number in range(requests):
            delay = started + number * per_request / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk = batch[number * per_request : (number + 1) * per_request]
            yield hub_pb2.PublishStreamRequest(request_id=number, envelopes=chunk)

    answered = 0
    try:
        async for response in stub.PublishStream(offered(), timeout=120):
            for result in response.results:
                answered += 1
                if result.WhichOneof("result") == "acceptance":
                    outcomes[ACCEPTED] += 1
                else:
                    outcomes[outcome_of_status(result.error)] += 1
    except grpc.aio.AioRpcError as exc:
        outcomes[f"stream ended: {outcome_of_error(exc)}"] += count - answered
    await channel.close()
    return {"outcomes": dict(outcomes), "seconds": round(time.perf_counter() - started, 2)}


def latencies(took: dict[str, list[float]]) -> dict[str, float]:
    """Median and p99 (ms) of the time to an answer, accepted and refused apart."""
    out = {}
    for kind, values in took.items():
        out[f"{kind}_p50_ms"] = round(percentile(values, 0.5), 1)
        out[f"{kind}_p99_ms"] = round(percentile(values, 0.99), 1)
    return out


async def metrics_ready(port: int) -> None:
    """Wait (at most 30 s) until the hub serves its metrics: it does so just after gRPC."""
    for _ in range(300):
        try:
            scrape(port)
        except OSError:
            await asyncio.sleep(0.1)
        else:
            return
    raise RuntimeError("the hub serves no metrics")


def delta(before: dict[str, float], after: dict[str, float], prefix: str) -> dict[str, float]:
    """Counters starting with prefix that moved between two scrapes."""
    keys = {k for k in after if k.startswith(prefix) and not k.endswith("_created")}
    return {k: after[k] - before.get(k, 0.0) for k in sorted(keys) if after[k] - before.get(k, 0.0)}


async def main() -> int:
    """Start nats-server and the hub, offer each client's burst, print what every call ended with."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller burst (for CI)")
    parser.add_argument("--count", type=int, help="calls offered per client (default 20,000; quick 3,000)")
    parser.add_argument("--rate", type=float, help="calls offered per second (default 2,000; quick 1,500)")
    parser.add_argument("--clients", default="raw,client,stream", help="which clients to run, comma-separated")
    parser.add_argument("--hub", action="append", default=[], help="extra [hub] setting, key = value")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the JSON results")
    args = parser.parse_args()
    count = args.count or (3000 if args.quick else 20_000)
    rate = args.rate or (1500.0 if args.quick else 2000.0)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="opsroom-overload-") as tmp:
        root = Path(tmp)
        make_dev_pki(root / "pki", [SENDER, RECEIVER])
        server = NatsServer(root / "nats")
        server.start()
        try:
            port, metrics_port = free_port(), free_port()
            config = write_hub_config(root, server, port, metrics_port, [], hub_extra=args.hub)
            with hub_process(config, port) as hub_proc:
                await metrics_ready(metrics_port)
                runs = {"raw": run_raw, "client": run_client, "stream": run_stream}
                for name in args.clients.split(","):
                    before = scrape(metrics_port)
                    cpu = cpu_seconds(hub_proc.pid), cpu_seconds(os.getpid())
                    result = await runs[name](f"127.0.0.1:{port}", root / "pki", count, rate)
                    after = scrape(metrics_port)
                    result["cpu_seconds"] = {
                        "hub": round(cpu_seconds(hub_proc.pid) - cpu[0], 1),
                        "bench": round(cpu_seconds(os.getpid()) - cpu[1], 1),
                    }
                    result["hub_refusals"] = delta(before, after, "opsroom_refusals_total")
                    result["hub_publishes"] = delta(before, after, "opsroom_publishes_total")
                    report[name] = result
                    print(f"{name}: {count} offered at {rate:.0f}/s: {json.dumps(result, indent=1)}", flush=True)
                    await asyncio.sleep(2)  # let the hub settle between clients
        finally:
            server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    meta = {"when": stamp, "cpus": os.cpu_count(), "python": platform.python_version(), "hub": args.hub}
    meta |= {"count": count, "rate": rate}
    (args.out / f"overload-{stamp}.json").write_text(json.dumps({"meta": meta, "runs": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
