"""The 112 NUE connector: a CUR pushes contact cards over SOAP (GestContatto); cards are pushed on to a room.

    python -m adapters.connect.nue112 --hub hub:7443 --ca ca.pem --cert cur.pem --key cur-key.pem
        --agency it.nue.cur.to --listen 127.0.0.1:8081 --data /var/lib/opsroom-nue
        --company QUESTURA-TO=it.ps.questura.to --company CC-TO=it.cc.cp.to

- `POST /GestContatto` (SOAP 1.1 or 1.2, the operation of the PSAP2 service IEntiService,
  namespace http://entiservice.ws.nue.gov.it/): the card in SchedaContatto is decoded, its
  companies mapped to agencies by the --company directory, and published as the agency's; the
  answer is the service's "OK" once the hub has it on disk (the same card sent again: "OK" again,
  stored once). A card the codec refuses gets a SOAP fault (Client/Sender) naming the element;
  a refusal by the hub a fault with the hub's reason (Server/Receiver when it is worth retrying).
- With `--push URL`, the cards delivered to the agency (incidents and hand-overs) are encoded as
  contact cards and sent to that GestContatto endpoint (the room's own system), one at a time in
  order; a delivery is acknowledged to the hub only once the endpoint answered "OK" (or "Error:
  SCHEDA DUPLICATA": it has the card already). Until then the connector tries again, waiting
  longer each time (up to a minute), and takes nothing newer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

import aiohttp
import structlog
from aiohttp import web
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, HubError

from adapters import nue112
from adapters.connect import common
from adapters.document import Context, DocumentError

log = structlog.get_logger("adapters.connect.nue112")
MAX_BODY = 4 * 1024 * 1024
DUPLICATE = "Error: SCHEDA DUPLICATA"
_RETRY_AT_HUB = frozenset({503})


class NueConnector:
    """The SOAP endpoint of one agency, and the push of its deliveries to its room's endpoint."""

    def __init__(
        self, settings: common.Settings, hub: HubClient, companies: Mapping[str, str], push: str | None
    ) -> None:
        """The connector of settings.agency; companies maps CUR company codes to agency ids."""
        self.settings = settings
        self.hub = hub
        self.companies = dict(companies)
        self.push_url = push
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes([web.post("/GestContatto", self.gest_contatto), web.get("/livez", self.livez)])

    async def gest_contatto(self, request: web.Request) -> web.Response:
        """One GestContatto call: decode the card, publish it, answer OK or a fault."""
        body = await request.read()
        version = "1.1"
        try:
            call = nue112.gest_contatto(body)
            version = call.soap_version
            ctx = Context(agency_id=self.settings.agency, recipients=self.settings.recipients)
            env = nue112.decode(call.card, ctx, companies=self.companies)
        except DocumentError as exc:
            log.info("nue_card_refused", path=exc.path)
            return _soap(nue112.soap_fault(exc, soap_version=version), 500, version)
        try:
            acceptance = await self.hub.publish(env)
        except HubError as exc:
            status, _payload, _headers = common.refusal(exc)
            log.info("nue_publish_refused", distribution_id=env.distribution_id, reason=exc.reason)
            fault = DocumentError("hub", f"{exc.reason}: {exc.message}")
            return _soap(nue112.soap_fault(fault, soap_version=version, server=status in _RETRY_AT_HUB), 500, version)
        log.info("nue_card_published", distribution_id=env.distribution_id, recipients=len(acceptance.recipients))
        return _soap(nue112.gest_contatto_response(nue112.OK), 200, "1.1")

    async def livez(self, _request: web.Request) -> web.Response:
        """Liveness."""
        return web.Response(text="ok\n")

    async def pump(self) -> None:
        """Push each delivery to the room's endpoint, in order; acknowledge it once the room has it."""
        if self.push_url is None:
            return
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async for delivery in self.hub.inbox():
                await self.push(session, delivery)
                await self.hub.ack(delivery)

    async def push(self, session: aiohttp.ClientSession, delivery: hub_pb2.Delivery) -> None:
        """Send one delivery until the room's endpoint has it; one no card can carry is told to its sender."""
        env = delivery.envelope
        try:
            card = nue112.encode(env, companies=self.companies)
        except DocumentError as exc:
            log.warning("nue_delivery_not_expressible", distribution_id=env.distribution_id, path=exc.path)
            await common.tell_sender(self.hub, self.settings.agency, nue112.FORMAT, delivery, exc)
            return
        call = nue112.gest_contatto_request(
            card, {"EnteMittente": env.sender.agency_id, "EnteDestinatario": self.settings.agency}
        )
        assert self.push_url is not None
        await common.push_until_accepted(
            session, self.push_url, call, headers=_HEADERS, accepted=_accepted, distribution_id=env.distribution_id
        )

    def close(self) -> None:
        """Nothing to close: the connector keeps no state of its own."""


_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{nue112.SERVICE_NS}IEntiService/GestContatto"'}


def _accepted(status: int, body: bytes) -> str | None:
    """None when the room's endpoint has the card (OK, or a duplicate of one it has), else what it said."""
    try:
        result = nue112.gest_contatto_result(body)
    except DocumentError as exc:
        return f"HTTP {status}: {exc}"
    return None if result in (nue112.OK, DUPLICATE) else result


def _soap(body: bytes, status: int, version: str) -> web.Response:
    media = "application/soap+xml" if version == "1.2" else "text/xml"
    return web.Response(body=body, status=status, content_type=media, charset="utf-8")


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--company", action="append", default=[], metavar="CODE=AGENCY",
                        help="a CUR company code and the agency id it stands for; repeat for several")  # fmt: skip
    parser.add_argument("--push", help="the room's GestContatto endpoint for the cards delivered to this agency")


def _make(settings: common.Settings, hub: HubClient, args: argparse.Namespace) -> NueConnector:
    try:
        companies = nue112.company_directory(args.company)
    except ValueError as exc:
        raise SystemExit(f"opsroom adapter nue112: --company {exc}") from None
    return NueConnector(settings, hub, companies, args.push)


def argument_parser() -> argparse.ArgumentParser:
    """This connector's command line (the shipped systemd examples are checked against it)."""
    return common.argument_parser("opsroom adapter nue112", __doc__.split("\n", 1)[0], _options)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m adapters.connect.nue112` (and `opsroom adapter nue112`): run until SIGTERM or SIGINT."""
    return common.main(argv, "opsroom adapter nue112", __doc__.split("\n", 1)[0], _make, _options)


if __name__ == "__main__":
    sys.exit(main())
