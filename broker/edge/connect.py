"""Owns the Connect call: a room's delivery session, opened, run (frames out, acknowledgements in) and closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc
import structlog
from opsroom.hub.v1 import hub_pb2

from broker.audit import records as audit_records
from broker.audit.log import AuditLog
from broker.config import HubConfig
from broker.delivery.registry import SessionRegistry
from broker.delivery.sessions import DeliverySession
from broker.edge.common import Context, Edge
from broker.edge.requests import parsed
from broker.errors import OpsroomError, Reason, Refused
from broker.ops.logging import get_logger
from broker.ops.metrics import Metrics
from broker.publish.committer import Committer
from broker.store.jetstream import JetStream
from broker.times import Clock

log = get_logger(__name__)


class ConnectHandler:
    """HubService/Connect: one delivery session per call (see broker.delivery.sessions)."""

    def __init__(  # noqa: PLR0917 - the session's collaborators
        self,
        edge: Edge,
        cfg: HubConfig,
        js: JetStream,
        committer: Committer,
        sessions: SessionRegistry,
        metrics: Metrics,
        clock: Clock,
        audit: AuditLog | None,
    ) -> None:
        """Sessions read and write through js and committer; with audit, each backlog read is recorded."""
        self._edge = edge
        self._cfg = cfg
        self._js = js
        self._committer = committer
        self._sessions = sessions
        self._metrics = metrics
        self._clock = clock
        self._audit = audit

    async def handle(self, _requests: AsyncIterator[hub_pb2.ConnectRequest], context: Context) -> None:
        """A room's delivery session; the call counts against the agency's cap of open streams while it is open."""
        agency = ""
        try:
            caller = self._edge.caller(context)
            agency = caller.agency_id
            self._edge.streams.open(agency, "Connect")
        except OpsroomError as err:
            await self._edge.abort(context, agency, err)
        try:
            await self._handle(caller, context)
        finally:
            self._edge.streams.close(agency)

    async def _handle(self, caller: audit_records.Caller, context: Context) -> None:
        agency = caller.agency_id
        try:
            self._edge.check_draining()
            first = await context.read()
            if first is grpc.aio.EOF:
                return
            first = parsed(first)
            if first.WhichOneof("request") != "open":
                raise Refused(Reason.SESSION_NOT_OPENED, "the first message on Connect must be open")
            session = DeliverySession(
                agency,
                self._js,
                self._committer,
                self._metrics,
                self._clock,
                heartbeat=self._cfg.heartbeat.total_seconds(),
                presence_timeout=self._cfg.presence_timeout.total_seconds(),
                max_batch=first.open.max_batch,
                window=first.open.window,
            )
            backlog = await session.open()
            if self._audit is not None:
                read = audit_records.backlog_read(caller, self._clock.now(), backlog, session.session_id)
                await self._audit.append([read])
        except OpsroomError as err:
            await self._edge.abort(context, agency, err)
        self._sessions.register(session)
        structlog.contextvars.bind_contextvars(agency=agency, session_id=session.session_id)
        log.info("session_opened", backlog=backlog)
        error: OpsroomError | None = None
        try:
            opened = hub_pb2.SessionOpened(
                agency_id=agency,
                session_id=session.session_id,
                backlog=backlog,
                max_batch=session.max_batch,  # the values in effect, after defaults and bounds
                window=session.window,
            )
            await context.write(hub_pb2.ConnectResponse(opened=opened).SerializeToString())
            error = await self._run_session(session, context)
        finally:
            self._sessions.unregister(session)
            await session.close()
            log.info("session_closed", reason=error.reason.name if error else "client_closed")
            structlog.contextvars.unbind_contextvars("agency", "session_id")
        if error is not None:
            await self._edge.abort(context, agency, error)

    async def _run_session(self, session: DeliverySession, context: Context) -> OpsroomError | None:
        """Send frames and take acks until the client closes or the session must end."""

        async def read_acks() -> None:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                session.seen()
                if parsed(request).WhichOneof("request") == "ack":
                    session.on_ack(request.ack.sequences)

        async def write_frames() -> None:
            while True:
                await context.write(await session.next_frame())

        return await _first_to_end(
            read_acks(), write_frames(), session.record_acks_forever(), self._edge.until_revoked(context)
        )


async def _first_to_end(*coroutines: Coroutine[Any, Any, None]) -> OpsroomError | None:
    """Run the coroutines until one ends; cancel the others. Returns the refusal that ended it, if any."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    errors = [t.exception() for t in done if not t.cancelled()]
    for exc in errors:
        if isinstance(exc, OpsroomError):
            return exc
    for exc in errors:
        if exc is not None:
            raise exc
    return None
