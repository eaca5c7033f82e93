"""Owns the hub's gRPC server: HubService with registered handlers and gRPC health, over mTLS.

The hub (broker/hub.py) builds the servicer and hands it here; this module alone knows gRPC's
server options, the health service and the order of a graceful stop.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from broker.config import HubConfig
from broker.edge.requests import Malformed, tolerant
from broker.edge.servicer import SERVICE, HubServicer
from broker.edge.status import status_of

# gRPC core's queue of calls received but not yet taken by the event loop: bounded in fact by the
# calls each connection may open (hub.max_calls_per_connection), so it is set out of the way. At
# its defaults (1,000, hard limit 3,000) core resets the calls over it with a bare CANCELLED.
MAX_PENDING_CALLS = 100_000
# The services whose health the hub reports: the server as a whole ("") and HubService.
_SERVICES = ("", SERVICE)


def _ms(value: timedelta) -> int:
    return round(value.total_seconds() * 1000)


def keepalive_options(cfg: HubConfig) -> list[tuple[str, int]]:
    """GRPC core's keepalive and idle options from the [hub] keys (docs/architecture.md#keepalive-and-idle-connections).

    - the hub pings a connection that sent nothing for keepalive_time, and closes it when the
      ping is not answered within keepalive_timeout (a room host gone without a FIN);
    - a client may ping at most every min_ping_interval, with or without calls open; past
      max_ping_strikes pings too early the hub closes the connection (GOAWAY
      ENHANCE_YOUR_CALM): a ping flood costs the hub nothing more;
    - a connection with no call open for max_connection_idle is closed (GOAWAY; the client
      reconnects on its next call);
    - with max_connection_age set, a connection is closed after that long (and its calls after
      max_connection_age_grace more): clients reconnect, and present their certificate again.
    """
    options = [
        ("grpc.keepalive_time_ms", _ms(cfg.keepalive_time)),
        ("grpc.keepalive_timeout_ms", _ms(cfg.keepalive_timeout)),
        # gRPC core (1.85) waits for a ping's answer this long, whatever keepalive_timeout says
        # (default one minute): a host that stops answering was closed after 60 s, not 10
        # (tests/integration/test_keepalive.py).
        ("grpc.http2.ping_timeout_ms", _ms(cfg.keepalive_timeout)),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(cfg.min_ping_interval)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", cfg.max_ping_strikes),
        # The hub's own pings need no data between them (a quiet Connect stream still gets them).
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if cfg.max_connection_idle:
        options.append(("grpc.max_connection_idle_ms", _ms(cfg.max_connection_idle)))
    if cfg.max_connection_age:
        options.append(("grpc.max_connection_age_ms", _ms(cfg.max_connection_age)))
        options.append(("grpc.max_connection_age_grace_ms", _ms(cfg.max_connection_age_grace)))
    return options


class GrpcServer:
    """HubService and gRPC health on cfg.listen; NOT_SERVING until set_serving(True)."""

    def __init__(self, cfg: HubConfig) -> None:
        """Nothing listens yet."""
        self._cfg = cfg
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._server is not None

    async def start(self, servicer: HubServicer) -> int:
        """Listen and serve; returns the port (OSError if it cannot listen)."""
        cfg = self._cfg
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_request_bytes),
                ("grpc.max_send_message_length", cfg.max_request_bytes),
                *keepalive_options(cfg),
                # Overload: a connection opens at most this many calls; the client's transport holds
                # the others (HTTP/2 flow control) instead of the hub, and core never resets a call
                # for want of room. Without "overload protection", which refuses streams (REFUSED_STREAM,
                # seen by clients as UNAVAILABLE) while the application still holds finished calls.
                ("grpc.max_concurrent_streams", cfg.max_calls_per_connection),
                ("grpc.http.overload_protection", 0),
                ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
            ]
        )
        # Registered, not generic: gRPC takes each registered method's calls from the transport on
        # its own (one at a time per method), so a flood of Publish calls does not hold up the
        # Connect calls of rooms, or receipts.
        server.add_registered_method_handlers(SERVICE, servicer.method_handlers())
        server.add_registered_method_handlers(health.SERVICE_NAME, _health_handlers(self._health))
        if cfg.reflection:
            reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        credentials = grpc.ssl_server_credentials(
            [(cfg.tls.key_file.read_bytes(), cfg.tls.cert_file.read_bytes())],
            root_certificates=cfg.tls.ca_file.read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port(cfg.listen, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {cfg.listen}")
        await server.start()
        self._server = server
        return port

    async def set_serving(self, serving: bool) -> None:  # noqa: FBT001 - a state, not a mode
        """What gRPC health says of the hub and of HubService."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in _SERVICES:
            await self._health.set(service, status)

    async def draining(self) -> None:
        """Health NOT_SERVING for good: load balancers and clients move to another replica."""
        await self._health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Health NOT_SERVING for good, then the server stops (calls still open get grace seconds)."""
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None


def _health_handlers(servicer: health.aio.HealthServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """Health's Check and Watch; a request whose bytes do not parse gets INVALID_ARGUMENT MALFORMED_REQUEST.

    Not health_pb2_grpc.add_HealthServicer_to_server: its deserializer lets the parse error escape
    (the client saw UNKNOWN with the exception's text), and it registers List, which the asyncio
    servicer does not implement (here List is UNIMPLEMENTED, like any method the hub does not serve).
    """

    async def refuse(context: grpc.aio.ServicerContext[Any, Any], request: Malformed) -> None:
        status = rpc_status.to_status(status_of(request.error(), ""))
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def check(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> health_pb2.HealthCheckResponse:
        if isinstance(request, Malformed):
            await refuse(context, request)
        return await servicer.Check(request, context)

    async def watch(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if isinstance(request, Malformed):
            await refuse(context, request)
        await servicer.Watch(request, context)

    return {
        "Check": grpc.unary_unary_rpc_method_handler(
            check,
            request_deserializer=tolerant(health_pb2.HealthCheckRequest),
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            watch,
            request_deserializer=tolerant(health_pb2.HealthCheckRequest),
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        ),
    }
