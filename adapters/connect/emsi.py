"""The EMSI connector: EMSI over HTTP, JSON and XML, both ways.

    python -m adapters.connect.emsi --hub hub:7443 --ca ca.pem --cert pl.pem --key pl-key.pem
        --agency it.pl.001272 --listen 127.0.0.1:8083 --data /var/lib/opsroom-emsi
        --push https://cad.pl.example/emsi --syntax json

- `POST /emsi`: an EMSI document (JSON or XML, bare or in EDXL-DE), published as the agency's:
  201 with the distribution id and the recipients; 400 naming the field; the hub's refusal as
  422, 403, 409, 429 or 503. Its LINKs are resolved against the messages this connector sent and
  received (so a room's answer names the request it answers).
- With `--push URL`, what is delivered to the agency (requests for assistance, their answers,
  incident updates and closures) is encoded as EMSI in --syntax and POSTed to the room's system,
  in order, tried again while it fails, acknowledged once it answered 2xx; the answer to a
  request this connector sent comes back as an EMSI answer whose LINK names that request.
- `GET /emsi/<distribution id>`: a message delivered to the agency, as EMSI (`?syntax=xml`).

Every message sent or received is kept in SQLite under --data (for LINKs and GET) before the
delivery is acknowledged.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import aiohttp
import structlog
from aiohttp import web
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient

from adapters import emsi
from adapters.connect import common
from adapters.document import DocumentError

log = structlog.get_logger("adapters.connect.emsi")
MAX_BODY = 4 * 1024 * 1024
RECENT = 500  # messages a posted document's LINKs are resolved against
_MEDIA = {"json": "application/json", "xml": "application/xml"}


class MessageStore:
    """The envelopes this connector sent and received, by distribution id, in order."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the store at path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "distribution_id TEXT UNIQUE NOT NULL, envelope BLOB NOT NULL)"
        )
        self.db.commit()

    def add(self, env: envelope_pb2.Envelope) -> None:
        """Keep an envelope (once per distribution id)."""
        self.db.execute(
            "INSERT OR IGNORE INTO messages (distribution_id, envelope) VALUES (?, ?)",
            (env.distribution_id, env.SerializeToString()),
        )
        self.db.commit()

    def get(self, distribution_id: str) -> envelope_pb2.Envelope | None:
        """One envelope, or None."""
        row = self.db.execute("SELECT envelope FROM messages WHERE distribution_id = ?", (distribution_id,)).fetchone()
        return envelope_pb2.Envelope.FromString(row[0]) if row else None

    def named(self, ids: Iterable[str]) -> list[envelope_pb2.Envelope]:
        """The envelopes with these distribution ids that are kept."""
        return [env for i in ids if (env := self.get(i)) is not None]

    def recent(self, count: int = RECENT) -> list[envelope_pb2.Envelope]:
        """The latest envelopes kept, newest first."""
        rows = self.db.execute("SELECT envelope FROM messages ORDER BY seq DESC LIMIT ?", (count,)).fetchall()
        return [envelope_pb2.Envelope.FromString(r[0]) for r in rows]

    def close(self) -> None:
        """Close the database."""
        self.db.close()


class EmsiConnector:
    """The HTTP endpoint of one agency, and the push of its deliveries to its room's system."""

    def __init__(
        self,
        settings: common.Settings,
        hub: HubClient,
        store: MessageStore,
        push: str | None,
        syntax: Literal["json", "xml"],
    ) -> None:
        """The connector of settings.agency; push is the room's endpoint, syntax what it reads."""
        self.settings = settings
        self.hub = hub
        self.store = store
        self.push_url = push
        self.syntax: Literal["json", "xml"] = syntax
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes(
            [
                web.post("/emsi", self.post_emsi),
                web.get("/emsi/{distribution_id}", self.get_emsi),
                web.get("/livez", self.livez),
            ]
        )

    async def post_emsi(self, request: web.Request) -> web.Response:
        """Decode a posted EMSI document and publish it as the agency's; keep it for LINKs."""
        data = await request.read()
        response, env = await common.publish_posted(
            self.hub, self.settings, emsi.FORMAT, lambda ctx: emsi.decode(data, ctx, referenced=self.store.recent())
        )
        if env is not None:
            self.store.add(env)
        return response

    async def get_emsi(self, request: web.Request) -> web.Response:
        """A delivered message as EMSI, in the syntax asked (?syntax=json|xml)."""
        env = self.store.get(request.match_info["distribution_id"])
        if env is None:
            raise web.HTTPNotFound(text="no such message")
        syntax = request.query.get("syntax", self.syntax)
        if syntax not in _MEDIA:
            raise web.HTTPBadRequest(text="syntax: json or xml")
        try:
            body = self.encode(env, "xml" if syntax == "xml" else "json")
        except DocumentError as exc:
            raise web.HTTPUnprocessableEntity(text=f"{exc.path}: {exc.reason}") from None
        return web.Response(body=body, content_type=_MEDIA[syntax])

    async def livez(self, _request: web.Request) -> web.Response:
        """Liveness."""
        return web.Response(text="ok\n")

    def encode(self, env: envelope_pb2.Envelope, syntax: Literal["json", "xml"]) -> bytes:
        """An envelope as EMSI, its LINKs resolved against the messages kept."""
        named = self.store.named(ref.distribution_id for ref in env.references)
        return emsi.encode(env, syntax=syntax, referenced=named)

    async def pump(self) -> None:
        """Each delivery kept, pushed to the room's system if there is one, then acknowledged."""
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async for delivery in self.hub.inbox():
                self.store.add(delivery.envelope)
                if self.push_url is not None:
                    await self.push(session, delivery)
                await self.hub.ack(delivery)

    async def push(self, session: aiohttp.ClientSession, delivery: hub_pb2.Delivery) -> None:
        """Send one delivery until the room's system took it; one EMSI cannot express is told to its sender."""
        env = delivery.envelope
        try:
            body = self.encode(env, self.syntax)
        except DocumentError as exc:
            log.warning("emsi_delivery_not_expressible", distribution_id=env.distribution_id, path=exc.path)
            await common.tell_sender(self.hub, self.settings.agency, emsi.FORMAT, delivery, exc)
            return
        assert self.push_url is not None
        await common.push_until_accepted(
            session,
            self.push_url,
            body,
            headers={"Content-Type": _MEDIA[self.syntax]},
            accepted=lambda status, _answer: None if 200 <= status < 300 else f"HTTP {status}",
            distribution_id=env.distribution_id,
        )

    def close(self) -> None:
        """Close the message store."""
        self.store.close()


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--push", help="the room's endpoint for the messages delivered to this agency")
    parser.add_argument("--syntax", choices=["json", "xml"], default="json", help="what the room's system reads")


def _make(settings: common.Settings, hub: HubClient, args: argparse.Namespace) -> EmsiConnector:
    store = MessageStore(settings.data / "messages.sqlite")
    return EmsiConnector(settings, hub, store, args.push, "xml" if args.syntax == "xml" else "json")


def argument_parser() -> argparse.ArgumentParser:
    """This connector's command line (the shipped systemd examples are checked against it)."""
    return common.argument_parser("opsroom adapter emsi", __doc__.split("\n", 1)[0], _options)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m adapters.connect.emsi` (and `opsroom adapter emsi`): run until SIGTERM or SIGINT."""
    return common.main(argv, "opsroom adapter emsi", __doc__.split("\n", 1)[0], _make, _options)


if __name__ == "__main__":
    sys.exit(main())
