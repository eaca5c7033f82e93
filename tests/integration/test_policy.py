"""The agreements engine through the real hub and nats-server: routing by territory and category, redaction, reload."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, HubError

from broker.dev.testing import LocalHub, local_hub
from tests import factories as f
from tests.integration.conftest import nothing_more, take

pytestmark = pytest.mark.integration

SIM = "it.sim.to"  # a drill-only simulator room
MONCALIERI = "001156"

AGREEMENT = f"""
id: torino-test
title: Torino, test agreement
valid_from: 2020-01-01
legal_basis:
  law: "d.l. 14/2017 art. 2"
  purposes: [PUBLIC_SECURITY, TRAINING]
territory: {{provinces: ["001"]}}
parties:
  - {{agency: {f.CUR}, role: cur, drills: true}}
  - {{agency: {f.PL}, role: polizia_locale, covers: {{comuni: ["001272"]}}, drills: true}}
  - {{agency: {f.QUESTURA}, role: questura, drills: true}}
  - {{agency: {f.CC}, role: carabinieri}}
  - {{agency: {SIM}, role: simulatore, drills: true}}
roles:
  questura: {{personal_data: [caller, network_location, persons, vehicles, free_text, media, staff]}}
  polizia_locale: {{personal_data: [vehicles]}}
rules:
  - id: cards
    from: [cur]
    to: [questura, carabinieri, polizia_locale, simulatore]
    kinds: [REPORT, UPDATE]
    payloads: [incident]
  - id: urgent-to-local-police
    from: [cur]
    to: [polizia_locale]
    kinds: [REPORT, UPDATE]
    payloads: [incident]
    min_priority: HIGH
    select: territory
  - id: security-alerts
    from: [polizia_locale]
    to: [questura, carabinieri]
    kinds: [REPORT]
    payloads: [alert]
    alert_categories: [SECURITY]
    select: territory
"""

AGENCIES = {f.CUR: "CUR", f.PL: "PL Torino", f.QUESTURA: "Questura", f.CC: "Carabinieri", SIM: "Simulatore"}


@pytest.fixture
async def policy_hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    folder = tmp_path / "agreements"
    folder.mkdir()
    (folder / "torino.yaml").write_text(AGREEMENT)
    async with local_hub(tmp_path / "run", AGENCIES, (), agreements=folder, metrics_listen="127.0.0.1:0") as env:
        env.hub.cfg = env.hub.cfg  # the fixture owns the folder; tests may rewrite it
        yield env


@pytest.fixture
async def rooms(policy_hub: LocalHub) -> AsyncIterator[dict[str, HubClient]]:
    made = {agency: policy_hub.client(agency) for agency in AGENCIES}
    yield made
    for client in made.values():
        await client.close()


def report(recipients: tuple[str, ...], *, comune: str = "001272", priority: int = common_pb2.PRIORITY_HIGH) -> object:
    env = f.envelope(f.CUR, recipients)
    env.incident.priority = priority  # type: ignore[assignment]
    env.incident.locations[0].comune_istat = comune
    env.incident.locations[0].ClearField("point")
    env.target_areas[0].comune_istat = comune
    return env


async def test_territory_rule_selects_the_local_police_of_the_place(rooms: dict[str, HubClient]) -> None:
    """An urgent incident in Torino also reaches Torino's PL unnamed; one in Moncalieri does not."""
    in_torino = report((f.QUESTURA,))
    accepted = await rooms[f.CUR].publish(in_torino)  # type: ignore[arg-type]
    assert [f.QUESTURA, f.PL] == list(accepted.recipients)
    in_moncalieri = report((f.QUESTURA,), comune=MONCALIERI)
    accepted = await rooms[f.CUR].publish(in_moncalieri)  # type: ignore[arg-type]
    assert [f.QUESTURA] == list(accepted.recipients)
    not_urgent = report((f.QUESTURA,), priority=common_pb2.PRIORITY_NORMAL)
    accepted = await rooms[f.CUR].publish(not_urgent)  # type: ignore[arg-type]
    assert [f.QUESTURA] == list(accepted.recipients)
    [delivery] = await take(rooms[f.PL].inbox(), 1)
    assert in_torino.distribution_id == delivery.envelope.distribution_id  # type: ignore[attr-defined]
    await nothing_more(rooms[f.PL].inbox(), 1.0)


async def test_alert_category_decides(rooms: dict[str, HubClient]) -> None:
    """A SECURITY alert from the PL reaches both State rooms by territory; a FIRE alert has no route."""
    alert = f.envelope(f.PL, (), alert=f.alert())
    accepted = await rooms[f.PL].publish(alert)
    assert {f.QUESTURA, f.CC} == set(accepted.recipients)
    fire = f.envelope(f.PL, (), alert=f.alert())
    fire.alert.infos[0].categories[0] = alert_pb2.CATEGORY_FIRE
    with pytest.raises(HubError) as caught:
        await rooms[f.PL].publish(fire)
    assert (grpc.StatusCode.FAILED_PRECONDITION, "NO_RECIPIENTS") == (caught.value.code, caught.value.reason)


async def test_each_recipient_sees_its_view(rooms: dict[str, HubClient]) -> None:
    """The Questura gets the caller, the IMSI and the notes; the PL only the plate; the original is intact."""
    env = report((f.QUESTURA, f.PL, f.CC))
    await rooms[f.CUR].publish(env)  # type: ignore[arg-type]
    [questura] = await take(rooms[f.QUESTURA].inbox(), 1)
    [pl] = await take(rooms[f.PL].inbox(), 1)
    [cc] = await take(rooms[f.CC].inbox(), 1)
    assert env == questura.envelope
    seen_by_pl = pl.envelope.incident
    assert (f.PLATE, "", "", 0, "", "", "") == (
        seen_by_pl.vehicles[0].plate,
        seen_by_pl.call.caller.phone,
        seen_by_pl.call.network_location.imsi,
        len(seen_by_pl.persons),
        seen_by_pl.notes[0].text,
        seen_by_pl.notes[0].author_operator_id,
        seen_by_pl.description,
    )
    assert "FIGHT" == seen_by_pl.type.eido_code
    # The carabinieri role has no grant in this agreement: no personal data at all.
    serialized = cc.envelope.SerializeToString()
    assert [] == [v for v in f.PERSONAL_VALUES if v.encode() in serialized]
    assert "" == cc.envelope.sender.operator_id


async def test_recipient_outside_the_agreement_is_refused(rooms: dict[str, HubClient]) -> None:
    """The PL may not address the CUR with an alert: PERMISSION_DENIED naming it; nothing is delivered."""
    env = f.envelope(f.PL, (f.CUR,), alert=f.alert())
    with pytest.raises(HubError) as caught:
        await rooms[f.PL].publish(env)
    assert (grpc.StatusCode.PERMISSION_DENIED, "RECIPIENT_NOT_ALLOWED") == (caught.value.code, caught.value.reason)
    assert {"recipients": f.CUR} == caught.value.metadata
    await nothing_more(rooms[f.CUR].inbox(), 1.0)


async def test_drills_stay_drills(rooms: dict[str, HubClient]) -> None:
    """EXERCISE traffic reaches drill participants only; ACTUAL traffic never reaches the drill-only simulator."""
    drill = report((f.QUESTURA, SIM))
    drill.status = common_pb2.STATUS_EXERCISE  # type: ignore[attr-defined]
    drill.legal_basis.purpose = common_pb2.PURPOSE_TRAINING  # type: ignore[attr-defined]
    accepted = await rooms[f.CUR].publish(drill)  # type: ignore[arg-type]
    assert {f.QUESTURA, SIM, f.PL} == set(accepted.recipients)
    to_non_participant = report((f.CC,))
    to_non_participant.status = common_pb2.STATUS_EXERCISE  # type: ignore[attr-defined]
    to_non_participant.legal_basis.purpose = common_pb2.PURPOSE_TRAINING  # type: ignore[attr-defined]
    with pytest.raises(HubError) as refused:
        await rooms[f.CUR].publish(to_non_participant)  # type: ignore[arg-type]
    assert "RECIPIENT_NOT_ALLOWED" == refused.value.reason


async def test_actual_traffic_never_reaches_a_drill_only_room(tmp_path: Path) -> None:
    """With the simulator registered as drill-only, an ACTUAL envelope naming it is refused."""
    folder = tmp_path / "agreements"
    folder.mkdir()
    (folder / "torino.yaml").write_text(AGREEMENT)
    async with local_hub(tmp_path / "run", AGENCIES, (), agreements=folder, drill_only=[SIM]) as env:
        cur = env.client(f.CUR)
        with pytest.raises(HubError) as caught:
            await cur.publish(report((SIM,)))  # type: ignore[arg-type]
        assert (grpc.StatusCode.PERMISSION_DENIED, "RECIPIENT_NOT_ALLOWED") == (caught.value.code, caught.value.reason)
        accepted = await cur.publish(report((f.QUESTURA,)))  # type: ignore[arg-type]
        assert SIM not in accepted.recipients
        await cur.close()


async def test_reload_under_traffic_loses_and_misroutes_nothing(policy_hub: LocalHub, tmp_path: Path) -> None:
    """While the CUR publishes, the agreement changes twice (one bad version refused): every accepted event is
    delivered exactly to the recipients the hub reported, and routing follows the agreement in force."""
    folder = policy_hub.hub.cfg.agreements.folder  # type: ignore[union-attr]
    cur = policy_hub.client(f.CUR)
    publisher = cur.stream_publisher(max_batch=20)
    accepted: dict[str, list[str]] = {}
    stop = asyncio.Event()

    async def keep_publishing() -> None:
        n = 0
        while not stop.is_set() and n < 2000:
            env = report((f.QUESTURA, f.CC))
            n += 1
            acceptance = await publisher.publish(env)  # type: ignore[arg-type]
            accepted[acceptance.distribution_id] = list(acceptance.recipients)
            await asyncio.sleep(0.002)

    sending = asyncio.ensure_future(keep_publishing())
    await asyncio.sleep(0.5)
    # 1. A broken file: refused whole; the old agreement stays in force.
    (folder / "broken.yaml").write_text("id: [not, a, string\n")
    await asyncio.sleep(0.6)
    assert policy_hub.hub.metrics.agreement_reloads.labels("refused")._value.get() >= 1
    (folder / "broken.yaml").unlink()
    # 2. A new version where the carabinieri no longer receive cards.
    (folder / "torino.yaml").write_text(AGREEMENT.replace("to: [questura, carabinieri, polizia_locale, simulatore]",
                                                          "to: [questura, polizia_locale, simulatore]"))  # fmt: skip
    await asyncio.sleep(0.8)
    stop.set()
    with pytest.raises(HubError):
        await sending  # the publisher's next envelope names the carabinieri, now refused
    await publisher.close()
    assert policy_hub.hub.metrics.agreement_reloads.labels("reloaded")._value.get() >= 1

    expected: dict[str, set[str]] = {}
    for dist, recipients in accepted.items():
        for agency in recipients:
            expected.setdefault(agency, set()).add(dist)
    assert len(expected[f.CC]) > 0
    for agency in (f.QUESTURA, f.CC, f.PL):
        room = policy_hub.client(agency)
        got = await take(room.inbox(window=4096), len(expected.get(agency, ())), timeout=60)
        assert expected.get(agency, set()) == {d.envelope.distribution_id for d in got}
        await nothing_more(room.inbox(), 0.5)
        await room.close()
    await cur.close()
    _ = tmp_path, shutil


async def test_receipt_and_delivery_carry_the_rule(rooms: dict[str, HubClient], policy_hub: LocalHub) -> None:
    """Each stored delivery names the agreement and rule that allowed it (for the audit and explain)."""
    env = report((f.QUESTURA,))
    await rooms[f.CUR].publish(env)  # type: ignore[arg-type]
    stored = await policy_hub.hub.js.last_per_subject(
        policy_hub.hub.js.layout.deliveries_of_envelope(env.distribution_id)  # type: ignore[attr-defined]
    )
    rules = {policy_hub.hub.js.layout.parse_delivery(s.subject)[0]: s.headers["Opsroom-Rule"] for s in stored}
    assert {f.QUESTURA: "torino-test/cards", f.PL: "torino-test/urgent-to-local-police"} == rules
    receipt = await rooms[f.CUR].receipt(env.distribution_id)  # type: ignore[attr-defined]
    assert [hub_pb2.DELIVERY_STATE_STORED] * 2 == [r.state for r in receipt.recipients]
