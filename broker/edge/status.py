"""Owns the one mapping of the hub's errors to what a client receives: a google.rpc.Status with its details.

ErrorInfo carries the catalogue reason (broker/errors.py) and the domain; BadRequest names each
refused field, its path starting at the request ("envelopes[3].sender.agency_id"); RetryInfo
carries the delay an overloaded hub asks for. The status code is the catalogue's, whose numbers
are gRPC's.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from broker.errors import ERROR_DOMAIN, OpsroomError


def status_of(err: OpsroomError, prefix: str) -> status_pb2.Status:
    """The google.rpc.Status for err, with violation paths under prefix ("envelope", "envelopes[3]")."""
    info = error_details_pb2.ErrorInfo(reason=err.reason.name, domain=ERROR_DOMAIN, metadata=dict(err.metadata))
    details = [_pack(info)]
    if err.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(err.retry_after * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    if err.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.under(prefix).field if prefix else v.field,
                    description=v.description,
                    reason=v.rule,
                )
                for v in err.violations
            ]
        )
        details.append(_pack(bad))
    message = err.message
    if err.violations and prefix:
        first = err.violations[0].under(prefix)
        more = f" (and {len(err.violations) - 1} more)" if len(err.violations) > 1 else ""
        message = f"{first.field}: {first.description}{more}"
    return status_pb2.Status(code=err.reason.code.value, message=message, details=details)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
