"""The validation cases: valid starting points, field-path helpers and the mutation table (one broken rule each).

Every envelope starts from tests/factories.py (valid) and breaks one thing; the expected result is the
exact list of (field path, rule id) pairs, in the order the validator reports them. Used by
test_validate.py (the table), test_validate_regressions.py and test_validate_properties.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from google.protobuf.message import Message
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2

from broker.validate import codelists
from broker.validate.checker import Limits, ValidationContext, validate_envelope
from tests import factories as f

REGISTERED = frozenset({f.CUR, f.PL, f.CC, f.QUESTURA, f.PL_MILANO})
REF_ID = "0b8e4d3a-1c2f-4e5a-9b7c-6d5e4f3a2b1c"
REFS = ((REF_ID, f.QUESTURA),)
OTHER_INCIDENT_ID = "urn:emergency:uid:incidentid:test-0002:nue.to.it"

KNOWN_RULES = frozenset(
    {
        "required",
        "format",
        "code_list",
        "enum",
        "max_length",
        "max_items",
        "range",
        "incident_id_mismatch",
        "kind_payload",
        "unique",
        "not_sender",
        "registered",
        "future",
        "too_old",
        "timestamp_range",
        "after_sent_at",
        "polygon",
        "control_characters",
        "agency_id_format",
        "not_self",
    }
)
# A field path relative to the envelope: proto field names (they may hold digits, as in sha256), each
# optionally indexed.
PATH_RE = re.compile(r"^[a-z][a-z0-9_]*(\[\d+\])?(\.[a-z][a-z0-9_]*(\[\d+\])?)*$")
_SEGMENT_RE = re.compile(r"([a-z][a-z0-9_]*)(?:\[(\d+)\])?")

# google.protobuf.Timestamp's valid range.
TS_MIN = -62135596800
TS_MAX = 253402300799

Pairs = list[tuple[str, str]]
Mutation = Callable[[envelope_pb2.Envelope], None]


def is_registered(agency_id: str) -> bool:
    """The hub's registry as the factories know it."""
    return agency_id in REGISTERED


def context(limits: Limits | None = None) -> ValidationContext:
    return ValidationContext(codelists.load(), is_registered, limits or Limits())


def pairs(env: envelope_pb2.Envelope, limits: Limits | None = None) -> Pairs:
    return [(v.field, v.rule) for v in validate_envelope(env, context(limits), f.NOW)]


# -- valid starting points, all sent at the fixed clock ---------------------------------------------------------

BASES: dict[str, Callable[[], envelope_pb2.Envelope]] = {
    "incident": lambda: f.envelope(sent=f.NOW),
    "alert": lambda: f.envelope(sent=f.NOW, alert=f.alert()),
    "closure": lambda: f.envelope(sent=f.NOW, kind=common_pb2.KIND_UPDATE, closure=f.closure()),
    "assistance_request": lambda: f.envelope(
        sent=f.NOW, kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request()
    ),
    "assistance_response": lambda: f.envelope(
        sent=f.NOW, kind=common_pb2.KIND_RESPONSE, references=REFS, assistance_response=f.assistance_response()
    ),
    "handover_request": lambda: f.envelope(
        sent=f.NOW, kind=common_pb2.KIND_REQUEST, handover_request=f.handover_request()
    ),
    "handover_response": lambda: f.envelope(
        sent=f.NOW, kind=common_pb2.KIND_RESPONSE, references=REFS, handover_response=f.handover_response()
    ),
    "acknowledgement": lambda: f.envelope(
        sent=f.NOW, kind=common_pb2.KIND_ACK, references=REFS, acknowledgement=f.acknowledgement()
    ),
    "cancel": lambda: f.envelope(sent=f.NOW, kind=common_pb2.KIND_CANCEL, references=REFS, alert=f.alert()),
    "cap": lambda: f.envelope(sent=f.NOW, alert=f.cap_alert(), origin=f.origin()),
}


def at_now(env: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
    """A copy of env sent at the fixed clock (the factories stamp the real clock by default)."""
    out = envelope_pb2.Envelope()
    out.CopyFrom(env)
    out.sent_at.CopyFrom(f.ts(f.NOW))
    out.expires_at.CopyFrom(f.ts(f.NOW + timedelta(hours=24)))
    return out


# -- field paths: resolving, setting, clearing ------------------------------------------------------------------


def _segment(segment: str) -> tuple[str, int | None]:
    match = _SEGMENT_RE.fullmatch(segment)
    assert match is not None, segment
    name, index = match.groups()
    return name, None if index is None else int(index)


def resolve(msg: Message, path: str) -> Any:
    """The value at path (field names and list indexes); a final oneof name resolves to its message."""
    node: Any = msg
    segments = path.split(".")
    for position, segment in enumerate(segments):
        name, index = _segment(segment)
        assert isinstance(node, Message), f"{path}: {segment} is under a scalar"
        last = position == len(segments) - 1
        if last and index is None and name in node.DESCRIPTOR.oneofs_by_name:
            return node
        assert name in node.DESCRIPTOR.fields_by_name, f"{path}: {node.DESCRIPTOR.name} has no field {name}"
        node = getattr(node, name)
        if index is not None:
            node = node[index]
    return node


def _parent(msg: Message, path: str) -> tuple[Any, str, int | None]:
    *head, last = path.split(".")
    node = resolve(msg, ".".join(head)) if head else msg
    name, index = _segment(last)
    return node, name, index


def put(path: str, value: object) -> Mutation:
    """Set the field (or list item) at path; a message is copied in, a list replaces the repeated field."""

    def mutate(env: envelope_pb2.Envelope) -> None:
        parent, name, index = _parent(env, path)
        if index is not None:
            container = getattr(parent, name)
            if isinstance(value, Message):
                container[index].CopyFrom(value)
            else:
                container[index] = value
        elif isinstance(value, Message):
            getattr(parent, name).CopyFrom(value)
        elif isinstance(value, list):
            container = getattr(parent, name)
            del container[:]
            container.extend(value)
        else:
            setattr(parent, name, value)

    return mutate


def clear(path: str) -> Mutation:
    """Clear the field at path, or remove the list item when the path ends with an index."""

    def mutate(env: envelope_pb2.Envelope) -> None:
        parent, name, index = _parent(env, path)
        if index is not None:
            del getattr(parent, name)[index]
        else:
            parent.ClearField(name)

    return mutate


def append(path: str, *values: object) -> Mutation:
    """Append values to the repeated field at path (messages are copied)."""

    def mutate(env: envelope_pb2.Envelope) -> None:
        container = resolve(env, path)
        for value in values:
            if isinstance(value, Message):
                container.add().CopyFrom(value)
            else:
                container.append(value)

    return mutate


def copy_item(path: str, index: int, times: int = 1) -> Mutation:
    """Append `times` copies of item `index` of the repeated message field at path."""

    def mutate(env: envelope_pb2.Envelope) -> None:
        container = resolve(env, path)
        for _ in range(times):
            container.add().CopyFrom(container[index])

    return mutate


def seq(*mutations: Mutation) -> Mutation:
    """Apply mutations in order."""

    def mutate(env: envelope_pb2.Envelope) -> None:
        for mutation in mutations:
            mutation(env)

    return mutate


def self_reference(env: envelope_pb2.Envelope) -> None:
    """Make the first reference name the envelope itself."""
    env.references[0].distribution_id = env.distribution_id


def case(case_id: str, base: str, mutate: Mutation, expected: Pairs, limits: Limits | None = None) -> Any:
    return pytest.param(base, mutate, expected, limits, id=case_id)


NOTE = incident_pb2.Note(text="altra nota")
PERSON = incident_pb2.Person(role="Witness")
VEHICLE = incident_pb2.Vehicle(make="Lancia")
INFO0 = "alert.infos[0]"
AREA0 = "alert.infos[0].areas[0]"
LOC0 = "incident.locations[0]"
CALL = "incident.call"
P0 = "incident.persons[0]"
V0 = "incident.vehicles[0]"
M0 = "incident.media[0]"

MUTATIONS = [
    # distribution_id
    case("distribution_id-missing", "incident", put("distribution_id", ""), [("distribution_id", "required")]),
    case(
        "distribution_id-uppercase",
        "incident",
        put("distribution_id", REF_ID.upper()),
        [("distribution_id", "format")],
    ),
    case("distribution_id-not-uuid", "incident", put("distribution_id", "msg-0001"), [("distribution_id", "format")]),
    case(
        "distribution_id-no-hyphens",
        "incident",
        put("distribution_id", REF_ID.replace("-", "")),
        [("distribution_id", "format")],
    ),
    # sender
    case("sender-missing", "incident", clear("sender"), [("sender", "required")]),
    case("sender-agency-missing", "incident", put("sender.agency_id", ""), [("sender.agency_id", "required")]),
    case(
        "sender-agency-uppercase",
        "incident",
        put("sender.agency_id", "IT.NUE.CUR.TO"),
        [("sender.agency_id", "agency_id_format")],
    ),
    case(
        "sender-agency-one-segment",
        "incident",
        put("sender.agency_id", "it"),
        [("sender.agency_id", "agency_id_format")],
    ),
    case(
        "sender-operator-spaces",
        "incident",
        put("sender.operator_id", "OP CUR 017"),
        [("sender.operator_id", "format")],
    ),
    case(
        "sender-workstation-leading-dash",
        "incident",
        put("sender.workstation_id", "-PDL"),
        [("sender.workstation_id", "format")],
    ),
    # sent_at
    case("sent_at-missing", "incident", clear("sent_at"), [("sent_at", "required")]),
    case(
        "sent_at-10min-future",
        "incident",
        put("sent_at", f.ts(f.NOW + timedelta(minutes=10))),
        [("sent_at", "future")],
    ),
    case("sent_at-4min-future-ok", "incident", put("sent_at", f.ts(f.NOW + timedelta(minutes=4))), []),
    case("sent_at-8-days-old", "incident", put("sent_at", f.ts(f.NOW - timedelta(days=8))), [("sent_at", "too_old")]),
    case("sent_at-6-days-old-ok", "incident", put("sent_at", f.ts(f.NOW - timedelta(days=6))), []),
    case(
        "sent_at-seconds-below-range", "incident", put("sent_at.seconds", TS_MIN - 1), [("sent_at", "timestamp_range")]
    ),
    case("sent_at-nanos-negative", "incident", put("sent_at.nanos", -1), [("sent_at", "timestamp_range")]),
    case("sent_at-nanos-overflow", "incident", put("sent_at.nanos", 1_000_000_000), [("sent_at", "timestamp_range")]),
    # status, kind, confidentiality
    case("status-unspecified", "incident", put("status", common_pb2.STATUS_UNSPECIFIED), [("status", "required")]),
    case("status-99", "incident", put("status", 99), [("status", "enum")]),
    case("status-negative", "incident", put("status", -1), [("status", "enum")]),
    case("kind-unspecified", "incident", put("kind", common_pb2.KIND_UNSPECIFIED), [("kind", "required")]),
    case("kind-99", "incident", put("kind", 99), [("kind", "enum")]),
    case(
        "confidentiality-unspecified",
        "incident",
        put("confidentiality", common_pb2.CONFIDENTIALITY_UNSPECIFIED),
        [("confidentiality", "required")],
    ),
    case("confidentiality-99", "incident", put("confidentiality", 99), [("confidentiality", "enum")]),
    # recipients
    case("recipient-empty", "incident", put("recipients[1]", ""), [("recipients[1]", "required")]),
    case(
        "recipient-malformed",
        "incident",
        put("recipients[1]", "IT.PL.001272"),
        [("recipients[1]", "agency_id_format")],
    ),
    case("recipient-duplicate", "incident", put("recipients[1]", f.QUESTURA), [("recipients[1]", "unique")]),
    case("recipient-is-sender", "incident", put("recipients[0]", f.CUR), [("recipients[0]", "not_sender")]),
    case(
        "recipient-sender-twice",
        "incident",
        put("recipients", [f.CUR, f.CUR]),
        [("recipients[0]", "not_sender"), ("recipients[1]", "unique")],
    ),
    case("recipient-unregistered", "incident", append("recipients", f.ROGUE), [("recipients[2]", "registered")]),
    case(
        "recipients-too-many",
        "incident",
        append("recipients", f.CC),
        [("recipients", "max_items")],
        Limits(max_recipients=2),
    ),
    case("recipients-at-limit-ok", "incident", lambda env: None, [], Limits(max_recipients=2)),
    # target_areas
    case(
        "target_area-no-code",
        "incident",
        append("target_areas", common_pb2.Area()),
        [("target_areas[2]", "required")],
    ),
    case(
        "target_area-comune-empty",
        "incident",
        put("target_areas[0].comune_istat", ""),
        [("target_areas[0].comune_istat", "required")],
    ),
    case(
        "target_area-comune-999999",
        "incident",
        put("target_areas[0].comune_istat", "999999"),
        [("target_areas[0].comune_istat", "code_list")],
    ),
    case(
        "target_area-province-999",
        "incident",
        put("target_areas[1].provincia_istat", "999"),
        [("target_areas[1].provincia_istat", "code_list")],
    ),
    case(
        "target_area-region-99",
        "incident",
        append("target_areas", common_pb2.Area(regione_istat="99")),
        [("target_areas[2].regione_istat", "code_list")],
    ),
    case("target_area-region-01-ok", "incident", append("target_areas", common_pb2.Area(regione_istat="01")), []),
    case(
        "target_areas-too-many",
        "incident",
        lambda env: None,
        [("target_areas", "max_items")],
        Limits(max_target_areas=1),
    ),
    # incident_ids
    case("incident_id-empty", "incident", append("incident_ids", ""), [("incident_ids[1]", "required")]),
    case("incident_id-malformed", "incident", append("incident_ids", "-bad id"), [("incident_ids[1]", "format")]),
    case("incident_id-too-long", "incident", append("incident_ids", "a" * 129), [("incident_ids[1]", "format")]),
    case("incident_id-duplicate", "incident", append("incident_ids", f.INCIDENT_ID), [("incident_ids[1]", "unique")]),
    case(
        "incident_ids-too-many",
        "incident",
        append("incident_ids", OTHER_INCIDENT_ID),
        [("incident_ids", "max_items")],
        Limits(max_incident_ids=1),
    ),
    # references
    case("references-missing-cancel", "cancel", clear("references"), [("references", "required")]),
    case(
        "references-missing-response",
        "assistance_response",
        clear("references"),
        [("references", "required")],
    ),
    case("references-missing-ack", "acknowledgement", clear("references"), [("references", "required")]),
    case(
        "references-missing-error",
        "acknowledgement",
        seq(put("kind", common_pb2.KIND_ERROR), clear("references")),
        [("references", "required")],
    ),
    case("references-optional-report", "incident", clear("references"), []),
    case(
        "reference-distribution_id-malformed",
        "cancel",
        put("references[0].distribution_id", "not-a-uuid"),
        [("references[0].distribution_id", "format")],
    ),
    case(
        "reference-distribution_id-missing",
        "cancel",
        put("references[0].distribution_id", ""),
        [("references[0].distribution_id", "required")],
    ),
    case("reference-to-itself", "cancel", self_reference, [("references[0].distribution_id", "not_self")]),
    case(
        "reference-sender-malformed",
        "cancel",
        put("references[0].sender_agency_id", "questura"),
        [("references[0].sender_agency_id", "agency_id_format")],
    ),
    case(
        "references-too-many",
        "cancel",
        append("references", common_pb2.Reference(distribution_id=REF_ID.replace("0", "1"), sender_agency_id=f.PL)),
        [("references", "max_items")],
        Limits(max_references=1),
    ),
    # legal_basis
    case("legal_basis-missing", "incident", clear("legal_basis"), [("legal_basis", "required")]),
    case("legal_basis-law-empty", "incident", put("legal_basis.law", ""), [("legal_basis.law", "required")]),
    case(
        "legal_basis-purpose-unspecified",
        "incident",
        put("legal_basis.purpose", common_pb2.PURPOSE_UNSPECIFIED),
        [("legal_basis.purpose", "required")],
    ),
    case("legal_basis-purpose-42", "incident", put("legal_basis.purpose", 42), [("legal_basis.purpose", "enum")]),
    case(
        "legal_basis-agreement-bad",
        "incident",
        put("legal_basis.agreement_id", "Patto Torino"),
        [("legal_basis.agreement_id", "format")],
    ),
    case("legal_basis-agreement-optional", "incident", put("legal_basis.agreement_id", ""), []),
    # expires_at
    case(
        "expires_at-before-sent_at",
        "incident",
        put("expires_at", f.ts(f.NOW - timedelta(hours=1))),
        [("expires_at", "after_sent_at")],
    ),
    case("expires_at-equal-sent_at", "incident", put("expires_at", f.ts(f.NOW)), [("expires_at", "after_sent_at")]),
    case(
        "expires_at-out-of-range",
        "incident",
        put("expires_at.seconds", TS_MAX + 1),
        [("expires_at", "timestamp_range")],
    ),
    case("expires_at-optional", "incident", clear("expires_at"), []),
    # payload and kind
    case("payload-missing", "incident", clear("payload"), [("payload", "required")]),
    case(
        "kind-request-with-incident",
        "incident",
        put("kind", common_pb2.KIND_REQUEST),
        [("incident", "kind_payload")],
    ),
    case(
        "kind-report-with-closure",
        "closure",
        put("kind", common_pb2.KIND_REPORT),
        [("closure", "kind_payload")],
    ),
    case(
        "kind-response-with-handover-request",
        "handover_request",
        seq(
            put("kind", common_pb2.KIND_RESPONSE),
            append("references", common_pb2.Reference(distribution_id=REF_ID, sender_agency_id=f.QUESTURA)),
        ),
        [("handover_request", "kind_payload")],
    ),
    case(
        "kind-ack-with-assistance-response",
        "assistance_response",
        put("kind", common_pb2.KIND_ACK),
        [("assistance_response", "kind_payload")],
    ),
    case(
        "kind-unspecified-no-kind-payload",
        "closure",
        put("kind", common_pb2.KIND_UNSPECIFIED),
        [("kind", "required")],
    ),
    # incident
    case("incident-id-empty", "incident", put("incident.id", ""), [("incident.id", "required")]),
    case(
        "incident-id-not-in-incident_ids",
        "incident",
        put("incident.id", OTHER_INCIDENT_ID),
        [("incident.id", "incident_id_mismatch")],
    ),
    case(
        "incident-local_reference-too-long",
        "incident",
        put("incident.local_reference", "R" * 65),
        [("incident.local_reference", "max_length")],
    ),
    case("incident-type-missing", "incident", clear("incident.type"), [("incident.type", "required")]),
    case(
        "incident-eido-unknown",
        "incident",
        put("incident.type.eido_code", "BRAWL"),
        [("incident.type.eido_code", "code_list")],
    ),
    case(
        "incident-eido-missing",
        "incident",
        put("incident.type.eido_code", ""),
        [("incident.type.eido_code", "required")],
    ),
    case(
        "incident-emsi-unknown",
        "incident",
        put("incident.type.emsi_category", "PSW/XXXX"),
        [("incident.type.emsi_category", "code_list")],
    ),
    case("incident-emsi-optional", "incident", put("incident.type.emsi_category", ""), []),
    case(
        "incident-status-unspecified",
        "incident",
        put("incident.status", incident_pb2.INCIDENT_STATUS_UNSPECIFIED),
        [("incident.status", "required")],
    ),
    case("incident-status-99", "incident", put("incident.status", 99), [("incident.status", "enum")]),
    case(
        "incident-priority-unspecified",
        "incident",
        put("incident.priority", common_pb2.PRIORITY_UNSPECIFIED),
        [("incident.priority", "required")],
    ),
    case(
        "incident-occurred_at-out-of-range",
        "incident",
        put("incident.occurred_at.nanos", -5),
        [("incident.occurred_at", "timestamp_range")],
    ),
    case(
        "incident-description-4001",
        "incident",
        put("incident.description", "x" * 4001),
        [("incident.description", "max_length")],
    ),
    case("incident-description-4000-ok", "incident", put("incident.description", "x" * 4000), []),
    case(
        "incident-description-bell",
        "incident",
        put("incident.description", "lite\x07in strada"),
        [("incident.description", "control_characters")],
    ),
    case(
        "incident-description-nul",
        "incident",
        put("incident.description", "lite\x00"),
        [("incident.description", "control_characters")],
    ),
    case(
        "incident-description-del",
        "incident",
        put("incident.description", "lite\x7f"),
        [("incident.description", "control_characters")],
    ),
    case("incident-description-tab-newline-ok", "incident", put("incident.description", "a\tb\r\nc"), []),
    case(
        "incident-description-long-and-control",
        "incident",
        put("incident.description", "\x1b" * 4001),
        [("incident.description", "max_length"), ("incident.description", "control_characters")],
    ),
    # locations
    case(
        "location-nothing",
        "incident",
        seq(clear(f"{LOC0}.point"), clear(f"{LOC0}.address"), put(f"{LOC0}.comune_istat", "")),
        [(LOC0, "required")],
    ),
    case(
        "location-comune-only-ok",
        "incident",
        seq(clear(f"{LOC0}.point"), clear(f"{LOC0}.address")),
        [],
    ),
    case(
        "location-type-unknown",
        "incident",
        put(f"{LOC0}.type", "Somewhere"),
        [(f"{LOC0}.type", "code_list")],
    ),
    case("latitude-91", "incident", put(f"{LOC0}.point.latitude", 91.0), [(f"{LOC0}.point.latitude", "range")]),
    case("latitude-minus-90-ok", "incident", put(f"{LOC0}.point.latitude", -90.0), []),
    case(
        "longitude-minus-181",
        "incident",
        put(f"{LOC0}.point.longitude", -181.0),
        [(f"{LOC0}.point.longitude", "range")],
    ),
    case(
        "latitude-nan",
        "incident",
        put(f"{LOC0}.point.latitude", math.nan),
        [(f"{LOC0}.point.latitude", "range")],
    ),
    case(
        "longitude-inf",
        "incident",
        put(f"{LOC0}.point.longitude", math.inf),
        [(f"{LOC0}.point.longitude", "range")],
    ),
    case(
        "uncertainty-negative",
        "incident",
        put(f"{LOC0}.uncertainty_m", -1.0),
        [(f"{LOC0}.uncertainty_m", "range")],
    ),
    case(
        "uncertainty-nan",
        "incident",
        put(f"{LOC0}.uncertainty_m", math.nan),
        [(f"{LOC0}.uncertainty_m", "range")],
    ),
    case(
        "confidence-101",
        "incident",
        put(f"{LOC0}.confidence_percent", 101),
        [(f"{LOC0}.confidence_percent", "range")],
    ),
    case(
        "postal-code-4-digits",
        "incident",
        put(f"{LOC0}.address.postal_code", "1012"),
        [(f"{LOC0}.address.postal_code", "format")],
    ),
    case(
        "postal-code-letters",
        "incident",
        put(f"{LOC0}.address.postal_code", "TO121"),
        [(f"{LOC0}.address.postal_code", "format")],
    ),
    case(
        "civic-number-hash",
        "incident",
        put(f"{LOC0}.address.civic_number", "10#B"),
        [(f"{LOC0}.address.civic_number", "format")],
    ),
    case("civic-number-slash-ok", "incident", put(f"{LOC0}.address.civic_number", "10/B"), []),
    case(
        "street-too-long",
        "incident",
        put(f"{LOC0}.address.street", "V" * 201),
        [(f"{LOC0}.address.street", "max_length")],
    ),
    case(
        "location-comune-unknown",
        "incident",
        put(f"{LOC0}.comune_istat", "999999"),
        [(f"{LOC0}.comune_istat", "code_list")],
    ),
    case(
        "location-source-99",
        "incident",
        put(f"{LOC0}.source", 99),
        [(f"{LOC0}.source", "enum")],
    ),
    case(
        "location-source-unspecified-ok",
        "incident",
        put(f"{LOC0}.source", common_pb2.LOCATION_SOURCE_UNSPECIFIED),
        [],
    ),
    # call
    case(
        "caller-phone-letters",
        "incident",
        put(f"{CALL}.caller.phone", "+39333abc4567"),
        [(f"{CALL}.caller.phone", "format")],
    ),
    case(
        "caller-name-bell",
        "incident",
        put(f"{CALL}.caller.name", "Gian\x07franco"),
        [(f"{CALL}.caller.name", "control_characters")],
    ),
    case(
        "imsi-10-digits",
        "incident",
        put(f"{CALL}.network_location.imsi", "2220198765"),
        [(f"{CALL}.network_location.imsi", "format")],
    ),
    case(
        "call-language-123",
        "incident",
        put(f"{CALL}.language", "123"),
        [(f"{CALL}.language", "format")],
    ),
    case("call-language-tag-ok", "incident", put(f"{CALL}.language", "de-CH"), []),
    case(
        "call-id-too-long",
        "incident",
        put(f"{CALL}.call_id", "9" * 65),
        [(f"{CALL}.call_id", "max_length")],
    ),
    # persons
    case("person-role-unknown", "incident", put(f"{P0}.role", "Ninja"), [(f"{P0}.role", "code_list")]),
    case("person-role-missing", "incident", put(f"{P0}.role", ""), [(f"{P0}.role", "required")]),
    case(
        "birth_date-month-13",
        "incident",
        put(f"{P0}.birth_date", "1990-13-01"),
        [(f"{P0}.birth_date", "format")],
    ),
    case(
        "birth_date-italian-format",
        "incident",
        put(f"{P0}.birth_date", "31/01/1990"),
        [(f"{P0}.birth_date", "format")],
    ),
    case(
        "birth_date-basic-format",
        "incident",
        put(f"{P0}.birth_date", "19900131"),
        [(f"{P0}.birth_date", "format")],
    ),
    case(
        "persons-too-many",
        "incident",
        append("incident.persons", PERSON, PERSON),
        [("incident.persons", "max_items")],
        Limits(max_items=2),
    ),
    # vehicles
    case("plate-lower-case", "incident", put(f"{V0}.plate", "qq123qq"), [(f"{V0}.plate", "format")]),
    case("plate-with-spaces", "incident", put(f"{V0}.plate", "QQ 123 QQ"), [(f"{V0}.plate", "format")]),
    case(
        "plate-country-alpha3",
        "incident",
        put(f"{V0}.plate_country", "ITA"),
        [(f"{V0}.plate_country", "format")],
    ),
    case("vin-with-I", "incident", put(f"{V0}.vin", "ZFA3120000J12345I"), [(f"{V0}.vin", "format")]),
    case("vin-16-chars", "incident", put(f"{V0}.vin", "ZFA31200000123456"[:16]), [(f"{V0}.vin", "format")]),
    case("vin-17-ok", "incident", put(f"{V0}.vin", "ZFA31200000123456"), []),
    case(
        "vehicle-nothing-identifying",
        "incident",
        seq(put(f"{V0}.plate", ""), put(f"{V0}.make", "")),
        [(V0, "required")],
    ),
    case(
        "vehicle-relationship-unknown",
        "incident",
        put(f"{V0}.relationship", "Getaway"),
        [(f"{V0}.relationship", "code_list")],
    ),
    case(
        "vehicles-too-many",
        "incident",
        append("incident.vehicles", VEHICLE, VEHICLE),
        [("incident.vehicles", "max_items")],
        Limits(max_items=2),
    ),
    # notes and agencies
    case("note-without-text", "incident", put("incident.notes[0].text", ""), [("incident.notes[0].text", "required")]),
    case(
        "note-author-spaces",
        "incident",
        put("incident.notes[0].author_operator_id", "OP 1"),
        [("incident.notes[0].author_operator_id", "format")],
    ),
    case(
        "notes-too-many",
        "incident",
        append("incident.notes", NOTE, NOTE),
        [("incident.notes", "max_items")],
        Limits(max_items=2),
    ),
    case(
        "agency-role-unknown",
        "incident",
        put("incident.agencies[0].role", "Boss"),
        [("incident.agencies[0].role", "code_list")],
    ),
    case(
        "agency-role-missing",
        "incident",
        put("incident.agencies[0].role", ""),
        [("incident.agencies[0].role", "required")],
    ),
    case(
        "agency-id-malformed",
        "incident",
        put("incident.agencies[0].agency_id", "Questura Torino"),
        [("incident.agencies[0].agency_id", "agency_id_format")],
    ),
    # media
    case(
        "media-uri-http",
        "incident",
        put(f"{M0}.uri", "http://video.comune.torino.it/clip/1"),
        [(f"{M0}.uri", "format")],
    ),
    case("media-uri-missing", "incident", put(f"{M0}.uri", ""), [(f"{M0}.uri", "required")]),
    case("media-sha256-short", "incident", put(f"{M0}.sha256", "a" * 63), [(f"{M0}.sha256", "format")]),
    case("media-sha256-upper", "incident", put(f"{M0}.sha256", "A" * 64), [(f"{M0}.sha256", "format")]),
    case("media-sha256-missing", "incident", put(f"{M0}.sha256", ""), [(f"{M0}.sha256", "required")]),
    case("media-type-bad", "incident", put(f"{M0}.media_type", "video"), [(f"{M0}.media_type", "format")]),
    case(
        "media-too-many",
        "incident",
        copy_item("incident.media", 0),
        [("incident.media", "max_items")],
        Limits(max_media=1),
    ),
    # closure
    case("closure-without-closed_at", "closure", clear("closure.closed_at"), [("closure.closed_at", "required")]),
    case(
        "closure-disposition-unknown",
        "closure",
        put("closure.disposition_code", "99X"),
        [("closure.disposition_code", "code_list")],
    ),
    case(
        "closure-status-unspecified",
        "closure",
        put("closure.status", incident_pb2.COMPLETION_STATUS_UNSPECIFIED),
        [("closure.status", "required")],
    ),
    case(
        "closure-incident-mismatch",
        "closure",
        put("closure.incident_id", OTHER_INCIDENT_ID),
        [("closure.incident_id", "incident_id_mismatch")],
    ),
    # assistance request
    case(
        "assistance-request-no-resources",
        "assistance_request",
        clear("assistance_request.resources"),
        [("assistance_request.resources", "required")],
    ),
    case(
        "assistance-request-resource-unknown",
        "assistance_request",
        put("assistance_request.resources[0].resource_type", "Tank"),
        [("assistance_request.resources[0].resource_type", "code_list")],
    ),
    case(
        "assistance-request-quantity-0",
        "assistance_request",
        put("assistance_request.resources[0].quantity", 0),
        [("assistance_request.resources[0].quantity", "range")],
    ),
    case(
        "assistance-request-quantity-101",
        "assistance_request",
        put("assistance_request.resources[0].quantity", 101),
        [("assistance_request.resources[0].quantity", "range")],
    ),
    case(
        "assistance-request-quantity-100-ok",
        "assistance_request",
        put("assistance_request.resources[0].quantity", 100),
        [],
    ),
    case(
        "assistance-request-priority-unspecified",
        "assistance_request",
        put("assistance_request.priority", common_pb2.PRIORITY_UNSPECIFIED),
        [("assistance_request.priority", "required")],
    ),
    case(
        "assistance-request-location-latitude",
        "assistance_request",
        put("assistance_request.location.point.latitude", -91.0),
        [("assistance_request.location.point.latitude", "range")],
    ),
    case(
        "assistance-request-incident-mismatch",
        "assistance_request",
        put("assistance_request.incident_id", OTHER_INCIDENT_ID),
        [("assistance_request.incident_id", "incident_id_mismatch")],
    ),
    # assistance response
    case(
        "assistance-response-rejected-without-cause",
        "assistance_response",
        put("assistance_response.outcome", common_pb2.OUTCOME_REJECTED),
        [("assistance_response.cause", "required")],
    ),
    case(
        "assistance-response-rejected-with-cause-ok",
        "assistance_response",
        seq(
            put("assistance_response.outcome", common_pb2.OUTCOME_REJECTED),
            put("assistance_response.cause", "nessuna pattuglia"),
        ),
        [],
    ),
    case(
        "assistance-response-outcome-unspecified",
        "assistance_response",
        put("assistance_response.outcome", common_pb2.OUTCOME_UNSPECIFIED),
        [("assistance_response.outcome", "required")],
    ),
    case(
        "assistance-response-without-responded_at",
        "assistance_response",
        clear("assistance_response.responded_at"),
        [("assistance_response.responded_at", "required")],
    ),
    case(
        "assistance-response-resource-name-missing",
        "assistance_response",
        put("assistance_response.resources[0].resource_name", ""),
        [("assistance_response.resources[0].resource_name", "required")],
    ),
    # hand-over
    case(
        "handover-response-partially-accepted",
        "handover_response",
        put("handover_response.outcome", common_pb2.OUTCOME_PARTIALLY_ACCEPTED),
        [("handover_response.outcome", "enum")],
    ),
    case(
        "handover-response-rejected-without-cause",
        "handover_response",
        put("handover_response.outcome", common_pb2.OUTCOME_REJECTED),
        [("handover_response.cause", "required")],
    ),
    case(
        "handover-request-without-incident",
        "handover_request",
        clear("handover_request.incident"),
        [("handover_request.incident", "required")],
    ),
    case(
        "handover-request-incident-plate",
        "handover_request",
        put("handover_request.incident.vehicles[0].plate", "qq123qq"),
        [("handover_request.incident.vehicles[0].plate", "format")],
    ),
    # acknowledgement
    case(
        "acknowledgement-code-lowercase",
        "acknowledgement",
        put("acknowledgement.code", "received"),
        [("acknowledgement.code", "format")],
    ),
    case(
        "acknowledgement-code-missing",
        "acknowledgement",
        put("acknowledgement.code", ""),
        [("acknowledgement.code", "required")],
    ),
    # alert
    case(
        "alert-scope-unspecified",
        "alert",
        put("alert.scope", alert_pb2.SCOPE_UNSPECIFIED),
        [("alert.scope", "required")],
    ),
    case(
        "alert-restricted-without-restriction",
        "alert",
        put("alert.restriction", ""),
        [("alert.restriction", "required")],
    ),
    case(
        "alert-public-without-restriction-ok",
        "alert",
        seq(put("alert.scope", alert_pb2.SCOPE_PUBLIC), put("alert.restriction", "")),
        [],
    ),
    case("alert-no-infos", "alert", clear("alert.infos"), [("alert.infos", "required")]),
    case(
        "alert-too-many-infos",
        "alert",
        copy_item("alert.infos", 0, times=8),
        [("alert.infos", "max_items")],
    ),
    case(
        "alert-info-no-categories",
        "alert",
        clear(f"{INFO0}.categories"),
        [(f"{INFO0}.categories", "required")],
    ),
    case(
        "alert-info-category-unspecified",
        "alert",
        put(f"{INFO0}.categories[0]", alert_pb2.CATEGORY_UNSPECIFIED),
        [(f"{INFO0}.categories[0]", "required")],
    ),
    case("alert-info-no-event", "alert", put(f"{INFO0}.event", ""), [(f"{INFO0}.event", "required")]),
    case(
        "alert-info-no-areas",
        "alert",
        clear(f"{INFO0}.areas"),
        [(f"{INFO0}.areas", "required")],
    ),
    case(
        "alert-info-urgency-unspecified",
        "alert",
        put(f"{INFO0}.urgency", alert_pb2.URGENCY_UNSPECIFIED),
        [(f"{INFO0}.urgency", "required")],
    ),
    case(
        "alert-info-severity-unspecified",
        "alert",
        put(f"{INFO0}.severity", alert_pb2.SEVERITY_UNSPECIFIED),
        [(f"{INFO0}.severity", "required")],
    ),
    case(
        "alert-info-certainty-unspecified",
        "alert",
        put(f"{INFO0}.certainty", alert_pb2.CERTAINTY_UNSPECIFIED),
        [(f"{INFO0}.certainty", "required")],
    ),
    case("alert-info-certainty-9", "alert", put(f"{INFO0}.certainty", 9), [(f"{INFO0}.certainty", "enum")]),
    case(
        "alert-info-language-bad",
        "alert",
        put(f"{INFO0}.language", "it_IT"),
        [(f"{INFO0}.language", "format")],
    ),
    case(
        "alert-info-event-code-without-name",
        "alert",
        put(f"{INFO0}.event_codes[0].name", ""),
        [(f"{INFO0}.event_codes[0].name", "required")],
    ),
    case(
        "alert-info-resource-http",
        "alert",
        put(f"{INFO0}.resources[0].uri", "http://x.example/p.jpg"),
        [(f"{INFO0}.resources[0].uri", "format")],
    ),
    case(
        "alert-area-without-desc",
        "alert",
        put(f"{AREA0}.area_desc", ""),
        [(f"{AREA0}.area_desc", "required")],
    ),
    case(
        "polygon-3-points-closed",
        "alert",
        clear(f"{AREA0}.polygons[0].points[2]"),
        [(f"{AREA0}.polygons[0].points", "polygon")],
    ),
    case(
        "polygon-not-closed",
        "alert",
        put(f"{AREA0}.polygons[0].points[3].latitude", 45.05),
        [(f"{AREA0}.polygons[0].points", "polygon")],
    ),
    case(
        "polygon-point-out-of-range",
        "alert",
        put(f"{AREA0}.polygons[0].points[1].longitude", 181.0),
        [(f"{AREA0}.polygons[0].points[1].longitude", "range")],
    ),
    case(
        "circle-radius-minus-1",
        "alert",
        put(f"{AREA0}.circles[0].radius_km", -1.0),
        [(f"{AREA0}.circles[0].radius_km", "range")],
    ),
    case(
        "circle-center-latitude-91",
        "alert",
        put(f"{AREA0}.circles[0].center.latitude", 91.0),
        [(f"{AREA0}.circles[0].center.latitude", "range")],
    ),
    case(
        "alert-area-comune-unknown",
        "alert",
        put(f"{AREA0}.comuni_istat[0]", "999999"),
        [(f"{AREA0}.comuni_istat[0]", "code_list")],
    ),
    case(
        "alert-area-comune-empty",
        "alert",
        put(f"{AREA0}.comuni_istat[0]", ""),
        [(f"{AREA0}.comuni_istat[0]", "required")],
    ),
    case(
        "alert-vehicle-plate-spaces",
        "alert",
        put("alert.vehicles[0].plate", "QQ 123"),
        [("alert.vehicles[0].plate", "format")],
    ),
    case(
        "alert-vehicles-too-many",
        "alert",
        append("alert.vehicles", VEHICLE, VEHICLE),
        [("alert.vehicles", "max_items")],
        Limits(max_items=2),
    ),
    # CAP elements beyond the core, and the origin of a decoded document
    case("cap-ok", "cap", seq(), []),
    case(
        "cap-response-type-unknown",
        "cap",
        put(f"{INFO0}.response_types[0]", "Run"),
        [(f"{INFO0}.response_types[0]", "code_list")],
    ),
    case("cap-web-too-long", "cap", put(f"{INFO0}.web", "h" * 2049), [(f"{INFO0}.web", "max_length")]),
    case("cap-code-empty", "cap", put("alert.codes[0]", ""), [("alert.codes[0]", "required")]),
    case("cap-note-control", "cap", put("alert.note", "a\x00b"), [("alert.note", "control_characters")]),
    case(
        "cap-geocode-without-name",
        "cap",
        put(f"{INFO0}.areas[0].geocodes[0].name", ""),
        [(f"{INFO0}.areas[0].geocodes[0].name", "required")],
    ),
    case(
        "cap-altitude-nan",
        "cap",
        put(f"{INFO0}.areas[0].altitude_ft", float("nan")),
        [(f"{INFO0}.areas[0].altitude_ft", "range")],
    ),
    case(
        "cap-media-no-digest",
        "cap",
        put(f"{INFO0}.resources[1].sha1", ""),
        [(f"{INFO0}.resources[1].sha256", "required")],
    ),
    case(
        "cap-media-sha1-bad",
        "cap",
        put(f"{INFO0}.resources[1].sha1", "C" * 40),
        [(f"{INFO0}.resources[1].sha1", "format")],
    ),
    case("origin-format-unknown", "cap", put("origin.format", "cap-1.1"), [("origin.format", "code_list")]),
    case("origin-format-missing", "cap", put("origin.format", ""), [("origin.format", "required")]),
    case(
        "origin-unmapped-path-missing",
        "cap",
        put("origin.unmapped[0].path", ""),
        [("origin.unmapped[0].path", "required")],
    ),
    case(
        "origin-unmapped-category-unknown",
        "cap",
        put("origin.unmapped[0].category", "free_text"),
        [("origin.unmapped[0].category", "code_list")],
    ),
    case(
        "origin-unmapped-too-many",
        "cap",
        copy_item("origin.unmapped", 0, 2),
        [("origin.unmapped", "max_items")],
        Limits(max_unmapped=2),
    ),
]
