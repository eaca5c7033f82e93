"""The hub process: wires config, JetStream, committer, publisher and gRPC server; stops them in order.

Its background work (the commit loops, the escalation and expiry workers, the agreements watch,
the audit retention) runs under one Supervisor: if any of it ends while the hub is not
stopping, health turns NOT_SERVING at once and the hub stops (wait() returns, failure says
which task), so that `opsroom serve` exits non-zero and is restarted instead of living on half
alive.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib.metadata
from typing import Self

from broker.audit import chain
from broker.audit.log import AuditLog
from broker.audit.retention import Retention
from broker.config import HubConfig
from broker.delivery.escalation import Escalator
from broker.delivery.expiry import Expirer
from broker.delivery.receipt_reader import ReceiptReader
from broker.delivery.registry import SessionRegistry
from broker.edge.admission import Admission, Bounds
from broker.edge.revocations import RevocationStore
from broker.edge.server import GrpcServer
from broker.edge.servicer import HubServicer
from broker.lanes import LANES, Lane
from broker.ops.logging import get_logger
from broker.ops.metrics import Metrics
from broker.ops.supervisor import Failure, Supervisor
from broker.policy.routing import AllowListRouter, Router
from broker.policy.store import PolicyStore
from broker.publish.committer import Committer
from broker.publish.publisher import Publisher
from broker.store import monitor
from broker.store.jetstream import JetStream
from broker.times import Clock, SystemClock
from broker.validate import codelists
from broker.validate.checker import ValidationContext

log = get_logger(__name__)

# The bulk lane trades a little latency for fewer writes (fsyncs) that urgent writes would wait behind.
BULK_LINGER = 0.01
BULK_ATOMIC_THRESHOLD = 8


def _version() -> str:
    """The installed opsroom distribution's version ("unknown" when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version("opsroom")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Hub:
    """One hub replica. start() it, then stop() it; or use it as an async context manager."""

    def __init__(self, cfg: HubConfig, *, clock: Clock | None = None, router: Router | None = None) -> None:
        """A hub for cfg; the router defaults to the config's allow-list; the clock to the system's.

        The one clock of the hub: every part that reads the time is given it (the wall time as
        clock.now, intervals as clock.monotonic), so a test that moves it moves the whole hub.
        """
        self.cfg = cfg
        self.time: Clock = clock if clock is not None else SystemClock()
        self.clock = self.time.now
        self.metrics = Metrics()
        self.metrics.build_info.labels(version=_version()).set(1)
        self.policy: PolicyStore | None = None
        if router is not None:
            self.router: Router = router
        elif cfg.agreements is not None:
            self.policy = PolicyStore(cfg.agreements.folder, self.metrics, drill_only=cfg.drill_only)
            self.router = self.policy
        else:
            self.router = AllowListRouter(cfg.allow)
        # Revoked client certificates: loaded now, so that a bad list stops the hub before it starts.
        self.revocations: RevocationStore | None = None
        if cfg.revocation is not None:
            self.revocations = RevocationStore(cfg.revocation, cfg.tls.ca_file, self.metrics, self.clock)
        self.port = 0
        self.metrics_port = 0
        self._js: JetStream | None = None
        self._committers: dict[Lane, Committer] = {}
        self._supervisor = Supervisor(self._background_failed)
        self._started = False
        self._stop_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._server = GrpcServer(cfg)
        self._servicer: HubServicer | None = None
        self._sessions = SessionRegistry()
        self.audit: AuditLog | None = None
        self._audit_js: JetStream | None = None
        self._escalation: Escalator | None = None
        self.admission = Admission(
            Bounds(
                per_lane=cfg.max_inflight_publishes,
                per_agency=cfg.max_inflight_publishes_per_agency,
                retry_after=cfg.overload_retry_after.total_seconds(),
                bulk_per_second=cfg.bulk_max_per_second,
                per_connection=cfg.max_inflight_publishes_per_connection,
                agency_rate=cfg.agency_publish_rate,
                agency_burst=cfg.agency_publish_burst,
            ),
            clock=self.time.monotonic,
        )
        for lane in LANES:
            self.metrics.in_flight.labels(lane.value).set_function(functools.partial(self.admission.in_flight, lane))

    async def __aenter__(self) -> Self:
        """Start the hub."""
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        """Stop the hub."""
        await self.stop()

    @property
    def js(self) -> JetStream:
        """The JetStream connection (after start)."""
        if self._js is None:
            raise RuntimeError("the hub is not started")
        return self._js

    async def start(self) -> None:
        """Serve the ops endpoint (not ready yet), connect to JetStream, check it, prepare the stream, serve gRPC."""
        if self.cfg.metrics_listen:
            self.metrics_port = self.metrics.serve(self.cfg.metrics_listen, self.readiness)
        try:
            await self._start()
        except BaseException:
            if self._stop_task is None:  # nothing will stop it: the ops endpoint goes with the failed start
                self.metrics.close()
            raise

    async def _start(self) -> None:
        """The data path, from the store up: store, commit loops, publisher, workers, then the edge."""
        js = await self._open_store()
        audit = await self._open_audit()
        committer = self._start_commit_loops(js, audit)
        publisher = self._publisher(js, audit)
        self._start_workers(js, committer, audited=audit is not None)
        await self._serve(js, publisher, committer, audit)

    async def _open_store(self) -> JetStream:
        """Connect to JetStream, check that it fsyncs every write, and make sure the streams exist."""
        cfg = self.cfg
        js = await JetStream.connect(cfg.nats)
        self._js = js
        self.metrics.nats_connected.set(1)
        js.on_connection_change(self._refresh_health)
        if cfg.nats.require_sync_always:
            await js.verify_sync_always()
        else:
            log.warning("sync_always_not_required", servers=list(cfg.nats.servers))
        await js.ensure_stream(cfg.audit.duplicate_window.total_seconds() if cfg.audit is not None else None)
        return js

    def _start_commit_loops(self, js: JetStream, audit: AuditLog | None) -> Committer:
        """One commit loop per lane (an urgent write never waits for a bulk batch); returns the urgent one."""
        cfg = self.cfg
        self._committers = {
            lane: Committer(
                js.commit,
                self.metrics,
                max_messages=cfg.nats.commit_max_messages,
                max_bytes=cfg.nats.commit_max_bytes,
                publish_each=js.publish_each,
                atomic_threshold=cfg.nats.atomic_threshold if lane is Lane.URGENT else BULK_ATOMIC_THRESHOLD,
                audit=audit.write if audit is not None else None,
                claimed=js.claimed,
                lane=lane.value,
                linger=0.0 if lane is Lane.URGENT else BULK_LINGER,
            )
            for lane in LANES
        }
        for lane, c in self._committers.items():
            self._supervisor.start(_committer_task(lane), c.run())
        return self._committers[Lane.URGENT]  # receipts and records are small: urgent

    def _publisher(self, js: JetStream, audit: AuditLog | None) -> Publisher:
        """The publish path: validation, routing, redaction, plans, the commit loops."""
        cfg = self.cfg
        return Publisher(
            js,
            self._committers,
            self.router,
            ValidationContext(codelists.load(), self.is_registered, cfg.limits),
            self.clock,
            audited=audit is not None,
            bulk_per_second=cfg.bulk_max_per_second,
            monotonic=self.time.monotonic,
            default_expiry=cfg.default_expiry,
            formats=cfg.formats,
        )

    def _start_workers(self, js: JetStream, committer: Committer, *, audited: bool) -> None:
        """The escalation and expiry workers, under the supervisor."""
        cfg = self.cfg
        self._escalation = Escalator(
            js,
            committer,
            self.router,
            self.metrics,
            self.clock,
            audited=audited,
            recheck=cfg.timer_recheck.total_seconds(),
            formats=cfg.formats,
        )
        self._supervisor.start(ESCALATIONS, self._escalation.run())
        expirer = Expirer(
            js,
            committer,
            self.metrics,
            self.clock,
            agencies=lambda: cfg.agency_ids | self.router.agencies,
            presence_timeout=cfg.presence_timeout.total_seconds(),
        )
        self._supervisor.start(EXPIRIES, expirer.run())
        if cfg.nats.monitor_urls:
            self._supervisor.start(STORAGE_WATCH, monitor.watch_storage(cfg.nats.monitor_urls, self.metrics))

    async def _serve(self, js: JetStream, publisher: Publisher, committer: Committer, audit: AuditLog | None) -> None:
        """The edge: sessions watched, gRPC serving; then the agreements watch and the audit retention."""
        cfg = self.cfg
        self._servicer = HubServicer(
            cfg,
            js=js,
            publisher=publisher,
            receipts=ReceiptReader(js, self.clock, cfg.presence_timeout),
            sessions=self._sessions,
            metrics=self.metrics,
            clock=self.time,
            committer=committer,
            is_registered=self.is_registered,
            admission=self.admission,
            audit=audit,
            revocations=self.revocations,
        )
        await self._sessions.watch(js)
        self.port = await self._server.start(self._servicer)
        # SERVING, unless NATS dropped meanwhile (its reconnection sets SERVING then; see _refresh_health).
        await self._server.set_serving(js.connected)
        if self.policy is not None and cfg.agreements is not None:
            self._supervisor.start(AGREEMENTS_WATCH, self.policy.watch(cfg.agreements.reload.total_seconds()))
        if self.revocations is not None:
            self._supervisor.start(REVOCATIONS_WATCH, self.revocations.watch())
        if audit is not None and cfg.audit is not None and cfg.audit.retention is not None:
            retention = Retention(js, audit, self.clock, cfg.audit.retention)
            self._supervisor.start(AUDIT_RETENTION, retention.run_forever(cfg.audit.purge_interval.total_seconds()))
        self._started_up()

    def _started_up(self) -> None:
        """Started: say so, and stop at once if a background task died meanwhile."""
        cfg = self.cfg
        # What exists now (code lists, agreements, the process's modules) lives as long as the
        # hub: keep it out of the cyclic collector's full passes, which would otherwise walk it
        # and pause the event loop for tens of milliseconds under load.
        gc.collect()
        gc.freeze()
        log.info("hub_started", listen=cfg.listen, stream=cfg.nats.stream, count=len(self.router.agencies))
        self._started = True
        if self._supervisor.failure is not None:  # a task died while the hub was starting: stop now
            self._background_failed(self._supervisor.failure)

    def readiness(self) -> tuple[bool, str]:
        """Whether the hub takes work now (its gRPC health is SERVING), else a short reason; for /readyz.

        Ready once started (streams set up, gRPC serving) while NATS is connected and the hub is not
        stopping. Reads plain values only: the ops endpoint calls it from its own thread.
        """
        if self._supervisor.failure is not None:
            return False, "stopping: a background task failed"
        if self._stop_task is not None:
            return False, "stopping"
        if not self._started:
            return False, "starting"
        js = self._js
        if js is None or not js.connected:
            return False, "nats disconnected"
        return True, "ready"

    async def _refresh_health(self) -> None:
        """The NATS connection dropped or came back: gRPC health is SERVING while it is up (until the hub stops)."""
        connected = self._js is not None and self._js.connected
        self.metrics.nats_connected.set(1 if connected else 0)
        if not self._server.running or self._stop_task is not None:
            return  # not serving yet (start() sets health from the connection), or stopping
        await self._server.set_serving(connected)
        log.info("hub_readiness", status="ready" if connected else "not_ready", reason="nats connection changed")

    @property
    def failure(self) -> Failure | None:
        """The background task whose end stopped the hub, if one did."""
        return self._supervisor.failure

    def _background_failed(self, failure: Failure) -> None:
        """A background task ended before its time (the supervisor logged it): stop serving, then stop the hub."""
        if not self._started or self._stop_task is not None:
            return  # start() calls again once it is done; or the hub is stopping already
        self._stop_task = asyncio.get_running_loop().create_task(self._stop(None, failure), name="hub-stop")

    async def _open_audit(self) -> AuditLog | None:
        """The audit log writer, opened at the head of the chain; None if the config has no [audit].

        It has a connection of its own, so that nats-server stores audit entries and deliveries
        side by side instead of one after the other.
        """
        audit_cfg = self.cfg.audit
        if audit_cfg is None:
            log.warning("audit_disabled")
            return None
        key, trusted = chain.load_keys(audit_cfg.signing_key, audit_cfg.trusted_keys)
        js = await JetStream.connect(self.cfg.nats, name="opsroom-hub-audit")
        self._audit_js = js
        audit = AuditLog(
            js,
            key,
            trusted,
            self.metrics,
            self.clock,
            writer=audit_cfg.writer,
            atomic_threshold=self.cfg.nats.atomic_threshold,
            checkpoint_every=audit_cfg.checkpoint_every,
            pipelined=self.cfg.nats.replicas == 1,
        )
        await audit.open()
        self.audit = audit
        return audit

    def is_registered(self, agency_id: str) -> bool:
        """Whether an agency is known to the hub: in the config, or a party of an agreement in force."""
        return agency_id in self.cfg.agency_ids or agency_id in self.router.agencies

    def reload_agreements(self) -> bool:
        """Load the agreement files again now (SIGHUP); False if refused or unchanged."""
        return self.policy.reload() if self.policy is not None else False

    def reload_revocations(self) -> bool:
        """Read the revocation lists again now (SIGHUP); False if refused or unchanged."""
        return self.revocations.reload() if self.revocations is not None else False

    def reload(self) -> None:
        """SIGHUP: the agreements and the revocation lists, read again now."""
        self.reload_agreements()
        self.reload_revocations()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new work, let in-flight publishes finish (up to grace), end sessions, close.

        Once: a second call (or one after a background failure stopped the hub) waits for the first.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self._stop(grace, None), name="hub-stop")
        await asyncio.shield(self._stop_task)

    async def wait(self) -> None:
        """Until the hub stopped: stop() returned, or a background task failed and the hub stopped itself."""
        await self._stopped.wait()

    async def _stop(self, grace: float | None, failure: Failure | None) -> None:
        try:
            await self._stop_in_order(self.cfg.grace.total_seconds() if grace is None else grace, failure)
        finally:
            self._stopped.set()

    async def _stop_in_order(self, grace: float, failure: Failure | None) -> None:
        """The background workers first, then the gRPC server and sessions, the commit loops last."""
        self._supervisor.stopping()
        if failure is not None:  # tell load balancers and clients at once, before anything else
            await self._server.set_serving(False)
            log.error("hub_stopping_after_failure", task=failure.task, error_type=failure.error_type)
        if self._escalation is not None:
            self._escalation.stop()
        workers = [name for name in self._supervisor.names if name not in _COMMITTER_TASKS]
        for name in workers:
            if await self._supervisor.cancel([name], within=5):
                log.error("task_did_not_stop", task=name)
        log.info("hub_draining")
        self.metrics.draining.set(1)
        if self._servicer is not None:
            self._servicer.draining = True
        await self._server.draining()
        self._sessions.end_all()
        await self._sessions.unwatch()
        await self._server.stop(grace)
        await self._drain_committers(grace + 5)
        if self._js is not None:
            await self._js.close()
            self._js = None
        if self._audit_js is not None:
            await self._audit_js.close()
            self._audit_js = None
        self.admission.close()
        self.metrics.close()
        log.info("hub_stopped")

    async def _drain_committers(self, within: float) -> None:
        """Let the commit loops write what is queued (up to within seconds), then cancel what is left."""
        for committer in self._committers.values():
            committer.close()
        late = await self._supervisor.drain(_COMMITTER_TASKS, within=within)
        if late:
            log.error("committer_did_not_drain", count=len(late))


# The names of the hub's background tasks (in background_task_failed and task_did_not_stop log lines).
ESCALATIONS = "escalations"
EXPIRIES = "expiries"
STORAGE_WATCH = "storage-watch"
AGREEMENTS_WATCH = "agreements-watch"
REVOCATIONS_WATCH = "revocations-watch"
AUDIT_RETENTION = "audit-retention"


def _committer_task(lane: Lane) -> str:
    return f"committer-{lane.value}"


_COMMITTER_TASKS = tuple(_committer_task(lane) for lane in LANES)
