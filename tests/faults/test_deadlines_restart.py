"""Deadlines survive a crash: an escalation deadline and an expiry set before every hub replica is killed (-9) fire after
the restart, at or after their time, once, with the rooms concerned away throughout.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom.store.v1 import store_pb2
from opsroom_client import HubClient, Inbox

from broker.config import HubConfig
from broker.dev.certs import DevPki, make_dev_pki
from broker.dev.embedded import free_port
from broker.dev.testing import credentials, dev_config
from broker.lanes import Lane
from broker.store.jetstream import JetStream
from tests import factories as f
from tests.faults.hubconf import write_hub_toml
from tests.faults.load import RIDE_OUT
from tests.faults.procs import HubProcess, Processes
from tests.faults.rig import start_nats

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

DEADLINE = 5.0  # seconds from the publish to the escalation deadline and to the expiry: the kill comes well before
FIRE_WAIT = 90.0  # liveness: restarted hubs fire the deadline and the notice reaches its room
QUIET = 3.0  # seconds in which nothing more may arrive (three passes of the expiry worker)

AGREEMENT = (
    f.agreement_head("torino-deadlines", "Torino, requests that escalate and reports that expire")
    + f"""\
parties:
  - {{agency: {f.PL}, role: polizia_locale}}
  - {{agency: {f.QUESTURA}, role: questura}}
  - {{agency: {f.CC}, role: carabinieri}}
roles:
  questura: {{personal_data: [caller, persons, vehicles, free_text]}}
  carabinieri: {{personal_data: [caller, persons, vehicles, free_text]}}
rules:
  - id: backup
    from: [polizia_locale]
    to: [carabinieri, questura]
    kinds: [REQUEST]
    payloads: [assistance_request]
    escalate: {{after_seconds: {int(DEADLINE)}, to: questura}}
  - id: reports
    from: [polizia_locale]
    to: [carabinieri]
    kinds: [REPORT]
    payloads: [incident]
"""
)
AGENCIES = {f.PL: "Polizia Locale di Torino", f.QUESTURA: "Questura di Torino", f.CC: "Carabinieri Torino"}


@dataclass
class Replicas:
    """Two hub processes (replicas) on one nats-server, with the PKI and config to make clients and read the store."""

    pki: DevPki
    cfg: HubConfig
    hubs: list[HubProcess]

    def client(self, agency_id: str) -> HubClient:
        """A client of both replicas (gRPC moves to the other when one is down)."""
        target = "ipv4:" + ",".join(hub.target for hub in self.hubs)
        return HubClient(target, credentials(self.pki, agency_id), server_name="localhost", retry=RIDE_OUT)

    async def kill_9_and_restart(self) -> float:
        """SIGKILL every replica (nothing drained, nothing flushed), then start them again; returns when they died."""
        for hub in self.hubs:
            hub.kill()
        killed = time.time()
        for hub in self.hubs:
            await asyncio.to_thread(hub.start)
        return killed


@pytest.fixture
async def replicas(tmp_path: Path, processes: Processes) -> Replicas:
    """nats-server and two hub replicas routing by the agreement above, each its own process on its own port."""
    nats = await start_nats(tmp_path, processes)
    folder = tmp_path / "agreements"
    folder.mkdir()
    (folder / "torino.yaml").write_text(AGREEMENT)
    pki = make_dev_pki(tmp_path / "pki", list(AGENCIES))
    base = dev_config(pki, nats, AGENCIES, (), agreements=folder)
    assert base.audit is not None
    hubs = []
    for name in ("a", "b"):
        port = free_port()
        cfg = replace(
            base,
            listen=f"127.0.0.1:{port}",
            grace=timedelta(seconds=2),
            audit=replace(base.audit, writer=f"hub-{name}"),
        )
        hub = HubProcess(write_hub_toml(cfg, tmp_path / f"hub-{name}.toml"), port, tmp_path / f"hub-{name}.log")
        processes.keep(hub.stop)
        await asyncio.to_thread(hub.start)
        hubs.append(hub)
    return Replicas(pki, base, hubs)


async def first(inbox: Inbox, what: str) -> hub_pb2.Delivery:
    """The inbox's next delivery, acknowledged; fails naming what it waited for."""
    try:
        async with asyncio.timeout(FIRE_WAIT):
            delivery = await inbox.__anext__()
    except TimeoutError:
        raise AssertionError(f"waited {FIRE_WAIT} s for {what}") from None
    inbox.ack(delivery)
    return delivery


async def nothing_within(inbox: Inbox, seconds: float) -> None:
    """Assert that the inbox hands over nothing for seconds."""
    try:
        async with asyncio.timeout(seconds):
            extra = await inbox.__anext__()
    except TimeoutError:
        return
    raise AssertionError(f"unexpected delivery {extra.envelope.distribution_id}")


def at(ts: object) -> datetime:
    """A protobuf Timestamp as an aware datetime."""
    return ts.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined, no-any-return]


async def test_an_escalation_deadline_fires_after_every_replica_was_killed(replicas: Replicas) -> None:
    """A request to the Carabinieri, who never answer (nor connect); both replicas are killed -9 before its deadline
    and restarted: the Questura gets the request and the sender REQUEST_ESCALATED, both stored at or after the due
    time the timer holds.
    """
    pl, questura = replicas.client(f.PL), replicas.client(f.QUESTURA)
    request = f.envelope(f.PL, (f.CC,), kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request())
    await pl.publish(request)
    killed = await replicas.kill_9_and_restart()

    js = await JetStream.connect(replicas.cfg.nats, name="fault-test-check")
    try:
        stored = await js.last_by_subject(js.layout.escalation_timer_subject(request.distribution_id))
        assert stored is not None, "no escalation timer stored with the request"
        due = at(store_pb2.EscalationTimer.FromString(stored.data).due_at)
        assert killed < due.timestamp(), "the replicas died after the deadline: the test proves nothing"

        escalated = await first(questura.inbox(), "the escalated request at the Questura")
        assert request.distribution_id == escalated.envelope.distribution_id
        assert at(escalated.stored_at) >= due
        notice = await first(pl.inbox(), "the REQUEST_ESCALATED notice at the sender")
        env = notice.envelope
        assert ("REQUEST_ESCALATED", request.distribution_id) == (
            env.acknowledgement.code,
            env.references[0].distribution_id,
        )
        assert at(env.sent_at) >= due
        receipt = await pl.receipt(request.distribution_id)
        assert (f.QUESTURA, True) == (receipt.escalation.to_agency_id, receipt.escalation.delivered)
        assert at(receipt.escalation.escalated_at) >= due
        assert await js.last_by_subject(js.layout.session_subject(f.CC)) is None  # the Carabinieri never connected
    finally:
        await js.close()
        await pl.close()
        await questura.close()


async def test_an_expiry_fires_after_every_replica_was_killed_with_the_room_away(replicas: Replicas) -> None:
    """A report to the Carabinieri, who stay away, expiring 5 s after its publish; both replicas are killed -9 before
    then and restarted: the sender gets DELIVERY_EXPIRED, timed after the expiry, once; the receipt says EXPIRED; the
    room, connecting only afterwards, never gets the report and the sender no second notice.
    """
    pl = replicas.client(f.PL)
    report = f.envelope(f.PL, (f.CC,))
    expiry = datetime.now(UTC) + timedelta(seconds=DEADLINE)
    report.expires_at.FromDatetime(expiry)
    await pl.publish(report)
    killed = await replicas.kill_9_and_restart()
    assert killed < expiry.timestamp(), "the replicas died after the expiry: the test proves nothing"

    notices = pl.inbox()
    notice = await first(notices, "the DELIVERY_EXPIRED notice at the sender")
    env = notice.envelope
    assert ("DELIVERY_EXPIRED", report.distribution_id) == (env.acknowledgement.code, env.references[0].distribution_id)
    assert at(env.sent_at) >= expiry
    receipt = await pl.receipt(report.distribution_id)
    assert [(f.CC, hub_pb2.DELIVERY_STATE_EXPIRED)] == [(r.agency_id, r.state) for r in receipt.recipients]

    js = await JetStream.connect(replicas.cfg.nats, name="fault-test-check")
    try:
        assert await js.last_by_subject(js.layout.session_subject(f.CC)) is None  # the room never connected
        await nothing_within(notices, QUIET)  # both replicas checked: one notice
        stored = await js.read_matching(js.cfg.stream, js.layout.deliveries_of_agency(f.PL, Lane.URGENT), 1, 100)
        codes = [envelope_pb2.Envelope.FromString(m.data).acknowledgement.code for m in stored]
        assert ["DELIVERY_EXPIRED"] == codes
    finally:
        await js.close()

    cc = replicas.client(f.CC)
    await nothing_within(cc.inbox(), QUIET)  # the room comes back: the expired report is not delivered
    await nothing_within(notices, QUIET)  # and its session's drop tells the sender nothing new
    await cc.close()
    await pl.close()
