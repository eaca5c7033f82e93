"""Priority lanes and backlog replay, measured on the hub in its own process against one nats-server.

    .venv/bin/python bench/lanes.py            # the full run (a few minutes)
    .venv/bin/python bench/lanes.py --quick    # a smaller one (CI smoke)

1. Urgent lane under a bulk flood. A 112 room sends incident reports (urgent lane) to the
   Questura at a steady rate; the Questura's room receives and acknowledges everything. The same
   run is made without other traffic and with a concurrent flood of plate reads (bulk lane, sent
   by the Polizia Locale as fast as the hub takes them, to the same Questura room). Reported:
   the urgent events' publish-to-delivery p99 in each, and their ratio (the target is at most 2x).
   Runs alternate (alone, flood, alone, flood, ...); the median of each counts.
2. Backlog replay. The Questura's room is offline while 100,000 plate reads are stored for it;
   then it connects and takes them all. Reported: the hub's resident memory before it connects
   and at its peak during the replay (sampled from /proc every 50 ms), the growth (target: under
   100 MB), the replay rate, and that every event arrived once, in order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opsroom.alert.v1 import alert_pb2  # noqa: E402
from opsroom.common.v1 import common_pb2  # noqa: E402
from opsroom.envelope.v1 import envelope_pb2  # noqa: E402
from opsroom.hub.v1 import hub_pb2  # noqa: E402
from opsroom_client import HubClient, new_envelope  # noqa: E402

from bench.run import (  # noqa: E402
    PAYLOAD_BYTES,
    RECEIVER,
    SENDER,
    bench_client,
    bench_envelope,
    breakdown,
    hub_process,
    paced,
    percentile,
    scrape,
    write_hub_config,
)
from broker.dev.certs import make_dev_pki  # noqa: E402
from broker.dev.embedded import NatsServer, free_port  # noqa: E402
from broker.dev.processes import rss_mb  # noqa: E402

BULK_SENDER = "it.pl.001272"
READS_INCIDENT = "urn:emergency:uid:incidentid:transits-001272:bench"


def plate_read() -> envelope_pb2.Envelope:
    """A plate-reader transit (bulk lane) of about PAYLOAD_BYTES serialized."""
    env = new_envelope(
        BULK_SENDER,
        kind=common_pb2.KIND_REPORT,
        recipients=[RECEIVER],
        incident_ids=[READS_INCIDENT],
        operator_id="LPR-GATE-7",
        alert=alert_pb2.Alert(
            scope=alert_pb2.SCOPE_RESTRICTED,
            restriction="sale operative",
            infos=[
                alert_pb2.AlertInfo(
                    language="it-IT",
                    categories=[alert_pb2.CATEGORY_SECURITY],
                    event="Transito veicolo",
                    urgency=alert_pb2.URGENCY_UNKNOWN,
                    severity=alert_pb2.SEVERITY_MINOR,
                    certainty=alert_pb2.CERTAINTY_OBSERVED,
                    areas=[alert_pb2.AlertArea(area_desc="Torino", comuni_istat=["001272"])],
                )
            ],
        ),
    )
    env.alert.infos[0].description = "x" * max(0, PAYLOAD_BYTES - env.ByteSize() - 3)
    return env


@dataclass
class Clients:
    """The three rooms of the bench."""

    urgent: HubClient
    bulk: HubClient
    room: HubClient

    async def close(self) -> None:
        """Close every client."""
        for client in (self.urgent, self.bulk, self.room):
            await client.close()


def clients(target: str, pki_root: Path) -> Clients:
    """Clients of the 112 room, the Polizia Locale and the Questura."""
    return Clients(*(bench_client(target, pki_root, agency) for agency in (SENDER, BULK_SENDER, RECEIVER)))


async def flood_reads(target: str, pki_root: Path) -> float:
    """Publish plate reads as fast as the hub takes them until SIGINT; returns how many were accepted per second."""
    rooms = clients(target, pki_root)
    publisher = rooms.bulk.stream_publisher(max_batch=200, max_requests_in_flight=16)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    slots = asyncio.Semaphore(4000)
    flooded = 0

    async def one(env: envelope_pb2.Envelope) -> None:
        nonlocal flooded
        try:
            await publisher.publish(env)
            flooded += 1
        finally:
            slots.release()

    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    for _ in range(10_000_000):  # bounded: stopped long before
        if stop.is_set():
            break
        await slots.acquire()
        task = asyncio.get_running_loop().create_task(one(plate_read()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - started
    await publisher.close()
    await rooms.close()
    return flooded / elapsed


async def urgent_run(target: str, pki_root: Path, count: int, rate: float, *, flood: bool) -> dict[str, float]:
    """count urgent events at rate per second, with or without a bulk flood; their latencies and the flood's rate."""
    rooms = clients(target, pki_root)
    inbox = rooms.room.inbox(max_batch=256, window=4096)
    inbox.start()
    await asyncio.wait_for(inbox.opened.wait(), timeout=30)
    urgent = [bench_envelope(f"urn:emergency:uid:incidentid:lanes-{i % 20}:bench") for i in range(count)]
    urgent_ids = {e.distribution_id for e in urgent}
    sent: dict[str, float] = {}
    latencies: list[float] = []
    accepted: list[float] = []
    bulk_got = 0
    done = asyncio.Event()

    async def receive() -> None:
        nonlocal bulk_got
        async for delivery in inbox:
            inbox.ack(delivery)
            dist = delivery.envelope.distribution_id
            if dist in urgent_ids:
                latencies.append((time.perf_counter() - sent[dist]) * 1000)
                if len(latencies) >= count:
                    done.set()
            else:
                bulk_got += 1

    async def send(i: int) -> None:
        env = urgent[i]
        sent[env.distribution_id] = time.perf_counter()
        await rooms.urgent.publish(env)
        accepted.append((time.perf_counter() - sent[env.distribution_id]) * 1000)

    receiving = asyncio.get_running_loop().create_task(receive())
    flooder = None
    if flood:  # in a process of its own, so that the bench's loop measures and does not flood
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--flood", target, "--pki", str(pki_root), stdout=asyncio.subprocess.PIPE
        )
        await asyncio.sleep(2.0)  # the flood is at full speed before urgent traffic starts
    await paced(count, rate, 64, send)
    await asyncio.wait_for(done.wait(), timeout=120)
    bulk_rate = 0.0
    if flooder is not None:
        flooder.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(flooder.communicate(), timeout=60)
        bulk_rate = float(out.decode().strip() or 0)
    receiving.cancel()
    await asyncio.gather(receiving, return_exceptions=True)
    await rooms.close()
    return {
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "accept_p99_ms": round(percentile(accepted, 0.99), 2),
        "bulk_per_s": round(bulk_rate, 1),
    }


async def backlog_replay(target: str, pki_root: Path, pid: int, count: int) -> dict[str, float]:
    """Store count reads for an offline room, then replay them to it; memory of the hub before and during."""
    rooms = clients(target, pki_root)
    publisher = rooms.bulk.stream_publisher(max_batch=500, max_requests_in_flight=16)
    order: list[str] = []

    async def send(_i: int) -> None:
        env = plate_read()
        order.append(env.distribution_id)  # the publisher's stream keeps this order
        await publisher.publish(env)

    stored_started = time.perf_counter()
    await paced(count, None, 8000, send)
    await publisher.close()
    store_rate = count / (time.perf_counter() - stored_started)
    await asyncio.sleep(2.0)
    before = rss_mb(pid)
    peak = before
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.get_running_loop().create_task(sample())
    inbox = rooms.room.inbox(max_batch=256, window=1024)
    got: list[str] = []
    started = time.perf_counter()
    async with asyncio.timeout(600):
        async for delivery in inbox:
            inbox.ack(delivery)
            got.append(delivery.envelope.distribution_id)
            if len(got) >= count:
                break
    elapsed = time.perf_counter() - started
    await inbox.close()
    sampling = False
    await sampler
    await rooms.close()
    return {
        "events": count,
        "stored_per_s": round(store_rate, 1),
        "replayed_per_s": round(count / elapsed, 1),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak, 1),
        "growth_mb": round(peak - before, 1),
        "in_order": float(got == order),
        "duplicates": float(len(got) - len(set(got))),
    }


async def main() -> int:
    """Run both measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer events (for CI)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each urgent scenario; the medians count")
    parser.add_argument("--backlog", type=int, default=0, help="events of the backlog replay (default 100,000)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the JSON results")
    parser.add_argument("--no-audit", action="store_true", help="run the hub without its audit log")
    parser.add_argument("--bulk-max", type=int, default=0, help="the hub's bulk_max_per_second (0: none)")
    parser.add_argument("--nats", action="append", default=[], help="extra [nats] setting for the hub, key = value")
    parser.add_argument("--flood", metavar="TARGET", help=argparse.SUPPRESS)  # the flooding child process
    parser.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        print(await flood_reads(args.flood, args.pki))
        return 0
    count, rate = (200, 50.0) if args.quick else (1000, 100.0)
    backlog = args.backlog or (5000 if args.quick else 100_000)
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="opsroom-bench-lanes-") as tmp:
        root = Path(tmp)
        make_dev_pki(root / "pki", [SENDER, BULK_SENDER, RECEIVER])
        server = NatsServer(root / "nats")
        server.start()
        try:
            port, metrics_port = free_port(), free_port()
            config = write_hub_config(
                root, server, port, metrics_port, args.nats, senders=(SENDER, BULK_SENDER), audit=not args.no_audit
            )
            if args.bulk_max:
                text = config.read_text().replace("[hub]\n", f"[hub]\nbulk_max_per_second = {args.bulk_max}\n", 1)
                config.write_text(text)
            with hub_process(config, port) as hub:
                target = f"127.0.0.1:{port}"
                runs: dict[str, list[dict[str, float]]] = {"alone": [], "flood": []}
                for _ in range(args.runs):
                    for name in ("alone", "flood"):
                        before = scrape(metrics_port)
                        result = await urgent_run(target, root / "pki", count, rate, flood=name == "flood")
                        runs[name].append(result)
                        print(f"  urgent {name}: {result}", file=sys.stderr)
                        print(f"    internals: {breakdown(before, scrape(metrics_port))}", file=sys.stderr)
                alone = statistics.median(r["p99_ms"] for r in runs["alone"])
                flood = statistics.median(r["p99_ms"] for r in runs["flood"])
                bulk_rate = statistics.median(r["bulk_per_s"] for r in runs["flood"])
                report["urgent"] = {"runs": runs, "p99_alone_ms": alone, "p99_flood_ms": flood}
                print(f"urgent lane, {count} events at {rate:.0f}/s, p99 publish to delivery (median of {args.runs}):")
                print(f"  alone {alone:.2f} ms; with a bulk flood of {bulk_rate:.0f} reads/s {flood:.2f} ms")
                print(f"  urgent p99 with flood / alone: {flood / alone:.2f}x (target <= 2x)")
                replay = await backlog_replay(target, root / "pki", hub.pid, backlog)
                report["replay"] = replay
                print(f"backlog replay of {backlog} reads to a room that was offline:")
                print(
                    f"  hub RSS {replay['rss_before_mb']:.0f} MB before, {replay['rss_peak_mb']:.0f} MB peak:"
                    f" growth {replay['growth_mb']:.1f} MB (target < 100 MB); replayed at"
                    f" {replay['replayed_per_s']:.0f}/s (stored at {replay['stored_per_s']:.0f}/s);"
                    f" in order: {bool(replay['in_order'])}, duplicates handed over: {replay['duplicates']:.0f}"
                )
        finally:
            server.stop()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    meta = {"when": stamp, "quick": args.quick, "lanes": [hub_pb2.Lane.Name(v) for v in hub_pb2.Lane.values()]}
    (out / f"lanes-{stamp}.json").write_text(json.dumps({"meta": meta, **report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
