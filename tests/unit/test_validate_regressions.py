"""Validation regressions: each once showed the validator disagreeing with the contract."""

from __future__ import annotations

import pytest
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from tests import factories as f
from tests.unit.validate_cases import (
    BASES,
    REFS,
    TS_MAX,
    Mutation,
    Pairs,
    pairs,
)

# -- regressions: each once showed the validator disagreeing with the contract ------------------------------------


def test_birth_date_week_format_is_refused() -> None:
    """An ISO week date is not the YYYY-MM-DD the contract asks for."""
    env = BASES["incident"]()
    env.incident.persons[0].birth_date = "1990-W01-1"
    expected = [("incident.persons[0].birth_date", "format")]
    actual = pairs(env)
    assert expected == actual


@pytest.mark.parametrize("value", [alert_pb2.CATEGORY_UNSPECIFIED, 99])
def test_more_categories_than_cap_has_are_refused(value: int) -> None:
    """CAP has twelve categories: a thirteenth entry, whatever it is, breaks max_items."""
    env = BASES["alert"]()
    env.alert.infos[0].categories.extend([alert_pb2.CATEGORY_SECURITY] * 11 + [value])
    expected = [("alert.infos[0].categories", "max_items")]
    actual = pairs(env)
    assert expected == actual


def test_a_bad_twelfth_category_is_named() -> None:
    """The last allowed category is still checked."""
    env = BASES["alert"]()
    env.alert.infos[0].categories.extend([alert_pb2.CATEGORY_SECURITY] * 10 + [99])
    expected = [("alert.infos[0].categories[11]", "enum")]
    actual = pairs(env)
    assert expected == actual


@pytest.mark.parametrize("char", ["\x9b", "\x85"], ids=["csi", "nel"])
def test_c1_control_characters_are_refused(char: str) -> None:
    """C1 control characters are control characters too."""
    env = BASES["incident"]()
    env.incident.description = f"lite{char}[2J in strada"
    expected = [("incident.description", "control_characters")]
    actual = pairs(env)
    assert expected == actual


def test_phone_with_16_digits_is_refused() -> None:
    """An E.164 number has at most 15 digits."""
    env = BASES["incident"]()
    env.incident.call.caller.phone = "+3933312345678901"
    expected = [("incident.call.caller.phone", "format")]
    actual = pairs(env)
    assert expected == actual


def test_cancel_admits_the_documented_payloads() -> None:
    """CANCEL withdraws an incident, an alert or a request; a closure is not withdrawn but reopened."""
    refused = f.envelope(sent=f.NOW, kind=common_pb2.KIND_CANCEL, references=REFS, closure=f.closure())
    assert pairs(refused) == [("closure", "kind_payload")]
    for payload, make in (("assistance_request", f.assistance_request), ("handover_request", f.handover_request)):
        admitted = f.envelope(sent=f.NOW, kind=common_pb2.KIND_CANCEL, references=REFS, **{payload: make()})
        assert pairs(admitted) == []


def test_invalid_sent_at_does_not_blame_expires_at() -> None:
    """Only sent_at is reported when it is beyond the Timestamp range."""
    env = BASES["incident"]()
    env.sent_at.seconds = TS_MAX + 1
    expected = [("sent_at", "timestamp_range")]
    actual = pairs(env)
    assert expected == actual


def _confidentiality_and_recipient(env: envelope_pb2.Envelope) -> None:
    env.confidentiality = common_pb2.CONFIDENTIALITY_UNSPECIFIED
    env.recipients[0] = "IT.BAD"
    env.target_areas[0].comune_istat = "999999"


def _response_resources_and_time(env: envelope_pb2.Envelope) -> None:
    env.assistance_response.ClearField("responded_at")
    env.assistance_response.resources[0].resource_name = ""


def _info_parameters_and_headline(env: envelope_pb2.Envelope) -> None:
    info = env.alert.infos[0]
    info.parameters.add(name="", value="x")
    info.headline = "h" * 201


def _handover_partial_without_time(env: envelope_pb2.Envelope) -> None:
    env.handover_response.outcome = common_pb2.OUTCOME_PARTIALLY_ACCEPTED
    env.handover_response.ClearField("responded_at")


@pytest.mark.parametrize(
    ("base", "mutate", "expected"),
    [
        pytest.param(
            "incident",
            _confidentiality_and_recipient,
            [
                ("recipients[0]", "agency_id_format"),
                ("target_areas[0].comune_istat", "code_list"),
                ("confidentiality", "required"),
            ],
            id="envelope-confidentiality",
        ),
        pytest.param(
            "assistance_response",
            _response_resources_and_time,
            [
                ("assistance_response.resources[0].resource_name", "required"),
                ("assistance_response.responded_at", "required"),
            ],
            id="assistance-response-resources",
        ),
        pytest.param(
            "alert",
            _info_parameters_and_headline,
            [
                ("alert.infos[0].headline", "max_length"),
                ("alert.infos[0].parameters[0].name", "required"),
            ],
            id="alert-info-parameters",
        ),
        pytest.param(
            "handover_response",
            _handover_partial_without_time,
            [
                ("handover_response.outcome", "enum"),
                ("handover_response.responded_at", "required"),
            ],
            id="handover-response-partial",
        ),
    ],
)
def test_violations_follow_proto_field_order(base: str, mutate: Mutation, expected: Pairs) -> None:
    """Violations come in the order of the proto fields' declaration."""
    env = BASES[base]()
    mutate(env)
    actual = pairs(env)
    assert expected == actual
