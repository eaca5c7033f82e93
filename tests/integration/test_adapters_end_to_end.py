"""End to end across the formats, under an agreement: a 112 card in over SOAP, out on gRPC and as EIDO, each redacted.

The CUR's system pushes a contact card to the CUR's NUE connector (GestContatto). The hub routes
it, by the card's companies, to the Polizia Locale (a room speaking the contract, on its gRPC
stream) and to the Carabinieri (a CAD speaking EIDO, subscribed on its connector's STA-024
WebSocket). The agreement lets the Polizia Locale see the caller but not the network's location
data, and the Carabinieri the network's data but not the caller: each copy shows exactly that.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path

import aiohttp
import pytest

from adapters import cap, nue112
from adapters.document import Context
from broker.dev.testing import local_hub
from tests import factories as f
from tests.integration.conftest import take
from tests.integration.connectors import call, start_connector, stop
from tests.integration.test_cap_connector import FEED_LIVENESS, feed_entries, fresh_alert
from tests.integration.test_eido_connector import receive, subscribe
from tests.integration.test_nue_connector import fresh_card

pytestmark = pytest.mark.integration

AGREEMENT = f"""
id: torino-adapters
title: Torino, the adapters end to end
valid_from: 2020-01-01
legal_basis:
  law: "d.l. 14/2017 art. 2"
  purposes: [PUBLIC_SECURITY]
territory: {{provinces: ["001"]}}
parties:
  - {{agency: {f.CUR}, role: cur}}
  - {{agency: {f.PL}, role: polizia_locale, covers: {{comuni: ["001272"]}}}}
  - {{agency: {f.CC}, role: carabinieri}}
  - {{agency: {f.QUESTURA}, role: questura}}
roles:
  polizia_locale: {{personal_data: [caller, persons, vehicles, free_text, media]}}
  carabinieri: {{personal_data: [network_location, free_text]}}
  questura: {{personal_data: [vehicles, media]}}
rules:
  - id: cards
    from: [cur]
    to: [carabinieri, polizia_locale]
    kinds: [REPORT, UPDATE]
    payloads: [incident]
  - id: plate-alerts
    from: [polizia_locale]
    to: [questura, carabinieri]
    kinds: [REPORT]
    payloads: [alert]
    alert_categories: [SECURITY]
    select: territory
"""
AGENCIES = {f.CUR: "CUR Torino", f.PL: "Polizia Locale di Torino", f.CC: "Carabinieri Torino", f.QUESTURA: "Questura"}
CALLER_NUMBER = "+39333000000"
CED_TEXT = "cella: area circa 800 m"


def torino_card() -> bytes:
    """The synthetic card, fresh, its place and companies moved to Torino."""
    return (
        fresh_card()
        .replace(b"<Latitude>45.464211</Latitude>", b"<Latitude>45.070312</Latitude>")
        .replace(b"<Longitude>9.191383</Longitude>", b"<Longitude>7.686856</Longitude>")
        .replace(b"<City>Milano</City>", b"<City>Torino</City>")
        .replace(b"<Province>MI</Province>", b"<Province>TO</Province>")
        .replace(b"QUESTURA-MI", b"PL-TO")
        .replace(b"CC-MI", b"CC-TO")
    )


async def test_a_card_over_soap_reaches_a_grpc_room_and_an_eido_cad_each_redacted(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    folder = tmp_path / "agreements"
    folder.mkdir()
    (folder / "torino.yaml").write_text(AGREEMENT)
    # The hub's config says how each agency receives: the Carabinieri run the EIDO connector.
    async with local_hub(tmp_path / "run", AGENCIES, (), agreements=folder, receives={f.CC: "eido"}) as hub:
        companies = ["--company", f"PL-TO={f.PL}", "--company", f"CC-TO={f.CC}"]
        cur = await start_connector("nue112", hub, f.CUR, tmp_path / "cur", processes, *companies)
        cc = await start_connector("eido", hub, f.CC, tmp_path / "cc", processes)
        pl_room = hub.client(f.PL)
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(f"{cc.replace('http', 'ws')}/eido/ws") as ws,
            ):
                await subscribe(ws, "r1")
                card = torino_card()
                status, _h, body = await call("POST", f"{cur}/GestContatto", nue112.gest_contatto_request(card, {}))
                assert (status, nue112.gest_contatto_result(body)) == (200, "OK")

                [delivery] = await take(pl_room.inbox(), 1)
                pl_copy = delivery.envelope
                assert pl_copy.incident.call.caller.phone == CALLER_NUMBER
                assert pl_copy.incident.description.startswith("Persone che litigano")
                assert not pl_copy.incident.call.HasField("network_location")
                assert CED_TEXT not in str(pl_copy)

                [document] = (await receive(ws))["event"]["notification"]
                text = json.dumps(document, ensure_ascii=False)
                assert document["$id"] == pl_copy.incident.id
                assert "Persone che litigano" in text
                assert CALLER_NUMBER not in text
                assert "Rossi" not in text
                assert all(
                    "Caller" not in p.get("personIncidentRoleRegistryText", [])
                    for p in document.get("personComponent", [])
                )
        finally:
            await pl_room.close()
        assert stop(processes) == [0, 0]


async def test_a_plate_alert_over_http_reaches_the_rooms_of_its_territory_and_their_feed(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    folder = tmp_path / "agreements"
    folder.mkdir()
    (folder / "torino.yaml").write_text(AGREEMENT)
    async with local_hub(tmp_path / "run", AGENCIES, (), agreements=folder, receives={f.QUESTURA: "cap"}) as hub:
        pl = await start_connector("cap", hub, f.PL, tmp_path / "pl", processes)  # no recipient: the territory's
        questura = await start_connector("cap", hub, f.QUESTURA, tmp_path / "questura", processes)
        cc_room = hub.client(f.CC)
        try:
            status, _h, body = await call("POST", f"{pl}/alerts", fresh_alert(f"PLT-{uuid.uuid4()}"))
            assert status == 201, body
            answer = json.loads(body)
            assert sorted(answer["recipients"]) == sorted([f.QUESTURA, f.CC])

            [delivery] = await take(cc_room.inbox(), 1)  # the Carabinieri may see free text, not vehicles
            assert not delivery.envelope.alert.vehicles[0].plate
            assert delivery.envelope.alert.infos[0].description  # (which here names the plate: the sender's text)

            async with asyncio.timeout(FEED_LIVENESS):
                while not (entries := await feed_entries(questura)):
                    await asyncio.sleep(0.2)
            assert len(entries) == 1
            status, _h, alert = await call("GET", f"{questura}/alerts/{answer['distribution_id']}")
            env = cap.decode(alert, Context(agency_id=f.QUESTURA))
            assert env.alert.vehicles[0].plate == f.PLATE  # the Questura may
            assert not env.alert.infos[0].description  # but not free text
        finally:
            await cc_room.close()
        assert stop(processes) == [0, 0]
