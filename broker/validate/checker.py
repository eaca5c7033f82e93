"""Validation of an envelope against the contract's rules and the real code lists (pure; returns every violation).

Paths are proto field names relative to the envelope ("incident.locations[0].comune_istat");
the gRPC edge places them under the request ("envelope." or "envelopes[3].").
Rule ids are stable and listed in docs/errors.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2
from opsroom.request.v1 import request_pb2

from broker import ids
from broker.errors import Violation
from broker.validate.codelists import CodeLists

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_TS_MIN = -62135596800
_TS_MAX = 253402300799

_PHONE_RE = re.compile(r"\+?[0-9]{3,15}")  # E.164: at most 15 digits
_IMSI_RE = re.compile(r"[0-9]{14,15}")
_LANGUAGE_RE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8}){0,3}")
_PLATE_RE = re.compile(r"[A-Z0-9]{1,12}")
_COUNTRY_RE = re.compile(r"[A-Z]{2}")
_VIN_RE = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MEDIA_TYPE_RE = re.compile(r"[a-z]+/[A-Za-z0-9.+-]{1,100}")
_POSTAL_RE = re.compile(r"[0-9]{5}")
_CODE_RE = re.compile(r"[A-Z0-9_]{1,64}")
_AGREEMENT_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
_CIVIC_RE = re.compile(r"[A-Za-z0-9/ -]{1,16}")
# Control characters (C0, DEL, C1) other than tab, line feed and carriage return.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

_KIND_PAYLOADS: dict[int, frozenset[str]] = {
    common_pb2.KIND_REPORT: frozenset({"incident", "alert"}),
    common_pb2.KIND_UPDATE: frozenset({"incident", "alert", "closure"}),
    common_pb2.KIND_CANCEL: frozenset({"incident", "alert", "assistance_request", "handover_request"}),
    common_pb2.KIND_REQUEST: frozenset({"assistance_request", "handover_request"}),
    common_pb2.KIND_RESPONSE: frozenset({"assistance_response", "handover_response"}),
    common_pb2.KIND_ACK: frozenset({"acknowledgement"}),
    common_pb2.KIND_ERROR: frozenset({"acknowledgement"}),
}
# Every rule id a Violation may carry (documented in docs/errors.md).
RULES = frozenset(
    {
        "required", "format", "agency_id_format", "code_list", "enum", "range", "max_length", "max_items",
        "control_characters", "unique", "not_sender", "not_self", "registered", "timestamp_range", "future",
        "too_old", "after_sent_at", "kind_payload", "incident_id_mismatch", "polygon",
    }
)  # fmt: skip
# Kinds that act on an earlier message and so must reference it.
KINDS_WITH_REFERENCE = frozenset(
    {common_pb2.KIND_CANCEL, common_pb2.KIND_RESPONSE, common_pb2.KIND_ACK, common_pb2.KIND_ERROR}
)


@dataclass(frozen=True)
class Limits:
    """Sizes and clock bounds; the defaults suit a regional hub and are set in the hub config."""

    max_recipients: int = 64
    max_target_areas: int = 64
    max_incident_ids: int = 16
    max_references: int = 16
    max_items: int = 64
    max_media: int = 16
    max_text: int = 4000
    max_short: int = 200
    max_future_skew: timedelta = timedelta(minutes=5)
    max_sent_age: timedelta = timedelta(days=7)


@dataclass(frozen=True)
class ValidationContext:
    """What validation needs besides the envelope: code lists, limits and the agency registry."""

    codes: CodeLists
    is_registered: Callable[[str], bool]
    limits: Limits = field(default_factory=Limits)


def _enum_values(enum_type: object) -> frozenset[int]:
    return frozenset(enum_type.values())  # type: ignore[attr-defined]


_STATUS = _enum_values(common_pb2.Status)
_KIND = _enum_values(common_pb2.Kind)
_CONFIDENTIALITY = _enum_values(common_pb2.Confidentiality)
_PURPOSE = _enum_values(common_pb2.Purpose)
_PRIORITY = _enum_values(common_pb2.Priority)
_OUTCOME = _enum_values(common_pb2.Outcome)
_LOCATION_SOURCE = _enum_values(common_pb2.LocationSource)
_INCIDENT_STATUS = _enum_values(incident_pb2.IncidentStatus)
_COMPLETION = _enum_values(incident_pb2.CompletionStatus)
_SCOPE = _enum_values(alert_pb2.Scope)
_CATEGORY = _enum_values(alert_pb2.Category)
_URGENCY = _enum_values(alert_pb2.Urgency)
_SEVERITY = _enum_values(alert_pb2.Severity)
_CERTAINTY = _enum_values(alert_pb2.Certainty)
_MAX_CATEGORIES = len(_CATEGORY) - 1  # each CAP category once at most


def _ts_seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


class _Checker:
    """Accumulates violations; one instance per envelope."""

    __slots__ = ("ctx", "incident_ids", "limits", "now", "out")

    def __init__(self, ctx: ValidationContext, now: datetime) -> None:
        self.ctx = ctx
        self.limits = ctx.limits
        self.now = now.timestamp()
        self.out: list[Violation] = []
        self.incident_ids: frozenset[str] = frozenset()

    def fail(self, path: str, rule: str, description: str) -> None:
        self.out.append(Violation(path, rule, description))

    # -- scalar helpers ------------------------------------------------------------------

    def text(self, path: str, value: str, *, required: bool = False, max_len: int | None = None) -> None:
        if not value:
            if required:
                self.fail(path, "required", "is required")
            return
        limit = max_len if max_len is not None else self.limits.max_short
        if len(value) > limit:
            self.fail(path, "max_length", f"must be at most {limit} characters")
        if _CONTROL_RE.search(value):
            self.fail(path, "control_characters", "must not contain control characters")

    def pattern(self, path: str, value: str, regex: re.Pattern[str], what: str, *, required: bool = False) -> None:
        if not value:
            if required:
                self.fail(path, "required", "is required")
            return
        if regex.fullmatch(value) is None:
            self.fail(path, "format", f"must be {what}")

    def code(self, path: str, value: str, allowed: Collection[str], what: str, *, required: bool = False) -> None:
        if not value:
            if required:
                self.fail(path, "required", "is required")
            return
        if value not in allowed:
            self.fail(path, "code_list", f"must be a value of {what}")

    def enum(self, path: str, value: int, allowed: frozenset[int], *, required: bool = True) -> None:
        if value == 0:
            if required:
                self.fail(path, "required", "must be set (the _UNSPECIFIED value is refused)")
            return
        if value not in allowed:
            self.fail(path, "enum", "is not a value of the enum")

    def timestamp(self, path: str, ts: Timestamp, *, present: bool, required: bool = False) -> bool:
        """Checks range; returns True when a valid timestamp is present."""
        if not present:
            if required:
                self.fail(path, "required", "is required")
            return False
        if not (_TS_MIN <= ts.seconds <= _TS_MAX) or not (0 <= ts.nanos <= 999_999_999):
            self.fail(path, "timestamp_range", "is not a valid timestamp")
            return False
        return True

    def max_items(self, path: str, items: Sequence[object], limit: int) -> None:
        if len(items) > limit:
            self.fail(path, "max_items", f"must have at most {limit} items")

    def agency(self, path: str, value: str, *, required: bool = True) -> bool:
        if not value:
            if required:
                self.fail(path, "required", "is required")
            return False
        if not ids.is_agency_id(value):
            self.fail(path, "agency_id_format", "must be an agency id such as it.pl.001272")
            return False
        return True

    def comune(self, path: str, value: str, *, required: bool = False) -> None:
        self.code(path, value, self.ctx.codes.comuni, "the ISTAT comuni (six digits)", required=required)

    def incident_ref(self, path: str, value: str) -> None:
        if not value:
            self.fail(path, "required", "is required")
        elif value not in self.incident_ids:
            self.fail(path, "incident_id_mismatch", "must be one of the envelope's incident_ids")

    # -- envelope ------------------------------------------------------------------------

    def envelope(self, env: envelope_pb2.Envelope) -> None:
        lim = self.limits
        self.pattern("distribution_id", env.distribution_id, ids.UUID_RE, "a lowercase UUID", required=True)
        if not env.HasField("sender"):
            self.fail("sender", "required", "is required")
        else:
            self.agency("sender.agency_id", env.sender.agency_id)
            self.pattern("sender.operator_id", env.sender.operator_id, ids.LOCAL_ID_RE, "a staff id")
            self.pattern("sender.workstation_id", env.sender.workstation_id, ids.LOCAL_ID_RE, "a station id")
        sent_ok = self.timestamp("sent_at", env.sent_at, present=env.HasField("sent_at"), required=True)
        if sent_ok:
            sent = _ts_seconds(env.sent_at)
            if sent > self.now + lim.max_future_skew.total_seconds():
                self.fail("sent_at", "future", "must not be in the future (clock skew above limit)")
            elif sent < self.now - lim.max_sent_age.total_seconds():
                self.fail("sent_at", "too_old", f"must be less than {lim.max_sent_age} old")
        self.enum("status", env.status, _STATUS)
        self.enum("kind", env.kind, _KIND)
        self.recipients(env)
        self.max_items("target_areas", env.target_areas, lim.max_target_areas)
        for i, area in enumerate(env.target_areas[: lim.max_target_areas]):
            self.area(f"target_areas[{i}]", area)
        self.enum("confidentiality", env.confidentiality, _CONFIDENTIALITY)
        self.max_items("incident_ids", env.incident_ids, lim.max_incident_ids)
        seen: set[str] = set()
        for i, incident_id in enumerate(env.incident_ids[: lim.max_incident_ids]):
            path = f"incident_ids[{i}]"
            self.pattern(path, incident_id, ids.INCIDENT_ID_RE, "an incident id (UUID or URN)", required=True)
            if incident_id in seen:
                self.fail(path, "unique", "must not repeat")
            seen.add(incident_id)
        self.incident_ids = frozenset(seen)
        self.references(env)
        self.legal_basis(env)
        if (
            self.timestamp("expires_at", env.expires_at, present=env.HasField("expires_at"))
            and sent_ok
            and _ts_seconds(env.expires_at) <= _ts_seconds(env.sent_at)
        ):
            self.fail("expires_at", "after_sent_at", "must be after sent_at")
        self.payload(env)

    def recipients(self, env: envelope_pb2.Envelope) -> None:
        self.max_items("recipients", env.recipients, self.limits.max_recipients)
        seen: set[str] = set()
        for i, agency_id in enumerate(env.recipients[: self.limits.max_recipients]):
            path = f"recipients[{i}]"
            if not self.agency(path, agency_id):
                continue
            if agency_id in seen:
                self.fail(path, "unique", "must not repeat")
            elif agency_id == env.sender.agency_id:
                self.fail(path, "not_sender", "must not be the sender itself")
            elif not self.ctx.is_registered(agency_id):
                self.fail(path, "registered", "must be an agency registered at the hub")
            seen.add(agency_id)

    def area(self, path: str, area: common_pb2.Area) -> None:
        which = area.WhichOneof("code")
        codes = self.ctx.codes
        if which is None:
            self.fail(path, "required", "must set one of comune_istat, provincia_istat, regione_istat")
        elif which == "comune_istat":
            self.comune(f"{path}.comune_istat", area.comune_istat, required=True)
        elif which == "provincia_istat":
            self.code(
                f"{path}.provincia_istat",
                area.provincia_istat,
                codes.provinces,
                "the ISTAT provinces (three digits)",
                required=True,
            )
        else:
            self.code(
                f"{path}.regione_istat",
                area.regione_istat,
                codes.regions,
                "the ISTAT regions (two digits)",
                required=True,
            )

    def references(self, env: envelope_pb2.Envelope) -> None:
        self.max_items("references", env.references, self.limits.max_references)
        if env.kind in KINDS_WITH_REFERENCE and not env.references:
            self.fail("references", "required", "must name the message this one acts on")
        for i, ref in enumerate(env.references[: self.limits.max_references]):
            path = f"references[{i}]"
            self.pattern(f"{path}.distribution_id", ref.distribution_id, ids.UUID_RE, "a lowercase UUID", required=True)
            if ref.distribution_id and ref.distribution_id == env.distribution_id:
                self.fail(f"{path}.distribution_id", "not_self", "must not reference the envelope itself")
            self.agency(f"{path}.sender_agency_id", ref.sender_agency_id)

    def legal_basis(self, env: envelope_pb2.Envelope) -> None:
        if not env.HasField("legal_basis"):
            self.fail("legal_basis", "required", "is required (law and purpose)")
            return
        basis = env.legal_basis
        self.text("legal_basis.law", basis.law, required=True)
        self.enum("legal_basis.purpose", basis.purpose, _PURPOSE)
        self.pattern("legal_basis.agreement_id", basis.agreement_id, _AGREEMENT_RE, "an agreement id")

    def payload(self, env: envelope_pb2.Envelope) -> None:
        which = env.WhichOneof("payload")
        if which is None:
            self.fail("payload", "required", "exactly one payload is required")
            return
        allowed = _KIND_PAYLOADS.get(env.kind)
        if allowed is not None and which not in allowed:
            self.fail(which, "kind_payload", f"is not a payload of this kind; allowed: {sorted(allowed)}")
        if which == "incident":
            self.incident("incident", env.incident)
        elif which == "alert":
            self.alert("alert", env.alert)
        elif which == "closure":
            self.closure("closure", env.closure)
        elif which == "assistance_request":
            self.assistance_request("assistance_request", env.assistance_request)
        elif which == "assistance_response":
            self.assistance_response("assistance_response", env.assistance_response)
        elif which == "handover_request":
            self.handover_request("handover_request", env.handover_request)
        elif which == "handover_response":
            self.handover_response("handover_response", env.handover_response)
        else:
            self.acknowledgement("acknowledgement", env.acknowledgement)

    # -- payloads ------------------------------------------------------------------------

    def incident(self, path: str, inc: incident_pb2.Incident) -> None:
        lim = self.limits
        codes = self.ctx.codes
        self.incident_ref(f"{path}.id", inc.id)
        self.text(f"{path}.local_reference", inc.local_reference, max_len=64)
        if not inc.HasField("type"):
            self.fail(f"{path}.type", "required", "is required")
        else:
            self.code(
                f"{path}.type.eido_code",
                inc.type.eido_code,
                codes.eido_incident_types,
                "the EIDO incident-type-common registry",
                required=True,
            )
            self.code(
                f"{path}.type.emsi_category",
                inc.type.emsi_category,
                codes.emsi_categories,
                "the EMSI EVENT.ETYPE.CATEGORY list",
            )
        self.enum(f"{path}.status", inc.status, _INCIDENT_STATUS)
        self.enum(f"{path}.priority", inc.priority, _PRIORITY)
        self.timestamp(f"{path}.occurred_at", inc.occurred_at, present=inc.HasField("occurred_at"))
        self.max_items(f"{path}.locations", inc.locations, lim.max_items)
        for i, loc in enumerate(inc.locations[: lim.max_items]):
            self.location(f"{path}.locations[{i}]", loc)
        if inc.HasField("call"):
            self.call(f"{path}.call", inc.call)
        self.max_items(f"{path}.persons", inc.persons, lim.max_items)
        for i, person in enumerate(inc.persons[: lim.max_items]):
            self.person(f"{path}.persons[{i}]", person)
        self.max_items(f"{path}.vehicles", inc.vehicles, lim.max_items)
        for i, vehicle in enumerate(inc.vehicles[: lim.max_items]):
            self.vehicle(f"{path}.vehicles[{i}]", vehicle)
        self.max_items(f"{path}.notes", inc.notes, lim.max_items)
        for i, note in enumerate(inc.notes[: lim.max_items]):
            p = f"{path}.notes[{i}]"
            self.timestamp(f"{p}.created_at", note.created_at, present=note.HasField("created_at"))
            self.pattern(f"{p}.author_operator_id", note.author_operator_id, ids.LOCAL_ID_RE, "a staff id")
            self.text(f"{p}.text", note.text, required=True, max_len=lim.max_text)
        self.max_items(f"{path}.agencies", inc.agencies, lim.max_items)
        for i, inv in enumerate(inc.agencies[: lim.max_items]):
            p = f"{path}.agencies[{i}]"
            self.agency(f"{p}.agency_id", inv.agency_id)
            self.code(f"{p}.role", inv.role, codes.eido_agency_roles, "the EIDO agency-role registry", required=True)
        self.media(f"{path}.media", inc.media)
        self.text(f"{path}.description", inc.description, max_len=lim.max_text)

    def location(self, path: str, loc: common_pb2.Location) -> None:
        self.code(f"{path}.type", loc.type, self.ctx.codes.eido_location_types, "the EIDO location-type registry")
        has_point = loc.HasField("point")
        if has_point:
            self.point(f"{path}.point", loc.point)
        if not (has_point or loc.comune_istat or loc.HasField("address")):
            self.fail(path, "required", "needs a point, a comune_istat or an address")
        if not math.isfinite(loc.uncertainty_m) or not 0 <= loc.uncertainty_m <= 100_000:
            self.fail(f"{path}.uncertainty_m", "range", "must be between 0 and 100000 metres")
        if loc.confidence_percent > 100:
            self.fail(f"{path}.confidence_percent", "range", "must be between 0 and 100")
        if loc.HasField("address"):
            a = loc.address
            p = f"{path}.address"
            self.text(f"{p}.street", a.street)
            self.pattern(f"{p}.civic_number", a.civic_number, _CIVIC_RE, "a civic number such as 10/B")
            self.text(f"{p}.locality", a.locality)
            self.pattern(f"{p}.postal_code", a.postal_code, _POSTAL_RE, "five digits")
            self.text(f"{p}.additional_info", a.additional_info, max_len=self.limits.max_text)
        self.comune(f"{path}.comune_istat", loc.comune_istat)
        self.enum(f"{path}.source", loc.source, _LOCATION_SOURCE, required=False)

    def point(self, path: str, point: common_pb2.GeoPoint) -> None:
        if not math.isfinite(point.latitude) or not -90 <= point.latitude <= 90:
            self.fail(f"{path}.latitude", "range", "must be between -90 and 90")
        if not math.isfinite(point.longitude) or not -180 <= point.longitude <= 180:
            self.fail(f"{path}.longitude", "range", "must be between -180 and 180")

    def call(self, path: str, call: incident_pb2.Call) -> None:
        self.text(f"{path}.call_id", call.call_id, max_len=64)
        self.timestamp(f"{path}.started_at", call.started_at, present=call.HasField("started_at"))
        if call.HasField("caller"):
            c = call.caller
            self.text(f"{path}.caller.name", c.name)
            self.text(f"{path}.caller.surname", c.surname)
            self.pattern(f"{path}.caller.phone", c.phone, _PHONE_RE, "a phone number (E.164 digits)")
        if call.HasField("network_location"):
            n = call.network_location
            self.text(f"{path}.network_location.raw_value", n.raw_value, max_len=self.limits.max_text)
            self.pattern(f"{path}.network_location.imsi", n.imsi, _IMSI_RE, "14 or 15 digits")
            self.text(f"{path}.network_location.cell_id", n.cell_id, max_len=64)
        self.pattern(f"{path}.language", call.language, _LANGUAGE_RE, "a BCP 47 language tag")

    def person(self, path: str, person: incident_pb2.Person) -> None:
        self.code(
            f"{path}.role",
            person.role,
            self.ctx.codes.eido_person_roles,
            "the EIDO person-role registry",
            required=True,
        )
        self.text(f"{path}.name", person.name)
        self.text(f"{path}.surname", person.surname)
        if person.birth_date:
            try:
                well_formed = _DATE_RE.fullmatch(person.birth_date) is not None
                date.fromisoformat(person.birth_date)
            except ValueError:
                well_formed = False
            if not well_formed:
                self.fail(f"{path}.birth_date", "format", "must be a date YYYY-MM-DD")
        self.text(f"{path}.description", person.description, max_len=self.limits.max_text)

    def vehicle(self, path: str, v: incident_pb2.Vehicle) -> None:
        self.code(
            f"{path}.relationship",
            v.relationship,
            self.ctx.codes.eido_vehicle_relationships,
            "the EIDO vehicle-relationship-type registry",
        )
        self.pattern(f"{path}.plate", v.plate, _PLATE_RE, "upper-case letters and digits, no spaces")
        self.pattern(f"{path}.plate_country", v.plate_country, _COUNTRY_RE, "an ISO 3166-1 alpha-2 code")
        self.text(f"{path}.make", v.make)
        self.text(f"{path}.model", v.model)
        self.text(f"{path}.color", v.color)
        self.pattern(f"{path}.vin", v.vin, _VIN_RE, "a 17-character VIN")
        if not (v.plate or v.vin or v.make):
            self.fail(path, "required", "needs a plate, a vin or a make")

    def media(self, path: str, media: Sequence[common_pb2.MediaReference]) -> None:
        self.max_items(path, media, self.limits.max_media)
        for i, m in enumerate(media[: self.limits.max_media]):
            p = f"{path}[{i}]"
            if not m.uri:
                self.fail(f"{p}.uri", "required", "is required")
            elif not m.uri.startswith("https://") or len(m.uri) > 2048:
                self.fail(f"{p}.uri", "format", "must be an https URI of at most 2048 characters")
            self.pattern(f"{p}.sha256", m.sha256, _SHA256_RE, "64 lowercase hex digits", required=True)
            self.pattern(f"{p}.media_type", m.media_type, _MEDIA_TYPE_RE, "a MIME type")
            self.timestamp(f"{p}.captured_at", m.captured_at, present=m.HasField("captured_at"))

    def closure(self, path: str, c: incident_pb2.IncidentClosure) -> None:
        self.incident_ref(f"{path}.incident_id", c.incident_id)
        self.timestamp(f"{path}.closed_at", c.closed_at, present=c.HasField("closed_at"), required=True)
        self.enum(f"{path}.status", c.status, _COMPLETION)
        self.code(
            f"{path}.disposition_code",
            c.disposition_code,
            self.ctx.codes.eido_disposition_codes,
            "the EIDO common-disposition-code registry",
        )
        self.text(f"{path}.remarks", c.remarks, max_len=self.limits.max_text)

    def assistance_request(self, path: str, r: request_pb2.AssistanceRequest) -> None:
        self.incident_ref(f"{path}.incident_id", r.incident_id)
        if not r.resources:
            self.fail(f"{path}.resources", "required", "must name at least one resource")
        self.max_items(f"{path}.resources", r.resources, self.limits.max_items)
        for i, need in enumerate(r.resources[: self.limits.max_items]):
            p = f"{path}.resources[{i}]"
            self.code(
                f"{p}.resource_type",
                need.resource_type,
                self.ctx.codes.eido_resource_types,
                "the EIDO emergency-resource-type-common registry",
                required=True,
            )
            if not 1 <= need.quantity <= 100:
                self.fail(f"{p}.quantity", "range", "must be between 1 and 100")
        if r.HasField("location"):
            self.location(f"{path}.location", r.location)
        self.enum(f"{path}.priority", r.priority, _PRIORITY)
        self.timestamp(f"{path}.needed_by", r.needed_by, present=r.HasField("needed_by"))
        self.text(f"{path}.remarks", r.remarks, max_len=self.limits.max_text)

    def outcome(self, path: str, outcome: int, cause: str) -> None:
        self.enum(f"{path}.outcome", outcome, _OUTCOME)
        self.text(f"{path}.cause", cause, required=outcome == common_pb2.OUTCOME_REJECTED, max_len=500)

    def assistance_response(self, path: str, r: request_pb2.AssistanceResponse) -> None:
        self.outcome(path, r.outcome, r.cause)
        self.max_items(f"{path}.resources", r.resources, self.limits.max_items)
        for i, res in enumerate(r.resources[: self.limits.max_items]):
            p = f"{path}.resources[{i}]"
            self.pattern(f"{p}.resource_id", res.resource_id, ids.LOCAL_ID_RE, "a unit id", required=True)
            self.text(f"{p}.resource_name", res.resource_name, required=True, max_len=64)
            self.code(
                f"{p}.resource_type",
                res.resource_type,
                self.ctx.codes.eido_resource_types,
                "the EIDO emergency-resource-type-common registry",
                required=True,
            )
            self.timestamp(f"{p}.eta", res.eta, present=res.HasField("eta"))
        self.timestamp(f"{path}.responded_at", r.responded_at, present=r.HasField("responded_at"), required=True)

    def handover_request(self, path: str, r: request_pb2.HandoverRequest) -> None:
        if not r.HasField("incident"):
            self.fail(f"{path}.incident", "required", "is required")
        else:
            self.incident(f"{path}.incident", r.incident)
        self.text(f"{path}.reason", r.reason, max_len=self.limits.max_text)

    def handover_response(self, path: str, r: request_pb2.HandoverResponse) -> None:
        if r.outcome == common_pb2.OUTCOME_PARTIALLY_ACCEPTED:
            self.fail(f"{path}.outcome", "enum", "a hand-over is accepted or rejected, not in part")
        self.outcome(path, r.outcome, r.cause)
        self.timestamp(f"{path}.responded_at", r.responded_at, present=r.HasField("responded_at"), required=True)

    def acknowledgement(self, path: str, a: envelope_pb2.Acknowledgement) -> None:
        self.pattern(f"{path}.code", a.code, _CODE_RE, "upper-case letters, digits and _", required=True)
        self.text(f"{path}.description", a.description, max_len=self.limits.max_text)

    def alert(self, path: str, alert: alert_pb2.Alert) -> None:
        self.enum(f"{path}.scope", alert.scope, _SCOPE)
        self.text(f"{path}.restriction", alert.restriction, required=alert.scope == alert_pb2.SCOPE_RESTRICTED)
        if not alert.infos:
            self.fail(f"{path}.infos", "required", "must have at least one info block")
        self.max_items(f"{path}.infos", alert.infos, 8)
        for i, info in enumerate(alert.infos[:8]):
            self.alert_info(f"{path}.infos[{i}]", info)
        self.max_items(f"{path}.vehicles", alert.vehicles, self.limits.max_items)
        for i, vehicle in enumerate(alert.vehicles[: self.limits.max_items]):
            self.vehicle(f"{path}.vehicles[{i}]", vehicle)

    def alert_info(self, path: str, info: alert_pb2.AlertInfo) -> None:
        lim = self.limits
        self.pattern(f"{path}.language", info.language, _LANGUAGE_RE, "a BCP 47 language tag")
        if not info.categories:
            self.fail(f"{path}.categories", "required", "must have at least one category")
        self.max_items(f"{path}.categories", info.categories, _MAX_CATEGORIES)
        for i, category in enumerate(info.categories[:_MAX_CATEGORIES]):
            self.enum(f"{path}.categories[{i}]", category, _CATEGORY)
        self.text(f"{path}.event", info.event, required=True)
        self.enum(f"{path}.urgency", info.urgency, _URGENCY)
        self.enum(f"{path}.severity", info.severity, _SEVERITY)
        self.enum(f"{path}.certainty", info.certainty, _CERTAINTY)
        self.named_values(f"{path}.event_codes", info.event_codes)
        self.timestamp(f"{path}.effective", info.effective, present=info.HasField("effective"))
        self.timestamp(f"{path}.onset", info.onset, present=info.HasField("onset"))
        self.timestamp(f"{path}.expires", info.expires, present=info.HasField("expires"))
        self.text(f"{path}.headline", info.headline)
        self.text(f"{path}.description", info.description, max_len=lim.max_text)
        self.text(f"{path}.instruction", info.instruction, max_len=lim.max_text)
        self.named_values(f"{path}.parameters", info.parameters)
        self.media(f"{path}.resources", info.resources)
        if not info.areas:
            self.fail(f"{path}.areas", "required", "must have at least one area")
        self.max_items(f"{path}.areas", info.areas, lim.max_items)
        for i, area in enumerate(info.areas[: lim.max_items]):
            self.alert_area(f"{path}.areas[{i}]", area)

    def named_values(self, path: str, values: Sequence[alert_pb2.NamedValue]) -> None:
        self.max_items(path, values, self.limits.max_items)
        for i, nv in enumerate(values[: self.limits.max_items]):
            self.text(f"{path}[{i}].name", nv.name, required=True, max_len=100)
            self.text(f"{path}[{i}].value", nv.value, max_len=self.limits.max_short)

    def alert_area(self, path: str, area: alert_pb2.AlertArea) -> None:
        lim = self.limits
        self.text(f"{path}.area_desc", area.area_desc, required=True)
        self.max_items(f"{path}.polygons", area.polygons, lim.max_items)
        for i, polygon in enumerate(area.polygons[: lim.max_items]):
            p = f"{path}.polygons[{i}]"
            points = polygon.points
            if not 4 <= len(points) <= 1000:
                self.fail(f"{p}.points", "polygon", "must have between 4 and 1000 points")
            elif (points[0].latitude, points[0].longitude) != (points[-1].latitude, points[-1].longitude):
                self.fail(f"{p}.points", "polygon", "must be closed: the last point equals the first")
            for j, point in enumerate(points[:1000]):
                self.point(f"{p}.points[{j}]", point)
        self.max_items(f"{path}.circles", area.circles, lim.max_items)
        for i, circle in enumerate(area.circles[: lim.max_items]):
            p = f"{path}.circles[{i}]"
            self.point(f"{p}.center", circle.center)
            if not math.isfinite(circle.radius_km) or not 0 <= circle.radius_km <= 1000:
                self.fail(f"{p}.radius_km", "range", "must be between 0 and 1000")
        self.max_items(f"{path}.comuni_istat", area.comuni_istat, lim.max_items)
        for i, code in enumerate(area.comuni_istat[: lim.max_items]):
            self.comune(f"{path}.comuni_istat[{i}]", code, required=True)


def validate_envelope(env: envelope_pb2.Envelope, ctx: ValidationContext, now: datetime) -> list[Violation]:
    """Every rule the envelope breaks, in field order (empty when it is valid)."""
    checker = _Checker(ctx, now)
    checker.envelope(env)
    return checker.out
