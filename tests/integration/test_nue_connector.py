"""The 112 NUE connector as a CUR and a second-level room use it: real processes, real SOAP over HTTP, the real hub.

The CUR pushes a contact card to its connector (GestContatto); the hub routes it to the
companies the card names; the Carabinieri room gets it on its gRPC stream; the Questura's
connector pushes it on to the Questura's own GestContatto endpoint (here a server in the test),
trying again while that endpoint fails, and acknowledges it only once the endpoint said OK.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from opsroom_client import HubClient

from adapters import nue112
from adapters.document import Context, DocumentError
from broker.dev.testing import LocalHub
from tests import factories as f
from tests.integration.conftest import nothing_more, take
from tests.integration.connectors import call, start_connector, stop

pytestmark = pytest.mark.integration

CARD = Path(__file__).parents[1] / "adapters" / "examples" / "nue112" / "example-synthetic-contactcard.xml"
PUSH_LIVENESS = 60.0  # the room's endpoint has the card within this (a second or two, one retry included)


def fresh_card() -> bytes:
    """The synthetic card, created a minute ago, with an id of its own."""
    created = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0).isoformat()
    card_id = str(random.randint(10**8, 10**9))
    return (
        CARD.read_bytes()
        .replace(b"2025-03-14T21:07:33+01:00", created.encode())
        .replace(b"<ID>1234567</ID>", f"<ID>{card_id}</ID>".encode())
    )


class RoomEndpoint:
    """The Questura's own GestContatto service: it fails the first call, then records and answers OK."""

    def __init__(self) -> None:
        self.calls: list[nue112.GestContatto] = []
        self.failures = 1
        self.app = web.Application()
        self.app.add_routes([web.post("/GestContatto", self.handle)])
        self.runner = web.AppRunner(self.app, access_log=None)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.failures:
            self.failures -= 1
            fault = nue112.soap_fault(DocumentError("service", "database busy"), server=True)
            return web.Response(body=fault, status=500, content_type="text/xml")
        self.calls.append(nue112.gest_contatto(body))
        return web.Response(body=nue112.gest_contatto_response(nue112.OK), content_type="text/xml")

    async def start(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/GestContatto"


async def test_a_card_pushed_by_the_cur_reaches_the_stream_and_the_room_endpoint(
    hub: LocalHub, clients: dict[str, HubClient], tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    room = RoomEndpoint()
    push_url = await room.start()
    try:
        companies = ["--company", f"QUESTURA-MI={f.QUESTURA}", "--company", f"CC-MI={f.CC}"]
        cur = await start_connector("nue112", hub, f.CUR, tmp_path / "cur", processes, *companies)
        await start_connector(
            "nue112", hub, f.QUESTURA, tmp_path / "questura", processes, "--push", push_url, *companies
        )
        card = fresh_card()
        request = nue112.gest_contatto_request(card, {"EnteMittente": "CUR-TO"})

        status, _h, body = await call("POST", f"{cur}/GestContatto", request, {"Content-Type": "text/xml"})
        assert (status, nue112.gest_contatto_result(body)) == (200, "OK")
        again = await call("POST", f"{cur}/GestContatto", request, {"Content-Type": "text/xml"})
        assert (again[0], nue112.gest_contatto_result(again[2])) == (200, "OK")

        [delivery] = await take(clients[f.CC].inbox(), 1)
        assert delivery.envelope.incident.type.eido_code == "FIGHT"
        assert delivery.envelope.origin.format == "nue112-rev3"
        await nothing_more(clients[f.CC].inbox())

        async with asyncio.timeout(PUSH_LIVENESS):
            while not room.calls:
                await asyncio.sleep(0.2)
        assert room.failures == 0  # the first push failed and was made again
        [pushed] = room.calls
        assert pushed.parameters["EnteDestinatario"] == f.QUESTURA
        env = nue112.decode(pushed.card, Context(agency_id=f.QUESTURA))
        assert env.incident.call.caller.phone == "+39333000000"
        assert env.incident.description.startswith("Persone che litigano")
        await asyncio.sleep(1.0)
        assert len(room.calls) == 1  # acknowledged once the room had it: not pushed again
        assert stop(processes) == [0, 0]
    finally:
        await room.runner.cleanup()


async def test_a_bad_card_or_a_refused_one_gets_a_fault(
    hub: LocalHub, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    cur = await start_connector("nue112", hub, f.CUR, tmp_path / "cur", processes, "--company", f"CC-MI={f.CC}")

    bad = nue112.gest_contatto_request(fresh_card().replace(b"<HighPriority>TRUE", b"<HighPriority>MAYBE"), {})
    status, _h, body = await call("POST", f"{cur}/GestContatto", bad)
    assert status == 500
    assert nue112.gest_contatto_result(body).startswith("Fault: /ContactCard/HighPriority")

    old = nue112.gest_contatto_request(CARD.read_bytes(), {})
    status, _h, body = await call("POST", f"{cur}/GestContatto", old)
    assert status == 500
    fault = nue112.gest_contatto_result(body)
    assert fault.startswith("Fault: hub: INVALID_ENVELOPE"), fault
    assert stop(processes) == [0]
