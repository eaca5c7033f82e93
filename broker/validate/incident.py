"""The rules of an incident and its parts (pure): locations, the call, persons, vehicles, media, the closure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date

from opsroom.common.v1 import common_pb2
from opsroom.incident.v1 import incident_pb2

from broker import ids
from broker.validate.fields import (
    _CIVIC_RE,
    _COMPLETION,
    _COUNTRY_RE,
    _DATE_RE,
    _IMSI_RE,
    _INCIDENT_STATUS,
    _LANGUAGE_RE,
    _LOCATION_SOURCE,
    _MEDIA_TYPE_RE,
    _PHONE_RE,
    _PLATE_RE,
    _POSTAL_RE,
    _PRIORITY,
    _SHA1_RE,
    _SHA256_RE,
    _VIN_RE,
    Fields,
)


class IncidentRules(Fields):
    """Rules of incident payloads and of the parts other payloads share with them."""

    __slots__ = ()

    def incident(self, path: str, inc: incident_pb2.Incident) -> None:
        """Check the incident at path; record each violation."""
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
        """Check the location at path; record each violation."""
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
        """Check the point at path; record each violation."""
        if not math.isfinite(point.latitude) or not -90 <= point.latitude <= 90:
            self.fail(f"{path}.latitude", "range", "must be between -90 and 90")
        if not math.isfinite(point.longitude) or not -180 <= point.longitude <= 180:
            self.fail(f"{path}.longitude", "range", "must be between -180 and 180")

    def call(self, path: str, call: incident_pb2.Call) -> None:
        """Check the call at path; record each violation."""
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
        """Check the person at path; record each violation."""
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
        """Check the vehicle at path; record each violation."""
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
        """Check the media at path; record each violation."""
        self.max_items(path, media, self.limits.max_media)
        for i, m in enumerate(media[: self.limits.max_media]):
            p = f"{path}[{i}]"
            if not m.uri:
                self.fail(f"{p}.uri", "required", "is required")
            elif not m.uri.startswith("https://") or len(m.uri) > 2048:
                self.fail(f"{p}.uri", "format", "must be an https URI of at most 2048 characters")
            self.pattern(f"{p}.sha256", m.sha256, _SHA256_RE, "64 lowercase hex digits", required=not m.sha1)
            self.pattern(f"{p}.sha1", m.sha1, _SHA1_RE, "40 lowercase hex digits (a CAP digest)")
            self.pattern(f"{p}.media_type", m.media_type, _MEDIA_TYPE_RE, "a MIME type")
            self.timestamp(f"{p}.captured_at", m.captured_at, present=m.HasField("captured_at"))
            self.text(f"{p}.description", m.description)

    def closure(self, path: str, c: incident_pb2.IncidentClosure) -> None:
        """Check the closure at path; record each violation."""
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
