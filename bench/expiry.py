"""What the expiry worker costs: its passes over rooms away with large backlogs, on one nats-server.

    .venv/bin/python bench/expiry.py                # 40 rooms away, 2,000 deliveries each (80,000)
    .venv/bin/python bench/expiry.py --quick        # 5 rooms, 200 each

Deliveries of about 1 KB are stored for rooms that never connect (as the hub stores them: one
message per recipient, the expiry in a header), half expiring a minute from now, half in a day.
The worker (broker.delivery.expiry.Expirer, the hub's own code, with a clock the bench moves) is then
run pass by pass, and reported:

1. the first scan: passes, seconds and CPU (this process and nats-server) until every expiry is
   known, and the deliveries read per second (passes run back to back here; the hub runs one a
   second, so per pass is what matters: at most SCAN_PER_PASS reads);
2. a pass with nothing new (the steady state while rooms stay away): milliseconds and CPU;
3. memory per delivery whose expiry is kept (tracemalloc);
4. the clock moved past the short expiries: the passes that write their notices (at most
   NOTICES_PER_PASS each), then a second worker starting from nothing, as a restarted or other
   replica does, until it has read everything again (every notice already stored: none new).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.config import NatsConfig  # noqa: E402
from broker.delivery.expiry import Backlog, Expirer  # noqa: E402
from broker.dev.embedded import NatsServer  # noqa: E402
from broker.dev.processes import cpu_seconds  # noqa: E402
from broker.lanes import Lane  # noqa: E402
from broker.ops.metrics import Metrics  # noqa: E402
from broker.publish.committer import Committer  # noqa: E402
from broker.store import receipts  # noqa: E402
from broker.store.jetstream import JetStream  # noqa: E402
from broker.store.layout import EXPIRES_HEADER  # noqa: E402
from broker.store.model import OutMsg  # noqa: E402

SENDER = "it.nue.cur.to"
PAYLOAD = b"x" * 1000


class Clock:
    """The worker's clock, moved by the bench."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def rooms(count: int) -> list[str]:
    """Agency ids of the rooms away (Polizia Locale of made-up comuni)."""
    return [f"it.pl.9{n:05d}" for n in range(count)]


async def store(js: JetStream, agencies: list[str], per_room: int, now: datetime) -> int:
    """Store per_room deliveries for each agency, half expiring in a minute, half in a day; returns the short ones."""
    layout = js.layout
    short = 0
    batch: list[OutMsg] = []
    accepted_ns = int(now.timestamp() * 1e9)
    for n in range(per_room):
        for index, agency in enumerate(agencies):
            dist = f"bench-{n:06d}-{index:04d}"
            headers = receipts.delivery_headers(
                layout, dist, agency, sender=SENDER, accepted_ns=accepted_ns, digest=hashlib.sha256(PAYLOAD).digest()
            )
            expires = now + (timedelta(minutes=1) if n % 2 == 0 else timedelta(days=1))
            short += n % 2 == 0
            headers[EXPIRES_HEADER] = str(int(expires.timestamp() * 1e9))
            batch.append(OutMsg(layout.delivery_subject(agency, Lane.URGENT, dist), PAYLOAD, headers))
            if len(batch) == 1000:
                await js.commit(batch)
                batch = []
    if batch:
        await js.commit(batch)
    return short


async def measure(pass_: Expirer, nats_pid: int) -> tuple[float, float, float, int]:
    """One pass: (seconds, CPU seconds of this process, of nats-server, notices new)."""
    wall, cpu, server = time.perf_counter(), time.process_time(), cpu_seconds(nats_pid)
    new = await pass_.check()
    return time.perf_counter() - wall, time.process_time() - cpu, cpu_seconds(nats_pid) - server, new


def bytes_per_entry(count: int) -> float:
    """Memory a Backlog holds per delivery whose expiry it keeps."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    backlog = Backlog()
    for seq in range(1, count + 1):
        backlog.read(seq, 1_800_000_000_000_000_000 + seq)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(backlog) == count
    return grown / count


async def main() -> int:
    """Run the four measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 rooms of 200 deliveries")
    parser.add_argument("--rooms", type=int, default=40)
    parser.add_argument("--per-room", type=int, default=2000)
    args = parser.parse_args()
    count, per_room = (5, 200) if args.quick else (args.rooms, args.per_room)
    with tempfile.TemporaryDirectory(prefix="opsroom-bench-expiry-") as tmp:
        server = NatsServer(Path(tmp) / "nats", name="bench-expiry")
        server.start()
        try:
            assert server.proc is not None
            cfg = NatsConfig(servers=(server.url,), monitor_urls=(server.monitor_url,), max_ack_pending=10_000)
            js = await JetStream.connect(cfg)
            await js.ensure_stream()
            metrics = Metrics()
            committer = Committer(js.commit, metrics, publish_each=js.publish_each)
            commit_loop = asyncio.get_running_loop().create_task(committer.run())
            clock = Clock()
            agencies = rooms(count)
            started = time.perf_counter()
            short = await store(js, agencies, per_room, clock())
            total = count * per_room
            print(
                f"stored {total:,} deliveries of {len(PAYLOAD)} B for {count} rooms away in "
                f"{time.perf_counter() - started:.1f} s ({short:,} expiring in a minute, the rest in a day)"
            )

            def worker() -> Expirer:
                return Expirer(js, committer, metrics, clock, agencies=lambda: agencies, presence_timeout=60)

            first = worker()
            await first.check()  # makes the consumers of rooms that never connected
            passes, wall, cpu, server_cpu = 0, 0.0, 0.0, 0.0
            for _ in range(10_000):
                seconds, mine, theirs, _new = await measure(first, server.proc.pid)
                passes, wall, cpu, server_cpu = passes + 1, wall + seconds, cpu + mine, server_cpu + theirs
                if first.tracked() >= total:
                    break
            print(
                f"1. first scan: {passes} passes, {wall:.2f} s, CPU {cpu:.2f} s (hub) + {server_cpu:.2f} s "
                f"(nats-server); {total / wall:,.0f} deliveries read/s; {first.tracked():,} expiries kept"
            )

            idle = [await measure(first, server.proc.pid) for _ in range(10)]
            print(
                f"2. pass with nothing new: {1000 * sum(p[0] for p in idle) / len(idle):.1f} ms, CPU "
                f"{1000 * sum(p[1] for p in idle) / len(idle):.1f} ms (hub) + "
                f"{1000 * sum(p[2] for p in idle) / len(idle):.1f} ms (nats-server)"
            )

            print(f"3. memory per expiry kept: {bytes_per_entry(100_000):.0f} B")

            clock.now += timedelta(minutes=1, seconds=1)
            passes, wall, cpu, server_cpu, notified = 0, 0.0, 0.0, 0.0, 0
            for _ in range(10_000):
                seconds, mine, theirs, new = await measure(first, server.proc.pid)
                passes, wall, cpu, server_cpu = passes + 1, wall + seconds, cpu + mine, server_cpu + theirs
                notified += new
                if notified >= short or not new:
                    break
            print(
                f"4. expiries: {notified:,} notices stored in {passes} passes, {wall:.2f} s ({notified / wall:,.0f}/s), "
                f"CPU {cpu:.2f} s (hub) + {server_cpu:.2f} s (nats-server)"
            )
            again = worker()
            passes, wall, cpu, server_cpu, new_again = 0, 0.0, 0.0, 0.0, 0
            for _ in range(10_000):
                seconds, mine, theirs, fresh = await measure(again, server.proc.pid)
                passes, wall, cpu, server_cpu = passes + 1, wall + seconds, cpu + mine, server_cpu + theirs
                new_again += fresh
                if again.tracked() >= total - short:
                    break
            print(
                f"   a second worker from nothing (a restart, another replica): {passes} passes, {wall:.2f} s, "
                f"CPU {cpu:.2f} s (hub) + {server_cpu:.2f} s (nats-server); {new_again} notices new (expected 0)"
            )
            committer.close()
            await commit_loop
            await js.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
