"""The gRPC edge: HubService handlers, thin, turning calls into publisher and session work and errors into statuses.

Publish, PublishStream and GetReceipt are here; Connect is in broker.edge.connect, what every
handler does first (the caller, draining) and last (refusals as statuses) in broker.edge.common.
Every handler first resolves the calling agency from the client certificate. Refusals become
a google.rpc.Status with ErrorInfo (reason from the catalogue) and, for INVALID_ARGUMENT, a
BadRequest whose field paths start at the request ("envelope.sender.agency_id"). One caller's
bad input ends only its own call, or only its own entry of a batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2

from broker.audit.log import AuditLog
from broker.audit.records import Caller
from broker.config import HubConfig
from broker.delivery.receipt_reader import ReceiptReader
from broker.delivery.registry import SessionRegistry
from broker.edge.admission import Admission, Bounds
from broker.edge.bulk_line import BulkLine
from broker.edge.common import Context, Edge
from broker.edge.connect import ConnectHandler
from broker.edge.requests import (
    Malformed,
    check_distribution_id,
    distribution_id_of,
    internal,
    parsed,
    safe_id,
    tolerant,
)
from broker.edge.revocations import RevocationStore
from broker.edge.status import status_of
from broker.errors import OpsroomError, Reason, Refused
from broker.lanes import Lane, lane_of
from broker.limits import SizeLimits, StreamCount
from broker.ops.logging import get_logger
from broker.ops.metrics import Metrics
from broker.publish.committer import Committer
from broker.publish.publisher import Accepted, Publisher
from broker.store.jetstream import JetStream
from broker.times import Clock

log = get_logger(__name__)

SERVICE = "opsroom.hub.v1.HubService"
# Requests on one PublishStream read ahead of their answers; a faster sender waits.
STREAM_READ_AHEAD = 64
# A PublishStream reader gives the event loop up after this much work on one request (not after
# each envelope: a turn of the loop per envelope costs more than the envelope's own checks).
READ_SLICE_SECONDS = 0.002
# Refusals logged once a second with their count (broker/edge/admission.py), not one by one.
_AGGREGATED = frozenset({Reason.HUB_OVERLOADED, Reason.AGENCY_RATE_LIMITED})


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
        revocations: RevocationStore | None = None,
    ) -> None:
        """Wire the handlers; with audit, each session's backlog read is recorded as a consultation.

        admission bounds the envelopes in flight (a default one when None).
        """
        self._admission = admission if admission is not None else Admission(Bounds())
        streams = StreamCount(cfg.max_streams_per_agency, cfg.overload_retry_after.total_seconds())
        self._edge = Edge(metrics, is_registered, streams, revocations)
        self._sizes = SizeLimits(cfg.max_envelope_bytes, cfg.payload_bytes)
        self._is_registered = is_registered
        self._connect = ConnectHandler(self._edge, cfg, js, committer, sessions, metrics, clock, audit)
        self._cfg = cfg
        self._publisher = publisher
        self._receipts = receipts
        self._metrics = metrics

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

    @property
    def draining(self) -> bool:
        """True once the hub is stopping: new calls are refused."""
        return self._edge.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._edge.draining = value

    def _check_size(self, env: envelope_pb2.Envelope) -> None:
        """ENVELOPE_TOO_LARGE over the limit of the envelope's payload (BadRequest names the payload field)."""
        self._sizes.check(env.WhichOneof("payload"), env.ByteSize())

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
            caller = self._edge.caller(context)
            agency = caller.agency_id
            request = parsed(request)
            self._edge.check_draining()
            lane = lane_of(request.envelope)
            connection = context.peer()
            self._admission.enter(agency, lane, connection)
            try:
                self._check_size(request.envelope)
                accepted = await self._publisher.publish(request.envelope, caller, resend=request.resend)
            except OpsroomError:
                raise
            except Exception as exc:
                raise internal(exc) from exc
            finally:
                self._admission.leave(agency, lane, connection)
        except OpsroomError as err:
            if self._is_registered(agency):
                self._metrics.publishes.labels(agency, "refused").inc()
            if err.reason not in _AGGREGATED:  # those are logged once a second, counted
                log.info(
                    "publish_refused",
                    sender_agency=agency,
                    distribution_id=safe_id(distribution_id_of(request)),
                    reason=err.reason.name,
                )
            await self._edge.abort(context, agency, err, "envelope")
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
        """Publish batches; answers each request in order while later ones are being stored.

        The stream counts against the agency's cap of open streams while it is open.
        """
        agency = ""
        try:
            caller = self._edge.caller(context)
            agency = caller.agency_id
            self._edge.streams.open(agency, "PublishStream")
        except OpsroomError as err:
            await self._edge.abort(context, agency, err)
        try:
            async for response in self._publish_stream(requests, caller, context.peer(), context):
                yield response
        finally:
            self._edge.streams.close(agency)

    async def _publish_stream(
        self,
        requests: AsyncIterator[hub_pb2.PublishStreamRequest | Malformed],
        caller: Caller,
        connection: str,
        context: Context,
    ) -> AsyncIterator[hub_pb2.PublishStreamResponse]:
        agency = caller.agency_id
        # Requests read but not yet answered: the queue is unbounded, the semaphore bounds it.
        answers: asyncio.Queue[tuple[int, list[_Pending], float] | Malformed | None] = asyncio.Queue()
        read_ahead = asyncio.Semaphore(STREAM_READ_AHEAD)
        bulk = BulkLine(self._publisher, caller)
        reader = asyncio.get_running_loop().create_task(
            self._read_batches(requests, caller, connection, bulk, answers, read_ahead)
        )
        revoked = asyncio.get_running_loop().create_task(self._edge.until_revoked(context))
        revoked.add_done_callback(lambda _: answers.put_nowait(None))  # wakes the loop below
        try:
            while True:
                item = await answers.get()
                ended = revoked.exception() if revoked.done() and not revoked.cancelled() else None
                if isinstance(ended, OpsroomError):  # the certificate was revoked: the stream ends now
                    await self._edge.abort(context, agency, ended)
                if item is None:
                    break
                if isinstance(item, Malformed):
                    await self._edge.abort(context, agency, item.error())
                request_id, pending, started = item
                results = [await self._result(agency, p, started) for p in pending]
                read_ahead.release()
                yield hub_pb2.PublishStreamResponse(request_id=request_id, results=results)
            await reader
        finally:
            reader.cancel()
            revoked.cancel()
            bulk.close()

    async def _read_batches(  # noqa: PLR0917 - the stream's parts, handed from publish_stream
        self,
        requests: AsyncIterator[hub_pb2.PublishStreamRequest | Malformed],
        caller: Caller,
        connection: str,
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
                    slice_from = started
                    for i, env in enumerate(request.envelopes):
                        pending.append((i, await self._take(env, caller, connection, bulk, resend=i in resent)))
                        # After a slice of work, let other calls (other agencies' publishes) have the loop.
                        if time.perf_counter() - slice_from >= READ_SLICE_SECONDS:
                            await asyncio.sleep(0)
                            slice_from = time.perf_counter()
                answers.put_nowait((request.request_id, pending, started))
        finally:
            answers.put_nowait(None)

    async def _take(
        self, env: envelope_pb2.Envelope, caller: Caller, connection: str, bulk: BulkLine, *, resend: bool
    ) -> OpsroomError | asyncio.Future[Accepted]:
        """One envelope of a PublishStream request: admitted and begun, or its refusal.

        Over its agency's rate or bounds of envelopes in flight, the envelope waits for room
        (Admission.wait_enter) instead of being refused: the stream's reader stops reading
        meanwhile, so the rest of the flood stays in the sender's transport. Only the hub-wide
        bound refuses (HUB_OVERLOADED, scope hub).

        An urgent envelope is begun at once; a bulk one joins the stream's bulk line, so that
        bulk envelopes waiting their turn at the lane gate do not hold up the urgent envelopes
        sent after them on the same stream.
        """
        agency = caller.agency_id
        try:
            self._edge.check_draining()
            lane = lane_of(env)
            # Over the agency's own limits the stream waits here, and reads nothing more meanwhile.
            await self._admission.wait_enter(agency, lane, connection)
        except OpsroomError as err:
            return err
        try:
            self._check_size(env)
            if lane is Lane.BULK:
                future = bulk.begin(env, resend=resend)
            else:
                future = await self._publisher.begin(env, caller, resend=resend)
        except OpsroomError as err:
            self._admission.leave(agency, lane, connection)
            return err
        except Exception as exc:
            self._admission.leave(agency, lane, connection)
            return internal(exc)
        future.add_done_callback(lambda _done: self._admission.leave(agency, lane, connection))
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
        self._edge.refused(agency, err)
        return hub_pb2.PublishResult(error=status_of(err, f"envelopes[{index}]"))

    # -- Connect ---------------------------------------------------------------------------

    async def connect(self, requests: AsyncIterator[hub_pb2.ConnectRequest], context: Context) -> None:
        """A room's delivery session (broker.edge.connect)."""
        await self._connect.handle(requests, context)

    # -- GetReceipt ------------------------------------------------------------------------

    async def get_receipt(self, request: hub_pb2.GetReceiptRequest, context: Context) -> hub_pb2.GetReceiptResponse:
        """The receipt of an envelope the caller sent."""
        agency = ""
        try:
            agency = self._edge.agency(context)
            request = parsed(request)
            check_distribution_id(request.distribution_id)
            receipt = await self._receipts.receipt(request.distribution_id, agency)
        except OpsroomError as err:
            await self._edge.abort(context, agency, err)
        return hub_pb2.GetReceiptResponse(receipt=receipt)
