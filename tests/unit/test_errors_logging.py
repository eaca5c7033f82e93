"""broker.errors catalogue, google.rpc.Status round trip (edge.status.status_of, client.HubError), broker.ops.logging allow-list."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from hypothesis import given
from hypothesis import strategies as st
from opsroom_client import FieldProblem, HubError

from broker.edge.status import status_of
from broker.errors import (
    ERROR_DOMAIN,
    InvalidEnvelope,
    NotPermitted,
    OpsroomError,
    Overloaded,
    Reason,
    Refused,
    StatusCode,
    StoreFull,
    StoreUnavailable,
    Violation,
)
from broker.ops import logging as hub_logging
from tests import factories as f

VIOLATIONS = (
    Violation("sender.agency_id", "agency-id", "must be an agency id such as it.pl.001272"),
    Violation("recipients[2]", "registered-agency", "must be a registered agency"),
    Violation("", "payload-required", "one payload must be set"),
)


# -- the catalogue -------------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.name)
def test_every_reason_has_a_code_and_a_one_line_summary(reason: Reason) -> None:
    """Each reason maps to a gRPC error code (by name and number) and states in one line when it is raised."""
    assert grpc.StatusCode[reason.code.name].value[0] == reason.code.value
    assert grpc.StatusCode.OK != grpc.StatusCode[reason.code.name]
    assert isinstance(reason.summary, str)
    assert reason.summary.strip() == reason.summary
    assert "" != reason.summary
    assert 1 == len(reason.summary.splitlines())


def test_reasons_are_not_aliases() -> None:
    """No two reasons share a value (an Enum alias would make them the same member)."""
    assert list(Reason.__members__) == [r.name for r in Reason]


def test_reason_codes_of_some_reasons() -> None:
    """Spot checks of the catalogue's codes."""
    assert StatusCode.INVALID_ARGUMENT == Reason.INVALID_ENVELOPE.code
    assert StatusCode.PERMISSION_DENIED == Reason.RECIPIENT_NOT_ALLOWED.code
    assert StatusCode.UNAVAILABLE == Reason.STORE_UNAVAILABLE.code
    assert StatusCode.RESOURCE_EXHAUSTED == Reason.STORE_FULL.code
    assert StatusCode.UNAUTHENTICATED == Reason.CERTIFICATE_WITHOUT_AGENCY.code


def test_violation_under_prefixes_its_path() -> None:
    """Violation.under places the path under the prefix; an empty path becomes the prefix itself."""
    assert Violation("envelopes[3].sender.agency_id", "agency-id", VIOLATIONS[0].description) == VIOLATIONS[0].under(
        "envelopes[3]"
    )
    assert Violation("envelope", "payload-required", "one payload must be set") == VIOLATIONS[2].under("envelope")


def test_invalid_envelope_under_prefixes_every_violation() -> None:
    """InvalidEnvelope.under returns a new error whose every violation path starts with the prefix."""
    err = InvalidEnvelope(VIOLATIONS)
    moved = err.under("envelopes[3]")
    assert isinstance(moved, InvalidEnvelope)
    assert (
        Violation("envelopes[3].sender.agency_id", "agency-id", VIOLATIONS[0].description),
        Violation("envelopes[3].recipients[2]", "registered-agency", VIOLATIONS[1].description),
        Violation("envelopes[3]", "payload-required", VIOLATIONS[2].description),
    ) == tuple(moved.violations)
    assert VIOLATIONS == tuple(err.violations)
    assert Reason.INVALID_ENVELOPE == moved.reason
    assert "envelopes[3].sender.agency_id: must be an agency id such as it.pl.001272 (and 2 more)" == moved.message


def test_invalid_envelope_message() -> None:
    """The message names the first violation's path and counts the others."""
    assert (
        "sender.agency_id: must be an agency id such as it.pl.001272 (and 2 more)"
        == InvalidEnvelope(VIOLATIONS).message
    )
    assert "recipients[2]: must be a registered agency" == InvalidEnvelope(VIOLATIONS[1:2]).message
    assert "envelope: one payload must be set" == InvalidEnvelope(VIOLATIONS[2:]).message
    empty = InvalidEnvelope([])
    assert ("envelope: invalid envelope", ()) == (empty.message, tuple(empty.violations))


def test_errors_without_violations_are_unchanged_by_under() -> None:
    """under() on an error without violations returns the error itself."""
    err = NotPermitted(Reason.RECIPIENT_NOT_ALLOWED, "no agreement", {"recipients": f.PL})
    assert err is err.under("envelopes[0]")


def test_error_str_and_args() -> None:
    """str() gives reason and message; args keep them for logging and pickling."""
    err = Refused(Reason.NO_RECIPIENTS, "no recipient")
    assert "NO_RECIPIENTS: no recipient" == str(err)
    assert ("NO_RECIPIENTS", "no recipient") == err.args
    assert (Reason.STORE_UNAVAILABLE, "x") == (StoreUnavailable("x").reason, StoreUnavailable("x").message)
    assert Reason.STORE_FULL == StoreFull("full").reason


# -- google.rpc.Status ---------------------------------------------------------------------


def unpack_details(
    status: status_pb2.Status,
) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest | None]:
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    if len(status.details) == 1:
        return info, None
    assert 2 == len(status.details)
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    return info, bad


def test_status_of_an_invalid_envelope() -> None:
    """The status has the reason's code, an ErrorInfo, and a BadRequest with prefixed paths and rule ids."""
    status = status_of(InvalidEnvelope(VIOLATIONS), "envelopes[3]")
    info, bad = unpack_details(status)
    assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == status.code
    assert "envelopes[3].sender.agency_id: must be an agency id such as it.pl.001272 (and 2 more)" == status.message
    assert ("INVALID_ENVELOPE", ERROR_DOMAIN, "opsroom.hub") == (info.reason, info.domain, ERROR_DOMAIN)
    assert bad is not None
    assert [
        ("envelopes[3].sender.agency_id", "agency-id", VIOLATIONS[0].description),
        ("envelopes[3].recipients[2]", "registered-agency", VIOLATIONS[1].description),
        ("envelopes[3]", "payload-required", VIOLATIONS[2].description),
    ] == [(v.field, v.reason, v.description) for v in bad.field_violations]


def test_status_of_without_prefix_keeps_paths() -> None:
    """With an empty prefix, field paths and the message are those of the error."""
    err = InvalidEnvelope(VIOLATIONS[:2])
    status = status_of(err, "")
    _, bad = unpack_details(status)
    assert bad is not None
    assert ["sender.agency_id", "recipients[2]"] == [v.field for v in bad.field_violations]
    assert err.message == status.message


def test_status_of_an_error_without_violations() -> None:
    """An error without violations gets only an ErrorInfo, with its metadata and its own message."""
    err = NotPermitted(Reason.RECIPIENT_NOT_ALLOWED, "no agreement allows it", {"recipients": f.CC})
    status = status_of(err, "envelope")
    info, bad = unpack_details(status)
    assert bad is None
    assert grpc.StatusCode.PERMISSION_DENIED.value[0] == status.code
    assert "no agreement allows it" == status.message
    assert ("RECIPIENT_NOT_ALLOWED", ERROR_DOMAIN, {"recipients": f.CC}) == (
        info.reason,
        info.domain,
        dict(info.metadata),
    )


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.name)
def test_status_round_trip_for_every_reason(reason: Reason) -> None:
    """HubError.from_status reads back the code, the reason name, the message and the metadata."""
    err = OpsroomError(reason, f"{reason.name.lower()} happened", {"k": "v"})
    hub_error = HubError.from_status(status_of(err, "envelope"))
    assert (grpc.StatusCode[reason.code.name], reason.name, f"{reason.name.lower()} happened", {"k": "v"}, ()) == (
        hub_error.code,
        hub_error.reason,
        hub_error.message,
        hub_error.metadata,
        hub_error.fields,
    )
    assert (reason.code == StatusCode.UNAVAILABLE) == hub_error.retryable


def test_status_round_trip_with_field_paths() -> None:
    """Field paths, rule ids and descriptions survive status_of then HubError.from_status."""
    hub_error = HubError.from_status(status_of(InvalidEnvelope(VIOLATIONS), "envelopes[7]"))
    assert grpc.StatusCode.INVALID_ARGUMENT == hub_error.code
    assert "INVALID_ENVELOPE" == hub_error.reason
    assert (
        FieldProblem("envelopes[7].sender.agency_id", "agency-id", VIOLATIONS[0].description),
        FieldProblem("envelopes[7].recipients[2]", "registered-agency", VIOLATIONS[1].description),
        FieldProblem("envelopes[7]", "payload-required", VIOLATIONS[2].description),
    ) == hub_error.fields
    assert not hub_error.retryable


def test_rpc_error_round_trip_through_trailing_metadata() -> None:
    """A status sent as grpc-status-details-bin trailing metadata is read back by HubError.from_rpc_error."""
    status = rpc_status.to_status(status_of(InvalidEnvelope(VIOLATIONS[1:2]), "envelope"))
    error = grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )
    hub_error = HubError.from_rpc_error(error)
    assert (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ENVELOPE",
        "envelope.recipients[2]: must be a registered agency",
    ) == (
        hub_error.code,
        hub_error.reason,
        hub_error.message,
    )
    assert ("envelope.recipients[2]",) == tuple(p.field for p in hub_error.fields)


def test_rpc_error_without_details() -> None:
    """A failed call without status details keeps its code and text, with no reason."""
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="connection refused"
    )
    hub_error = HubError.from_rpc_error(error)
    assert (grpc.StatusCode.UNAVAILABLE, "", "connection refused", True) == (
        hub_error.code,
        hub_error.reason,
        hub_error.message,
        hub_error.retryable,
    )


def test_overloaded_carries_error_info_and_retry_info_read_back_by_the_client() -> None:
    """HUB_OVERLOADED: RESOURCE_EXHAUSTED with ErrorInfo (scope, lane) and RetryInfo; the client reads the delay."""
    status = status_of(Overloaded("agency", "bulk", 2.5), "envelopes[3]")
    retry = error_details_pb2.RetryInfo()
    assert status.details[1].Unpack(retry)
    assert 2.5 == retry.retry_delay.ToNanoseconds() / 1e9
    hub_error = HubError.from_status(status)
    assert (grpc.StatusCode.RESOURCE_EXHAUSTED, "HUB_OVERLOADED", {"scope": "agency", "lane": "bulk"}, 2.5) == (
        hub_error.code,
        hub_error.reason,
        hub_error.metadata,
        hub_error.retry_after,
    )
    assert hub_error.retryable


def test_backoff_waits_at_least_the_hub_s_delay_with_jitter_and_never_less_than_the_policy() -> None:
    """backoff(d) is d without a RetryInfo; with one, between its delay and 1.5 times it, or d if longer."""
    plain = HubError(grpc.StatusCode.UNAVAILABLE, "", "down")
    assert 0.3 == plain.backoff(0.3)
    overloaded = HubError(grpc.StatusCode.RESOURCE_EXHAUSTED, "HUB_OVERLOADED", "busy", retry_after=2.0)
    waits = [overloaded.backoff(0.1) for _ in range(200)]
    assert all(2.0 <= w <= 3.0 for w in waits)
    assert len(set(waits)) > 1  # jittered
    assert 5.0 == overloaded.backoff(5.0)


def test_a_refusal_without_retry_info_is_not_retried() -> None:
    """STORE_FULL (RESOURCE_EXHAUSTED, no RetryInfo) stays a final answer for the client."""
    hub_error = HubError.from_status(status_of(StoreFull("full"), "envelope"))
    assert (None, False) == (hub_error.retry_after, hub_error.retryable)


def test_from_status_with_unknown_code() -> None:
    """A numeric code no gRPC status has becomes UNKNOWN."""
    assert grpc.StatusCode.UNKNOWN == HubError.from_status(status_pb2.Status(code=99, message="?")).code


# -- logging -------------------------------------------------------------------------------


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """structlog configured as the hub does, into a string; defaults restored afterwards."""
    stream = io.StringIO()
    hub_logging.configure(json=True, stream=stream)
    try:
        yield stream
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_drop_unlisted_keys_removes_and_names_them() -> None:
    """Keys outside ALLOWED_KEYS are removed and listed, sorted, in dropped_keys."""
    event = {"event": "publish_refused", "agency": f.PL, "caller": f.CALLER_NAME, "plate": f.PLATE, "count": 2}
    out = hub_logging.drop_unlisted_keys(None, "info", event)
    assert {"event": "publish_refused", "agency": f.PL, "count": 2, "dropped_keys": ["caller", "plate"]} == out


def test_drop_unlisted_keys_leaves_allowed_events_alone() -> None:
    """An event with only allowed keys passes unchanged, with no dropped_keys."""
    event = {"event": "stream_ready", "stream": "OPSROOM", "level": "info"}
    assert {"event": "stream_ready", "stream": "OPSROOM", "level": "info"} == hub_logging.drop_unlisted_keys(
        None, "info", dict(event)
    )


@given(
    event=st.dictionaries(
        st.one_of(
            st.sampled_from(sorted(hub_logging.ALLOWED_KEYS - {"dropped_keys"})),
            st.text(min_size=1).filter(lambda key: key != "dropped_keys"),  # the processor's own key
        ),
        st.text(),
    )
)
def test_drop_unlisted_keys_property(event: dict[str, str]) -> None:
    """Whatever the event, only allowed keys remain, with their values, and dropped_keys names exactly the others."""
    unlisted = sorted(k for k in event if k not in hub_logging.ALLOWED_KEYS)
    out = dict(hub_logging.drop_unlisted_keys(None, "info", dict(event)))
    assert set(out) <= hub_logging.ALLOWED_KEYS
    assert unlisted == out.pop("dropped_keys", [])
    assert {k: v for k, v in event.items() if k in hub_logging.ALLOWED_KEYS} == out


def test_json_log_drops_personal_value(log_stream: io.StringIO) -> None:
    """A personal value under a key that is not allowed never reaches the JSON output."""
    structlog.get_logger("test").info("call_received", caller="Mario Rossi", agency=f.CUR)
    assert "Mario Rossi" not in log_stream.getvalue()
    [line] = lines(log_stream)
    assert ["caller"] == line["dropped_keys"]
    assert ("call_received", "info", f.CUR) == (line["event"], line["level"], line["agency"])
    assert {"event", "level", "timestamp", "agency", "dropped_keys"} == set(line)


def test_json_log_drops_every_factory_personal_value(log_stream: io.StringIO) -> None:
    """None of the factories' personal values survive, whether passed as keys or bound in context."""
    structlog.contextvars.bind_contextvars(operator_name=f.CALLER_SURNAME)
    log = hub_logging.get_logger("broker.test").bind(vehicle_plate=f.PLATE)
    log.warning("publish_refused", phone=f.CALLER_PHONE, imsi=f.IMSI, note=f.NOTE_TEXT, name=f.CALLER_NAME, reason="X")
    output = log_stream.getvalue()
    assert [] == [value for value in f.PERSONAL_VALUES if value in output]
    [line] = lines(log_stream)
    assert ["imsi", "name", "note", "operator_name", "phone", "vehicle_plate"] == line["dropped_keys"]
    assert ("warning", "X") == (line["level"], line["reason"])


def test_console_log_drops_personal_value() -> None:
    """The console renderer (demo) gets the same allow-list."""
    stream = io.StringIO()
    hub_logging.configure(json=False, stream=stream)
    try:
        structlog.get_logger("test").info("call_received", caller="Mario Rossi")
    finally:
        structlog.reset_defaults()
    assert "call_received" in stream.getvalue()
    assert "Mario Rossi" not in stream.getvalue()
    assert "dropped_keys" in stream.getvalue()


def test_log_level_filters() -> None:
    """Events below the configured level are not written."""
    stream = io.StringIO()
    hub_logging.configure(json=True, level=logging.WARNING, stream=stream)
    try:
        log = structlog.get_logger("test")
        log.info("quiet")
        log.warning("loud")
    finally:
        structlog.reset_defaults()
    assert ["loud"] == [line["event"] for line in lines(stream)]
