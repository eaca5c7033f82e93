"""How to write one envelope for k recipients: pipelined, staged (first, then the rest), or one atomic batch.

    .venv/bin/python bench/write_modes.py                 # 5 runs of 300 envelopes per mode and k
    .venv/bin/python bench/write_modes.py --runs 2 --events 50

One nats-server with sync_interval: always, the hub's own transport (broker.store.jetstream)
and subjects; each envelope is k deliveries of 1 KB, written and awaited one envelope at a time
(the low-load case, where the hub writes each envelope as it comes). The modes:

- pipelined: the k writes sent together (the hub before the fix: a cut between them could leave
  part of the envelope stored);
- staged: the first delivery (with the claim and the plan) alone, the rest once it is stored
  (what the hub does now below the atomic threshold);
- atomic: one atomic batch of k messages (all or nothing; what the hub does above the threshold).

Modes are run in rotating order within each run, so that a noisy stretch of the machine hits
each of them; the table gives, per mode and k, the median over runs of each run's median and p99
latency with the spread (min-max over runs), and the ratio to pipelined.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.config import NatsConfig  # noqa: E402
from broker.dev.embedded import NatsServer  # noqa: E402
from broker.lanes import Lane  # noqa: E402
from broker.store import receipts  # noqa: E402
from broker.store.jetstream import JetStream  # noqa: E402
from broker.store.model import OutMsg  # noqa: E402

PAYLOAD = b"x" * 1024
MODES = ("pipelined", "staged", "atomic")


def envelope(js: JetStream, k: int) -> list[OutMsg]:
    """The k deliveries of a new envelope; the first claims its distribution id."""
    dist = str(uuid.uuid4())
    layout = js.layout
    out = []
    for i in range(k):
        agency = f"it.pl.{i:06d}"
        headers = receipts.delivery_headers(layout, dist, agency, sender="it.nue.cur.to", accepted_ns=1, digest=b"")
        if i == 0:
            headers.update(receipts.claim_headers(layout.deliveries_of_envelope(dist)))
        out.append(OutMsg(layout.delivery_subject(agency, Lane.URGENT, dist), PAYLOAD, headers))
    return out


def writer(js: JetStream, mode: str) -> Callable[[list[OutMsg]], Awaitable[None]]:
    async def pipelined(msgs: list[OutMsg]) -> None:
        results = await js.publish_each(msgs)
        assert all(isinstance(r, int) for r in results), results

    async def staged(msgs: list[OutMsg]) -> None:
        results = await js.publish_each(msgs[:1])
        if len(msgs) > 1:
            results += await js.publish_each(msgs[1:])
        assert all(isinstance(r, int) for r in results), results

    async def atomic(msgs: list[OutMsg]) -> None:
        await js.commit(msgs)

    return {"pipelined": pipelined, "staged": staged, "atomic": atomic}[mode]


async def one(js: JetStream, mode: str, k: int, events: int) -> tuple[float, float]:
    """(median, p99) milliseconds of writing events envelopes of k deliveries, one at a time."""
    write = writer(js, mode)
    latencies = []
    for _ in range(events):
        msgs = envelope(js, k)
        started = time.perf_counter()
        await write(msgs)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    return statistics.median(latencies), latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=300, help="envelopes per mode, k and run")
    parser.add_argument("--k", type=int, action="append", default=[], help="recipients per envelope (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    ks = args.k or [1, 2, 3, 5]
    results: dict[tuple[str, int], list[tuple[float, float]]] = {(m, k): [] for m in MODES for k in ks}
    with tempfile.TemporaryDirectory(prefix="opsroom-modes-") as tmp:
        server = NatsServer(Path(tmp) / "nats", name="bench-modes")
        server.start()
        try:
            js = await JetStream.connect(NatsConfig(servers=(server.url,), monitor_urls=(server.monitor_url,)))
            try:
                await js.verify_sync_always()
                await js.ensure_stream()
                for run in range(args.runs):
                    for k in ks:
                        for shift in range(len(MODES)):
                            mode = MODES[(run + shift) % len(MODES)]
                            results[mode, k].append(await one(js, mode, k, args.events))
            finally:
                await js.close()
        finally:
            server.stop()
    print(f"{args.runs} runs x {args.events} envelopes; ms, median of runs (min-max over runs)")
    print(f"{'k':>2} {'mode':<10} {'median':>20} {'p99':>20} {'median / pipelined':>19}")
    for k in ks:
        base = statistics.median(m for m, _ in results["pipelined", k])
        for mode in MODES:
            medians = [m for m, _ in results[mode, k]]
            p99s = [p for _, p in results[mode, k]]
            ratio = statistics.median(medians) / base
            print(f"{k:>2} {mode:<10} {spread(medians):>20} {spread(p99s):>20} {ratio:>18.2f}x")
    if args.json is not None:
        args.json.write_text(json.dumps({f"{m}/{k}": v for (m, k), v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
