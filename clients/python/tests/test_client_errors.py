"""HubError from the hub's google.rpc.Status: reason, field paths, retry delay, and what is retried."""

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from opsroom_client import FieldProblem, HubError
from opsroom_client.errors import status_code


def _status(code: grpc.StatusCode, message: str, *details: object) -> status_pb2.Status:
    packed = []
    for detail in details:
        box = any_pb2.Any()
        box.Pack(detail)  # type: ignore[arg-type]
        packed.append(box)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


def test_a_refused_field_names_its_path_and_rule() -> None:
    status = _status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "the envelope is not valid",
        error_details_pb2.ErrorInfo(reason="INVALID_ENVELOPE", domain="opsroom.hub", metadata={"fields": "1"}),
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="incident.location.istat_code", reason="ISTAT_CODE", description="not a comune"
                )
            ]
        ),
    )
    error = HubError.from_status(status)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ENVELOPE"
    assert error.metadata == {"fields": "1"}
    assert error.fields == (FieldProblem("incident.location.istat_code", "ISTAT_CODE", "not a comune"),)
    assert error.retry_after is None
    assert not error.retryable
    assert not error.stream_broken


def test_an_overload_refusal_carries_its_retry_delay_and_is_retried_no_sooner() -> None:
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromMilliseconds(1500)
    status = _status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "busy",
        error_details_pb2.ErrorInfo(reason="HUB_OVERLOADED", domain="opsroom.hub"),
        retry,
    )
    error = HubError.from_status(status)
    assert error.retry_after == pytest.approx(1.5)
    assert error.retryable
    waits = [error.backoff(0.1) for _ in range(200)]
    assert min(waits) >= 1.5
    assert max(waits) <= 1.5 * 1.5
    assert error.backoff(5.0) == 5.0  # the policy's longer delay wins


def test_the_details_trailer_of_a_failed_call_is_decoded() -> None:
    status = _status(
        grpc.StatusCode.PERMISSION_DENIED,
        "no agreement",
        error_details_pb2.ErrorInfo(reason="NOT_PERMITTED", domain="opsroom.hub"),
    )
    rpc_error = grpc.aio.AioRpcError(
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details="no agreement",
    )
    error = HubError.from_rpc_error(rpc_error)
    assert (error.code, error.reason, error.message) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_PERMITTED",
        "no agreement",
    )


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.CANCELLED, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
        (grpc.StatusCode.FAILED_PRECONDITION, False),
    ],
)
def test_a_call_without_details_is_retried_only_for_transient_codes(code: grpc.StatusCode, retryable: bool) -> None:
    error = HubError.from_rpc_error(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="x"))
    assert (error.reason, error.retryable) == ("", retryable)


def test_a_stream_ended_by_core_without_details_counts_as_broken_not_refused() -> None:
    assert HubError(grpc.StatusCode.INTERNAL, "", "Internal error from Core").stream_broken
    assert not HubError(grpc.StatusCode.INTERNAL, "INTERNAL", "a bug at the hub").stream_broken


def test_every_numeric_code_maps_back_and_an_unknown_one_is_unknown() -> None:
    for code in grpc.StatusCode:
        assert status_code(code.value[0]) is code
    assert status_code(999) is grpc.StatusCode.UNKNOWN
