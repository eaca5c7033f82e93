"""Escalation through the real hub: a request no operator answers in time goes to the agreement's alternate room."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2

from broker.dev.testing import LocalHub, local_hub
from tests import factories as f
from tests.integration.conftest import nothing_more, take

pytestmark = pytest.mark.integration

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
    escalate: {{after_seconds: 1, to: questura}}
"""
)
AGENCIES = {f.PL: "PL Torino", f.QUESTURA: "Questura", f.CC: "Carabinieri"}


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    folder = tmp_path / "agreements"
    folder.mkdir()
    (folder / "torino.yaml").write_text(AGREEMENT)
    async with local_hub(tmp_path / "run", AGENCIES, (), agreements=folder) as env:
        yield env


def request() -> envelope_pb2.Envelope:
    return f.envelope(f.PL, (f.CC,), kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request())


async def test_an_unanswered_request_goes_to_the_alternate_room(hub: LocalHub) -> None:
    """No answer in 1 s: the Questura gets the request, the sender a REQUEST_ESCALATED notice, the receipt says so."""
    pl, cc, questura = hub.client(f.PL), hub.client(f.CC), hub.client(f.QUESTURA)
    env = request()
    await pl.publish(env)
    [first] = await take(cc.inbox(), 1)  # delivered (technically acknowledged), but no operator answers
    assert env.distribution_id == first.envelope.distribution_id

    [escalated] = await take(questura.inbox(), 1, timeout=15)
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


async def test_a_request_answered_in_time_does_not_escalate(hub: LocalHub) -> None:
    """The Carabinieri operator accepts within the deadline: nobody else gets it, no notice, no escalation."""
    pl, cc, questura = hub.client(f.PL), hub.client(f.CC), hub.client(f.QUESTURA)
    env = request()
    await pl.publish(env)
    await take(cc.inbox(), 1)
    answer = f.envelope(
        f.CC,
        (f.PL,),
        kind=common_pb2.KIND_RESPONSE,
        references=((env.distribution_id, f.PL),),
        assistance_response=f.assistance_response(),
    )
    await cc.publish(answer)
    pl_inbox = pl.inbox()
    [reply] = await take(pl_inbox, 1)
    assert answer.distribution_id == reply.envelope.distribution_id
    await nothing_more(questura.inbox(), 2.5)
    await nothing_more(pl_inbox, 0.1)
    receipt = await pl.receipt(env.distribution_id)
    assert not receipt.HasField("escalation")
    assert common_pb2.OUTCOME_ACCEPTED == receipt.recipients[0].response.outcome
    for client in (pl, cc, questura):
        await client.close()
