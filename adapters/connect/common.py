"""What every connector shares: settings and command line, the hub client, refusals as HTTP statuses, the run loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import grpc
import structlog
from aiohttp import web
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import Credentials, HubClient, HubError

from adapters import document
from adapters.document import Context, DocumentError


@dataclass(frozen=True)
class Settings:
    """Where the hub is, who the connector is, where it listens and keeps its state."""

    hub: str
    ca: Path
    cert: Path
    key: Path
    agency: str
    listen: str
    data: Path
    server_name: str | None = None
    recipients: tuple[str, ...] = ()

    @property
    def host_port(self) -> tuple[str, int]:
        """The listen address split (port 0: any free port)."""
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every connector takes."""
    parser.add_argument("--hub", required=True, help="host:port of the hub")
    parser.add_argument("--ca", type=Path, required=True, help="the CA that signs the hub's certificate")
    parser.add_argument("--cert", type=Path, required=True, help="this agency's client certificate")
    parser.add_argument("--key", type=Path, required=True, help="its private key")
    parser.add_argument("--agency", required=True, help="this agency's id (the one in its certificate)")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port to listen on (port 0: any free port)")
    parser.add_argument("--data", type=Path, required=True, help="folder for the connector's state")
    parser.add_argument("--server-name", help="name to check in the hub's certificate, if not the host")
    parser.add_argument("--recipient", action="append", default=[], help="agency to address besides the agreements'")


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings the parsed options give."""
    return Settings(
        hub=args.hub,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        agency=args.agency,
        listen=args.listen,
        data=args.data,
        server_name=args.server_name,
        recipients=tuple(args.recipient),
    )


def client(settings: Settings) -> HubClient:
    """The connector's client of the hub, as its agency."""
    creds = Credentials.from_files(settings.ca, settings.cert, settings.key)
    return HubClient(settings.hub, creds, server_name=settings.server_name)


# A refusal by the hub as the HTTP status a posting system understands.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
}


def refusal(error: HubError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """HTTP status, JSON body and headers for a refusal by the hub (Retry-After when it asks for one)."""
    status = _HTTP_STATUS.get(error.code, 502)
    body: dict[str, Any] = {"reason": error.reason, "message": error.message}
    if error.fields:
        body["fields"] = [{"field": p.field, "rule": p.rule, "description": p.description} for p in error.fields]
    headers = {"Retry-After": str(max(1, round(error.retry_after)))} if error.retry_after is not None else {}
    return status, body, headers


def bad_document(error: DocumentError) -> dict[str, str]:
    """The JSON body of a document refused before it reached the hub (HTTP 400)."""
    return {"reason": "BAD_DOCUMENT", "path": error.path, "message": error.reason}


def configure_logging(level: int = logging.INFO) -> None:
    """Log JSON lines to standard error, as the hub does (standard output is for what the command says)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class Connector(Protocol):
    """A connector: its HTTP application, the loop taking the agency's deliveries, what to close at the end."""

    app: web.Application

    async def pump(self) -> None:
        """Take the agency's deliveries until cancelled (return at once if the connector takes none)."""

    def close(self) -> None:
        """Release what the connector holds (its store)."""


async def serve(
    settings: Settings,
    make: Callable[[Settings, HubClient], Connector],
    stop: asyncio.Event,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Run a connector until stop is set: its HTTP endpoint and its delivery loop, under one owner."""
    log = structlog.get_logger("adapters.connect")
    hub = client(settings)
    connector = make(settings, hub)
    runner = web.AppRunner(connector.app, access_log=None)
    try:
        await runner.setup()
        host, port = settings.host_port
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        log.info("connector_listening", port=bound, agency=settings.agency)
        if on_ready is not None:
            on_ready(bound)
        async with asyncio.TaskGroup() as tasks:
            pump = tasks.create_task(connector.pump())
            await stop.wait()
            pump.cancel()
    finally:
        await runner.cleanup()
        await hub.close()
        connector.close()


def argument_parser(
    prog: str, description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.ArgumentParser:
    """The command line of a connector: the options every connector takes, and its own (extra)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    if extra is not None:
        extra(parser)
    return parser


def main(
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    make: Callable[[Settings, HubClient, argparse.Namespace], Connector],
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Parse the options, run the connector until SIGTERM or SIGINT, print the port it listens on first.

    make builds the connector from the settings, its hub client and the parsed options (its own
    ones, which extra adds to the parser).
    """
    args = argument_parser(prog, description, extra).parse_args(argv)
    settings = settings_from(args)
    configure_logging()

    def say(port: int) -> None:
        # The port, for whoever started the connector (port 0 in the settings: any free one).
        print(f"listening on {settings.host_port[0]}:{port}", flush=True)  # noqa: T201

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, lambda s, hub: make(s, hub, args), stop, say)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


RETRY_FIRST, RETRY_MAX = 0.5, 60.0


async def push_until_accepted(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    headers: dict[str, str],
    accepted: Callable[[int, bytes], str | None],
    distribution_id: str,
) -> None:
    """POST body to a room's endpoint until `accepted` (status, answer) says it has it.

    accepted returns None when the room has the document, else what went wrong (logged, by
    distribution id only). The wait doubles from half a second to a minute; the loop is bounded
    by the connector's life (it is cancelled at stop), so a delivery is never given up silently.
    """
    log = structlog.get_logger("adapters.connect")
    delay = RETRY_FIRST
    while True:
        try:
            async with session.post(url, data=body, headers=headers) as response:
                problem = accepted(response.status, await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = f"unreachable ({type(exc).__name__})"
        if problem is None:
            log.info("delivery_pushed", distribution_id=distribution_id)
            return
        log.warning("push_failed", distribution_id=distribution_id, problem=problem[:200], retry_in=delay)
        await asyncio.sleep(delay)
        delay = min(RETRY_MAX, delay * 2)


NOT_EXPRESSIBLE = "NOT_EXPRESSIBLE"


async def tell_sender(hub: HubClient, agency: str, fmt: str, delivery: hub_pb2.Delivery, error: DocumentError) -> None:
    """Tell the sender of a delivery the agency's format cannot carry that it was not passed on.

    An ERROR envelope (CAP "Error") to the sender, referencing the delivery, code NOT_EXPRESSIBLE,
    the format and the path in its description; its distribution id is derived from the
    delivery's, so a redelivery does not send it twice. The delivery is then acknowledged by the
    caller: the agency's connector took it, and the sender knows the room did not get it. A
    refusal of the ERROR itself (an agreement without ERROR from this role) is logged. An
    acknowledgement or error is not answered so (errors about errors would go back and forth).
    """
    env = delivery.envelope
    log = structlog.get_logger("adapters.connect")
    if env.kind in (common_pb2.KIND_ACK, common_pb2.KIND_ERROR):
        log.info("not_expressible_acknowledgement_dropped", distribution_id=env.distribution_id, path=error.path)
        return
    notice = envelope_pb2.Envelope(
        distribution_id=document.distribution_id("not-expressible", agency, env.distribution_id),
        sender=common_pb2.Sender(agency_id=agency),
        status=env.status,
        kind=common_pb2.KIND_ERROR,
        recipients=[env.sender.agency_id],
        confidentiality=env.confidentiality,
        incident_ids=list(env.incident_ids),
        references=[common_pb2.Reference(distribution_id=env.distribution_id, sender_agency_id=env.sender.agency_id)],
        legal_basis=env.legal_basis,
        acknowledgement=envelope_pb2.Acknowledgement(
            code=NOT_EXPRESSIBLE, description=f"{fmt} cannot carry this message ({error.path}: {error.reason})"[:1000]
        ),
    )
    notice.sent_at.GetCurrentTime()
    try:
        await hub.publish(notice)
    except HubError as exc:
        log.warning("not_expressible_notice_refused", distribution_id=env.distribution_id, reason=exc.reason)
        return
    log.info("not_expressible_notice_sent", distribution_id=env.distribution_id, path=error.path)


async def publish_posted(
    hub: HubClient, settings: Settings, fmt: str, decode: Callable[[Context], envelope_pb2.Envelope]
) -> tuple[web.Response, envelope_pb2.Envelope | None]:
    """Decode a document a room's system posted, publish it as the agency's, and the HTTP answer.

    201 with the distribution id and the recipients once the hub has it on disk (and the envelope);
    400 naming the element for a document the codec refuses; the hub's refusal as its HTTP status.
    """
    log = structlog.get_logger("adapters.connect")
    try:
        env = decode(Context(agency_id=settings.agency, recipients=settings.recipients))
    except DocumentError as exc:
        log.info("document_refused", format=fmt, path=exc.path)
        return web.json_response(bad_document(exc), status=400), None
    env.recipients.extend(r for r in settings.recipients if r not in env.recipients)
    try:
        acceptance = await hub.publish(env)
    except HubError as exc:
        status, payload, headers = refusal(exc)
        log.info("publish_refused", format=fmt, distribution_id=env.distribution_id, reason=exc.reason)
        return web.json_response(payload, status=status, headers=headers), None
    log.info("published", format=fmt, distribution_id=env.distribution_id, recipients=len(acceptance.recipients))
    answer = {"distribution_id": env.distribution_id, "recipients": list(acceptance.recipients)}
    return web.json_response(answer, status=201), env
