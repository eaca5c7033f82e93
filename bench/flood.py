"""Floods: a well-behaved agency's publish-to-delivery latency alone, under another agency's flood, and under stream churn.

    .venv/bin/python bench/flood.py                    # 3 rounds of 1,000 events at 50/s per phase
    .venv/bin/python bench/flood.py --quick            # 1 round-size of 200 events (CI smoke)
    .venv/bin/python bench/flood.py --hub "agency_publish_rate = 0"   # the same without the rate limit
    .venv/bin/python bench/flood.py --phases flood     # alone and flood only (no churn)

One hub process (audit on, as bench/run.py starts it) and one nats-server. The 112 room (the
well-behaved agency) publishes incident reports at a steady rate (50/s) to the Questura, whose
room takes and acknowledges them; each event's publish-to-delivery time is measured in this
process. Each round has three phases, one after the other on the same hub:

(a) alone: nothing else runs;
(b) flood: the Polizia Locale, in a process of its own, floods PublishStream as fast as the hub
    answers: requests of 100 fresh ~1 KB incident reports (urgent lane, the costlier one) to the
    Carabinieri, several requests in flight, no retries; every result counted by reason;
(c) churn: another agency (the Polizia Locale of Milano), in a process of its own, opens and
    closes streams in a loop as fast as it can from several tasks: Connect (open, wait for the
    session, close) and PublishStream (one request, close); every refusal counted by reason.

The well-behaved agency publishes with a raw stub, no retries: a refusal it gets is counted,
never hidden by a retry. Reported per phase: p50 and p99 over the rounds (median [min-max]),
the ratios p99(flood)/p99(alone) and p99(churn)/p99(alone) of each round (median [min-max];
never the best round), the refusals the flooder and the churner saw, and those the
well-behaved agency saw (expected 0). The hub runs with the per-agency rate limit of
deploy/hub.toml (`agency_publish_rate = 1000`, `agency_publish_burst = 2000`) unless --hub
says otherwise. Results also go, as JSON, to bench/results/flood-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import signal
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opsroom.hub.v1 import hub_pb2, hub_pb2_grpc  # noqa: E402

from bench.overload import metrics_ready, outcome_of_error, outcome_of_status  # noqa: E402
from bench.run import (  # noqa: E402
    RECEIVER,
    SENDER,
    bench_client,
    bench_envelope,
    cpu_seconds,
    hub_process,
    percentile,
    scrape,
    spread,
)
from broker.dev.certs import make_dev_pki  # noqa: E402
from broker.dev.embedded import NatsServer, free_port  # noqa: E402

FLOODER = "it.pl.001272"
CHURNER = "it.pl.015146"
TARGET = "it.cc.cp.to"  # the flood's recipient: its room is not connected, the flood is stored for it
ACCEPTED = "OK"
# The per-agency limits the bench's hub runs with (as in deploy/hub.toml); --hub overrides them.
HUB_SETTINGS = {"agency_publish_rate": "1000", "agency_publish_burst": "2000"}
WARMUP = 2.0  # seconds the adversary runs before the measured events start
SETTLE = 2.0  # seconds between phases


def write_config(root: Path, server: NatsServer, port: int, metrics_port: int, hub: dict[str, str]) -> Path:
    """The hub config: the well-behaved sender to the Questura; the flooder and the churner to the Carabinieri."""
    agencies = (SENDER, RECEIVER, FLOODER, CHURNER, TARGET)
    config = root / "hub.toml"
    settings = "\n".join(f"{key} = {value}" for key, value in hub.items())
    config.write_text(
        f"""
[hub]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{metrics_port}"
{settings}
[tls]
ca_file = "pki/ca.pem"
cert_file = "pki/hub.pem"
key_file = "pki/hub-key.pem"
[nats]
servers = ["{server.url}"]
monitor_urls = ["{server.monitor_url}"]
[audit]
signing_key = "pki/audit-key.pem"
{"".join(f'[[agencies]]{chr(10)}id = "{a}"{chr(10)}' for a in agencies)}
[[allow]]
from = ["{SENDER}"]
to = ["{RECEIVER}"]
[[allow]]
from = ["{FLOODER}", "{CHURNER}"]
to = ["{TARGET}"]
"""
    )
    return config


def channel_of(target: str, pki_root: Path, agency: str) -> grpc.aio.Channel:
    """A secure channel as agency, gRPC's own retries off."""
    creds = grpc.ssl_channel_credentials(
        (pki_root / "ca.pem").read_bytes(),
        (pki_root / "agencies" / f"{agency}-key.pem").read_bytes(),
        (pki_root / "agencies" / f"{agency}.pem").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", "localhost"), ("grpc.enable_retries", 0)]
    return grpc.aio.secure_channel(target, creds, options=options)


def envelope_of(sender: str, recipient: str, incident: str) -> Any:
    """A ~1 KB incident report from sender to recipient."""
    env = bench_envelope(incident)
    env.sender.agency_id = sender
    env.recipients[:] = [recipient]
    return env


# -- the adversaries (each in a process of its own, stopped by SIGINT, printing one JSON line) --------


async def flood(target: str, pki_root: Path, per_request: int, in_flight: int) -> dict[str, Any]:
    """PublishStream requests of per_request fresh envelopes, in_flight unanswered at most, until SIGINT."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    channel = channel_of(target, pki_root, FLOODER)
    stub = hub_pb2_grpc.HubServiceStub(channel)
    template = envelope_of(FLOODER, TARGET, "urn:emergency:uid:incidentid:flood-1:bench")
    outcomes: collections.Counter[str] = collections.Counter()
    slots = asyncio.Semaphore(in_flight)

    def batch() -> list[Any]:
        out = []
        for _ in range(per_request):
            env = type(template)()
            env.CopyFrom(template)
            env.distribution_id = str(uuid.uuid4())
            out.append(env)
        return out

    async def requests() -> Any:
        number = 0
        while not stop.is_set():
            await slots.acquire()
            number += 1
            yield hub_pb2.PublishStreamRequest(request_id=number, envelopes=batch())

    started = time.perf_counter()
    try:
        async for response in stub.PublishStream(requests()):
            slots.release()
            for result in response.results:
                outcomes[
                    ACCEPTED if result.WhichOneof("result") == "acceptance" else outcome_of_status(result.error)
                ] += 1
    except grpc.aio.AioRpcError as exc:
        outcomes[f"stream ended: {outcome_of_error(exc)}"] += 1
    seconds = time.perf_counter() - started
    await channel.close()
    offered = sum(outcomes.values())
    return {"outcomes": dict(outcomes), "seconds": round(seconds, 1), "offered_per_s": round(offered / seconds, 1)}


async def churn(target: str, pki_root: Path, tasks: int) -> dict[str, Any]:
    """tasks loops, each opening and closing a stream (Connect, then PublishStream, in turn) until SIGINT."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    channel = channel_of(target, pki_root, CHURNER)
    stub = hub_pb2_grpc.HubServiceStub(channel)
    outcomes: collections.Counter[str] = collections.Counter()

    async def connect_once() -> None:
        call = stub.Connect()
        await call.write(hub_pb2.ConnectRequest(open=hub_pb2.OpenSession(max_batch=16, window=64)))
        try:
            await asyncio.wait_for(call.read(), timeout=10)  # SessionOpened (or the refusal)
            await call.done_writing()
            call.cancel()
            outcomes["Connect OK"] += 1
        except grpc.aio.AioRpcError as exc:
            outcomes[f"Connect {outcome_of_error(exc)}"] += 1
        except TimeoutError:
            call.cancel()
            outcomes["Connect no answer in 10 s"] += 1

    async def publish_once() -> None:
        env = envelope_of(CHURNER, TARGET, "urn:emergency:uid:incidentid:churn-1:bench")

        async def one() -> Any:
            yield hub_pb2.PublishStreamRequest(request_id=1, envelopes=[env])

        try:
            async for _ in stub.PublishStream(one(), timeout=10):
                pass
            outcomes["PublishStream OK"] += 1
        except grpc.aio.AioRpcError as exc:
            outcomes[f"PublishStream {outcome_of_error(exc)}"] += 1

    async def loop(index: int) -> None:
        turn = index
        while not stop.is_set():
            await (connect_once() if turn % 2 == 0 else publish_once())
            turn += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(tasks)))
    seconds = time.perf_counter() - started
    await channel.close()
    opened = sum(outcomes.values())
    return {"outcomes": dict(outcomes), "seconds": round(seconds, 1), "streams_per_s": round(opened / seconds, 1)}


# -- the well-behaved agency -----------------------------------------------------------------------


async def measure(target: str, pki_root: Path, count: int, rate: float, adversary: list[str]) -> dict[str, Any]:
    """count events at rate from the well-behaved agency, with the adversary process (if any) running meanwhile."""
    receiver = bench_client(target, pki_root, RECEIVER)
    inbox = receiver.inbox(max_batch=256, window=4096)
    inbox.start()
    await asyncio.wait_for(inbox.opened.wait(), timeout=30)
    channel = channel_of(target, pki_root, SENDER)
    stub = hub_pb2_grpc.HubServiceStub(channel)
    envelopes = [
        envelope_of(SENDER, RECEIVER, f"urn:emergency:uid:incidentid:good-{i % 20}:bench") for i in range(count)
    ]
    ids = {e.distribution_id for e in envelopes}
    sent: dict[str, float] = {}
    latencies: list[float] = []
    refusals: collections.Counter[str] = collections.Counter()
    accepted = 0
    done = asyncio.Event()

    async def receive() -> None:
        async for delivery in inbox:
            inbox.ack(delivery)
            dist = delivery.envelope.distribution_id
            if dist in ids and dist in sent:
                latencies.append((time.perf_counter() - sent[dist]) * 1000)
                if len(latencies) >= accepted_target():
                    done.set()

    def accepted_target() -> int:
        return count - sum(refusals.values())

    async def send(env: Any) -> None:
        nonlocal accepted
        sent[env.distribution_id] = time.perf_counter()
        try:
            await stub.Publish(hub_pb2.PublishRequest(envelope=env), timeout=60)
            accepted += 1
        except grpc.aio.AioRpcError as exc:
            refusals[outcome_of_error(exc)] += 1

    receiving = asyncio.get_running_loop().create_task(receive())
    process = None
    if adversary:
        flag, *extra = adversary
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, flag, target, *extra, "--pki", str(pki_root), stdout=asyncio.subprocess.PIPE
        )
        await asyncio.sleep(WARMUP)
    tasks = []
    start = time.perf_counter()
    for i, env in enumerate(envelopes):  # open loop at a steady rate: a slow answer does not slow the sender
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.get_running_loop().create_task(send(env)))
    await asyncio.gather(*tasks)
    if accepted_target() <= len(latencies):
        done.set()
    try:
        await asyncio.wait_for(done.wait(), timeout=120)
    finally:
        adversary_report: dict[str, Any] = {}
        if process is not None:
            process.send_signal(signal.SIGINT)
            out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
            adversary_report = json.loads(out.decode().strip().splitlines()[-1])
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        await inbox.close()
        await receiver.close()
        await channel.close()
    return {
        "events": count,
        "delivered": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "refused": dict(refusals),
        "adversary": adversary_report,
    }


def summary(
    runs: dict[str, list[dict[str, Any]]],
) -> tuple[list[float], list[float], collections.Counter[str], collections.Counter[str]]:
    """Print the ratios and the adversaries' outcomes of the phases run; return them for the JSON report."""
    alone = runs["alone"]
    flood_ratio = [f["p99_ms"] / a["p99_ms"] for a, f in zip(alone, runs.get("flood", []), strict=False)]
    churn_ratio = [c["p99_ms"] / a["p99_ms"] for a, c in zip(alone, runs.get("churn", []), strict=False)]
    if flood_ratio:
        print(f"p99 flood / alone: {spread(flood_ratio, 'x')} (goal <= 1.2x)")
    if churn_ratio:
        print(f"p99 churn / alone: {spread(churn_ratio, 'x')}")
    flooder: collections.Counter[str] = collections.Counter()
    churner: collections.Counter[str] = collections.Counter()
    for r in runs.get("flood", []):
        flooder.update(r["adversary"].get("outcomes", {}))
    for r in runs.get("churn", []):
        churner.update(r["adversary"].get("outcomes", {}))
    flood_rates = [r["adversary"].get("offered_per_s", 0.0) for r in runs.get("flood", [])]
    churn_rates = [r["adversary"].get("streams_per_s", 0.0) for r in runs.get("churn", [])]
    if flood_rates:
        print(f"flooder: {spread(flood_rates, '/s', 0)} envelopes answered; outcomes {dict(flooder)}")
    if churn_rates:
        print(f"churner: {spread(churn_rates, '/s', 0)} streams opened and closed; outcomes {dict(churner)}")
    return flood_ratio, churn_ratio, flooder, churner


async def main() -> int:
    """Start nats-server and the hub, run the rounds of the three phases, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 events per phase (for CI)")
    parser.add_argument("--runs", type=int, default=3, help="rounds of the three phases; medians with min-max count")
    parser.add_argument("--count", type=int, help="events of the well-behaved agency per phase (default 1,000)")
    parser.add_argument("--rate", type=float, default=50.0, help="its events per second (default 50)")
    parser.add_argument("--per-request", type=int, default=100, help="envelopes per flood request")
    parser.add_argument("--flood-in-flight", type=int, default=16, help="flood requests unanswered at most")
    parser.add_argument("--churn-tasks", type=int, default=16, help="concurrent open-close loops of the churner")
    parser.add_argument(
        "--phases", default="alone,flood,churn", help="phases to run, comma-separated (alone is always run)"
    )
    parser.add_argument("--hub", action="append", default=[], help="[hub] setting, key = value (overrides the bench's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the JSON results")
    parser.add_argument("--flood", metavar="TARGET", help=argparse.SUPPRESS)  # the flooding child process
    parser.add_argument("--churn", metavar="TARGET", help=argparse.SUPPRESS)  # the churning child process
    parser.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        print(json.dumps(await flood(args.flood, args.pki, args.per_request, args.flood_in_flight)), flush=True)
        return 0
    if args.churn:
        print(json.dumps(await churn(args.churn, args.pki, args.churn_tasks)), flush=True)
        return 0
    count = args.count or (200 if args.quick else 1000)
    hub = dict(HUB_SETTINGS)
    for setting in args.hub:
        key, _, value = setting.partition("=")
        hub[key.strip()] = value.strip()
    phases = {
        "alone": [],
        "flood": ["--flood", "--per-request", str(args.per_request), "--flood-in-flight", str(args.flood_in_flight)],
        "churn": ["--churn", "--churn-tasks", str(args.churn_tasks)],
    }
    wanted = {"alone", *args.phases.split(",")}
    phases = {name: adversary for name, adversary in phases.items() if name in wanted}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in phases}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="opsroom-flood-") as tmp:
        root = Path(tmp)
        make_dev_pki(root / "pki", [SENDER, RECEIVER, FLOODER, CHURNER, TARGET])
        server = NatsServer(root / "nats")
        server.start()
        try:
            port, metrics_port = free_port(), free_port()
            config = write_config(root, server, port, metrics_port, hub)
            with hub_process(config, port) as hub_proc:
                await metrics_ready(metrics_port)
                target = f"127.0.0.1:{port}"
                for round_ in range(1, args.runs + 1):
                    for name, adversary in phases.items():
                        before = scrape(metrics_port)
                        cpu = cpu_seconds(hub_proc.pid)
                        result = await measure(target, root / "pki", count, args.rate, adversary)
                        result["round"] = round_
                        result["hub_cpu_seconds"] = round(cpu_seconds(hub_proc.pid) - cpu, 1)
                        after = scrape(metrics_port)
                        result["hub_refusals"] = {
                            k: after[k] - before.get(k, 0.0)
                            for k in after
                            if k.startswith("opsroom_refusals_total{") and after[k] - before.get(k, 0.0)
                        }
                        runs[name].append(result)
                        print(f"  round {round_} {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
                        await asyncio.sleep(SETTLE)
        finally:
            server.stop()
    elapsed = time.perf_counter() - started
    print(f"well-behaved agency: {count} events at {args.rate:.0f}/s per phase, {args.runs} rounds; hub {hub}")
    for name in phases:
        done = runs[name]
        print(
            f"  {name}: p50 {spread([r['p50_ms'] for r in done], ' ms')}, p99 {spread([r['p99_ms'] for r in done], ' ms')}"
        )
    flood_ratio, churn_ratio, flooder, churner = summary(runs)
    good_refused = sum(sum(r["refused"].values()) for rs in runs.values() for r in rs)
    print(f"well-behaved agency refused: {good_refused} (expected 0)")
    print(f"total {elapsed:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    meta = {"when": stamp, "cpus": os.cpu_count(), "python": platform.python_version(), "hub": hub}
    meta |= {"count": count, "rate": args.rate, "runs": args.runs, "per_request": args.per_request}
    report = {
        "meta": meta,
        "runs": runs,
        "p99_flood_over_alone": flood_ratio,
        "p99_churn_over_alone": churn_ratio,
        "flooder": dict(flooder),
        "churner": dict(churner),
        "well_behaved_refused": good_refused,
    }
    (args.out / f"flood-{stamp}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
