"""The system under a fault test: dev PKI, the agreement, the hub's config file and process, senders, room processes, the count.

Senders are three agencies publishing from the test's own event loop; the rooms (Questura,
Carabinieri and Guardia di Finanza of Torino) each run in their own process
(tests/faults/room.py). The hub routes by the agreement of tests/faults/agreement.py: two or
three rooms per event, each with its role's view. Blocking process work (starting, waiting)
goes through threads, so that the senders keep running meanwhile.

A fault test runs a load (tests/faults/load.py), hurts something on the way (`under_load`'s
fault), waits until every publish is answered and every room has what it is owed, then stops
the rooms and counts: what the senders were told, what the store holds, what the audit log
holds and what each room's application saw (tests/faults/counts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from opsroom.audit.v1 import audit_pb2
from opsroom_client import HubClient, RetryPolicy

from broker.audit import tools
from broker.config import HubConfig, NatsConfig
from broker.delivery import handoff
from broker.dev.certs import DevPki, make_dev_pki
from broker.dev.embedded import NatsServer, free_port
from broker.dev.testing import credentials, dev_config
from broker.lanes import LANES
from broker.store.jetstream import JetStream
from tests.faults.agreement import ROOMS, SENDERS, write_agreement
from tests.faults.counts import Counts, Pair, Store, count
from tests.faults.hubconf import write_hub_toml
from tests.faults.load import RIDE_OUT, STALL, Ledger, Load, Mode, until
from tests.faults.procs import HubProcess, Processes, RoomLog, RoomProcess
from tests.faults.stored import look_again, read_store
from tests.natsproxy import NatsProxy

RecordCounts = Callable[[Counts], None]


@dataclass
class Rig:
    """A running hub process on its nats-server(s) (maybe behind a proxy), with the clients and room processes of one test."""

    root: Path
    pki: DevPki
    cfg: HubConfig
    hub: HubProcess
    processes: Processes
    proxy: NatsProxy | None = None
    direct: tuple[str, ...] = ()  # the servers' own URLs
    clients: list[HubClient] = field(default_factory=list)
    rooms: dict[str, list[RoomProcess]] = field(default_factory=dict)

    @property
    def nats(self) -> NatsConfig:
        """How the test reaches nats-server itself: straight, never through the hub's proxy."""
        return replace(self.cfg.nats, servers=self.direct or self.cfg.nats.servers)

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

    async def start_rooms(self) -> None:
        """One process for each room, started together."""
        await asyncio.gather(*(self.start_room(room) for room in ROOMS))

    def room_logs(self) -> dict[str, list[RoomLog]]:
        """What every room process wrote, by agency, in the order the processes were started."""
        return {agency: [p.read() for p in procs] for agency, procs in self.rooms.items()}

    def handed(self) -> set[Pair]:
        """(distribution id, room) of every delivery a room's application got so far."""
        return {
            (d.distribution_id, agency)
            for agency, logs in self.room_logs().items()
            for log in logs
            for d in log.deliveries
        }

    async def until_delivered(self, owed: Callable[[], set[Pair]], what: str) -> None:
        """Wait until the rooms' applications got every (id, room) owed; Stalled if no room gets anything new for a while."""
        state: dict[str, int] = {"missing": -1, "handed": 0}

        def done() -> bool:
            got = self.handed()
            missing = owed() - got
            state["missing"], state["handed"] = len(missing), len(got)
            return not missing

        await until(what, done, lambda: (state["handed"], state["missing"]), poll=0.5)

    async def settle(self, ledger: Ledger) -> None:
        """Wait until every room got what acknowledged publishes owe it, then every delivery the store holds for it."""
        await self.until_delivered(
            lambda: {(d, room) for d, rooms in ledger.acked.items() for room in rooms if room in self.rooms},
            "the rooms to get every delivery acknowledged to a sender",
        )
        store = await self.read_store([])
        stored = {pair for pair in store.deliveries if pair[1] in self.rooms}
        await self.until_delivered(lambda: stored, "the rooms to get every delivery stored for them")
        await asyncio.sleep(0.5)  # late duplicates, if any, arrive too

    async def read_store(self, owed: Iterable[Pair]) -> Store:
        """What the stream holds (tests/faults/stored.py); what owed names and the scan missed is looked for again."""
        js = await JetStream.connect(self.nats, name="fault-test-store")
        try:
            store = await read_store(js)
            await look_again(js, store, owed)
        finally:
            await js.close()
        return store

    async def unacked_at_hub(self) -> int:
        """Deliveries of the rooms still pending or unacknowledged on their consumers (waits up to STALL s for 0)."""
        js = await JetStream.connect(self.nats, name="fault-test-check")
        try:
            deadline = time.monotonic() + STALL
            while (pending := await self._pending(js)) and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
        finally:
            await js.close()
        return pending

    async def disclosures(self) -> set[Pair]:
        """(distribution id, recipient) of every disclosure record in the audit log."""
        js = await JetStream.connect(self.nats, name="fault-test-audit")
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
        """Pending and unacknowledged messages of the rooms' delivery consumers (their current sessions').

        A room has consumers of its own per session; a take-over cut short (a cluster node
        away) may leave others behind for a while, which the hub sweeps later: the consumers
        counted are the ones the hub reads the room's floor from (handoff.names_of).
        """
        total = 0
        for agency in self.rooms:
            session = await handoff.current_session(js, agency)
            for lane in LANES:
                for name in handoff.names_of(js.layout, agency, lane, session):
                    info: dict[str, Any] = await js.api(f"CONSUMER.INFO.{js.stream_of(lane)}.{name}")
                    if "error" not in info:
                        total += int(info.get("num_pending", 0)) + int(info.get("num_ack_pending", 0))
                        break
        return total

    async def finish(self, test: str, ledger: Ledger, started: float, loads: Iterable[Load] = ()) -> Counts:
        """Close the rooms cleanly, then count from the ledger, the store, the audit log and the rooms' files."""
        stops = [asyncio.to_thread(room.stop) for procs in self.rooms.values() for room in procs]
        await asyncio.gather(*stops)
        unacked = await self.unacked_at_hub()
        owed = {(d, room) for d, rooms in ledger.acked.items() for room in rooms}
        store = await self.read_store(owed)
        disclosures = await self.disclosures() if self.cfg.audit is not None else None
        counts = count(test, ledger, self.room_logs(), store, disclosures=disclosures, unacked_at_hub=unacked)
        counts.seconds = time.monotonic() - started
        counts.longest_wait = max((load.longest_wait for load in loads), default=0.0)
        return counts

    async def close(self) -> None:
        """Close the clients and the proxy (the processes are stopped by the Processes keeper)."""
        for made in self.clients:
            await made.close()
        self.clients.clear()
        if self.proxy is not None:
            await self.proxy.stop()


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
    commit_timeout: timedelta | None = None,
    audit: bool = True,
    proxy: bool = False,
) -> Rig:
    """Write the agreement and the hub config for servers (running already) and start the hub as its own process.

    With proxy, the hub reaches the (single) server through a NatsProxy running in this event
    loop (tests/natsproxy.py), which the test can cut; its monitor URL stays the server's own.
    """
    pki = make_dev_pki(root / "pki", [*SENDERS, *ROOMS])
    port = free_port()
    agreements = write_agreement(root / "agreements")
    cfg = dev_config(pki, servers[0], {**SENDERS, **ROOMS}, (), listen=f"127.0.0.1:{port}", agreements=agreements)
    direct = tuple(s.url for s in servers)
    cut: NatsProxy | None = None
    hub_servers = direct
    if proxy:
        if len(servers) != 1:
            raise ValueError("the proxy stands in front of one nats-server")
        cut = NatsProxy(servers[0].port)
        await cut.start()
        hub_servers = (cut.url,)
    nats = replace(
        cfg.nats,
        servers=hub_servers,
        monitor_urls=tuple(s.monitor_url for s in servers),
        replicas=replicas,
        ack_wait=ack_wait,
        commit_timeout=commit_timeout or cfg.nats.commit_timeout,
    )
    cfg = replace(cfg, nats=nats, grace=timedelta(seconds=2), audit=cfg.audit if audit else None)
    hub = HubProcess(write_hub_toml(cfg, root / "hub.toml"), port, root / "hub.log")
    rig = Rig(root, pki, cfg, hub, processes, cut, direct)
    processes.keep(hub.stop)
    try:
        await asyncio.to_thread(hub.start)
    except BaseException:
        await rig.close()
        raise
    return rig


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


def assert_promises_kept(counts: Counts, rig: Rig, ledger: Ledger) -> None:
    """Nothing acknowledged lost or unstored; everything stored delivered and logged; once to the app, in order, all acked."""
    errors = [e for logs in rig.room_logs().values() for log in logs for e in log.errors]
    assert not errors, f"a room's inbox failed: {errors}"
    assert not ledger.failed, f"publishes failed: {sorted(set(ledger.failed.values()))} ({len(ledger.failed)})"
    misrouted = ledger.misrouted()
    assert not misrouted, (
        f"{len(misrouted)} acceptances name other rooms than the agreement's, e.g. {next(iter(misrouted.items()))}"
    )
    harms = counts.harms()
    assert dict.fromkeys(harms, 0) == harms, f"{counts.test}: {harms}; examples: {counts.examples}"
    assert counts.expected == counts.delivered, counts


class Fault(Protocol):
    """What a test does to the system while the load runs (and waits for, bounded by stall checks)."""

    def __call__(self, rig: Rig, load: Load) -> Awaitable[None]:
        """Hurt the rig during the load; return once the fault is over (the load goes on)."""


@dataclass
class Outcome:
    """What a scenario left for the test's own checks."""

    rig: Rig
    ledger: Ledger
    load: Load
    counts: Counts


async def under_load(
    rig: Rig,
    record_counts: RecordCounts,
    *,
    name: str,
    mode: Mode,
    fault: Fault,
    events: int = 1200,
    rate: float = 300.0,
) -> Outcome:
    """Rooms up, the load running, the fault; then every publish answered and every room served; counted and checked.

    The counts are recorded whatever happens (a stalled wait too), then every promise is asserted.
    """
    started = time.monotonic()
    await rig.start_rooms()
    ledger = Ledger()
    load = Load(ledger, rig.senders(), mode, events=events, rate=rate)
    failure: Exception | None = None
    acked_after = 0
    try:
        async with background(load.run()) as sending:
            load.hold()  # the fault lands in the middle of the load, however slow the machine
            try:
                await load.until_acked(load.planned // 8)
                await fault(rig, load)
            finally:
                load.release()
            acked_at_release = load.acked
            await load.until_answered(sending)
            acked_after = load.acked - acked_at_release
        await rig.settle(ledger)
    except Exception as exc:  # counted first, raised below
        failure = exc
    counts = await rig.finish(f"{name} ({mode.name})", ledger, started, [load])
    record_counts(counts)
    if failure is not None:
        raise AssertionError(f"{failure}; counts so far: {counts.harms()}") from failure
    assert_promises_kept(counts, rig, ledger)
    assert acked_after > 0, "no publish was acknowledged after the fault"
    return Outcome(rig, ledger, load, counts)


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
    record_counts: RecordCounts,
    *,
    mode: Mode,
    name: str,
    victim: Callable[[Rig, NatsServer], Restartable],
    commit_timeout: timedelta | None = None,
) -> Outcome:
    """One nats-server and the hub under a load; kill -9 the victim a third of the way in, restart it a second later.

    Asserts every promise (under_load); returns what the caller checks further.
    """
    nats = await start_nats(root, processes)
    rig = await make_rig(root, processes, [nats], commit_timeout=commit_timeout)
    rigs.append(rig)  # its clients are closed at teardown, whatever fails here
    process = victim(rig, nats)

    async def kill_and_restart(rig: Rig, load: Load) -> None:
        await load.until_acked(load.planned // 3)
        process.kill()  # SIGKILL: no flush, no clean shutdown
        await asyncio.sleep(1.0)  # down for a while: the senders' retries meet a closed port
        await asyncio.to_thread(process.start)  # same ports, same folder

    return await under_load(rig, record_counts, name=f"{name} kill -9", mode=mode, fault=kill_and_restart)
