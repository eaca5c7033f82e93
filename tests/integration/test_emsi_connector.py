"""The EMSI connector: a request for assistance posted as EMSI gets its answer back as EMSI (real processes, real hub).

The Polizia Locale's system posts an EMSI request for assistance (DC) to its connector; the
Carabinieri room gets it on its gRPC stream and answers over gRPC; the connector pushes the
answer to the Polizia Locale's system as an EMSI answer (RDC) whose LINK names the request.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opsroom.common.v1 import common_pb2
from opsroom_client import HubClient

from adapters import emsi
from adapters.schemas import check_json, json_schema
from broker.dev.testing import LocalHub
from tests import factories as f
from tests.integration.conftest import take
from tests.integration.connectors import call, start_connector, stop

pytestmark = pytest.mark.integration

DC = Path(__file__).parents[1] / "adapters" / "examples" / "emsi" / "example-emsi-DC-message.json"
PUSH_LIVENESS = 60.0  # the room's system has the answer within this (well under a second)


def fresh_request() -> tuple[str, bytes]:
    """The Hub Santé request for assistance, created a minute ago, with an id of its own."""
    context_id = str(uuid.uuid4())
    created = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0).isoformat()
    text = DC.read_text(encoding="utf-8").replace("2023-11-03T11:10:06+01:00", created)
    return context_id, text.replace("d350c9d2-9d76-4568-b0b7-a747ffadc949", context_id).encode()


class RoomSystem:
    """The Polizia Locale's own system: records what the connector pushes to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.add_routes([web.post("/emsi", self.handle)])
        self.runner = web.AppRunner(self.app, access_log=None)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(json.loads(await request.read()))
        return web.Response(status=204)

    async def start(self) -> str:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/emsi"


async def test_a_request_for_assistance_gets_its_answer_back_as_emsi(
    hub: LocalHub, clients: dict[str, HubClient], tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    system = RoomSystem()
    push = await system.start()
    try:
        pl = await start_connector("emsi", hub, f.PL, tmp_path / "pl", processes, "--recipient", f.CC, "--push", push)
        context_id, request = fresh_request()
        status, _h, body = await call("POST", f"{pl}/emsi", request, {"Content-Type": "application/json"})
        assert status == 201, body
        request_id = json.loads(body)["distribution_id"]

        [delivery] = await take(clients[f.CC].inbox(), 1)
        asked = delivery.envelope
        assert asked.kind == common_pb2.KIND_REQUEST
        assert asked.WhichOneof("payload") == "assistance_request"

        answer = f.envelope(
            f.CC,
            (f.PL,),
            kind=common_pb2.KIND_RESPONSE,
            sent=datetime.now(UTC),
            incident_ids=tuple(asked.incident_ids),
            references=((request_id, f.PL),),
            assistance_response=f.assistance_response(),
        )
        await clients[f.CC].publish(answer)

        async with asyncio.timeout(PUSH_LIVENESS):
            while not system.received:
                await asyncio.sleep(0.2)
        [pushed] = system.received
        check_json(pushed["emsi"], json_schema(emsi.JSON_SCHEMA))
        links = pushed["emsi"]["CONTEXT"]["LINK"]
        assert [link["ID"] for link in links] == [context_id]

        status, headers, xml = await call("GET", f"{pl}/emsi/{answer.distribution_id}?syntax=xml")
        assert status == 200
        assert headers["Content-Type"].startswith("application/xml")
        assert context_id.encode() in xml
        assert stop(processes) == [0]
    finally:
        await system.runner.cleanup()
