"""The system under a fault test: dev PKI, the hub's config file and process, sender clients, room processes, and the final count.

Senders are three agencies publishing from the test's own event loop; the rooms (Questura and
Carabinieri of Torino) each run in their own process (tests/faults/room.py). Blocking process
work (starting, waiting) goes through threads, so that the senders keep running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from opsroom.audit.v1 import audit_pb2

from broker.audit import tools
from broker.certs import DevPki, make_dev_pki
from broker.client import HubClient, RetryPolicy
from broker.config import HubConfig
from broker.embedded import NatsServer, free_port
from broker.ids import agency_token
from broker.routing import AllowRule
from broker.testing import credentials, dev_config
from broker.transport.jetstream import JetStream
from tests.faults.hubconf import write_hub_toml
from tests.faults.load import RIDE_OUT, Counts, Ledger, Load, count
from tests.faults.procs import HubProcess, Processes, RoomLog, RoomProcess

CUR = "it.nue.cur.to"
PL = "it.pl.001272"
PL_MILANO = "it.pl.015146"
QUESTURA = "it.ps.questura.to"
CC = "it.cc.cp.to"
SENDERS = {CUR: "112 NUE - CUR Torino", PL: "Polizia Locale di Torino", PL_MILANO: "Polizia Locale di Milano"}
ROOMS = {QUESTURA: "Questura di Torino", CC: "Carabinieri - Comando Provinciale di Torino"}
ALLOW = (AllowRule("fault-load", frozenset(SENDERS), frozenset(ROOMS)),)


@dataclass
class Rig:
    """A running hub process on its nats-server(s), with the clients and room processes of one test."""

    root: Path
    pki: DevPki
    cfg: HubConfig
    hub: HubProcess
    processes: Processes
    clients: list[HubClient] = field(default_factory=list)
    rooms: dict[str, list[RoomProcess]] = field(default_factory=dict)

    def client(self, agency_id: str, retry: RetryPolicy = RIDE_OUT) -> HubClient:
        """A client of the hub authenticated as agency_id (closed at teardown)."""
        made = HubClient(self.hub.target, credentials(self.pki, agency_id), server_name="localhost", retry=retry)
        self.clients.append(made)
        return made

    def senders(self) -> dict[str, HubClient]:
        """One client per sender agency."""
        return {agency: self.client(agency) for agency in SENDERS}

    async def start_room(self, agency_id: str, window: int = 1024) -> RoomProcess:
        """A new client process for the room, once its session is open; each process writes its own file."""
        number = len(self.rooms.setdefault(agency_id, [])) + 1
        pair = self.pki.agency(agency_id)
        room = RoomProcess(
            agency_id,
            self.hub.target,
            self.pki.ca,
            pair.cert,
            pair.key,
            self.root / f"room-{agency_id}-{number}.out",
            self.root / f"room-{agency_id}-{number}.log",
            window=window,
        )
        self.rooms[agency_id].append(room)
        self.processes.keep(room.stop)
        await asyncio.to_thread(room.start)
        return room

    def room_logs(self) -> dict[str, list[RoomLog]]:
        """What every room process wrote, by agency."""
        return {agency: [p.read() for p in procs] for agency, procs in self.rooms.items()}

    async def until_delivered(self, ledger: Ledger, rooms: Iterable[str] = (), timeout: float = 30.0) -> None:
        """Wait until the rooms (default: all) got every event acknowledged to a sender for them (or timeout), then a moment more."""
        deadline = time.monotonic() + timeout
        wanted = tuple(rooms) or tuple(self.rooms)
        while time.monotonic() < deadline:
            logs = self.room_logs()
            if all(
                ledger.acked_to(agency) <= {d.distribution_id for log in logs[agency] for d in log.deliveries}
                for agency in wanted
            ):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # late duplicates, if any, arrive too

    async def unacked_at_hub(self, timeout: float = 10.0) -> int:
        """Deliveries of the rooms still pending or unacknowledged on their consumers (waits for 0 up to timeout)."""
        js = await JetStream.connect(self.cfg.nats, name="fault-test-check")
        try:
            deadline = time.monotonic() + timeout
            while True:
                pending = await self._pending(js)
                if pending == 0 or time.monotonic() > deadline:
                    return pending
                await asyncio.sleep(0.2)
        finally:
            await js.close()

    async def disclosures(self) -> set[tuple[str, str]]:
        """(distribution id, recipient) of every disclosure record in the audit log."""
        js = await JetStream.connect(self.cfg.nats, name="fault-test-audit")
        try:
            log = await tools.read_log(js)
        finally:
            await js.close()
        entries = (audit_pb2.AuditEntry.FromString(item.data) for item in log.items)
        return {
            (r.distribution_id, r.recipient)
            for entry in entries
            for r in entry.records
            if r.action == audit_pb2.ACTION_DISCLOSURE
        }

    async def _pending(self, js: JetStream) -> int:
        """Pending and unacknowledged messages of every consumer, on any stream, filtering the rooms' deliveries."""
        prefix = self.cfg.nats.subject_prefix
        filters = tuple(f"{prefix}.dlv.{agency_token(agency)}." for agency in self.rooms)
        total = 0
        for stream in await _listed(js, "STREAM.NAMES", "streams"):
            for info in await _listed(js, f"CONSUMER.LIST.{stream}", "consumers"):
                if str(info["config"].get("filter_subject", "")).startswith(filters):
                    total += int(info.get("num_pending", 0)) + int(info.get("num_ack_pending", 0))
        return total

    async def finish(
        self, test: str, ledger: Ledger, started: float, loads: Iterable[Load] = (), *, hurry: bool = False
    ) -> Counts:
        """Close the rooms cleanly, then count what was sent, delivered, lost, duplicated and reordered.

        hurry (the test already ran out of time): wait 2 s rather than 10 for the hub to record the last acks.
        """
        stops = [asyncio.to_thread(room.stop) for procs in self.rooms.values() for room in procs]
        await asyncio.gather(*stops)
        unacked = await self.unacked_at_hub(timeout=2.0 if hurry else 10.0)
        logs = self.room_logs()
        counts = count(test, ledger, logs, unacked)
        if self.cfg.audit is not None:
            disclosed = await self.disclosures()
            got = {
                (d.distribution_id, agency) for agency, procs in logs.items() for log in procs for d in log.deliveries
            }
            counts.unrecorded = len(got - disclosed)
        counts.seconds = time.monotonic() - started
        counts.longest_wait = max((load.longest_wait for load in loads), default=0.0)
        return counts

    async def close(self) -> None:
        """Close the clients (the processes are stopped by the Processes keeper)."""
        for made in self.clients:
            await made.close()
        self.clients.clear()


async def _listed(js: JetStream, api: str, key: str) -> list[Any]:
    """Every item of a paged JetStream list API (STREAM.NAMES, CONSUMER.LIST.<stream>)."""
    items: list[Any] = []
    for _ in range(1000):  # pages; bounded
        reply: dict[str, Any] = await js.api(api, {"offset": len(items)})
        page = reply.get(key) or []
        items.extend(page)
        if not page or len(items) >= int(reply.get("total", 0)):
            break
    return items


async def make_rig(
    root: Path,
    processes: Processes,
    servers: Sequence[NatsServer],
    *,
    replicas: int = 1,
    ack_wait: timedelta = timedelta(seconds=60),
    audit: bool = True,
) -> Rig:
    """Write the hub config for servers (running already) and start the hub as its own process."""
    pki = make_dev_pki(root / "pki", [*SENDERS, *ROOMS])
    port = free_port()
    cfg = dev_config(pki, servers[0], {**SENDERS, **ROOMS}, ALLOW, listen=f"127.0.0.1:{port}")
    nats = replace(
        cfg.nats,
        servers=tuple(s.url for s in servers),
        monitor_urls=tuple(s.monitor_url for s in servers),
        replicas=replicas,
        ack_wait=ack_wait,
    )
    cfg = replace(cfg, nats=nats, grace=timedelta(seconds=2), audit=cfg.audit if audit else None)
    hub = HubProcess(write_hub_toml(cfg, root / "hub.toml"), port, root / "hub.log")
    processes.keep(hub.stop)
    await asyncio.to_thread(hub.start)
    return Rig(root, pki, cfg, hub, processes)


async def start_nats(root: Path, processes: Processes) -> NatsServer:
    """One nats-server (sync_interval: always) on free loopback ports, stopped by PID at teardown."""
    server = NatsServer(root / "nats", name="fault-nats")
    processes.keep(server.stop)
    await asyncio.to_thread(server.start)
    return server


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run work as a task for the block's duration; cancelled (and awaited) if still running at its end."""
    task = asyncio.get_running_loop().create_task(work)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Budget:
    """An async block bounded in time that does not raise when it runs out: `expired` says so, the test still counts."""

    def __init__(self, seconds: float) -> None:
        """A budget of seconds from entering the block."""
        self.seconds = seconds
        self.expired = False
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> Self:
        """Start the clock."""
        self._timeout = asyncio.timeout(self.seconds)
        await self._timeout.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        """Swallow the budget's own TimeoutError, and only that."""
        assert self._timeout is not None
        try:
            await self._timeout.__aexit__(kind, exc, tb)
        except TimeoutError:
            self.expired = True
            return True
        return False


def assert_promises_kept(counts: Counts, rig: Rig, ledger: Ledger) -> None:
    """Every acknowledged event delivered to every room, once to the application, in order per incident; all acked."""
    errors = [e for logs in rig.room_logs().values() for log in logs for e in log.errors]
    assert not errors, f"a room's inbox failed: {errors}"
    assert not ledger.failed, f"publishes failed: {Counter(ledger.failed.values())}"
    harm = {
        "failed publishes": counts.failed,
        "lost": counts.lost,
        "out of order": counts.out_of_order,
        "duplicates seen by the application": counts.app_duplicates,
        "unacknowledged at the hub after the rooms closed": counts.unacked_at_hub,
        "due but not delivered": counts.expected - counts.delivered,
        "delivered without a disclosure record": counts.unrecorded if isinstance(counts.unrecorded, int) else 0,
    }
    assert dict.fromkeys(harm, 0) == harm, counts


class Restartable(Protocol):
    """A process a fault test kills and starts again: the hub's or a nats-server."""

    def kill(self) -> None:
        """SIGKILL it, by PID."""

    def start(self) -> None:
        """Start it again, on the same ports and folder."""


async def kill_9_under_load(
    root: Path,
    processes: Processes,
    rigs: list[Rig],
    record_counts: Callable[[Counts], None],
    *,
    stream: bool,
    name: str,
    victim: Callable[[Rig, NatsServer], Restartable],
) -> tuple[Rig, Counts]:
    """One nats-server and the hub under a load; kill -9 the victim a third of the way in, restart it a second later.

    Asserts every promise (nothing acknowledged lost, order per incident, no duplicate seen) and
    that the kill hit the load in the middle; returns the rig and counts for the caller's own checks.
    """
    started = time.monotonic()
    nats = await start_nats(root, processes)
    rig = await make_rig(root, processes, [nats])
    rigs.append(rig)  # its clients are closed at teardown, whatever fails here
    for room in ROOMS:
        await rig.start_room(room)
    ledger = Ledger()
    load = Load(ledger, rig.senders(), ROOMS, incidents=4, events=200, rate=300, stream=stream)
    process = victim(rig, nats)
    async with Budget(60) as budget, background(load.run()) as sending:
        await load.until_acked(load.total // 3)
        killed_at = load.acked
        process.kill()  # SIGKILL: no flush, no clean shutdown
        await asyncio.sleep(1.0)  # down for a while: the senders' retries meet a closed port
        await asyncio.to_thread(process.start)  # same ports, same folder
        await sending
        await rig.until_delivered(ledger)
    counts = await rig.finish(
        f"{name} kill -9 ({'PublishStream' if stream else 'Publish'})", ledger, started, [load], hurry=budget.expired
    )
    record_counts(counts)
    assert not budget.expired, f"not done within {budget.seconds} s: {counts}"
    assert_promises_kept(counts, rig, ledger)
    assert 0 < killed_at < load.total  # the kill hit the load in the middle
    return rig, counts
