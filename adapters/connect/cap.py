"""The CAP connector: CAP alerts posted over HTTP go to the hub; alerts delivered to the agency, to an Atom feed.

    python -m adapters.connect.cap --hub hub:7443 --ca ca.pem --cert pl.pem --key pl-key.pem
        --agency it.pl.001272 --listen 127.0.0.1:8080 --data /var/lib/opsroom-cap

- `POST /alerts`: a CAP 1.2 alert (bare, or in EDXL-DE or Atom) as the body. Decoded and
  published as the agency's; answered 201 with the distribution id and the recipients once the
  hub has it on disk; 400 with the element path for a document the codec refuses; the hub's
  refusal as 422 (with the fields), 403, 409, 429 (with Retry-After) or 503. Posting the same
  document again is answered the same: its distribution id is derived from its sender and id.
- `GET /feed`: the alerts delivered to the agency, newest first, as an Atom feed with paging
  (`?before=<n>`, rel="next") and conditional GET (ETag, Last-Modified, 304).
- `GET /alerts/<distribution id>`: one delivered alert, as CAP.
- `GET /livez`: 200 while the connector runs.

A delivery is acknowledged to the hub only once it is in the feed's store (SQLite under --data),
so an alert is never lost between the hub and the feed. A delivery CAP cannot express (another
payload, a hub-native cancel without the referenced message's sent time) is answered to its
sender with an ERROR (NOT_EXPRESSIBLE) and acknowledged.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiohttp import web
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient

from adapters import atom, cap
from adapters.connect import common
from adapters.document import DocumentError

log = structlog.get_logger("adapters.connect.cap")
PAGE_SIZE = 50
MAX_BODY = 4 * 1024 * 1024


class AlertStore:
    """The alerts delivered to the agency, kept in SQLite in arrival order, once per distribution id."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the store at path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS alerts (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "distribution_id TEXT UNIQUE NOT NULL, updated TEXT NOT NULL, title TEXT NOT NULL, cap BLOB NOT NULL)"
        )
        self.db.commit()

    def add(self, distribution_id: str, updated: datetime, title: str, document: bytes) -> bool:
        """Store an alert; False when its distribution id is stored already (a redelivery)."""
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO alerts (distribution_id, updated, title, cap) VALUES (?, ?, ?, ?)",
            (distribution_id, updated.isoformat(), title, document),
        )
        self.db.commit()
        return cursor.rowcount == 1

    def page(self, before: int | None, limit: int = PAGE_SIZE) -> atom.Page:
        """The newest alerts older than position `before` (all when None), at most limit."""
        rows = self.db.execute(
            "SELECT seq, distribution_id, updated, title, cap FROM alerts WHERE seq < ? ORDER BY seq DESC LIMIT ?",
            (before if before is not None else sys.maxsize, limit + 1),
        ).fetchall()
        entries = [atom.Entry(r[0], r[1], datetime.fromisoformat(r[2]), r[3], bytes(r[4])) for r in rows[:limit]]
        return atom.Page(entries, more=len(rows) > limit)

    def get(self, distribution_id: str) -> bytes | None:
        """One alert's CAP document, or None."""
        row = self.db.execute("SELECT cap FROM alerts WHERE distribution_id = ?", (distribution_id,)).fetchone()
        return bytes(row[0]) if row else None

    def close(self) -> None:
        """Close the database."""
        self.db.close()


class CapConnector:
    """The HTTP endpoint and the feed of one agency."""

    def __init__(self, settings: common.Settings, hub: HubClient, store: AlertStore) -> None:
        """The connector of settings.agency, with its hub client and its feed's store."""
        self.settings = settings
        self.hub = hub
        self.store = store
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes(
            [
                web.post("/alerts", self.post_alert),
                web.get("/alerts/{distribution_id}", self.get_alert),
                web.get("/feed", self.get_feed),
                web.get("/livez", self.livez),
            ]
        )

    async def post_alert(self, request: web.Request) -> web.Response:
        """Decode a posted CAP document and publish it as the agency's."""
        data = await request.read()
        response, _env = await common.publish_posted(
            self.hub, self.settings, cap.FORMAT, lambda ctx: cap.decode(data, ctx)
        )
        return response

    async def get_alert(self, request: web.Request) -> web.Response:
        """One delivered alert as CAP."""
        document = self.store.get(request.match_info["distribution_id"])
        if document is None:
            raise web.HTTPNotFound(text="no such alert delivered to this agency")
        return web.Response(body=document, content_type=atom.CAP_MEDIA_TYPE)

    async def get_feed(self, request: web.Request) -> web.Response:
        """The Atom feed, a page at a time, with conditional GET."""
        raw = request.query.get("before")
        if raw is not None and not raw.isdigit():
            raise web.HTTPBadRequest(text="before: must be an entry position (digits)")
        before = int(raw) if raw is not None else None
        page = self.store.page(before)
        tag = atom.etag(page, before)
        headers = {"ETag": tag, "Cache-Control": "no-cache"}
        modified = atom.last_modified(page)
        if modified is not None:
            headers["Last-Modified"] = modified
        if atom.not_modified(
            page, before, request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since")
        ):
            return web.Response(status=304, headers=headers)
        body = atom.render(
            page,
            feed_id=f"urn:opsroom:feed:cap:{self.settings.agency}",
            title=f"CAP alerts for {self.settings.agency}",
            base_url=str(request.url.with_query(None)),
            before=before,
        )
        return web.Response(body=body, content_type="application/atom+xml", headers=headers)

    async def livez(self, _request: web.Request) -> web.Response:
        """Liveness."""
        return web.Response(text="ok\n")

    def close(self) -> None:
        """Close the feed's store."""
        self.store.close()

    async def pump(self) -> None:
        """Deliveries to the feed: each stored, then acknowledged."""
        async for delivery in self.hub.inbox():
            await self.keep(delivery)
            await self.hub.ack(delivery)

    async def keep(self, delivery: hub_pb2.Delivery) -> None:
        """Put a delivery in the feed's store; one CAP cannot express is told to its sender."""
        env = delivery.envelope
        try:
            document = cap.encode(env)
        except DocumentError as exc:
            log.warning("cap_delivery_not_expressible", distribution_id=env.distribution_id, path=exc.path)
            await common.tell_sender(self.hub, self.settings.agency, cap.FORMAT, delivery, exc)
            return
        stored = self.store.add(env.distribution_id, datetime.now(UTC), _title(env), document)
        log.info("cap_delivery_stored", distribution_id=env.distribution_id, new=stored)


def _title(env: envelope_pb2.Envelope) -> str:
    """An entry's title: the alert's event (no free text: headlines may name people), else the kind."""
    if env.WhichOneof("payload") == "alert" and env.alert.infos:
        return env.alert.infos[0].event
    return common_pb2.Kind.Name(env.kind)


def argument_parser() -> argparse.ArgumentParser:
    """This connector's command line (the shipped systemd examples are checked against it)."""
    return common.argument_parser("opsroom adapter cap", __doc__.split("\n", 1)[0])


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m adapters.connect.cap` (and `opsroom adapter cap`): run until SIGTERM or SIGINT."""
    return common.main(argv, "opsroom adapter cap", __doc__.split("\n", 1)[0], _make)


def _make(settings: common.Settings, hub: HubClient, _args: argparse.Namespace) -> CapConnector:
    return CapConnector(settings, hub, AlertStore(settings.data / "alerts.sqlite"))


if __name__ == "__main__":
    sys.exit(main())
