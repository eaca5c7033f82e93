"""Escalation through the real hub: a request no operator answers in time goes to the agreement's alternate room.

The deadline is ten minutes on the hub's clock, which the test moves: nothing sleeps for it. The
worker looks at a timer not yet due again every 50 ms of real time (hub.timer_recheck_seconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2

from broker.delivery import escalation, status_reader
from broker.dev.testing import LocalHub, local_hub
from broker.times import ManualClock
from tests import factories as f
from tests.integration.conftest import nothing_more, take

pytestmark = pytest.mark.integration

DEADLINE = 600  # seconds on the hub's clock
RECHECK = timedelta(milliseconds=50)
TIMER_WAIT = 15.0  # liveness: a due timer is taken up
AGREEMENT = (
    f.agreement_head("torino-escalation", "Torino, backup requests that escalate")
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
    kinds: [REQUEST, CANCEL]
    payloads: [assistance_request, handover_request]
    escalate: {{after_seconds: {DEADLINE}, to: questura}}
"""
)
AGENCIES = {f.PL: "PL Torino", f.QUESTURA: "Questura", f.CC: "Carabinieri"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC))


@pytest.fixture
async def hub(tmp_path: Path, clock: ManualClock) -> AsyncIterator[LocalHub]:
    folder = tmp_path / "agreements"
    folder.mkdir()
    (folder / "torino.yaml").write_text(AGREEMENT)
    async with local_hub(tmp_path / "run", AGENCIES, (), agreements=folder, clock=clock, timer_recheck=RECHECK) as env:
        yield env


async def timers_taken_up(hub: LocalHub) -> None:
    """Wait until the escalation worker has taken up (acknowledged) every timer stored so far."""
    js = hub.hub.js
    async with asyncio.timeout(TIMER_WAIT):
        while True:
            info = await js.api(f"CONSUMER.INFO.{js.cfg.stream}.{escalation.CONSUMER}")
            if info.get("num_pending", 1) == 0 and info.get("num_ack_pending", 1) == 0:
                return
            await asyncio.sleep(0.05)


def request() -> envelope_pb2.Envelope:
    return f.envelope(f.PL, (f.CC,), kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request())


def carabinieri_answer(env: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
    """The Carabinieri operator's answer (accepted) to the request env."""
    return f.envelope(
        f.CC,
        (f.PL,),
        kind=common_pb2.KIND_RESPONSE,
        references=((env.distribution_id, f.PL),),
        assistance_response=f.assistance_response(),
    )


async def test_an_unanswered_request_goes_to_the_alternate_room(hub: LocalHub, clock: ManualClock) -> None:
    """No answer before the deadline: the Questura gets the request, the sender a REQUEST_ESCALATED notice, the receipt says so."""
    pl, cc, questura = hub.client(f.PL), hub.client(f.CC), hub.client(f.QUESTURA)
    env = request()
    await pl.publish(env)
    [first] = await take(cc.inbox(), 1)  # delivered (technically acknowledged), but no operator answers
    assert env.distribution_id == first.envelope.distribution_id
    await nothing_more(questura.inbox(), 0.5)  # ten rechecks: not due on the hub's clock

    clock.advance(DEADLINE + 1)
    [escalated] = await take(questura.inbox(), 1, timeout=TIMER_WAIT)
    assert env.distribution_id == escalated.envelope.distribution_id
    assert env.assistance_request == escalated.envelope.assistance_request
    assert hub_pb2.LANE_URGENT == escalated.lane

    [notice] = await take(pl.inbox(), 1)
    assert (common_pb2.KIND_ERROR, "REQUEST_ESCALATED") == (notice.envelope.kind, notice.envelope.acknowledgement.code)
    assert env.distribution_id == notice.envelope.references[0].distribution_id
    assert f.QUESTURA in notice.envelope.acknowledgement.description

    receipt = await pl.receipt(env.distribution_id)
    assert (f.QUESTURA, "torino-escalation/backup", True) == (
        receipt.escalation.to_agency_id,
        receipt.escalation.rule,
        receipt.escalation.delivered,
    )
    assert [f.CC, f.QUESTURA] == [r.agency_id for r in receipt.recipients]
    registry = hub.hub.metrics.registry
    assert 1.0 == registry.get_sample_value("opsroom_escalations_total", {"agency": f.QUESTURA, "outcome": "delivered"})
    for client in (pl, cc, questura):
        await client.close()


async def test_a_request_answered_in_time_does_not_escalate(hub: LocalHub, clock: ManualClock) -> None:
    """The Carabinieri operator accepts within the deadline: nobody else gets it, no notice, no escalation."""
    pl, cc, questura = hub.client(f.PL), hub.client(f.CC), hub.client(f.QUESTURA)
    env = request()
    await pl.publish(env)
    await take(cc.inbox(), 1)
    answer = carabinieri_answer(env)
    await cc.publish(answer)
    pl_inbox = pl.inbox()
    [reply] = await take(pl_inbox, 1)
    assert answer.distribution_id == reply.envelope.distribution_id
    clock.advance(DEADLINE + 1)
    await timers_taken_up(hub)  # the timer came due and was taken up: answered, so nothing escalated
    await nothing_more(questura.inbox(), 0.5)
    await nothing_more(pl_inbox, 0.1)
    receipt = await pl.receipt(env.distribution_id)
    assert not receipt.HasField("escalation")
    assert common_pb2.OUTCOME_ACCEPTED == receipt.recipients[0].response.outcome
    for client in (pl, cc, questura):
        await client.close()


async def test_status_counts_the_deadline_running_for_the_room_asked_until_it_answers(
    hub: LocalHub, clock: ManualClock
) -> None:
    """`opsroom status` shows the request waiting on the Carabinieri's answer, and no more once they answer."""
    pl, cc = hub.client(f.PL), hub.client(f.CC)
    env = request()
    await pl.publish(env)
    snap = await status_reader.snapshot(hub.hub.js, hub.hub.cfg, clock.now())
    rooms = {a.agency_id: a for a in snap.agencies}
    assert (1, 1, 0) == (snap.escalation_timers, rooms[f.CC].escalations_pending, rooms[f.QUESTURA].escalations_pending)
    answer = carabinieri_answer(env)
    await cc.publish(answer)
    snap = await status_reader.snapshot(hub.hub.js, hub.hub.cfg, clock.now())
    assert (0, 0) == (snap.escalation_timers, {a.agency_id: a for a in snap.agencies}[f.CC].escalations_pending)
    clock.advance(DEADLINE + 1)
    await timers_taken_up(hub)
    snap = await status_reader.snapshot(hub.hub.js, hub.hub.cfg, clock.now())
    assert 0 == snap.escalation_timers
    for client in (pl, cc):
        await client.close()
