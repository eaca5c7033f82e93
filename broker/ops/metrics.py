"""Every Prometheus metric of the hub, in one registry per hub, and the plain-HTTP ops endpoint.

The ops endpoint (hub.metrics_listen) serves /metrics, and /livez and /readyz for a load
balancer or a script, without a client certificate: /livez answers 200 while the process
serves HTTP, /readyz 200 "ready" while the hub takes work (its gRPC health is SERVING) and 503
with a short reason otherwise. Neither says anything about messages or agencies.

Labels are bounded: agency ids come from the hub config (or "unregistered"), codes and reasons
from the error catalogue. No label ever holds message content.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

# Whether the hub takes work now, and the reason when it does not (e.g. "starting").
Readiness = Callable[[], tuple[bool, str]]

UNREGISTERED = "unregistered"

# Latency buckets from 0.5 ms to 30 s: an operator notices anything above a second.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


class Metrics:
    """The hub's metrics; one instance per hub process (tests run several hubs in one process)."""

    def __init__(self) -> None:
        """Create the metrics in a fresh registry."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.publishes = Counter(
            "opsroom_publishes",
            "Envelopes received for publishing, by sending agency and outcome (accepted, replayed, refused).",
            ["agency", "outcome"],
            registry=r,
        )
        self.refusals = Counter(
            "opsroom_refusals",
            "Refused requests, by calling agency, gRPC code and reason from the error catalogue.",
            ["agency", "code", "reason"],
            registry=r,
        )
        self.deliveries = Counter(
            "opsroom_deliveries",
            "Deliveries sent to a room's session, by recipient agency.",
            ["agency"],
            registry=r,
        )
        self.escalations = Counter(
            "opsroom_escalations",
            "Requests no recipient answered in time, by alternate room and outcome (delivered, or notified only).",
            ["agency", "outcome"],
            registry=r,
        )
        self.session_gaps = Counter(
            "opsroom_session_gaps",
            "Delivery sessions ended because a delivery was lost between JetStream and the hub (the room reconnects).",
            ["agency"],
            registry=r,
        )
        self.expired = Counter(
            "opsroom_expired",
            "Deliveries that expired undelivered, by recipient agency: counted by the replica that stored the"
            " sender's notice (once per delivery over all replicas).",
            ["agency"],
            registry=r,
        )
        self.acks = Counter(
            "opsroom_acks",
            "Deliveries acknowledged by a room's client (technical acknowledgement), by recipient agency.",
            ["agency"],
            registry=r,
        )
        self.responses = Counter(
            "opsroom_business_responses",
            "Operator answers to requests and hand-overs, by answering agency and outcome.",
            ["agency", "outcome"],
            registry=r,
        )
        self.publish_to_ack = Histogram(
            "opsroom_publish_to_ack_seconds",
            "Time from receiving a publish to answering it, stored on disk for every recipient.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_to_delivery = Histogram(
            "opsroom_publish_to_delivery_seconds",
            "Time from storing an envelope to sending it on the recipient's session (first attempt).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "opsroom_commit_seconds",
            "Duration of one write to JetStream, by lane and mode: an atomic batch, or single pipelined publishes.",
            ["lane", "mode"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_messages = Histogram(
            "opsroom_commit_messages",
            "JetStream messages per write (deliveries, acceptance and receipt records), by lane and mode.",
            ["lane", "mode"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.commit_failures = Counter(
            "opsroom_commit_failures",
            "Atomic batch commits that JetStream refused or did not confirm, by kind.",
            ["kind"],
            registry=r,
        )
        self.sessions = Gauge("opsroom_sessions", "Open delivery sessions, by agency.", ["agency"], registry=r)
        self.online = Gauge(
            "opsroom_room_online",
            "1 while this replica serves the agency's room and has heard from it within the presence timeout.",
            ["agency"],
            registry=r,
        )
        self.backlog = Gauge(
            "opsroom_backlog",
            "Deliveries waiting for an agency, as JetStream reported on the last delivery.",
            ["agency"],
            registry=r,
        )
        self.in_flight = Gauge(
            "opsroom_publishes_in_flight",
            "Envelopes taken and not yet answered, by lane (bounded by hub.max_inflight_publishes).",
            ["lane"],
            registry=r,
        )
        self.draining = Gauge("opsroom_draining", "1 while the hub drains before stopping.", registry=r)
        self.agreements_loaded = Gauge(
            "opsroom_agreements_loaded", "Agreements in force (0 when routing by allow-list).", registry=r
        )
        self.agreement_reloads = Counter(
            "opsroom_agreement_reloads",
            "Agreement set loads, by outcome: loaded (at start), reloaded, refused (the previous set stays).",
            ["outcome"],
            registry=r,
        )
        self.audit_entries = Counter(
            "opsroom_audit_entries", "Entries appended to the audit chain by this hub.", registry=r
        )
        self.audit_write_seconds = Histogram(
            "opsroom_audit_write_seconds",
            "Duration of one write to the audit chain (entries of one flush).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.waiting = Gauge(
            "opsroom_waiting",
            "Deliveries an agency's consumer holds (not yet delivered, or not acknowledged), by agency and lane;"
            " read by the expiry worker every pass, for rooms online or not.",
            ["agency", "lane"],
            registry=r,
        )
        self.oldest_unacked = Gauge(
            "opsroom_oldest_unacked_seconds",
            "Age of the oldest delivery an agency's room has not acknowledged (0: none), by agency and lane;"
            " set by the expiry worker every pass, for rooms online or not.",
            ["agency", "lane"],
            registry=r,
        )
        self.redelivered = Gauge(
            "opsroom_redelivered",
            "Deliveries sent to an agency's room more than once and not yet acknowledged, by agency and lane.",
            ["agency", "lane"],
            registry=r,
        )
        self.nats_monitor_up = Gauge(
            "opsroom_nats_monitor_up",
            "1 while a nats-server's monitoring endpoint answers, by its URL.",
            ["server"],
            registry=r,
        )
        self.jetstream_storage = Gauge(
            "opsroom_jetstream_storage_bytes", "JetStream file storage a nats-server uses, by its monitoring URL.",
            ["server"], registry=r,
        )  # fmt: skip
        self.jetstream_max_storage = Gauge(
            "opsroom_jetstream_max_storage_bytes",
            "JetStream file storage a nats-server allows (its max_storage), by its monitoring URL.",
            ["server"], registry=r,
        )  # fmt: skip
        self.audit_last_write = Gauge(
            "opsroom_audit_last_write_timestamp_seconds",
            "When this hub last appended to the audit chain (each write's last entry is signed), Unix time.",
            registry=r,
        )
        self.nats_connected = Gauge(
            "opsroom_nats_connected", "1 while the hub's connection to NATS is up, 0 while it reconnects.", registry=r
        )
        self.build_info = Gauge(
            "opsroom_build_info", "Always 1; the hub's version in its label.", ["version"], registry=r
        )
        self.audit_tamper_alerts = Counter(
            "opsroom_audit_tamper_alerts",
            "Times this hub found audit entries no trusted key vouches for (page the platform team and the DPO).",
            registry=r,
        )
        self.routes = Counter(
            "opsroom_routes",
            "Recipients routed, by how: explicit (named by the sender), selected (by a territory rule), reply.",
            ["how"],
            registry=r,
        )
        # Revoked client certificates ([tls] crl_file, deny_file; docs/security.md#revocation).
        self.revocation_reloads = Counter(
            "opsroom_revocation_reloads",
            "Revocation list loads, by outcome: loaded (at start), reloaded, refused (the previous lists stay).",
            ["outcome"],
            registry=r,
        )
        self.revoked_entries = Gauge(
            "opsroom_revoked_entries",
            "Entries of the revocation lists in force (CRL entries, denied agencies, serials and fingerprints).",
            registry=r,
        )
        self.revoked_streams = Counter(
            "opsroom_revoked_streams_closed",
            "Open Connect and PublishStream calls ended because a reloaded list revoked their certificate.",
            registry=r,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, listen: str, readiness: Readiness | None = None) -> int:
        """Serve /metrics, /livez and /readyz on host:port (port 0 picks a free one); returns the port.

        readiness answers /readyz (without it, /readyz always says ready); it is called on the
        HTTP server's thread, so it must only read plain values.
        """
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        family = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][0]

        class Server(ThreadingWSGIServer):
            address_family = family

        app = ops_app(make_wsgi_app(self.registry), readiness or (lambda: (True, "ready")))
        server = make_server(host, int(port), app, Server, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="opsroom-ops-http", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        return int(server.server_port)

    def close(self) -> None:
        """Stop the /metrics endpoint."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def ops_app(metrics: Callable[..., Iterable[bytes]], readiness: Readiness) -> Callable[..., Iterable[bytes]]:
    """The ops endpoint's WSGI app: /livez and /readyz (plain text), anything else to the Prometheus app."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/livez", "/readyz"):
            return metrics(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"use GET\n"]
        if path == "/livez":
            status, text = "200 OK", "alive"
        else:
            ready, reason = readiness()
            status, text = ("200 OK", "ready") if ready else ("503 Service Unavailable", reason)
        body = f"{text}\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (probes come every few seconds; the hub logs JSON)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the name of the overridden parameter
        """Log nothing."""
