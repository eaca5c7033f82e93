"""Owns the client's view of a refusal: HubError, built from the hub's google.rpc.Status.

The hub sends every refusal as a gRPC status with details in the `grpc-status-details-bin`
trailer (a google.rpc.Status): an ErrorInfo whose reason is a code of the hub's catalogue
(docs/errors.md), a BadRequest naming the refused fields, and, when the hub asks to be called
again later (HUB_OVERLOADED), a RetryInfo with the delay.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

# Codes retried without a hint from the hub. CANCELLED stays among them: a hub replica that stops
# cancels the calls still open past its grace period, and the retry (through another replica)
# is what the client wants. Other servers also send it when gRPC core's queue of calls overflows
# (this hub bounds the calls per connection so that it does not: overload is HUB_OVERLOADED with a
# retry delay). Every call the client retries is safe to repeat: the hub stores an envelope once
# per distribution id, and the retries are marked resend. Each retry waits its backoff delay.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})


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
        return self.code in RETRYABLE or self.retry_after is not None

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
        return cls(status_code(status.code), reason, status.message, fields, metadata, retry_after=retry_after)

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> HubError:
        """From a failed call."""
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                return cls.from_status(status_pb2.Status.FromString(value))
        return cls(error.code(), "", error.details() or "")


def status_code(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a numeric code (UNKNOWN for a number gRPC does not define)."""
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN
