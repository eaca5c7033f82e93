"""Hub versus raw JetStream, side by side in one run, on one nats-server with sync_interval: always.

    .venv/bin/python bench/run.py            # the full run (about two minutes)
    .venv/bin/python bench/run.py --quick    # a smaller one (CI smoke)

Raw JetStream: nats-py publishes 1 KB messages (with a message id) and a durable pull consumer
receives and acknowledges them. Hub: a sender publishes ~1 KB envelopes over gRPC (mTLS) through
the client's stream publisher, the hub validates, routes and stores them, and a receiver's inbox
gets and acknowledges them over gRPC. The hub runs in its own process, as in production.

Each scenario runs in rounds (--runs, default 5): raw, hub, hub without audit, one after the
other, so that each round's ratios compare runs made under the same conditions. The report gives,
per scenario and path, the median of the rounds with the range (min-max), and the ratios of each
round summarized the same way: never the best run alone. Throughput is events delivered to the
receiver per second (first send to last delivery); latency is publish to delivery, measured in
the bench process for both paths. Results go to stdout and, every run of every round, as JSON, to
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opsroom_client import HubClient, new_envelope  # noqa: E402

from broker.dev import processes  # noqa: E402
from broker.dev.certs import make_dev_pki  # noqa: E402
from broker.dev.embedded import NatsServer, free_port  # noqa: E402
from broker.dev.processes import cpu_seconds  # noqa: E402
from broker.dev.testing import credentials  # noqa: E402

SENDER = "it.nue.cur.to"
RECEIVER = "it.ps.questura.to"
PAYLOAD_BYTES = 1024


@dataclass
class Result:
    """One measured run."""

    path: str
    scenario: str
    events: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    ack_p50_ms: float
    ack_p99_ms: float
    round: int = 0  # the round of the scenario it was measured in (1, 2, ...)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, in the same unit."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summarize(
    path: str, scenario: str, sent: dict[str, float], acked: dict[str, float], got: dict[str, float]
) -> Result:
    """A Result from send, ack and delivery times keyed by message id."""
    start = min(sent.values())
    end = max(got.values())
    latencies = [(got[k] - sent[k]) * 1000 for k in got if k in sent]
    ack_latencies = [(acked[k] - sent[k]) * 1000 for k in acked if k in sent]
    seconds = end - start
    return Result(
        path,
        scenario,
        len(got),
        round(seconds, 3),
        round(len(got) / seconds, 1) if seconds > 0 else 0.0,
        round(percentile(latencies, 0.5), 2),
        round(percentile(latencies, 0.99), 2),
        round(percentile(ack_latencies, 0.5), 2),
        round(percentile(ack_latencies, 0.99), 2),
    )


async def paced(count: int, rate: float | None, window: int, send: Callable[[int], Awaitable[None]]) -> None:
    """Call send(i) count times: as fast as `window` concurrent calls allow, or at `rate` per second."""
    slots = asyncio.Semaphore(window)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    async def one(i: int) -> None:
        try:
            await send(i)
        finally:
            slots.release()

    for i in range(count):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await slots.acquire()
        task = asyncio.get_running_loop().create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


# -- raw JetStream -------------------------------------------------------------------------------


async def run_raw(server: NatsServer, scenario: str, count: int, rate: float | None) -> Result:
    """nats-py publish with acks, durable pull consumer with explicit acks."""
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    stream = f"RAW{uuid.uuid4().hex[:8]}"
    subject = f"raw.{stream}"
    await js.add_stream(StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE))
    await js.add_consumer(
        stream, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000)
    )
    psub = await js.pull_subscribe_bind("c", stream=stream)
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}
    got: dict[str, float] = {}
    padding = os.urandom(PAYLOAD_BYTES - 36)

    async def receive() -> None:
        while len(got) < count:
            try:
                msgs = await psub.fetch(512, timeout=1)
            except nats.errors.TimeoutError:
                continue
            now = time.perf_counter()
            for msg in msgs:
                got[msg.data[:36].decode()] = now
                await msg.ack()

    async def send(_i: int) -> None:
        key = str(uuid.uuid4())
        sent[key] = time.perf_counter()
        await js.publish(subject, key.encode() + padding, headers={"Nats-Msg-Id": key})
        acked[key] = time.perf_counter()

    receiver = asyncio.get_running_loop().create_task(receive())
    await paced(count, rate, 512, send)
    await asyncio.wait_for(receiver, timeout=120)
    await js.delete_stream(stream)
    await nc.close()
    return summarize("raw JetStream", scenario, sent, acked, got)


# -- hub -----------------------------------------------------------------------------------------


def bench_envelope(incident_id: str) -> envelope_pb2.Envelope:
    """An incident report of about PAYLOAD_BYTES serialized."""
    env = new_envelope(
        SENDER,
        kind=common_pb2.KIND_REPORT,
        recipients=[RECEIVER],
        incident_ids=[incident_id],
        operator_id="OP-BENCH-1",
        incident=incident_pb2.Incident(
            id=incident_id,
            type=incident_pb2.IncidentType(eido_code="FIGHT"),
            status=incident_pb2.INCIDENT_STATUS_ACTIVE,
            priority=common_pb2.PRIORITY_HIGH,
            locations=[common_pb2.Location(type="CurrentIncident", comune_istat="001272")],
        ),
    )
    env.incident.description = "x" * max(0, PAYLOAD_BYTES - env.ByteSize() - 3)
    return env


def bench_client(target: str, pki_root: Path, agency: str) -> HubClient:
    """A client of the hub at target, as agency, with the bench's dev PKI (made by make_dev_pki under pki_root)."""
    from broker.dev.certs import DevPki, KeyPair  # noqa: PLC0415

    pki = DevPki(pki_root, pki_root / "ca.pem", KeyPair(pki_root / "hub.pem", pki_root / "hub-key.pem"))
    return HubClient(target, credentials(pki, agency), server_name="localhost")


async def run_hub(  # noqa: PLR0917 - the scenario's parameters, as run_raw's
    target: str, pki_root: Path, scenario: str, count: int, rate: float | None, path: str = "hub"
) -> Result:
    """Sender -> hub (gRPC, mTLS) -> JetStream -> hub -> receiver (gRPC), acknowledged."""
    sender = bench_client(target, pki_root, SENDER)
    receiver = bench_client(target, pki_root, RECEIVER)
    publisher = sender.stream_publisher(max_batch=200, max_requests_in_flight=16)
    envelopes = [bench_envelope(f"urn:emergency:uid:incidentid:bench-{i % 50}:bench") for i in range(count)]
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}
    got: dict[str, float] = {}
    inbox = receiver.inbox(max_batch=256, window=8192)
    inbox.start()
    await asyncio.wait_for(inbox.opened.wait(), timeout=30)

    async def receive() -> None:
        async for delivery in inbox:
            got[delivery.envelope.distribution_id] = time.perf_counter()
            inbox.ack(delivery)
            if len(got) >= count:
                return

    async def send(i: int) -> None:
        env = envelopes[i]
        sent[env.distribution_id] = time.perf_counter()
        await publisher.publish(env)
        acked[env.distribution_id] = time.perf_counter()

    receiving = asyncio.get_running_loop().create_task(receive())
    await paced(count, rate, 4096, send)
    await asyncio.wait_for(receiving, timeout=120)
    await publisher.close()
    await receiver.close()
    await sender.close()
    return summarize(path, scenario, sent, acked, got)


NO_AUDIT = "hub, no audit"

# -- orchestration -------------------------------------------------------------------------------


def write_hub_config(
    root: Path,
    server: NatsServer,
    port: int,
    metrics_port: int,
    nats_extra: list[str],
    *,
    audit: bool = True,
    senders: tuple[str, ...] = (SENDER,),
    hub_extra: list[str] | None = None,
) -> Path:
    """A hub config for the bench's nats-server, agencies (senders and the receiver) and dev PKI.

    With or without its audit log; the two hubs of a run keep their streams apart (names and subjects).
    hub_extra: more [hub] settings ("key = value" lines).
    """
    config = root / f"hub-{'audit' if audit else 'noaudit'}.toml"
    stream = [] if audit else ['stream = "OPSROOM_NOAUDIT"', 'subject_prefix = "opsroom-noaudit"']
    audit_section = 'signing_key = "pki/audit-key.pem"' if audit else "enabled = false"
    config.write_text(
        f"""
[hub]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{metrics_port}"
{chr(10).join(hub_extra or [])}
[tls]
ca_file = "pki/ca.pem"
cert_file = "pki/hub.pem"
key_file = "pki/hub-key.pem"
[nats]
servers = ["{server.url}"]
monitor_urls = ["{server.monitor_url}"]
{chr(10).join([*stream, *nats_extra])}
[audit]
{audit_section}
{"".join(f'[[agencies]]{chr(10)}id = "{a}"{chr(10)}' for a in (*senders, RECEIVER))}
[[allow]]
from = {json.dumps(list(senders))}
to = ["{RECEIVER}"]
"""
    )
    return config


@contextlib.contextmanager
def hub_process(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`opsroom serve` in its own process, stopped by PID."""
    profile = os.environ.get("OPSROOM_BENCH_PROFILE")  # a folder: each hub run writes a cProfile file there
    python = [sys.executable]
    if profile:
        python += ["-m", "cProfile", "-o", str(Path(profile) / f"hub-{time.time_ns()}.prof")]
    proc = subprocess.Popen(
        [*python, "-m", "broker", "--log-level", "WARNING", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"hub exited with {proc.returncode}")
            try:
                with __import__("socket").create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        yield proc
    finally:
        processes.stop(proc, timeout=20)


def scrape(port: int) -> dict[str, float]:
    """The hub's counters and histogram sums, by sample name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("opsroom_") and (" " in line) and ("_bucket" not in line):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def breakdown(
    before: dict[str, float], after: dict[str, float], events: int = 0, cpu: tuple[float, float] = (0.0, 0.0)
) -> str:
    """Mean durations inside the hub between two scrapes: writes by mode, publish to ack, store to delivery.

    With events, also CPU microseconds per event of the hub process and of nats-server (cpu:
    their CPU seconds over the same run).
    """

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    parts = []
    for lane in ("urgent", "bulk"):
        for mode in ("single", "atomic"):
            labels = f'{{lane="{lane}",mode="{mode}"}}'
            n = delta(f"opsroom_commit_seconds_count{labels}")
            if n:
                seconds = delta(f"opsroom_commit_seconds_sum{labels}") / n
                msgs = delta(f"opsroom_commit_messages_sum{labels}") / n
                parts.append(f"{lane} {mode} writes {n:.0f} x {msgs:.1f} msgs, {seconds * 1000:.2f} ms")
    n = delta("opsroom_audit_write_seconds_count")
    if n:
        entries = delta("opsroom_audit_entries_total") / n
        parts.append(
            f"audit writes {n:.0f} x {entries:.1f} entries, {delta('opsroom_audit_write_seconds_sum') / n * 1000:.2f} ms"
        )
    for name, metric in (
        ("publish->ack", "opsroom_publish_to_ack_seconds"),
        ("store->delivery", "opsroom_publish_to_delivery_seconds"),
    ):
        n = delta(f"{metric}_count")
        if n:
            parts.append(f"{name} {delta(f'{metric}_sum') / n * 1000:.2f} ms")
    if events:
        parts.append(f"CPU per event: hub {cpu[0] / events * 1e6:.0f} us, nats-server {cpu[1] / events * 1e6:.0f} us")
    return "; ".join(parts)


def scenarios(*, quick: bool) -> list[tuple[str, int, float | None]]:
    """(name, events, rate per second or None for max rate)."""
    if quick:
        return [("max rate", 3000, None), ("1000/s", 2000, 1000.0), ("100/s", 200, 100.0)]
    return [("max rate", 20_000, None), ("1000/s", 10_000, 1000.0), ("100/s", 1000, 100.0)]


def spread(values: list[float], unit: str = "", digits: int = 2) -> str:
    """The median of values with their range: "1.23x [1.10-1.40]"."""
    return f"{statistics.median(values):.{digits}f}{unit} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def table(results: list[Result]) -> str:
    """Every run as a row, then per scenario the medians and ranges of the paths and of each round's ratios."""
    head = f"{'scenario':<10} {'path':<14} {'round':>5} {'events':>7} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    lines = [f"{head} {'ack p50':>8} {'ack p99':>8}"]
    rounds: dict[str, dict[int, dict[str, Result]]] = {}
    for r in results:
        rounds.setdefault(r.scenario, {}).setdefault(r.round, {})[r.path] = r
        lines.append(
            f"{r.scenario:<10} {r.path:<14} {r.round:>5} {r.events:>7} {r.throughput:>9.1f} {r.p50_ms:>8.2f}"
            f" {r.p99_ms:>8.2f} {r.ack_p50_ms:>8.2f} {r.ack_p99_ms:>8.2f}"
        )
    lines.append("")
    for scenario, by_round in rounds.items():
        n = len(by_round)
        for path in ("raw JetStream", "hub", NO_AUDIT):
            done = [runs[path] for runs in by_round.values() if path in runs]
            if done:
                lines.append(
                    f"{scenario}: {path}: msg/s {spread([r.throughput for r in done], digits=1)},"
                    f" p99 {spread([r.p99_ms for r in done], ' ms')} ({len(done)} runs)"
                )
        pairs = [
            (runs["raw JetStream"], runs["hub"]) for runs in by_round.values() if {"raw JetStream", "hub"} <= set(runs)
        ]
        if pairs:
            lines.append(
                f"{scenario}: hub/raw throughput {spread([h.throughput / r.throughput for r, h in pairs], 'x')}, "
                f"p99 hub/raw {spread([h.p99_ms / r.p99_ms for r, h in pairs], 'x')} (median [min-max] of {n} rounds)"
            )
        bare = [(runs["hub"], runs[NO_AUDIT]) for runs in by_round.values() if {"hub", NO_AUDIT} <= set(runs)]
        if bare:
            lines.append(
                f"{scenario}: audit on/off throughput {spread([h.throughput / b.throughput for h, b in bare], 'x')}, "
                f"p99 on/off {spread([h.p99_ms / b.p99_ms for h, b in bare], 'x')}"
            )
    return "\n".join(lines)


def strace_fsyncs(path: Path) -> int:
    """fsync + fdatasync calls in an `strace -c` summary file."""
    total = 0
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync") and len(parts) >= 4:
            total += int(parts[3])
    return total


async def count_fsyncs(root: Path, *, quick: bool) -> list[str]:
    """Events, fsyncs and fsyncs per event for each path, on a nats-server traced by strace.

    strace slows the server down, so these runs only count; they say nothing of speed.
    """
    lines = [f"{'scenario':<10} {'path':<14} {'events':>7} {'fsyncs':>7} {'per event':>9}"]
    for name, count, rate in scenarios(quick=quick):
        for path in ("raw JetStream", "hub"):
            trace = root / f"strace-{uuid.uuid4().hex[:6]}.txt"
            wrapper = ("strace", "-f", "--seccomp-bpf", "-c", "-e", "trace=fsync,fdatasync", "-o", str(trace))
            server = NatsServer(root / f"nats-{uuid.uuid4().hex[:6]}", wrapper=wrapper)
            server.start()
            try:
                if path == "raw JetStream":
                    result = await run_raw(server, name, count, rate)
                else:
                    port = free_port()
                    with hub_process(write_hub_config(root, server, port, free_port(), []), port):
                        result = await run_hub(f"127.0.0.1:{port}", root / "pki", name, count, rate)
            finally:
                server.stop()
            fsyncs = strace_fsyncs(trace)
            lines.append(f"{name:<10} {path:<14} {result.events:>7} {fsyncs:>7} {fsyncs / result.events:>9.3f}")
    return lines


async def main() -> int:
    """Run every scenario on both paths and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer events (for CI)")
    parser.add_argument("--runs", type=int, default=5, help="rounds per scenario (each runs every path once)")
    parser.add_argument("--scenario", action="append", default=[], help="run only these scenarios (by name)")
    parser.add_argument("--nats", action="append", default=[], help="extra [nats] setting for the hub, key = value")
    parser.add_argument("--fsyncs", action="store_true", help="count fsyncs per event under strace instead")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the JSON results")
    args = parser.parse_args()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="opsroom-bench-") as tmp:
        root = Path(tmp)
        make_dev_pki(root / "pki", [SENDER, RECEIVER])
        if args.fsyncs:
            print("\n".join(await count_fsyncs(root, quick=args.quick)))
            return 0
        server = NatsServer(root / "nats")
        server.start()
        try:
            port, metrics_port, bare_port, bare_metrics = free_port(), free_port(), free_port(), free_port()
            with (
                hub_process(write_hub_config(root, server, port, metrics_port, args.nats), port) as hub_proc,
                hub_process(
                    write_hub_config(root, server, bare_port, bare_metrics, args.nats, audit=False), bare_port
                ) as bare_proc,
            ):
                for name, count, rate in scenarios(quick=args.quick):
                    if args.scenario and name not in args.scenario:
                        continue
                    runs: dict[str, list[Result]] = {"raw JetStream": [], "hub": [], NO_AUDIT: []}
                    for round_ in range(1, args.runs + 1):
                        raw = await run_raw(server, name, count, rate)
                        raw.round = round_
                        runs["raw JetStream"].append(raw)
                        for path, target, metrics, pid in (
                            ("hub", port, metrics_port, hub_proc.pid),
                            (NO_AUDIT, bare_port, bare_metrics, bare_proc.pid),
                        ):
                            before, cpu_before = scrape(metrics), (cpu_seconds(pid), cpu_seconds(server.pid))
                            result = await run_hub(f"127.0.0.1:{target}", root / "pki", name, count, rate, path)
                            result.round = round_
                            runs[path].append(result)
                            cpu = (cpu_seconds(pid) - cpu_before[0], cpu_seconds(server.pid) - cpu_before[1])
                            inside = breakdown(before, scrape(metrics), result.events, cpu)
                            print(f"  {path} internals, {name}: {inside}", file=sys.stderr)
                    for path, done in runs.items():
                        results.extend(done)
                        print(f"{name}: {path} {[round(r.throughput) for r in done]} msg/s", file=sys.stderr)
        finally:
            server.stop()
    report = table(results)
    print(report)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    meta = {"when": stamp, "cpus": os.cpu_count(), "python": platform.python_version(), "quick": args.quick}
    (out / f"{stamp}.json").write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
