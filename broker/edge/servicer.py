"""The gRPC edge: HubService handlers, thin, turning calls into publisher and session work and errors into statuses.

Every handler first resolves the calling agency from the client certificate. Refusals become
a google.rpc.Status with ErrorInfo (reason from the catalogue) and, for INVALID_ARGUMENT, a
BadRequest whose field paths start at the request ("envelope.sender.agency_id"). One caller's
bad input ends only its own call, or only its own entry of a batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, NoReturn

import grpc
import structlog
from grpc_status import rpc_status
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2

from broker.audit import records as audit_records
from broker.audit.log import AuditLog
from broker.audit.records import Caller
from broker.config import HubConfig
from broker.delivery.receipt_reader import ReceiptReader
from broker.delivery.registry import SessionRegistry
from broker.delivery.sessions import DeliverySession
from broker.edge.admission import Admission, Bounds
from broker.edge.bulk_line import BulkLine
from broker.edge.identity import IdentityResolver
from broker.edge.requests import (
    Malformed,
    check_distribution_id,
    distribution_id_of,
    internal,
    parsed,
    safe_id,
    tolerant,
)
from broker.edge.status import status_of
from broker.errors import OpsroomError, Reason, Refused, StoreUnavailable
from broker.lanes import Lane, lane_of
from broker.ops.logging import get_logger
from broker.ops.metrics import UNREGISTERED, Metrics
from broker.publish.committer import Committer
from broker.publish.publisher import Accepted, Publisher
from broker.store.jetstream import JetStream
from broker.times import Clock

log = get_logger(__name__)

SERVICE = "opsroom.hub.v1.HubService"
# Requests on one PublishStream read ahead of their answers; a faster sender waits.
STREAM_READ_AHEAD = 64
Context = grpc.aio.ServicerContext[Any, Any]


def _identity(frame: bytes) -> bytes:
    return frame


# One envelope of a PublishStream request: its index, and its refusal or its future acceptance.
_Pending = tuple[int, "OpsroomError | asyncio.Future[Accepted]"]


class HubServicer:
    """The HubService implementation, registered as a generic handler (Connect sends pre-serialized frames)."""

    def __init__(
        self,
        cfg: HubConfig,
        *,
        js: JetStream,
        publisher: Publisher,
        receipts: ReceiptReader,
        sessions: SessionRegistry,
        metrics: Metrics,
        clock: Clock,
        committer: Committer,
        is_registered: Callable[[str], bool],
        admission: Admission | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        """Wire the handlers; with audit, each session's backlog read is recorded as a consultation.

        admission bounds the envelopes in flight (a default one when None).
        """
        self._admission = admission if admission is not None else Admission(Bounds())
        self._audit = audit
        self._cfg = cfg
        self._js = js
        self._publisher = publisher
        self._receipts = receipts
        self._sessions = sessions
        self._metrics = metrics
        self._clock = clock
        self._committer = committer
        self._identity = IdentityResolver()
        self._is_registered = is_registered
        self.draining = False

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """The handler of each method, by name (a server registers them: each method then takes its calls apart)."""
        return {
            "Publish": grpc.unary_unary_rpc_method_handler(
                self.publish,
                request_deserializer=tolerant(hub_pb2.PublishRequest),
                response_serializer=hub_pb2.PublishResponse.SerializeToString,
            ),
            "PublishStream": grpc.stream_stream_rpc_method_handler(
                self.publish_stream,
                request_deserializer=tolerant(hub_pb2.PublishStreamRequest),
                response_serializer=hub_pb2.PublishStreamResponse.SerializeToString,
            ),
            "Connect": grpc.stream_stream_rpc_method_handler(
                self.connect,
                request_deserializer=tolerant(hub_pb2.ConnectRequest),
                response_serializer=_identity,
            ),
            "GetReceipt": grpc.unary_unary_rpc_method_handler(
                self.get_receipt,
                request_deserializer=tolerant(hub_pb2.GetReceiptRequest),
                response_serializer=hub_pb2.GetReceiptResponse.SerializeToString,
            ),
        }

    # -- common --------------------------------------------------------------------------

    def _agency(self, context: Context) -> str:
        return self._caller(context).agency_id

    def _caller(self, context: Context) -> Caller:
        caller = self._identity.caller(context)
        if not self._is_registered(caller.agency_id):
            raise Refused(Reason.AGENCY_NOT_REGISTERED, "the certificate's agency is not registered at this hub")
        return caller

    def _refused(self, agency: str, err: OpsroomError) -> None:
        label = agency if self._is_registered(agency) else UNREGISTERED
        self._metrics.refusals.labels(label, err.reason.code.name, err.reason.name).inc()

    async def _abort(self, context: Context, agency: str, err: OpsroomError, prefix: str = "") -> NoReturn:
        self._refused(agency, err)
        status = rpc_status.to_status(status_of(err, prefix))
        await context.abort(status.code, status.details, status.trailing_metadata)

    def _check_draining(self) -> None:
        if self.draining:
            raise StoreUnavailable("the hub is stopping; retry on another replica")

    def _check_size(self, size: int) -> None:
        if size > self._cfg.max_envelope_bytes:
            raise Refused(
                Reason.ENVELOPE_TOO_LARGE,
                f"the envelope is {size} bytes; the limit is {self._cfg.max_envelope_bytes}",
            )

    def _accepted(self, agency: str, accepted: Accepted, started: float) -> None:
        outcome = "replayed" if accepted.acceptance.replayed else "accepted"
        self._metrics.publishes.labels(agency, outcome).inc()
        self._metrics.publish_to_ack.observe(time.perf_counter() - started)

    # -- Publish ---------------------------------------------------------------------------

    async def publish(self, request: hub_pb2.PublishRequest, context: Context) -> hub_pb2.PublishResponse:
        """Publish one envelope.

        Admission comes first after the caller's identity: an envelope over the bounds of
        envelopes in flight is refused before it is validated or routed, at the cost of a status.
        """
        started = time.perf_counter()
        agency = ""
        try:
            caller = self._caller(context)
            agency = caller.agency_id
            request = parsed(request)
            self._check_draining()
            lane = lane_of(request.envelope)
            self._admission.enter(agency, lane)
            try:
                self._check_size(request.envelope.ByteSize())
                accepted = await self._publisher.publish(request.envelope, caller, resend=request.resend)
            except OpsroomError:
                raise
            except Exception as exc:
                raise internal(exc) from exc
            finally:
                self._admission.leave(agency, lane)
        except OpsroomError as err:
            if self._is_registered(agency):
                self._metrics.publishes.labels(agency, "refused").inc()
            if err.reason is not Reason.HUB_OVERLOADED:  # those are logged once a second, counted
                log.info(
                    "publish_refused",
                    sender_agency=agency,
                    distribution_id=safe_id(distribution_id_of(request)),
                    reason=err.reason.name,
                )
            await self._abort(context, agency, err, "envelope")
        self._accepted(agency, accepted, started)
        log.debug(
            "envelope_accepted",
            sender_agency=agency,
            distribution_id=accepted.acceptance.distribution_id,
            recipients=list(accepted.acceptance.recipients),
            replayed=accepted.acceptance.replayed,
        )
        return hub_pb2.PublishResponse(acceptance=accepted.acceptance)

    # -- PublishStream ---------------------------------------------------------------------

    async def publish_stream(
        self, requests: AsyncIterator[hub_pb2.PublishStreamRequest | Malformed], context: Context
    ) -> AsyncIterator[hub_pb2.PublishStreamResponse]:
        """Publish batches; answers each request in order while later ones are being stored."""
        try:
            caller = self._caller(context)
        except OpsroomError as err:
            await self._abort(context, "", err)
        agency = caller.agency_id
        # Requests read but not yet answered: the queue is unbounded, the semaphore bounds it.
        answers: asyncio.Queue[tuple[int, list[_Pending], float] | Malformed | None] = asyncio.Queue()
        read_ahead = asyncio.Semaphore(STREAM_READ_AHEAD)
        bulk = BulkLine(self._publisher, caller)
        reader = asyncio.get_running_loop().create_task(self._read_batches(requests, caller, bulk, answers, read_ahead))
        try:
            while True:
                item = await answers.get()
                if item is None:
                    break
                if isinstance(item, Malformed):
                    await self._abort(context, agency, item.error())
                request_id, pending, started = item
                results = [await self._result(agency, p, started) for p in pending]
                read_ahead.release()
                yield hub_pb2.PublishStreamResponse(request_id=request_id, results=results)
            await reader
        finally:
            reader.cancel()
            bulk.close()

    async def _read_batches(
        self,
        requests: AsyncIterator[hub_pb2.PublishStreamRequest | Malformed],
        caller: Caller,
        bulk: BulkLine,
        answers: asyncio.Queue[tuple[int, list[_Pending], float] | Malformed | None],
        read_ahead: asyncio.Semaphore,
    ) -> None:
        try:
            async for request in requests:
                if isinstance(request, Malformed):
                    answers.put_nowait(request)
                    return
                await read_ahead.acquire()
                started = time.perf_counter()
                pending: list[_Pending] = []
                if len(request.envelopes) > self._cfg.max_batch_envelopes:
                    err = Refused(
                        Reason.BATCH_TOO_LARGE,
                        f"{len(request.envelopes)} envelopes; at most {self._cfg.max_batch_envelopes} per request",
                    )
                    pending = [(i, err) for i in range(len(request.envelopes))]
                else:
                    resent = frozenset(request.resent)
                    for i, env in enumerate(request.envelopes):
                        pending.append((i, await self._take(env, caller, bulk, resend=i in resent)))
                answers.put_nowait((request.request_id, pending, started))
        finally:
            answers.put_nowait(None)

    async def _take(
        self, env: envelope_pb2.Envelope, caller: Caller, bulk: BulkLine, *, resend: bool
    ) -> OpsroomError | asyncio.Future[Accepted]:
        """One envelope of a PublishStream request: admitted and begun, or its refusal.

        An urgent envelope is begun at once; a bulk one joins the stream's bulk line, so that
        bulk envelopes waiting their turn at the lane gate do not hold up the urgent envelopes
        sent after them on the same stream.
        """
        agency = caller.agency_id
        try:
            self._check_draining()
            lane = lane_of(env)
            self._admission.enter(agency, lane)
        except OpsroomError as err:
            return err
        try:
            self._check_size(env.ByteSize())
            if lane is Lane.BULK:
                future = bulk.begin(env, resend=resend)
            else:
                future = await self._publisher.begin(env, caller, resend=resend)
        except OpsroomError as err:
            self._admission.leave(agency, lane)
            return err
        except Exception as exc:
            self._admission.leave(agency, lane)
            return internal(exc)
        future.add_done_callback(lambda _done: self._admission.leave(agency, lane))
        return future

    async def _result(self, agency: str, item: _Pending, started: float) -> hub_pb2.PublishResult:
        index, pending = item
        if isinstance(pending, OpsroomError):
            err = pending
        else:
            try:
                accepted: Accepted = await pending
            except OpsroomError as exc:
                err = exc
            else:
                self._accepted(agency, accepted, started)
                return hub_pb2.PublishResult(acceptance=accepted.acceptance)
        self._metrics.publishes.labels(agency, "refused").inc()
        self._refused(agency, err)
        return hub_pb2.PublishResult(error=status_of(err, f"envelopes[{index}]"))

    # -- Connect ---------------------------------------------------------------------------

    async def connect(self, _requests: AsyncIterator[hub_pb2.ConnectRequest], context: Context) -> None:
        """A room's delivery session."""
        agency = ""
        try:
            caller = self._caller(context)
            agency = caller.agency_id
            self._check_draining()
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
            await self._abort(context, agency, err)
        self._sessions.register(session)
        structlog.contextvars.bind_contextvars(agency=agency, session_id=session.session_id)
        log.info("session_opened", backlog=backlog)
        error: OpsroomError | None = None
        try:
            opened = hub_pb2.SessionOpened(agency_id=agency, session_id=session.session_id, backlog=backlog)
            await context.write(hub_pb2.ConnectResponse(opened=opened).SerializeToString())
            error = await self._run_session(session, context)
        finally:
            self._sessions.unregister(session)
            await session.close()
            log.info("session_closed", reason=error.reason.name if error else "client_closed")
            structlog.contextvars.unbind_contextvars("agency", "session_id")
        if error is not None:
            await self._abort(context, agency, error)

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

        return await _first_to_end(read_acks(), write_frames(), session.record_acks_forever())

    # -- GetReceipt ------------------------------------------------------------------------

    async def get_receipt(self, request: hub_pb2.GetReceiptRequest, context: Context) -> hub_pb2.GetReceiptResponse:
        """The receipt of an envelope the caller sent."""
        agency = ""
        try:
            agency = self._agency(context)
            request = parsed(request)
            check_distribution_id(request.distribution_id)
            receipt = await self._receipts.receipt(request.distribution_id, agency)
        except OpsroomError as err:
            await self._abort(context, agency, err)
        return hub_pb2.GetReceiptResponse(receipt=receipt)


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
