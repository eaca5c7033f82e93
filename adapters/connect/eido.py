"""The EIDO connector: NENA EIDO over the STA-024 WebSocket conveyance and plain HTTP.

    python -m adapters.connect.eido --hub hub:7443 --ca ca.pem --cert cc.pem --key cc-key.pem
        --agency it.cc.cp.to --listen 127.0.0.1:8082 --data /var/lib/opsroom-eido

- `GET /eido/ws`: a WebSocket on which the agency's CAD subscribes (STA-024 subscribe, notify,
  unsubscribe; the rules are adapters/conveyance.py): a new subscriber gets every active incident
  delivered to the agency, then each change, within the minRate, maxRate and expiry negotiated.
- `POST /eido`: an EIDO document, published as the agency's (201 with the distribution id and the
  recipients; 400 naming the field; the hub's refusal as 422, 403, 409, 429 or 503).
- `GET /eido/<incident id>`: the latest EIDO of an incident delivered to the agency.

The incidents delivered to the agency (incidents and hand-overs, each as its recipient's redacted
copy) are kept in SQLite under --data, encoded as EIDO, before they are acknowledged to the hub,
so a restarted connector still gives a new subscriber every active incident. A closed or
cancelled incident is notified once more, then no longer sent to new subscribers. What EIDO
cannot carry (a request for assistance, an alert) is answered to its sender with an ERROR
(NOT_EXPRESSIBLE) and acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from opsroom.hub.v1 import hub_pb2
from opsroom.incident.v1 import incident_pb2
from opsroom_client import HubClient

from adapters import conveyance, eido
from adapters.connect import common
from adapters.document import DocumentError

log = structlog.get_logger("adapters.connect.eido")
MAX_BODY = 4 * 1024 * 1024
_ENDED = frozenset({incident_pb2.INCIDENT_STATUS_CLOSED, incident_pb2.INCIDENT_STATUS_CANCELLED})


class IncidentStore:
    """The latest EIDO of each incident delivered to the agency, and whether it is active."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the store at path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS incidents (incident_id TEXT PRIMARY KEY, eido TEXT NOT NULL, "
            "active INTEGER NOT NULL, seq INTEGER NOT NULL)"
        )
        self.db.commit()

    def put(self, incident_id: str, document: dict[str, Any], *, active: bool) -> None:
        """Record an incident's latest state."""
        self.db.execute(
            "INSERT INTO incidents (incident_id, eido, active, seq) VALUES (?, ?, ?, "
            "(SELECT COALESCE(MAX(seq), 0) + 1 FROM incidents)) "
            "ON CONFLICT(incident_id) DO UPDATE SET eido = excluded.eido, active = excluded.active",
            (incident_id, json.dumps(document), int(active)),
        )
        self.db.commit()

    def load(self, board: conveyance.Board) -> None:
        """Fill a board with the active incidents, in the order they were first seen."""
        for incident_id, document in self.db.execute(
            "SELECT incident_id, eido FROM incidents WHERE active = 1 ORDER BY seq"
        ).fetchall():
            board.put(incident_id, json.loads(document), active=True)

    def get(self, incident_id: str) -> str | None:
        """An incident's latest EIDO, as stored."""
        row = self.db.execute("SELECT eido FROM incidents WHERE incident_id = ?", (incident_id,)).fetchone()
        return str(row[0]) if row else None

    def close(self) -> None:
        """Close the database."""
        self.db.close()


class EidoConnector:
    """The WebSocket notifier, the HTTP endpoint and the incident board of one agency."""

    def __init__(self, settings: common.Settings, hub: HubClient, store: IncidentStore) -> None:
        """The connector of settings.agency, with its hub client and its incidents' store."""
        self.settings = settings
        self.hub = hub
        self.store = store
        self.board = conveyance.Board()
        store.load(self.board)
        self.connections: set[tuple[conveyance.Notifier, asyncio.Queue[str]]] = set()
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes(
            [
                web.get("/eido/ws", self.websocket),
                web.post("/eido", self.post_eido),
                web.get("/eido/{incident_id}", self.get_eido),
                web.get("/livez", self.livez),
            ]
        )

    async def post_eido(self, request: web.Request) -> web.Response:
        """Decode a posted EIDO and publish it as the agency's."""
        data = await request.read()
        response, _env = await common.publish_posted(
            self.hub, self.settings, eido.FORMAT, lambda ctx: eido.decode(data, ctx)
        )
        return response

    async def get_eido(self, request: web.Request) -> web.Response:
        """The latest EIDO of an incident delivered to the agency."""
        document = self.store.get(request.match_info["incident_id"])
        if document is None:
            raise web.HTTPNotFound(text="no such incident delivered to this agency")
        return web.Response(text=document, content_type="application/json")

    async def livez(self, _request: web.Request) -> web.Response:
        """Liveness."""
        return web.Response(text="ok\n")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """One subscriber's connection: its messages to the notifier, the notifier's to it."""
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        notifier = conveyance.Notifier(self.board, lambda: str(uuid.uuid4()))
        outbox: asyncio.Queue[str] = asyncio.Queue()
        entry = (notifier, outbox)
        self.connections.add(entry)
        try:
            async with asyncio.TaskGroup() as tasks:
                sender = tasks.create_task(self._send(ws, notifier, outbox))
                async for message in ws:
                    if message.type != WSMsgType.TEXT:
                        break
                    try:
                        parsed = json.loads(message.data)
                    except json.JSONDecodeError:
                        parsed = None
                    for answer in notifier.receive(parsed, time.monotonic()):
                        outbox.put_nowait(json.dumps(answer))
                sender.cancel()
        finally:
            self.connections.discard(entry)
        return ws

    async def _send(self, ws: web.WebSocketResponse, notifier: conveyance.Notifier, outbox: asyncio.Queue[str]) -> None:
        """Send what the notifier owes, when it is owed (changes, minRate refreshes, terminations)."""
        try:
            while not ws.closed:
                deadline = notifier.next_deadline()
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    text = await asyncio.wait_for(outbox.get(), timeout=wait)
                except TimeoutError:
                    for message in notifier.tick(time.monotonic()):
                        await ws.send_str(json.dumps(message))
                    continue
                await ws.send_str(text)
        except ConnectionResetError:
            return  # the subscriber went away; the receiving side ends the connection

    async def pump(self) -> None:
        """Deliveries onto the board: each stored, then notified, then acknowledged."""
        async for delivery in self.hub.inbox():
            await self.keep(delivery)
            await self.hub.ack(delivery)

    async def keep(self, delivery: hub_pb2.Delivery) -> None:
        """Put a delivered incident on the board and tell the subscribers; what EIDO cannot carry, to its sender."""
        env = delivery.envelope
        try:
            document = json.loads(eido.encode(env))
        except DocumentError as exc:
            log.warning("eido_delivery_not_expressible", distribution_id=env.distribution_id, path=exc.path)
            await common.tell_sender(self.hub, self.settings.agency, eido.FORMAT, delivery, exc)
            return
        incident = env.incident if env.WhichOneof("payload") == "incident" else env.handover_request.incident
        active = incident.status not in _ENDED
        self.store.put(incident.id, document, active=active)
        self.board.put(incident.id, document, active=active)
        now = time.monotonic()
        for notifier, outbox in list(self.connections):
            for message in notifier.changed(incident.id, now):
                outbox.put_nowait(json.dumps(message))
        log.info("eido_delivery_kept", distribution_id=env.distribution_id, active=active)

    def close(self) -> None:
        """Close the incidents' store."""
        self.store.close()


def _make(settings: common.Settings, hub: HubClient, _args: argparse.Namespace) -> EidoConnector:
    return EidoConnector(settings, hub, IncidentStore(settings.data / "incidents.sqlite"))


def argument_parser() -> argparse.ArgumentParser:
    """This connector's command line (the shipped systemd examples are checked against it)."""
    return common.argument_parser("opsroom adapter eido", __doc__.split("\n", 1)[0])


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m adapters.connect.eido` (and `opsroom adapter eido`): run until SIGTERM or SIGINT."""
    return common.main(argv, "opsroom adapter eido", __doc__.split("\n", 1)[0], _make)


if __name__ == "__main__":
    sys.exit(main())
