"""Owns what the edge makes of request bytes before a handler: malformed requests, ids, unexpected errors.

A request whose bytes do not parse reaches its handler as a Malformed marker (gRPC itself would
answer INTERNAL), so the handler refuses it with MALFORMED_REQUEST like any other bad input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError
from opsroom.hub.v1 import hub_pb2

from broker import ids
from broker.errors import OpsroomError, Reason, Violation
from broker.ops.logging import get_logger

log = get_logger(__name__)


class Malformed:
    """Stands for a request whose bytes did not parse; handlers answer INVALID_ARGUMENT MALFORMED_REQUEST."""

    def __init__(self, method: str) -> None:
        """The request message type that was expected."""
        self.method = method

    def error(self) -> OpsroomError:
        """The refusal for it."""
        return OpsroomError(Reason.MALFORMED_REQUEST, f"the request bytes are not a valid {self.method}")


def tolerant(message_type: Any) -> Callable[[bytes], Any]:
    """A deserializer that returns a Malformed marker instead of raising (grpc would answer INTERNAL)."""
    name = message_type.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return Malformed(name)

    return deserialize


def parsed(request: Any) -> Any:
    """The request, or the MALFORMED_REQUEST refusal of a Malformed marker."""
    if isinstance(request, Malformed):
        raise request.error()
    return request


def check_distribution_id(value: str) -> None:
    """INVALID_REQUEST unless value is a lowercase UUID."""
    if not ids.is_uuid(value):
        raise OpsroomError(
            Reason.INVALID_REQUEST,
            "distribution_id: must be a lowercase UUID",
            violations=[Violation("distribution_id", "format", "must be a lowercase UUID")],
        )


def distribution_id_of(request: object) -> str:
    """The envelope's distribution id of a PublishRequest, or "" for a malformed request."""
    return request.envelope.distribution_id if isinstance(request, hub_pb2.PublishRequest) else ""


def safe_id(value: str) -> str:
    """The distribution id if it is well formed (ids are not personal data), else a marker."""
    return value if ids.is_uuid(value) else "<malformed>"


def internal(exc: Exception) -> OpsroomError:
    """An unexpected error, logged (type only), as the INTERNAL refusal the caller gets."""
    log.error("internal_error", error_type=type(exc).__name__, exc_info=exc)
    return OpsroomError(Reason.INTERNAL, f"internal error ({type(exc).__name__}); nothing was stored")
