"""The hub's Python client for agency systems, simulated rooms and adapters: publish, receive, ack, receipts.

    creds = Credentials.from_files("ca.pem", "it.pl.001272.pem", "it.pl.001272-key.pem")
    async with HubClient("hub.example:7443", creds) as hub:
        acceptance = await hub.publish(envelope)          # retried with the same id
        async for delivery in hub.inbox():                # backlog first, then live
            handle(delivery.envelope)
            await hub.ack(delivery)                        # technical acknowledgement

Publishing retries transient failures with the same distribution id, so a retried envelope is
stored and delivered once; a refusal that carries a retry delay (HUB_OVERLOADED, with
google.rpc.RetryInfo) is retried no sooner than that delay, with jitter, so that an overloaded
hub is not hammered. The inbox reconnects by itself, and drops a redelivered envelope (same
distribution id) instead of handing it over twice.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2

_SERVICE = "/opsroom.hub.v1.HubService/"
# Codes retried without a hint from the hub. CANCELLED stays among them: a hub replica that stops
# cancels the calls still open past its grace period, and the retry (through another replica)
# is what the client wants. Other servers also send it when gRPC core's queue of calls overflows
# (this hub bounds the calls per connection so that it does not: overload is HUB_OVERLOADED with a
# retry delay). Every call the client retries is safe to repeat: the hub stores an envelope once
# per distribution id, and the retries are marked resend. Each retry waits its backoff delay.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})


@dataclass(frozen=True)
class Credentials:
    """The agency's certificate and key (PEM) and the CA that signed the hub's certificate."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_files(cls, ca: str | Path, cert: str | Path, key: str | Path) -> Credentials:
        """Read the three PEM files."""
        return cls(Path(ca).read_bytes(), Path(cert).read_bytes(), Path(key).read_bytes())


@dataclass(frozen=True)
class FieldProblem:
    """One field the hub refused, with the rule it breaks."""

    field: str
    rule: str
    description: str


class HubError(Exception):
    """A refusal by the hub: the gRPC code, the catalogue reason, for bad fields their paths, and the retry delay."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        fields: Sequence[FieldProblem] = (),
        metadata: dict[str, str] | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        """Build from the parts of the status; retry_after (seconds) from its RetryInfo, if it has one."""
        super().__init__(f"{code.name} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.fields = tuple(fields)
        self.metadata = metadata or {}
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """True when retrying the same request may succeed: a transient code, or a refusal with a retry delay."""
        return self.code in _RETRYABLE or self.retry_after is not None

    def backoff(self, delay: float) -> float:
        """How long to wait before retrying: delay (the policy's), or longer if the hub asked for more (with jitter)."""
        if self.retry_after is None:
            return delay
        return max(delay, self.retry_after * (1.0 + 0.5 * random.random()))  # noqa: S311 - jitter, not security

    @property
    def stream_broken(self) -> bool:
        """True when a stream call failed in transport rather than by the hub's decision, so it may be retried.

        gRPC reports a stream that the server ended while the client was still writing as
        INTERNAL "Internal error from Core", without the hub's error details (grpc/grpc#36066).
        Publishing again with the same ids is safe: the hub stores an envelope once per id.
        """
        return self.retryable or (self.code == grpc.StatusCode.INTERNAL and not self.reason)

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> HubError:
        """From a google.rpc.Status (as in a PublishStream result)."""
        reason, fields, metadata, retry_after = "", [], {}, None
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            retry = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(bad):
                fields = [FieldProblem(v.field, v.reason, v.description) for v in bad.field_violations]
            elif detail.Unpack(retry):
                retry_after = max(0.0, retry.retry_delay.ToNanoseconds() / 1e9)
        return cls(_code(status.code), reason, status.message, fields, metadata, retry_after=retry_after)

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> HubError:
        """From a failed call."""
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                return cls.from_status(status_pb2.Status.FromString(value))
        return cls(error.code(), "", error.details() or "")


def _code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def timestamp(at: datetime | None = None) -> Timestamp:
    """A Timestamp for `at` (default: now)."""
    ts = Timestamp()
    ts.FromDatetime(at or datetime.now(UTC))
    return ts


def new_envelope(
    sender_agency: str,
    *,
    kind: int,
    recipients: Iterable[str] = (),
    status: int = common_pb2.STATUS_ACTUAL,
    operator_id: str = "",
    purpose: int = common_pb2.PURPOSE_PUBLIC_SECURITY,
    law: str = "d.l. 14/2017 art. 2",
    confidentiality: int = common_pb2.CONFIDENTIALITY_RESTRICTED,
    incident_ids: Iterable[str] = (),
    references: Iterable[tuple[str, str]] = (),
    **payload: Any,
) -> envelope_pb2.Envelope:
    """A new envelope with a fresh distribution id and sent_at now; payload is one keyword, e.g. incident=..."""
    return envelope_pb2.Envelope(
        distribution_id=str(uuid.uuid4()),
        sender=common_pb2.Sender(agency_id=sender_agency, operator_id=operator_id),
        sent_at=timestamp(),
        status=status,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        recipients=list(recipients),
        confidentiality=confidentiality,  # type: ignore[arg-type]
        incident_ids=list(incident_ids),
        references=[common_pb2.Reference(distribution_id=d, sender_agency_id=a) for d, a in references],
        legal_basis=common_pb2.LegalBasis(law=law, purpose=purpose),  # type: ignore[arg-type]
        **payload,
    )


@dataclass
class RetryPolicy:
    """How publishes are retried: the same envelope, with exponential backoff and jitter."""

    attempts: int = 8
    first_delay: float = 0.1
    max_delay: float = 2.0
    timeout: float = 10.0
    # Refusals that carry the hub's retry delay (HUB_OVERLOADED: "come back then") are retried
    # for this long after the first of them, whatever the attempts; then they count like others.
    patience: float = 120.0

    def patient(self, first_refused: float, now: float) -> bool:
        """Whether a refusal with a retry delay is still retried without counting an attempt."""
        return now - first_refused < self.patience

    def delays(self) -> Iterable[float]:
        """The waits between attempts."""
        delay = self.first_delay
        for _ in range(self.attempts - 1):
            yield delay * (0.5 + random.random())  # noqa: S311 - jitter, not security
            delay = min(delay * 2, self.max_delay)


class HubClient:
    """A connection to the hub as one agency (the one of the certificate)."""

    def __init__(
        self,
        target: str,
        credentials: Credentials,
        *,
        server_name: str | None = None,
        retry: RetryPolicy | None = None,
        max_calls_in_flight: int = 64,
    ) -> None:
        """Prepare a secure channel to target ("host:port"); server_name overrides the TLS name check.

        At most max_calls_in_flight publish and receipt calls are on the wire at once; more wait
        here, before their timeout starts (the hub takes at most hub.max_calls_per_connection
        calls per connection, 100 by default: a call waiting in the transport for a turn would
        spend its timeout there, then be sent again, adding load to a hub that is already behind).
        """
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        creds = grpc.ssl_channel_credentials(credentials.ca, credentials.key, credentials.cert)
        self._channel = grpc.aio.secure_channel(target, creds, options=options)
        self.retry = retry or RetryPolicy()
        self._calls = asyncio.Semaphore(max_calls_in_flight)
        self._publish = self._channel.unary_unary(
            _SERVICE + "Publish",
            request_serializer=hub_pb2.PublishRequest.SerializeToString,
            response_deserializer=hub_pb2.PublishResponse.FromString,
        )
        self._publish_stream = self._channel.stream_stream(
            _SERVICE + "PublishStream",
            request_serializer=hub_pb2.PublishStreamRequest.SerializeToString,
            response_deserializer=hub_pb2.PublishStreamResponse.FromString,
        )
        self._connect = self._channel.stream_stream(
            _SERVICE + "Connect",
            request_serializer=hub_pb2.ConnectRequest.SerializeToString,
            response_deserializer=hub_pb2.ConnectResponse.FromString,
        )
        self._get_receipt = self._channel.unary_unary(
            _SERVICE + "GetReceipt",
            request_serializer=hub_pb2.GetReceiptRequest.SerializeToString,
            response_deserializer=hub_pb2.GetReceiptResponse.FromString,
        )
        self._inbox: Inbox | None = None

    async def __aenter__(self) -> Self:
        """Use as a context manager."""
        return self

    async def __aexit__(self, *_exc: object) -> None:
        """Close."""
        await self.close()

    async def close(self) -> None:
        """Close the inbox and the channel."""
        if self._inbox is not None:
            await self._inbox.close()
        await self._channel.close()

    async def publish(self, envelope: envelope_pb2.Envelope, *, resend: bool = False) -> hub_pb2.Acceptance:
        """Publish one envelope; transient failures are retried with the same distribution id.

        resend: the envelope may have been sent before (an application replaying its outbox
        after a restart); the hub then answers from its store if it has it, recording nothing
        new. The retries made here are marked so by themselves.
        """
        request = hub_pb2.PublishRequest(envelope=envelope, resend=resend)
        delays = iter(self.retry.delays())
        loop = asyncio.get_running_loop()
        first_refused: float | None = None
        while True:
            try:
                async with self._calls:
                    response = await self._publish(request, timeout=self.retry.timeout)
            except grpc.aio.AioRpcError as exc:
                error = HubError.from_rpc_error(exc)
                if error.retry_after is not None:
                    first_refused = loop.time() if first_refused is None else first_refused
                    if self.retry.patient(first_refused, loop.time()):
                        await asyncio.sleep(error.backoff(0.0))
                        request.resend = True
                        continue
                delay = next(delays, None) if error.retryable else None
                if delay is None:
                    raise error from None
                await asyncio.sleep(error.backoff(delay))
                request.resend = True
                continue
            return response.acceptance

    async def publish_many(
        self, envelopes: Sequence[envelope_pb2.Envelope], batch_size: int = 100
    ) -> list[hub_pb2.Acceptance | HubError]:
        """Publish envelopes in batches on one stream; one result per envelope, in order.

        Envelopes whose result is a retryable error are sent again (same ids, marked resent) on a
        new stream, after the policy's delay or the longest retry delay the hub asked for.
        """
        results: list[hub_pb2.Acceptance | HubError | None] = [None] * len(envelopes)
        todo = list(range(len(envelopes)))
        delays = iter(self.retry.delays())
        loop = asyncio.get_running_loop()
        first_refused: float | None = None
        resend = False
        while todo:
            retry_next: list[int] = []
            try:
                await self._stream_batches(envelopes, todo, batch_size, results, resend=resend)
            except grpc.aio.AioRpcError as exc:
                error = HubError.from_rpc_error(exc)
                if not error.stream_broken:
                    raise error from None
            retry_next = [i for i in todo if results[i] is None or _retry(results[i])]
            if not retry_next:
                break
            refusals = [r for i in retry_next if isinstance(r := results[i], HubError)]
            overloaded = len(refusals) == len(retry_next) and all(r.retry_after is not None for r in refusals)
            if overloaded:
                first_refused = loop.time() if first_refused is None else first_refused
            if len(retry_next) < len(todo) or (
                overloaded and first_refused is not None and self.retry.patient(first_refused, loop.time())
            ):
                # Progress (an overloaded hub takes part of each round), or only "come back later"
                # refusals within the policy's patience: the attempts count again. Bounded: each
                # progressing round settles an envelope for good, and patience runs out.
                delays = iter(self.retry.delays())
            delay = next(delays, None)
            if delay is None:
                break
            await asyncio.sleep(max([delay, *(r.backoff(delay) for r in refusals)]))
            todo = retry_next
            resend = True
        return [r if r is not None else HubError(grpc.StatusCode.UNAVAILABLE, "", "no answer") for r in results]

    async def _stream_batches(
        self,
        envelopes: Sequence[envelope_pb2.Envelope],
        todo: list[int],
        batch_size: int,
        results: list[hub_pb2.Acceptance | HubError | None],
        *,
        resend: bool,
    ) -> None:
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]

        async def requests() -> AsyncIterator[hub_pb2.PublishStreamRequest]:
            for number, batch in enumerate(batches):
                resent = range(len(batch)) if resend else ()
                yield hub_pb2.PublishStreamRequest(
                    request_id=number, envelopes=[envelopes[i] for i in batch], resent=resent
                )

        call = self._publish_stream(requests(), timeout=self.retry.timeout * max(1, len(batches)))
        async for response in call:
            batch = batches[response.request_id]
            for index, result in zip(batch, response.results, strict=True):
                if result.WhichOneof("result") == "acceptance":
                    results[index] = result.acceptance
                else:
                    results[index] = HubError.from_status(result.error)

    async def receipt(self, distribution_id: str) -> hub_pb2.Receipt:
        """Delivery and answer state of an envelope this agency sent."""
        try:
            async with self._calls:
                response = await self._get_receipt(
                    hub_pb2.GetReceiptRequest(distribution_id=distribution_id), timeout=self.retry.timeout
                )
        except grpc.aio.AioRpcError as exc:
            raise HubError.from_rpc_error(exc) from None
        return response.receipt

    def stream_publisher(self, *, max_batch: int = 100, max_requests_in_flight: int = 32) -> StreamPublisher:
        """A publisher over one long-lived PublishStream that batches concurrent publishes."""
        return StreamPublisher(self, max_batch=max_batch, max_requests_in_flight=max_requests_in_flight)

    def inbox(self, *, max_batch: int = 64, window: int = 1024, max_reconnects: int = 1000) -> Inbox:
        """This agency's deliveries (one inbox per client)."""
        if self._inbox is None:
            self._inbox = Inbox(self, max_batch=max_batch, window=window, max_reconnects=max_reconnects)
        return self._inbox

    async def ack(self, delivery: hub_pb2.Delivery) -> None:
        """Acknowledge a delivery of this client's inbox."""
        if self._inbox is None:
            raise RuntimeError("no inbox open")
        self._inbox.ack(delivery)


@dataclass(eq=False)
class _Pending:
    envelope: envelope_pb2.Envelope
    future: asyncio.Future[hub_pb2.Acceptance]
    attempts: int = 0
    first_refused: float = 0.0  # loop time of its first refusal with a retry delay (0: none yet)


class StreamPublisher:
    """Publishes over one PublishStream, batching publish() calls made while earlier ones are in flight.

    Envelopes submitted while a request is on its way travel together in the next one (up to
    max_batch), so a busy sender pays one gRPC message and one hub commit for many envelopes.
    Transient failures are retried with the same ids, in order, on a new stream.
    """

    def __init__(self, client: HubClient, *, max_batch: int, max_requests_in_flight: int) -> None:
        """Idle until the first publish."""
        self._client = client
        self._max_batch = max_batch
        self._max_requests = max_requests_in_flight
        self._slots = asyncio.Semaphore(max_requests_in_flight)
        self._queue: list[_Pending] = []
        self._ready = asyncio.Event()
        self._in_flight: dict[int, list[_Pending]] = {}
        self._next_id = 0
        self._generation = 0  # of the current stream; a request generator of an older one takes nothing
        self._waiting = 0  # refused envelopes waiting out their retry delay
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def publish(self, envelope: envelope_pb2.Envelope) -> hub_pb2.Acceptance:
        """Publish envelope; raises HubError when refused or when retries are exhausted."""
        if self._closed:
            raise RuntimeError("publisher closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="opsroom-publisher")
        pending = _Pending(envelope, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._ready.set()
        return await pending.future

    async def close(self) -> None:
        """Stop after what was submitted is answered (or failed)."""
        self._closed = True
        self._ready.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delays = iter(self._client.retry.delays())
        while self._queue or self._in_flight or self._waiting or not self._closed:
            try:
                await self._stream()
                delays = iter(self._client.retry.delays())
                if self._in_flight:  # the hub ended the stream (draining) before answering these
                    self._requeue(HubError(grpc.StatusCode.UNAVAILABLE, "", "the stream ended unanswered"))
            except grpc.aio.AioRpcError as exc:
                error = HubError.from_rpc_error(exc)
                self._requeue(error)
                delay = next(delays, None)
                if delay is None or not error.stream_broken:
                    self._fail_all(error)
                    delays = iter(self._client.retry.delays())
                else:
                    await asyncio.sleep(error.backoff(delay))
            if self._closed and not self._queue and not self._waiting:
                return

    def _requeue(self, error: HubError) -> None:
        """Envelopes in flight on a failed stream go back to the front, in order."""
        back = [p for request in sorted(self._in_flight) for p in self._in_flight[request]]
        self._in_flight.clear()
        keep = []
        for pending in back:
            pending.attempts += 1
            if pending.attempts >= self._client.retry.attempts and not pending.future.done():
                pending.future.set_exception(error)
            else:
                keep.append(pending)
        self._queue[:0] = keep

    def _later(self, pending: _Pending, error: HubError) -> None:
        """Send pending again after the retry policy's delay for its attempt count, or the hub's longer one."""
        delay = error.backoff(
            next(itertools.islice(self._client.retry.delays(), max(0, pending.attempts - 1), None), 0.0)
        )
        self._waiting += 1

        def again() -> None:
            self._waiting -= 1
            if not pending.future.done():
                self._queue.insert(0, pending)
            self._ready.set()

        asyncio.get_running_loop().call_later(delay, again)

    def _fail_all(self, error: HubError) -> None:
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(error)
        self._queue.clear()

    async def _requests(self, generation: int, slots: asyncio.Semaphore) -> AsyncIterator[hub_pb2.PublishStreamRequest]:
        """The requests of one stream; ends as soon as that stream is no longer the current one."""
        while generation == self._generation:
            while not self._queue:
                if (self._closed and not self._waiting) or generation != self._generation:
                    return
                self._ready.clear()
                await self._ready.wait()
            await slots.acquire()
            if generation != self._generation or not self._queue:
                slots.release()
                continue
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            self._next_id += 1
            self._in_flight[self._next_id] = batch
            yield hub_pb2.PublishStreamRequest(
                request_id=self._next_id,
                envelopes=[p.envelope for p in batch],
                resent=[i for i, p in enumerate(batch) if p.attempts],
            )

    async def _stream(self) -> None:
        self._generation += 1
        self._slots = asyncio.Semaphore(self._max_requests)
        call = self._client._publish_stream(self._requests(self._generation, self._slots))  # noqa: SLF001
        try:
            await self._answers(call)
        finally:
            self._generation += 1  # the call's request generator stops taking envelopes
            self._ready.set()
            call.cancel()

    async def _answers(self, call: Any) -> None:
        async for response in call:
            batch = self._in_flight.pop(response.request_id, [])
            self._slots.release()
            retry: list[tuple[_Pending, HubError]] = []
            for pending, result in zip(batch, response.results, strict=False):
                if pending.future.done():
                    continue
                if result.WhichOneof("result") == "acceptance":
                    pending.future.set_result(result.acceptance)
                    continue
                error = HubError.from_status(result.error)
                pending.attempts += 1
                now = asyncio.get_running_loop().time()
                if error.retry_after is not None:
                    pending.first_refused = pending.first_refused or now
                    if self._client.retry.patient(pending.first_refused, now):
                        pending.attempts -= 1  # "come back later": not an attempt, within the patience
                if error.retryable and pending.attempts < self._client.retry.attempts:
                    retry.append((pending, error))
                else:
                    pending.future.set_exception(error)
            for pending, error in retry:  # each after its delay, at the front of the queue again
                self._later(pending, error)
            if self._closed and not self._queue and not self._in_flight and not self._waiting:
                call.cancel()
                return


def _retry(result: hub_pb2.Acceptance | HubError | None) -> bool:
    return isinstance(result, HubError) and result.retryable


@dataclass
class _Seen:
    """Distribution ids already handed to the application (bounded)."""

    limit: int = 100_000
    acked: OrderedDict[str, None] = field(default_factory=OrderedDict)
    open: dict[str, int] = field(default_factory=dict)

    def remember_ack(self, distribution_id: str) -> None:
        self.open.pop(distribution_id, None)
        self.acked[distribution_id] = None
        if len(self.acked) > self.limit:
            self.acked.popitem(last=False)


class _Closed(Exception):
    """The inbox was closed."""


class Inbox:
    """An agency's deliveries as an async iterator: backlog first, in order, then live; urgent first.

    Deliveries of the urgent lane that wait in the inbox are handed over before bulk ones (plate
    reads) that arrived earlier; within a lane the order is the hub's.

    A background task owns the Connect stream: it reconnects after failures (backoff, at most
    max_reconnects consecutive failures) and queues what arrives, so a caller may put a timeout
    around iteration without disturbing the stream. A redelivered envelope (same distribution
    id) is never handed over twice; if it was already acknowledged it is acknowledged again.
    """

    def __init__(self, client: HubClient, *, max_batch: int, window: int, max_reconnects: int) -> None:
        """Not connected until first iterated (or started)."""
        self._client = client
        self._max_batch = max_batch
        self._window = window
        self._max_reconnects = max_reconnects
        # (rank, arrival, item): urgent deliveries first, then bulk, then the end of the inbox.
        self._queue: asyncio.PriorityQueue[tuple[int, int, hub_pb2.Delivery | BaseException]] = asyncio.PriorityQueue()
        self._arrivals = itertools.count()
        self._seen = _Seen()
        self._acks: list[int] = []
        self._keepalive = False
        self._ack_ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._call: Any = None
        self._closed = False
        self.session_id = ""
        self.backlog = 0  # deliveries still waiting at the hub, as of the last frame
        self.backlog_at_open = 0  # as the hub counted them when the current session opened
        self.reconnects = 0
        self.duplicates_dropped = 0
        self.opened = asyncio.Event()

    def __aiter__(self) -> Inbox:
        """Iterate deliveries."""
        return self

    def is_closed(self) -> bool:
        """True once close() was called (a method, so that checks are never narrowed away)."""
        return self._closed

    def start(self) -> None:
        """Open the session now (iteration does it too)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="opsroom-inbox")

    async def __anext__(self) -> hub_pb2.Delivery:
        """The next new delivery (never one already handed over)."""
        self.start()
        while True:
            if self._closed and self._queue.empty():
                raise StopAsyncIteration
            _rank, _arrival, item = await self._queue.get()
            if isinstance(item, _Closed):
                raise StopAsyncIteration
            if isinstance(item, BaseException):
                raise item
            dist = item.envelope.distribution_id
            if dist in self._seen.acked:
                self.duplicates_dropped += 1
                self._queue_ack(item.sequence)
                continue
            if dist in self._seen.open:
                self.duplicates_dropped += 1
                self._seen.open[dist] = item.sequence
                continue
            self._seen.open[dist] = item.sequence
            return item

    def ack(self, delivery: hub_pb2.Delivery) -> None:
        """Acknowledge a delivery (sent in the background, batched with others)."""
        dist = delivery.envelope.distribution_id
        sequence = self._seen.open.get(dist, delivery.sequence)
        self._seen.remember_ack(dist)
        self._queue_ack(sequence)

    def _put(self, item: hub_pb2.Delivery | BaseException) -> None:
        """Queue what the session received: urgent deliveries overtake bulk ones still waiting."""
        rank = (1 if item.lane == hub_pb2.LANE_BULK else 0) if isinstance(item, hub_pb2.Delivery) else 2
        self._queue.put_nowait((rank, next(self._arrivals), item))

    def _queue_keepalive(self) -> None:
        self._keepalive = True
        self._ack_ready.set()

    def _queue_ack(self, sequence: int) -> None:
        self._acks.append(sequence)
        self._ack_ready.set()

    async def _run(self) -> None:
        failures = 0
        try:
            while not self.is_closed():
                try:
                    await self._session()
                    failures = 0
                except HubError as error:
                    if self.is_closed():
                        return
                    if not error.retryable:  # e.g. ABORTED: another session of this agency took over
                        self._put(error)
                        return
                    failures += 1
                if self.is_closed():
                    return
                if failures > self._max_reconnects:
                    self._put(HubError(grpc.StatusCode.UNAVAILABLE, "", "too many failed reconnects"))
                    return
                self.reconnects += 1
                await asyncio.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)) * (0.5 + random.random()))  # noqa: S311
        finally:
            self._put(_Closed())

    async def _session(self) -> None:
        """One Connect stream, until it ends; raises HubError if it failed."""
        call = self._client._connect()  # noqa: SLF001 - the inbox is part of the client
        self._call = call
        writer: asyncio.Task[None] | None = None
        try:
            await call.write(
                hub_pb2.ConnectRequest(open=hub_pb2.OpenSession(max_batch=self._max_batch, window=self._window))
            )
            writer = asyncio.get_running_loop().create_task(self._write_acks(call))
            if self._acks:
                self._ack_ready.set()
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                assert isinstance(response, hub_pb2.ConnectResponse)
                which = response.WhichOneof("response")
                if which == "deliveries":
                    self.backlog = response.deliveries.backlog
                    for delivery in response.deliveries.deliveries:
                        self._put(delivery)
                elif which == "heartbeat":  # say the room is alive (the hub ends silent sessions)
                    self._queue_keepalive()
                elif which == "opened":
                    self.session_id = response.opened.session_id
                    self.backlog = self.backlog_at_open = response.opened.backlog
                    self.opened.set()
        except grpc.aio.AioRpcError as exc:
            raise HubError.from_rpc_error(exc) from None
        finally:
            self.opened.clear()
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            self._call = None
            call.cancel()

    async def _write_acks(self, call: Any) -> None:
        while True:
            await self._ack_ready.wait()
            self._ack_ready.clear()
            sequences, self._acks = self._acks, []
            keepalive, self._keepalive = self._keepalive, False
            try:
                if sequences:
                    await call.write(hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=sequences)))
                elif keepalive:  # an acknowledgement says as much
                    await call.write(hub_pb2.ConnectRequest(keepalive=hub_pb2.KeepAlive()))
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError):
                self._acks = sequences + self._acks  # sent again on the next session
                return

    async def close(self, grace: float = 5.0) -> None:
        """Send pending acknowledgements, end the session cleanly (the hub records them) and stop."""
        if self._closed:
            return
        self._closed = True
        call, task = self._call, self._task
        if call is not None and task is not None:
            try:
                if self._acks:
                    sequences, self._acks = self._acks, []
                    await call.write(hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=sequences)))
                await call.done_writing()
                async with asyncio.timeout(grace):
                    await asyncio.shield(task)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError, TimeoutError, HubError):
                pass
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._put(_Closed())
