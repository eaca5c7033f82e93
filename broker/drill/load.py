"""Owns the drill's load mode: many Polizia Locale rooms across a province's comuni, publishing for a while.

`opsroom simulate --load --rooms N --rate R --duration T` starts nats-server and the hub as its
own process (`opsroom serve`, stopped by its PID), with an agreement written for the drill: N
Polizia Locale rooms, one per comune of the province (ISTAT list, in code order), reporting to the
Questura and the Carabinieri, both drill parties. Each room publishes at R/N events a second with
jitter for T seconds, mixing urgent incidents and bulk alerts (routine camera alerts) by
`bulk_share`; the two State rooms receive and acknowledge. Measured: events accepted and refused
(by reason), publish-to-delivery latency per lane (p50, p99, p999, from the publishing client's
clock to the receiving client's, one process), throughput, and the hub process's CPU and
resident memory from /proc (Linux). Times here are measurements, not assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2
from opsroom_client import HubClient, HubError, new_envelope

from broker.dev import processes
from broker.dev.certs import make_dev_pki, nats_authorization
from broker.dev.commands import wait_serving, write_config
from broker.dev.embedded import NatsServer, free_port
from broker.dev.testing import credentials, dev_config
from broker.times import timestamp
from broker.validate import codelists

Printer = Callable[[str], None]
QUESTURA = "it.ps.questura.to"
CARABINIERI = "it.cc.cp.to"
PROVINCE = "001"  # Torino: 312 comuni
# Liveness bounds: the hub starting, a drill's publishes and deliveries draining at the end.
START_WITHIN = 60.0
DRAIN_WITHIN = 60.0


@dataclass(frozen=True)
class LoadPlan:
    """How many rooms, how many events a second in all, for how long, and the share of bulk events."""

    rooms: int
    rate: float
    duration: float
    bulk_share: float = 0.5
    seed: int = 1


@dataclass
class LoadResult:
    """What a load drill measured."""

    plan: LoadPlan
    published: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)  # ms per lane, each delivery
    seconds: float = 0.0
    hub_cpu_seconds: float = 0.0
    hub_rss_max_mb: float = 0.0

    def delivered_count(self) -> int:
        """Deliveries received, both lanes."""
        return sum(len(v) for v in self.latencies.values())

    def table(self) -> list[str]:
        """The result as lines of text."""
        accepted = self.published - sum(self.refused.values())
        offered = f"{self.plan.rooms} rooms, {self.plan.rate:g} events/s offered for {self.plan.duration:g} s"
        counts = (
            f"{self.published} published, {accepted} accepted, refused {dict(sorted(self.refused.items())) or 'none'}"
        )
        lines = [
            f"{offered} ({self.plan.bulk_share:.0%} bulk): {counts}",
            f"{'lane':8} {'deliveries':>10} {'p50 ms':>8} {'p99 ms':>8} {'p999 ms':>8}",
        ]
        for lane, values in sorted(self.latencies.items()):
            p50, p99, p999 = (percentile(values, q) for q in (0.5, 0.99, 0.999))
            lines.append(f"{lane:8} {len(values):>10} {p50:>8.1f} {p99:>8.1f} {p999:>8.1f}")
        delivered = self.delivered_count()
        per_event = self.hub_cpu_seconds / accepted * 1e6 if accepted else 0.0
        rate = delivered / self.seconds if self.seconds else 0.0
        cpu = f"hub CPU {self.hub_cpu_seconds:.1f} s ({per_event:.0f} us per accepted event)"
        lines.append(f"throughput {rate:.0f} deliveries/s; {cpu}; hub RSS at most {self.hub_rss_max_mb:.0f} MB")
        return lines

    def data(self) -> dict[str, Any]:
        """The result as data (for report.json)."""
        return {
            "rooms": self.plan.rooms,
            "rate": self.plan.rate,
            "duration_s": self.plan.duration,
            "bulk_share": self.plan.bulk_share,
            "published": self.published,
            "refused": self.refused,
            "lanes": {
                lane: {
                    "deliveries": len(v),
                    "p50_ms": round(percentile(v, 0.5), 2),
                    "p99_ms": round(percentile(v, 0.99), 2),
                    "p999_ms": round(percentile(v, 0.999), 2),
                }
                for lane, v in sorted(self.latencies.items())
            },
            "seconds": round(self.seconds, 3),
            "hub_cpu_seconds": round(self.hub_cpu_seconds, 3),
            "hub_rss_max_mb": round(self.hub_rss_max_mb, 1),
        }


def percentile(values: list[float], q: float) -> float:
    """The q quantile (nearest rank) of values; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def load_rooms(count: int, province: str = PROVINCE) -> dict[str, str]:
    """Count Polizia Locale rooms, one per comune of the province in ISTAT code order: agency id -> name."""
    comuni = sorted(
        (c for c in codelists.comuni_by_code().values() if c.province_code == province), key=lambda c: c.istat_code
    )
    if count > len(comuni):
        raise ValueError(f"the province {province} has {len(comuni)} comuni: at most that many rooms")
    return {f"it.pl.{c.istat_code}": f"Polizia Locale di {c.name}" for c in comuni[:count]}


def write_agreement(folder: Path, rooms: dict[str, str], province: str = PROVINCE) -> Path:
    """An agreement for the load drill: the rooms report incidents and alerts to the two State rooms."""
    sees_all = ["caller", "network_location", "persons", "vehicles", "free_text", "media", "staff"]
    state = [("questura", QUESTURA, "Questura di Torino"), ("carabinieri", CARABINIERI, "Carabinieri di Torino")]
    parties = [{"agency": agency, "name": name, "role": role, "drills": True} for role, agency, name in state]
    parties += [
        {"agency": a, "name": n, "role": "polizia_locale", "covers": {"comuni": [a[-6:]]}, "drills": True}
        for a, n in rooms.items()
    ]
    agreement = {
        "id": "drill-load",
        "title": "Esercitazione di carico - sale della Polizia Locale della provincia",
        "kind": "protocollo",
        "signed_on": "2026-01-01",
        "valid_from": "2026-01-01",
        "legal_basis": {"law": "d.l. 14/2017 art. 2 (esercitazione)", "purposes": ["PUBLIC_SECURITY", "TRAINING"]},
        "territory": {"provinces": [province]},
        "parties": parties,
        "roles": {
            "questura": {"personal_data": sees_all},
            "carabinieri": {"personal_data": sees_all},
            "polizia_locale": {"personal_data": ["caller", "persons", "vehicles", "free_text", "media"]},
        },
        "rules": [
            {"id": "incidents", "from": ["polizia_locale"], "to": ["questura", "carabinieri"],
             "kinds": ["REPORT", "UPDATE"], "payloads": ["incident"]},
            {"id": "alerts", "from": ["polizia_locale"], "to": ["questura", "carabinieri"],
             "kinds": ["REPORT"], "payloads": ["alert"], "alert_categories": ["SECURITY"]},
        ],
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "drill-load.yaml"
    path.write_text(yaml.safe_dump(agreement, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _event(agency: str, now: datetime, *, bulk: bool) -> envelope_pb2.Envelope:
    """An urgent incident or a bulk (routine camera) alert from agency's comune, to both State rooms."""
    comune = agency[-6:]
    env = new_envelope(
        agency, kind=common_pb2.KIND_REPORT, recipients=[QUESTURA, CARABINIERI], status=common_pb2.STATUS_EXERCISE
    )
    env.sent_at.CopyFrom(timestamp(now))
    if bulk:
        env.alert.CopyFrom(
            alert_pb2.Alert(
                scope=alert_pb2.SCOPE_RESTRICTED,
                restriction="sale operative",
                infos=[
                    alert_pb2.AlertInfo(
                        language="it-IT",
                        categories=[alert_pb2.CATEGORY_SECURITY],
                        event="Allarme videocamera di routine",
                        urgency=alert_pb2.URGENCY_EXPECTED,
                        severity=alert_pb2.SEVERITY_MINOR,
                        certainty=alert_pb2.CERTAINTY_LIKELY,
                        areas=[alert_pb2.AlertArea(area_desc="esercitazione", comuni_istat=[comune])],
                    )
                ],
            )
        )
    else:
        incident_id = f"urn:emergency:uid:incidentid:{uuid.uuid4().hex[:12]}:drill.opsroom"
        env.incident_ids.append(incident_id)
        env.incident.CopyFrom(
            incident_pb2.Incident(
                id=incident_id,
                type=incident_pb2.IncidentType(eido_code="DISORD", emsi_category="PSW"),
                status=incident_pb2.INCIDENT_STATUS_ACTIVE,
                priority=common_pb2.PRIORITY_HIGH,
                occurred_at=timestamp(now),
                locations=[
                    common_pb2.Location(
                        type="CurrentIncident", comune_istat=comune, source=common_pb2.LOCATION_SOURCE_OPERATOR
                    )
                ],
            )
        )
    return env


@contextlib.asynccontextmanager
async def _hub_process(work: Path, rooms: dict[str, str]) -> AsyncIterator[tuple[str, Any, subprocess.Popen[bytes]]]:
    """nats-server and `opsroom serve` (its own process) for the load drill; (address, PKI, process)."""
    agencies = {QUESTURA: "Questura di Torino", CARABINIERI: "Carabinieri - Comando Provinciale di Torino", **rooms}
    pki = make_dev_pki(work / "pki", agencies)
    agreements = work / "agreements"
    write_agreement(agreements, rooms)
    nats = NatsServer(work / "nats", extra_config=nats_authorization(pki.nats_password.read_text().strip()))
    nats.start()
    try:
        cfg = dev_config(pki, nats, agencies, (), agreements=agreements)
        port = free_port()
        config = write_config(work / "hub.toml", cfg, pki, nats, port)
        log = (work / "hub.log").open("wb")
        proc = subprocess.Popen(  # noqa: ASYNC220, S603 - the hub's own process, started once, stopped by PID
            [sys.executable, "-m", "broker", "--log-level", "WARNING", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            target = f"127.0.0.1:{port}"
            await wait_serving(target, pki, QUESTURA, START_WITHIN)
            yield target, pki, proc
        finally:
            processes.stop(proc, timeout=30)
            log.close()
    finally:
        nats.stop()


class _LoadRun:
    """One load drill against a running hub: the State rooms receiving, the rooms publishing, the hub sampled."""

    def __init__(self, plan: LoadPlan, target: str, pki: Any, proc: subprocess.Popen[bytes]) -> None:
        self.plan = plan
        self.result = LoadResult(plan)
        self._target = target
        self._pki = pki
        self._proc = proc
        self._rng = random.Random(plan.seed)  # noqa: S311 - the drill's mix and jitter, not security
        self._sent: dict[str, tuple[float, str]] = {}  # distribution id -> (monotonic time of the publish, lane)
        self._arrived = asyncio.Event()
        self._sampling = True

    def client(self, agency: str) -> HubClient:
        return HubClient(self._target, credentials(self._pki, agency), server_name="localhost")

    async def receive(self, receiver: HubClient) -> None:
        inbox = receiver.inbox(max_batch=256, window=4096)
        async for delivery in inbox:
            inbox.ack(delivery)
            started = self._sent.get(delivery.envelope.distribution_id)
            if started is not None:
                self.result.latencies.setdefault(started[1], []).append((time.monotonic() - started[0]) * 1000)
                self._arrived.set()

    async def publish(self, agency: str, sender: HubClient) -> None:
        per_room = self.plan.rate / self.plan.rooms
        deadline = time.monotonic() + self.plan.duration
        await asyncio.sleep(self._rng.random() / per_room)  # rooms start spread over one interval
        while time.monotonic() < deadline:
            bulk = self._rng.random() < self.plan.bulk_share
            env = _event(agency, datetime.now(UTC), bulk=bulk)
            self._sent[env.distribution_id] = (time.monotonic(), "bulk" if bulk else "urgent")
            self.result.published += 1
            try:
                await sender.publish(env)
            except HubError as err:
                reason = err.reason or err.code.name
                self.result.refused[reason] = self.result.refused.get(reason, 0) + 1
                del self._sent[env.distribution_id]
            await asyncio.sleep(self._rng.expovariate(per_room))

    async def sample(self) -> None:
        while self._sampling:
            self.result.hub_rss_max_mb = max(self.result.hub_rss_max_mb, processes.rss_mb(self._proc.pid))
            await asyncio.sleep(0.5)

    async def run(self, rooms: dict[str, str]) -> LoadResult:
        receivers = [self.client(QUESTURA), self.client(CARABINIERI)]
        senders = {agency: self.client(agency) for agency in rooms}
        tasks = [asyncio.create_task(self.receive(r)) for r in receivers]
        sampler = asyncio.create_task(self.sample())
        cpu_before = processes.cpu_seconds(self._proc.pid)
        started = time.monotonic()
        try:
            await asyncio.gather(*(self.publish(a, s) for a, s in senders.items()))
            expected = 2 * len(self._sent)  # both State rooms receive every accepted event
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_WITHIN):
                    while self.result.delivered_count() < expected:
                        self._arrived.clear()
                        await self._arrived.wait()
            self.result.seconds = time.monotonic() - started
            self.result.hub_cpu_seconds = processes.cpu_seconds(self._proc.pid) - cpu_before
        finally:
            self._sampling = False
            await sampler
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in [*receivers, *senders.values()]:
                await c.close()
        return self.result


async def run_load(plan: LoadPlan, work: Path, out: Printer) -> LoadResult:
    """Run the load drill under work; what it measured."""
    rooms = load_rooms(plan.rooms)
    async with _hub_process(work, rooms) as (target, pki, proc):
        out(f"hub at {target} (pid {proc.pid}); {plan.rooms} rooms publishing for {plan.duration:g} s")
        result = await _LoadRun(plan, target, pki, proc).run(rooms)
    accepted = result.published - sum(result.refused.values())
    if result.delivered_count() < 2 * accepted:
        out(f"WARNING: {result.delivered_count()} of {2 * accepted} deliveries arrived within {DRAIN_WITHIN:g} s")
    return result
