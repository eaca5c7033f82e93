"""A distribution id, once accepted, belongs to its envelope: any other use is refused and writes nothing.

The Torino CUR publishes an incident to the Questura. Then the Polizia Locale (another agency),
or the CUR itself with other content, publishes under the same id: to a recipient the first
did not address, to the CUR itself, to overlapping recipients, to exactly the same ones, on
the other lane, as a marked resend, and at the same moment as the first. Each must be refused
with DISTRIBUTION_ID_REUSED; the stream, the audit log and the first sender's receipt must be
exactly as before, and no room may receive anything more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from opsroom.audit.v1 import audit_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, HubError

from broker.audit import tools
from broker.dev.testing import LocalHub, local_hub
from broker.lanes import Lane
from tests import factories as f
from tests.integration.conftest import FAST_RETRY, nothing_more, take

pytestmark = pytest.mark.integration

AGREEMENT = (
    f.agreement_head("torino-ids", "Torino, every room writes to every room")
    + f"""\
parties:
  - {{agency: {f.CUR}, role: cur}}
  - {{agency: {f.PL}, role: polizia_locale}}
  - {{agency: {f.QUESTURA}, role: questura}}
  - {{agency: {f.CC}, role: carabinieri}}
roles:
  cur: {{personal_data: [caller, network_location, persons, vehicles, free_text, media, staff]}}
  questura: {{personal_data: [caller, network_location, persons, vehicles, free_text, media, staff]}}
  carabinieri: {{personal_data: [caller, network_location, persons, vehicles, free_text, media, staff]}}
  polizia_locale: {{personal_data: [caller, network_location, persons, vehicles, free_text, media, staff]}}
rules:
  - id: rooms
    from: [cur, polizia_locale, questura, carabinieri]
    to: [cur, polizia_locale, questura, carabinieri]
    kinds: [REPORT, UPDATE]
    payloads: [incident, alert]
"""
)
AGENCIES = {f.CUR: "CUR", f.PL: "PL Torino", f.QUESTURA: "Questura", f.CC: "Carabinieri"}


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    folder = tmp_path / "agreements"
    folder.mkdir()
    (folder / "torino.yaml").write_text(AGREEMENT)
    async with local_hub(tmp_path / "run", AGENCIES, (), agreements=folder) as env:
        yield env


@pytest.fixture
async def rooms(hub: LocalHub) -> AsyncIterator[dict[str, HubClient]]:
    made = {agency: hub.client(agency, retry=FAST_RETRY) for agency in AGENCIES}
    yield made
    for client in made.values():
        await client.close()


def same_id(env: envelope_pb2.Envelope, sender: str, recipients: tuple[str, ...]) -> envelope_pb2.Envelope:
    """Another envelope (other sender or other content) under env's distribution id."""
    other = f.envelope(sender, recipients, distribution_id=env.distribution_id)
    other.incident.local_reference = "other-content"
    return other


def same_id_on_the_bulk_lane(env: envelope_pb2.Envelope, sender: str) -> envelope_pb2.Envelope:
    return f.envelope(sender, (f.QUESTURA,), distribution_id=env.distribution_id, alert=f.plate_read())


async def what_is_stored(hub: LocalHub, distribution_id: str) -> tuple[list[tuple[str, str, int]], int]:
    """Every delivery of the id in both lanes' streams (recipient, lane, sequence), and the audit records naming it."""
    js = hub.hub.js
    deliveries = []
    for lane in Lane:
        for m in await js.last_per_subject(
            js.layout.deliveries_of_envelope(distribution_id), stream=js.stream_of(lane)
        ):
            recipient, stored_lane, _ = js.layout.parse_delivery(m.subject)
            deliveries.append((recipient, stored_lane.value, m.seq))
    log = await tools.read_log(js)
    records = sum(
        1
        for item in log.items
        for r in audit_pb2.AuditEntry.FromString(item.data).records
        if r.distribution_id == distribution_id
    )
    return sorted(deliveries), records


async def assert_refused(publish: Callable[[], object]) -> None:
    with pytest.raises(HubError) as refused:
        await publish()  # type: ignore[misc]
    assert grpc.StatusCode.FAILED_PRECONDITION == refused.value.code
    assert "DISTRIBUTION_ID_REUSED" == refused.value.reason


CASES = {
    "another agency, a recipient the first did not address": lambda env: (f.PL, same_id(env, f.PL, (f.CC,))),
    "another agency, addressing the first sender": lambda env: (f.PL, same_id(env, f.PL, (f.CUR,))),
    "another agency, overlapping recipients": lambda env: (f.PL, same_id(env, f.PL, (f.QUESTURA, f.CC))),
    "another agency, exactly the first's recipients": lambda env: (f.PL, same_id(env, f.PL, (f.QUESTURA,))),
    "the same sender, other content, other recipients": lambda env: (f.CUR, same_id(env, f.CUR, (f.CC, f.PL))),
    "another agency, on the bulk lane": lambda env: (f.PL, same_id_on_the_bulk_lane(env, f.PL)),
    "the same sender, other content, on the bulk lane": lambda env: (f.CUR, same_id_on_the_bulk_lane(env, f.CUR)),
}


@pytest.mark.parametrize("how", ["Publish", "Publish marked resend", "PublishStream"])
@pytest.mark.parametrize("case", list(CASES))
async def test_a_reused_id_is_refused_and_writes_nothing(
    hub: LocalHub, rooms: dict[str, HubClient], case: str, how: str
) -> None:
    """The reuse is refused; stream, audit log, receipt and rooms stay exactly as the first publish left them."""
    first = f.envelope(f.CUR, (f.QUESTURA,))
    accepted = await rooms[f.CUR].publish(first)
    before = await what_is_stored(hub, first.distribution_id)
    receipt = await rooms[f.CUR].receipt(first.distribution_id)
    sender, reuse = CASES[case](first)
    client = rooms[sender]
    if how == "PublishStream":
        [result] = await client.publish_many([reuse])
        assert isinstance(result, HubError), result
        assert "DISTRIBUTION_ID_REUSED" == result.reason
    else:
        await assert_refused(lambda: client.publish(reuse, resend=how.endswith("resend")))
    assert before == await what_is_stored(hub, first.distribution_id)
    assert receipt == await rooms[f.CUR].receipt(first.distribution_id)
    assert [f.QUESTURA] == list(accepted.recipients)
    got = await take(rooms[f.QUESTURA].inbox(), 1)
    assert first == got[0].envelope
    for agency in (f.CUR, f.PL, f.CC):
        await nothing_more(rooms[agency].inbox(), 0.3)
    await nothing_more(rooms[f.QUESTURA].inbox(), 0.3)


async def test_the_same_envelope_again_is_answered_from_the_store_without_new_records(
    hub: LocalHub, rooms: dict[str, HubClient]
) -> None:
    """The same sender and bytes, not marked as a resend: the first answer, nothing written (no new audit record)."""
    env = f.envelope(f.CUR, (f.QUESTURA, f.CC))
    first = await rooms[f.CUR].publish(env)
    before = await what_is_stored(hub, env.distribution_id)
    again = await rooms[f.CUR].publish(env)
    assert again.replayed
    assert (first.accepted_at, list(first.recipients)) == (again.accepted_at, list(again.recipients))
    assert before == await what_is_stored(hub, env.distribution_id)


async def test_two_agencies_racing_for_one_new_id_get_one_acceptance_and_one_refusal(
    hub: LocalHub, rooms: dict[str, HubClient]
) -> None:
    """Published at the same moment on one replica: exactly one is stored; the other is refused and writes nothing."""
    mine = f.envelope(f.CUR, (f.QUESTURA,))
    theirs = same_id(mine, f.PL, (f.CC,))
    results = await asyncio.gather(rooms[f.CUR].publish(mine), rooms[f.PL].publish(theirs), return_exceptions=True)
    accepted = [r for r in results if isinstance(r, hub_pb2.Acceptance)]
    refused = [r for r in results if isinstance(r, HubError)]
    assert 1 == len(accepted), results
    assert ["DISTRIBUTION_ID_REUSED"] == [r.reason for r in refused]
    deliveries, _ = await what_is_stored(hub, mine.distribution_id)
    assert [list(accepted[0].recipients)] == [[recipient for recipient, _, _ in deliveries]]
