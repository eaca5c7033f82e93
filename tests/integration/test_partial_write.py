"""An envelope whose write is cut between its messages: the sender's retry must complete it, never replay the part.

The hub talks to nats-server through a proxy (tests/natsproxy.py) that drops every connection
just before a chosen write reaches the server, as a dying nats-server would: no timing is
involved, the store holds exactly the messages written before the cut. The sender gets no
answer, its client retries (marked as a resend), and the test counts what the stream holds
and what each room receives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom.store.v1 import store_pb2
from opsroom_client import HubClient, RetryPolicy

from broker.dev.certs import DevPki, make_dev_pki
from broker.dev.embedded import NatsServer
from broker.dev.testing import credentials, dev_config
from broker.hub import Hub
from broker.lanes import Lane
from broker.store.jetstream import JetStream
from broker.store.layout import RULE_HEADER, Layout
from broker.store.model import StoredMsg
from tests import factories as f
from tests.integration.conftest import take
from tests.natsproxy import NatsProxy

pytestmark = pytest.mark.integration

AGREEMENT = (
    f.agreement_head("torino-cut", "Torino, writes cut half way")
    + f"""\
parties:
  - {{agency: {f.CUR}, role: cur}}
  - {{agency: {f.PL}, role: polizia_locale, covers: {{comuni: ["001272"]}}}}
  - {{agency: {f.QUESTURA}, role: questura}}
  - {{agency: {f.CC}, role: carabinieri}}
roles:
  questura: {{personal_data: [caller, network_location, persons, vehicles, free_text, media, staff]}}
  carabinieri: {{personal_data: [caller, persons, vehicles, free_text]}}
  polizia_locale: {{personal_data: [vehicles]}}
rules:
  - id: cards
    from: [cur]
    to: [questura, carabinieri, polizia_locale]
    kinds: [REPORT, UPDATE]
    payloads: [incident]
  - id: backup
    from: [polizia_locale]
    to: [carabinieri]
    kinds: [REQUEST]
    payloads: [assistance_request]
    escalate: {{after_seconds: 3600, to: questura}}
"""
)
AGENCIES = {f.CUR: "CUR", f.PL: "PL Torino", f.QUESTURA: "Questura", f.CC: "Carabinieri"}
# Generous: the hub reconnects through the proxy in about half a second; the client keeps trying for ~30 s.
RETRY = RetryPolicy(attempts=20, first_delay=0.2, max_delay=2.0, timeout=10.0)


@dataclass
class CutHub:
    """A hub whose NATS connections go through a proxy that can cut them."""

    pki: DevPki
    hub: Hub
    nats: NatsServer
    proxy: NatsProxy

    def client(self, agency_id: str) -> HubClient:
        target = f"127.0.0.1:{self.hub.port}"
        return HubClient(target, credentials(self.pki, agency_id), server_name="localhost", retry=RETRY)

    async def stored(self, distribution_id: str, lane: Lane = Lane.URGENT) -> dict[str, StoredMsg]:
        """The deliveries of an envelope the stream holds, by recipient (read straight from nats-server)."""
        js = await JetStream.connect(replace(self.hub.cfg.nats, servers=(self.nats.url,)), name="test-read")
        try:
            found = await js.last_per_subject(
                js.layout.deliveries_of_envelope(distribution_id), stream=js.stream_of(lane)
            )
        finally:
            await js.close()
        return {Layout().parse_delivery(m.subject)[0]: m for m in found}

    async def last(self, subject: str) -> StoredMsg | None:
        js = await JetStream.connect(replace(self.hub.cfg.nats, servers=(self.nats.url,)), name="test-read")
        try:
            return await js.last_by_subject(subject)
        finally:
            await js.close()


@pytest.fixture
async def cut_hub(tmp_path: Path) -> AsyncIterator[CutHub]:
    folder = tmp_path / "agreements"
    folder.mkdir()
    (folder / "torino.yaml").write_text(AGREEMENT)
    pki = make_dev_pki(tmp_path / "pki", list(AGENCIES))
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    proxy = NatsProxy(nats.port)
    try:
        await proxy.start()
        cfg = dev_config(pki, nats, AGENCIES, (), agreements=folder)
        cfg = replace(cfg, nats=replace(cfg.nats, servers=(proxy.url,)))
        hub = Hub(cfg)
        await hub.start()
        try:
            yield CutHub(pki, hub, nats, proxy)
        finally:
            await hub.stop(grace=2)
    finally:
        await proxy.stop()
        nats.stop()


def deliveries_of(distribution_id: str) -> Callable[[str], bool]:
    """A predicate on subjects: the deliveries of one envelope."""
    return lambda subject: subject.startswith("opsroom.dlv.") and subject.endswith("." + distribution_id)


@contextlib.asynccontextmanager
async def clients(env: CutHub, *agencies: str) -> AsyncIterator[list[HubClient]]:
    made = [env.client(a) for a in agencies]
    try:
        yield made
    finally:
        for client in made:
            await client.close()


def card(recipients: tuple[str, ...] = (f.QUESTURA, f.PL, f.CC)) -> envelope_pb2.Envelope:
    return f.envelope(f.CUR, recipients)


def check_copies(stored: dict[str, StoredMsg]) -> None:
    """Each recipient holds the copy its role may see, under the rule that allowed it."""
    questura = envelope_pb2.Envelope.FromString(stored[f.QUESTURA].data)
    local = envelope_pb2.Envelope.FromString(stored[f.PL].data)
    carabinieri = envelope_pb2.Envelope.FromString(stored[f.CC].data)
    assert questura.incident.call.network_location.imsi == f.IMSI
    assert not local.incident.call.HasField("caller")
    assert not local.incident.persons
    assert local.incident.vehicles[0].plate == f.PLATE  # vehicles are granted
    assert not carabinieri.incident.call.HasField("network_location")
    assert carabinieri.incident.call.caller.name == f.CALLER_NAME
    assert {"torino-cut/cards"} == {m.headers[RULE_HEADER] for m in stored.values()}
    assert 1 == len({m.headers["Opsroom-Accepted-At"] for m in stored.values()})  # the first attempt's time


async def test_publish_cut_after_the_first_delivery_is_completed_by_the_retry(cut_hub: CutHub) -> None:
    """Publish: the write is cut after the first of three deliveries; the retry stores the other two, all arrive."""
    env = card()
    cut = cut_hub.proxy.cut_before(deliveries_of(env.distribution_id), nth=2)
    async with clients(cut_hub, f.CUR, f.QUESTURA, f.PL, f.CC) as (cur, *rooms):
        acceptance = await cur.publish(env)
        assert cut.is_set()  # the connection was cut between the first and the second delivery
        assert [f.QUESTURA, f.PL, f.CC] == list(acceptance.recipients)
        stored = await cut_hub.stored(env.distribution_id)
        assert {f.QUESTURA, f.PL, f.CC} == set(stored)
        check_copies(stored)
        for room in rooms:
            got = await take(room.inbox(), 1)
            assert [env.distribution_id] == [d.envelope.distribution_id for d in got]
        receipt = await cur.receipt(env.distribution_id)
        assert [f.QUESTURA, f.PL, f.CC] == [r.agency_id for r in receipt.recipients]


async def test_publish_stream_cut_inside_a_small_batch_is_completed_by_the_retry(cut_hub: CutHub) -> None:
    """PublishStream, three envelopes of three deliveries in one request (below the atomic threshold).

    The write is cut just before the second delivery of the middle envelope: whatever part of
    each envelope is stored, every one of them ends up stored for every recipient.
    """
    envs = [card() for _ in range(3)]
    cut = cut_hub.proxy.cut_before(deliveries_of(envs[1].distribution_id), nth=2)
    async with clients(cut_hub, f.CUR, f.QUESTURA, f.PL, f.CC) as (cur, *rooms):
        results = await cur.publish_many(envs, batch_size=3)
        assert cut.is_set()
        assert all(isinstance(r, hub_pb2.Acceptance) for r in results), results
        for env, result in zip(envs, results, strict=True):
            assert isinstance(result, hub_pb2.Acceptance)
            assert [f.QUESTURA, f.PL, f.CC] == list(result.recipients)
            stored = await cut_hub.stored(env.distribution_id)
            assert {f.QUESTURA, f.PL, f.CC} == set(stored), env.distribution_id
            check_copies(stored)
        for room in rooms:
            got = await take(room.inbox(), 3)
            assert [e.distribution_id for e in envs] == [d.envelope.distribution_id for d in got]


async def test_a_request_cut_before_its_escalation_timer_gets_its_timer_from_the_retry(cut_hub: CutHub) -> None:
    """A request's delivery is stored, its escalation timer is not: the retry writes the timer with the same deadline."""
    request = f.envelope(f.PL, (f.CC,), kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request())
    dist = request.distribution_id
    cut = cut_hub.proxy.cut_before(lambda subject: subject == f"opsroom.esc.timer.{dist}")
    async with clients(cut_hub, f.PL) as (pl,):
        acceptance = await pl.publish(request)
        assert cut.is_set()
        assert [f.CC] == list(acceptance.recipients)
    timer = await cut_hub.last(f"opsroom.esc.timer.{dist}")
    assert timer is not None
    due = store_pb2.EscalationTimer.FromString(timer.data).due_at.ToNanoseconds()
    assert 3600 * 10**9 == due - acceptance.accepted_at.ToNanoseconds()  # the first attempt's deadline


async def test_a_response_cut_before_its_record_gets_its_record_from_the_retry(cut_hub: CutHub) -> None:
    """An answer's delivery is stored, the record the requester's receipt reads is not: the retry writes it."""
    request = f.envelope(f.PL, (f.CC,), kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request())
    async with clients(cut_hub, f.PL, f.CC) as (pl, cc):
        await pl.publish(request)
        answer = f.envelope(
            f.CC,
            (f.PL,),
            kind=common_pb2.KIND_RESPONSE,
            references=((request.distribution_id, f.PL),),
            assistance_response=f.assistance_response(),
        )
        cut = cut_hub.proxy.cut_before(lambda subject: subject.startswith(f"opsroom.rsp.{request.distribution_id}."))
        await cc.publish(answer)
        assert cut.is_set()
        receipt = await pl.receipt(request.distribution_id)
        assert answer.distribution_id == receipt.recipients[0].response.response_distribution_id
        assert common_pb2.OUTCOME_ACCEPTED == receipt.recipients[0].response.outcome


async def test_the_proxy_cuts_exactly_before_the_chosen_write(cut_hub: CutHub) -> None:
    """The fault injector itself: the nth matching write never reaches nats-server, the ones before it do."""
    envs = [card((f.QUESTURA,)) for _ in range(3)]
    cut = cut_hub.proxy.cut_before(deliveries_of(envs[1].distribution_id))
    async with clients(cut_hub, f.CUR) as (cur,):
        await cur.publish(envs[0])
        task = asyncio.ensure_future(cur.publish(envs[1]))
        await asyncio.wait_for(cut.wait(), 30)  # liveness bound, generous
        assert {f.QUESTURA} == set(await cut_hub.stored(envs[0].distribution_id))
        await task  # then retried through the proxy, which lets it pass
    assert {f.QUESTURA} == set(await cut_hub.stored(envs[1].distribution_id))
    assert 1 == cut_hub.proxy.cuts
