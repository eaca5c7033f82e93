"""Owns HubClient, the connection to the hub as one agency: publish, publish many, receipts, inbox.

    creds = Credentials.from_files("ca.pem", "it.pl.001272.pem", "it.pl.001272-key.pem")
    async with HubClient("hub.example:7443", creds) as hub:
        acceptance = await hub.publish(envelope)          # retried with the same id
        async for delivery in hub.inbox():                # backlog first, then live
            handle(delivery.envelope)
            await hub.ack(delivery)                        # technical acknowledgement

Publishing retries transient failures with the same distribution id, so a retried envelope is
stored and delivered once; a refusal that carries a retry delay (HUB_OVERLOADED, with
google.rpc.RetryInfo) is retried no sooner than that delay, with jitter, so that an overloaded
hub is not hammered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import grpc
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2

from opsroom_client.errors import HubError
from opsroom_client.inbox import Inbox
from opsroom_client.publisher import StreamPublisher
from opsroom_client.retry import RetryPolicy

_SERVICE = "/opsroom.hub.v1.HubService/"


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
        return StreamPublisher(
            self.publish_stream_call,
            lambda: self.retry,
            max_batch=max_batch,
            max_requests_in_flight=max_requests_in_flight,
        )

    def inbox(
        self, *, max_batch: int = 64, window: int = 1024, max_reconnects: int = 1000, kind: type[Inbox] = Inbox
    ) -> Inbox:
        """This agency's deliveries (one inbox per client; kind: a subclass of Inbox to use instead)."""
        if self._inbox is None:
            self._inbox = kind(self.connect_call, max_batch=max_batch, window=window, max_reconnects=max_reconnects)
        return self._inbox

    def connect_call(self) -> Any:
        """A new bare Connect stream call (the inbox's; for tools that speak the protocol themselves)."""
        return self._connect()

    def publish_stream_call(
        self, requests: AsyncIterator[hub_pb2.PublishStreamRequest], timeout: float | None = None
    ) -> Any:
        """A new bare PublishStream call with these requests (the stream publisher's)."""
        return self._publish_stream(requests, timeout=timeout)

    async def ack(self, delivery: hub_pb2.Delivery) -> None:
        """Acknowledge a delivery of this client's inbox."""
        if self._inbox is None:
            raise RuntimeError("no inbox open")
        self._inbox.ack(delivery)


def _retry(result: hub_pb2.Acceptance | HubError | None) -> bool:
    return isinstance(result, HubError) and result.retryable
