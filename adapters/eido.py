"""NENA EIDO 1.0 (NENA-STA-021.1, JSON) both ways: an Emergency Incident Data Object and an opsroom envelope.

Owns the EIDO JSON Schema (derived, once, from the OpenAPI 3.0 components in
adapters/data/eido/eido-openapi.yaml), the decoder and the encoder.

An EIDO is the state of one incident at one time, so it decodes to an envelope with an
`incident` payload (kind UPDATE), or a `handover_request` when an opsroom agency has the role
TransferredTo (kind REQUEST). The mapping:

- `$id` (urn:emergency:uid:incidentid:...) -> incident.id, incident_ids, origin.identifier; an
  id that does not fit broker.ids.INCIDENT_ID_RE is refused (DocumentError at /$id): it is the
  shared id every room keys the incident on, so it is never rewritten.
- `lastUpdateTimeStamp` -> sent_at; `issuingElementIdentification` -> origin.sender;
  `updatedByAgentReference` -> sender.operator_id when it is a staff id (else unmapped). The
  distribution id is distribution_id(FORMAT, issuingElementIdentification, $id, a line feed,
  lastUpdateTimeStamp): the same state sent twice is stored once.
- incidentComponent: incidentTypeCommonRegistryText -> type.eido_code (+ emsi_category from the
  incident-type map), incidentTypeInternalText -> description, internalIncidentId ->
  local_reference, the first incidentStatusCommonRegistryText the contract knows -> status,
  incidentCommonPriorityNumber -> priority on the scale 1 IMMEDIATE, 2 HIGH, 3 NORMAL, 4 LOW (a
  number above 4 decodes as LOW, one below 1 as unspecified; either is also kept in
  origin.unmapped so that it is encoded back as it came). dispositionComponent stays in
  origin.unmapped: a Closed incident decodes to status CLOSED, not to a closure payload, because
  the envelope carries one payload and the incident's other data would have no typed place.
- callComponent[0] -> incident.call ($id -> call_id, callStartTimestamp -> started_at and
  occurred_at); the person whose first role is Caller -> call.caller, its phone from the first
  `tel:` callBackInformationUri of the callback it (or the call) references.
- personComponent (other persons) -> persons (first role); vehicleComponent -> vehicles (first
  relationship); notesComponent -> notes (text, lastUpdateTimeStamp, agentReference when it is a
  staff id); mediaComponent -> media (uri, contentType, label); agencyComponent whose $id is an
  opsroom agency id -> incident.agencies (first role) and recipients. The NIEM person and
  vehicle details (ncPersonComponent, ncVehicleComponent) are not mapped: their schemas are not
  in adapters/data, so they stay in origin.unmapped.
- locationComponent with a PIDF-LO by value giving a point (gml:Point, gs:Circle) or a civic
  address -> incident.locations (type, point, radius, confidence, street, number, A4 locality,
  postal code, LOC). When the PIDF-LO is not the one the encoder would write for that
  location, the original text is also kept in origin.unmapped and written back as it came.

Everything else goes to origin.unmapped by JSON Pointer (RFC 6901) with its JSON text as value:
a component with nothing mapped whole, otherwise its unmapped members one by one, so that
encode rebuilds the document. Pre-2021 drafts (EIDOVersion, LastUpdateTimeStamp,
OwningAgencyIdentifier, incidentTrackingIdentifier, an incidentComponent array...) and any
eidoVersion other than "1.0" are refused with UnsupportedDocument naming the field.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

import jsonschema
from google.protobuf.timestamp_pb2 import Timestamp
from lxml import etree
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2
from opsroom.request.v1 import request_pb2

from adapters import codes, document
from adapters.document import (
    Context,
    DocumentError,
    UnsupportedDocument,
    distribution_id,
    load_json,
    parse_xml,
)
from adapters.schemas import DATE_TIME, check_json, from_openapi, validator_for
from broker import ids

FORMAT = "eido-1.0"
VERSION = "1.0"
ROOT = "EmergencyIncidentDataObjectType"
_OPENAPI = "eido/eido-openapi.yaml"

# Top-level keys that exist only in the 2019-2020 drafts (Samples/Sample_EIDO.json of the
# NENA repository): a document carrying one is an older shape, never read as 1.0.
_DRAFT_KEYS = (
    "EIDOVersion",
    "LastUpdateTimeStamp",
    "OwningAgencyIdentifier",
    "UpdatedByAgentIdentifier",
    "incidentTrackingIdentifier",
    "reasonForIssueRegistryText",
    "locationInformationComponent",
)
# Prologue spellings of the drafts, refused in any component.
_DRAFT_PROLOGUE = ("LastUpdateTimeStamp", "OwningAgencyIdentifier", "UpdatedByAgentIdentifier")

_STATUS = {
    "Active": incident_pb2.INCIDENT_STATUS_ACTIVE,
    "Cancelled": incident_pb2.INCIDENT_STATUS_CANCELLED,
    "Closed": incident_pb2.INCIDENT_STATUS_CLOSED,
    "NewLocation": incident_pb2.INCIDENT_STATUS_NEW_LOCATION,
    "ReOpened": incident_pb2.INCIDENT_STATUS_REOPENED,
    "ResourcesAssigned": incident_pb2.INCIDENT_STATUS_RESOURCES_ASSIGNED,
    "ResourcesEnroute": incident_pb2.INCIDENT_STATUS_RESOURCES_ENROUTE,
    "ResourcesOnscene": incident_pb2.INCIDENT_STATUS_RESOURCES_ONSCENE,
}
_STATUS_NAME = {v: k for k, v in _STATUS.items()}
# incidentCommonPriorityNumber <-> Priority: 1 is the most urgent, as CAD priorities count.
_PRIORITY = {
    1: common_pb2.PRIORITY_IMMEDIATE,
    2: common_pb2.PRIORITY_HIGH,
    3: common_pb2.PRIORITY_NORMAL,
    4: common_pb2.PRIORITY_LOW,
}
_PRIORITY_NUMBER = {v: k for k, v in _PRIORITY.items()}

CALLER = "Caller"
TRANSFERRED_TO = "TransferredTo"
_PHONE_RE = re.compile(r"\+?[0-9]{3,15}")
_ID_NAMESPACE = uuid.UUID("0c7d8a52-4f0e-5b7c-8d3e-5a1f2b9e6c40")

_NS = {
    "pidf": "urn:ietf:params:xml:ns:pidf",
    "gp": "urn:ietf:params:xml:ns:pidf:geopriv10",
    "ca": "urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr",
    "gml": "http://www.opengis.net/gml",
    "gs": "http://www.opengis.net/pidflo/1.0",
    "con": "urn:ietf:params:xml:ns:geopriv:conf",
}

Path = tuple[str | int, ...]


# -- the schema ---------------------------------------------------------------------------


@cache
def json_schema() -> dict[str, Any]:
    """The EIDO 1.0 JSON Schema derived from the OpenAPI components; root EmergencyIncidentDataObjectType."""
    return from_openapi(_OPENAPI, ROOT)


@cache
def validator() -> jsonschema.protocols.Validator:
    """The validator of the derived schema."""
    return validator_for(json_schema())


# -- small helpers ------------------------------------------------------------------------


def pointer(path: Sequence[str | int]) -> str:
    """The JSON Pointer (RFC 6901) of a path."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _tokens(text: str) -> list[str | int]:
    if not text.startswith("/"):
        raise ValueError("a JSON Pointer starts with /")
    out: list[str | int] = []
    for raw in text[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        out.append(int(token) if token.isdigit() else token)
    return out


def _timestamp(value: Any, path: Path) -> Timestamp:
    if not isinstance(value, str) or re.fullmatch(DATE_TIME, value) is None:
        raise DocumentError(pointer(path), "must be an RFC 3339 date-time with a time zone")
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
        ts = Timestamp()
        ts.FromDatetime(moment)
    except (ValueError, OverflowError) as exc:
        raise DocumentError(pointer(path), f"is not a valid date-time ({exc})") from None
    return ts


def _iso(ts: Timestamp) -> str:
    return ts.ToJsonString()


def _check_strings(node: Any, path: Path) -> None:
    """Refuse lone surrogates (JSON allows the escape, UTF-8 and protobuf do not)."""
    stack: list[tuple[Any, Path]] = [(node, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise DocumentError(pointer(where), "contains a lone UTF-16 surrogate") from None
        elif isinstance(value, dict):
            for key, sub in value.items():
                stack.append((key, where))
                stack.append((sub, (*where, key)))
        elif isinstance(value, list):
            stack.extend((sub, (*where, i)) for i, sub in enumerate(value))


def _ref(value: Any) -> str:
    return value.get("$ref", "") if isinstance(value, dict) and isinstance(value.get("$ref"), str) else ""


def _first_str(items: Any) -> str:
    return items[0] if isinstance(items, list) and items and isinstance(items[0], str) else ""


# -- decode -------------------------------------------------------------------------------


class _Consumed:
    """The paths the typed mapping read; the rest of the document goes to origin.unmapped."""

    def __init__(self) -> None:
        self.taken: set[Path] = set()
        self.touched: set[Path] = set()

    def take(self, *path: str | int) -> None:
        self.taken.add(path)
        for i in range(len(path)):
            self.touched.add(path[:i])

    def touch(self, *path: str | int) -> None:
        for i in range(len(path) + 1):
            self.touched.add(path[:i])

    def leftovers(self, doc: Any) -> Iterator[tuple[Path, Any]]:
        """Unread parts in document order: an untouched subtree whole, a touched one member by member."""

        def walk(node: Any, path: Path) -> Iterator[tuple[Path, Any]]:
            if path in self.taken:
                return
            if path not in self.touched:
                yield path, node
                return
            if isinstance(node, dict):
                for key, sub in node.items():
                    yield from walk(sub, (*path, key))
            elif isinstance(node, list):
                for i, sub in enumerate(node):
                    yield from walk(sub, (*path, i))

        yield from walk(doc, ())


def _refuse_older(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise UnsupportedDocument("/", f"is a JSON {type(doc).__name__}, not an EIDO object")
    for key in _DRAFT_KEYS:
        if key in doc:
            raise UnsupportedDocument(
                f"/{key}", "is a spelling of the 2019-2020 EIDO drafts; only EIDO 1.0 (NENA-STA-021.1) is decoded"
            )
    if isinstance(doc.get("incidentComponent"), list):
        raise UnsupportedDocument(
            "/incidentComponent", "is an array as in the 2019-2020 EIDO drafts; EIDO 1.0 has one object"
        )
    for name, items in doc.items():
        for i, item in enumerate(items if isinstance(items, list) else []):
            found = [key for key in _DRAFT_PROLOGUE if isinstance(item, dict) and key in item]
            if found:
                raise UnsupportedDocument(
                    f"/{name}/{i}/{found[0]}", "is a spelling of the 2019-2020 EIDO drafts; only EIDO 1.0 is decoded"
                )
    if "eidoVersion" not in doc:
        raise UnsupportedDocument("/eidoVersion", "is missing: not an EIDO 1.0 document (NENA-STA-021.1)")
    if doc["eidoVersion"] != VERSION:
        raise UnsupportedDocument("/eidoVersion", f"is {doc['eidoVersion']!r}; only {VERSION!r} is decoded")


def decode(
    data: bytes,
    ctx: Context,
    *,
    status: common_pb2.Status.ValueType = common_pb2.STATUS_ACTUAL,
) -> envelope_pb2.Envelope:
    """The envelope of an EIDO 1.0 JSON document (status: EIDO has no real/drill flag, the connector's)."""
    doc = load_json(data, ctx.limits)
    _refuse_older(doc)
    _check_strings(doc, ())
    check_json(doc, validator())
    env = _Decoder(doc, ctx).envelope(status)
    document.classify(env.origin, _personal_paths(doc))
    return env


def _personal_paths(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The personal-data category of the document's unmapped parts, by JSON Pointer (see decode)."""
    callers = [
        str(i)
        for i, person in enumerate(doc.get("personComponent", []))
        if isinstance(person, dict) and CALLER in (person.get("personIncidentRoleRegistryText") or [])
    ]
    caller_places = [
        str(i)
        for i, place in enumerate(doc.get("locationComponent", []))
        if isinstance(place, dict) and place.get("locationTypeDescriptionRegistryText") == CALLER
    ]
    rules = [(r"/updatedByAgentReference|^/agentComponent/", "staff")]
    if callers:
        rules.append((rf"^/personComponent/({'|'.join(callers)})(/|$)", "caller"))
    if caller_places:
        rules.append((rf"^/locationComponent/({'|'.join(caller_places)})(/|$)", "caller"))
    return [
        *rules,
        (r"^/(callbackComponent|callComponent|additionalDataComponent)/", "caller"),
        (r"^/personComponent/", "persons"),
        (r"^/vehicleComponent/", "vehicles"),
        (r"^/mediaComponent/", "media"),
    ]


class _Decoder:
    def __init__(self, doc: dict[str, Any], ctx: Context) -> None:
        self.doc = doc
        self.ctx = ctx
        self.used = _Consumed()

    def envelope(self, status: common_pb2.Status.ValueType) -> envelope_pb2.Envelope:
        doc, used = self.doc, self.used
        for key, value in doc.items():
            if isinstance(value, list):  # component arrays: unmapped item by item, so typed items can join
                used.touch(key)
        incident_id = doc["$id"]
        if ids.INCIDENT_ID_RE.fullmatch(incident_id) is None:
            raise DocumentError(
                "/$id",
                "does not fit the hub's incident ids (letters, digits and :._@- up to 128 characters); "
                "the shared id is never rewritten, so the sender must use such an id",
            )
        used.take("$id")
        sent_at = _timestamp(doc["lastUpdateTimeStamp"], ("lastUpdateTimeStamp",))
        used.take("lastUpdateTimeStamp")
        used.take("eidoVersion")
        issuer = doc["issuingElementIdentification"]
        used.take("issuingElementIdentification")
        sender = common_pb2.Sender(agency_id=self.ctx.agency_id)
        operator = _ref(doc.get("updatedByAgentReference"))
        if operator and set(doc["updatedByAgentReference"]) == {"$ref"} and ids.LOCAL_ID_RE.fullmatch(operator):
            sender.operator_id = operator
            used.take("updatedByAgentReference")

        inc = incident_pb2.Incident(id=incident_id)
        self.incident_component(inc)
        self.call(inc)
        self.persons(inc)
        self.vehicles(inc)
        self.locations(inc)
        self.notes(inc)
        self.media(inc)
        transferred = self.agencies(inc)

        recipients = list(dict.fromkeys(self.ctx.recipients))
        for agency in [a.agency_id for a in inc.agencies] + transferred:
            if agency != self.ctx.agency_id and agency not in recipients:
                recipients.append(agency)
        env = envelope_pb2.Envelope(
            distribution_id=distribution_id(FORMAT, issuer, f"{incident_id}\n{doc['lastUpdateTimeStamp']}"),
            sender=sender,
            sent_at=sent_at,
            status=status,
            kind=common_pb2.KIND_REQUEST if transferred else common_pb2.KIND_UPDATE,
            recipients=recipients,
            confidentiality=common_pb2.CONFIDENTIALITY_RESTRICTED,
            incident_ids=[incident_id],
            legal_basis=self.ctx.legal_basis(),
            origin=envelope_pb2.Origin(format=FORMAT, identifier=incident_id, sender=issuer),
        )
        if transferred:
            env.handover_request.CopyFrom(request_pb2.HandoverRequest(incident=inc))
        else:
            env.incident.CopyFrom(inc)
        for path, value in used.leftovers(doc):
            env.origin.unmapped.append(
                envelope_pb2.OriginField(path=pointer(path), value=json.dumps(value, ensure_ascii=False))
            )
        return env

    def incident_component(self, inc: incident_pb2.Incident) -> None:
        comp = self.doc.get("incidentComponent")
        if not isinstance(comp, dict):
            return
        used, base = self.used, "incidentComponent"
        used.touch(base)
        code = comp["incidentTypeCommonRegistryText"]
        inc.type.eido_code = code
        inc.type.emsi_category = codes.emsi_for(code) or ""
        used.take(base, "incidentTypeCommonRegistryText")
        if isinstance(comp.get("incidentTypeInternalText"), str):
            inc.description = comp["incidentTypeInternalText"]
            used.take(base, "incidentTypeInternalText")
        local = comp.get("internalIncidentId")
        if isinstance(local, str) and len(local) <= 64:
            inc.local_reference = local
            used.take(base, "internalIncidentId")
        for i, value in enumerate(comp.get("incidentStatusCommonRegistryText", [])):
            if value in _STATUS:
                inc.status = _STATUS[value]
                used.take(base, "incidentStatusCommonRegistryText", i)
                break
        number = comp.get("incidentCommonPriorityNumber")
        if isinstance(number, int) and not isinstance(number, bool):
            if number in _PRIORITY:
                inc.priority = _PRIORITY[number]
                used.take(base, "incidentCommonPriorityNumber")
            elif number > max(_PRIORITY):
                inc.priority = common_pb2.PRIORITY_LOW  # the number itself stays in origin.unmapped

    def call(self, inc: incident_pb2.Incident) -> None:
        calls = self.doc.get("callComponent") or []
        if not calls:
            return
        call, used = calls[0], self.used
        used.touch("callComponent", 0)
        if len(call["$id"]) <= 64:
            inc.call.call_id = call["$id"]
            used.take("callComponent", 0, "$id")
        started = _timestamp(call["callStartTimestamp"], ("callComponent", 0, "callStartTimestamp"))
        inc.call.started_at.CopyFrom(started)
        inc.occurred_at.CopyFrom(started)
        used.take("callComponent", 0, "callStartTimestamp")
        persons = self.doc.get("personComponent") or []
        for i, person in enumerate(persons):
            if _first_str(person["personIncidentRoleRegistryText"]) != CALLER:
                continue
            self.caller_person = i
            inc.call.caller.SetInParent()
            used.take("personComponent", i, "personIncidentRoleRegistryText", 0)
            callback = _ref(person.get("callBackReference")) or _ref(call.get("callBackReference"))
            self.phone(inc, callback)
            break

    caller_person: int | None = None

    def phone(self, inc: incident_pb2.Incident, callback_id: str) -> None:
        for k, callback in enumerate(self.doc.get("callbackComponent") or []):
            if callback["$id"] != callback_id or not callback_id:
                continue
            for j, uri in enumerate(callback.get("callBackInformationUri", [])):
                number = uri.removeprefix("tel:") if uri.startswith("tel:") else ""
                if _PHONE_RE.fullmatch(number):
                    inc.call.caller.phone = number
                    self.used.take("callbackComponent", k, "callBackInformationUri", j)
                    return
            return

    def persons(self, inc: incident_pb2.Incident) -> None:
        for i, person in enumerate(self.doc.get("personComponent") or []):
            if i == self.caller_person:
                continue
            self.used.touch("personComponent", i)
            role = _first_str(person["personIncidentRoleRegistryText"])
            if role:
                self.used.take("personComponent", i, "personIncidentRoleRegistryText", 0)
            inc.persons.append(incident_pb2.Person(role=role))

    def vehicles(self, inc: incident_pb2.Incident) -> None:
        for i, vehicle in enumerate(self.doc.get("vehicleComponent") or []):
            self.used.take("vehicleComponent", i, "vehicleRelationshipType", 0)
            inc.vehicles.append(incident_pb2.Vehicle(relationship=vehicle["vehicleRelationshipType"][0]))

    def locations(self, inc: incident_pb2.Incident) -> None:
        for i, comp in enumerate(self.doc.get("locationComponent") or []):
            raw = comp.get("locationByValue")
            if not isinstance(raw, str):
                continue
            path = ("locationComponent", i, "locationByValue")
            loc = _pidf_location(raw, pointer(path), self.ctx)
            if loc is None:
                continue
            loc.type = comp["locationTypeDescriptionRegistryText"]
            inc.locations.append(loc)
            self.used.take("locationComponent", i, "locationTypeDescriptionRegistryText")
            if _pidf(loc) == raw:  # else the original text stays in origin.unmapped and is written back
                self.used.take(*path)

    def notes(self, inc: incident_pb2.Incident) -> None:
        for i, comp in enumerate(self.doc.get("notesComponent") or []):
            base = ("notesComponent", i)
            note = incident_pb2.Note(text=comp["notesActionComments"])
            self.used.take(*base, "notesActionComments")
            note.created_at.CopyFrom(_timestamp(comp["lastUpdateTimeStamp"], (*base, "lastUpdateTimeStamp")))
            self.used.take(*base, "lastUpdateTimeStamp")
            author = comp.get("agentReference")
            if isinstance(author, dict) and set(author) == {"$ref"} and ids.LOCAL_ID_RE.fullmatch(author["$ref"]):
                note.author_operator_id = author["$ref"]
                self.used.take(*base, "agentReference")
            inc.notes.append(note)

    def media(self, inc: incident_pb2.Incident) -> None:
        for i, comp in enumerate(self.doc.get("mediaComponent") or []):
            base = ("mediaComponent", i)
            media = common_pb2.MediaReference(uri=comp["uri"], media_type=comp["contentType"])
            self.used.take(*base, "uri")
            self.used.take(*base, "contentType")
            if isinstance(comp.get("label"), str):
                media.description = comp["label"]
                self.used.take(*base, "label")
            inc.media.append(media)

    def agencies(self, inc: incident_pb2.Incident) -> list[str]:
        """Map opsroom agencies; return those the incident is transferred to (a hand-over)."""
        transferred: list[str] = []
        for i, comp in enumerate(self.doc.get("agencyComponent") or []):
            agency_id = comp["$id"]
            if not ids.is_agency_id(agency_id):
                continue
            base = ("agencyComponent", i)
            self.used.take(*base, "$id")
            role = _first_str(comp["agencyRoleDescriptionRegistryText"])
            if role:
                self.used.take(*base, "agencyRoleDescriptionRegistryText", 0)
            if role == TRANSFERRED_TO:
                transferred.append(agency_id)
            else:
                inc.agencies.append(incident_pb2.AgencyInvolvement(agency_id=agency_id, role=role))
        return transferred


# -- PIDF-LO ------------------------------------------------------------------------------


def _q(prefix: str, name: str) -> str:
    return f"{{{_NS[prefix]}}}{name}"


def _pidf_location(raw: str, path: str, ctx: Context) -> common_pb2.Location | None:
    """The point, circle, confidence and civic address of a PIDF-LO, or None when it has none."""
    try:
        root = parse_xml(raw.encode("utf-8"), ctx.limits)
    except DocumentError as exc:
        raise DocumentError(path, f"PIDF-LO: {exc.reason}") from None
    info = next(root.iter(_q("gp", "location-info")), None)
    if info is None:
        return None
    loc = common_pb2.Location()
    shape = next((e for e in info.iter(_q("gml", "Point"), _q("gs", "Circle"))), None)
    if shape is not None:
        pos = shape.find(_q("gml", "pos"))
        try:
            parts = (pos.text or "").split() if pos is not None else []
            lat, lon = float(parts[0]), float(parts[1])
            radius = shape.find(_q("gs", "radius"))
            uncertainty = float(radius.text or "") if radius is not None else 0.0
        except (IndexError, ValueError):
            raise DocumentError(path, "PIDF-LO: gml:pos must be 'latitude longitude', gs:radius metres") from None
        loc.point.latitude, loc.point.longitude = lat, lon
        loc.uncertainty_m = uncertainty
    confidence = info.find(_q("con", "confidence"))
    if confidence is not None and (confidence.text or "").strip().isdigit():
        loc.confidence_percent = min(int(confidence.text.strip()), 4_000_000_000)  # type: ignore[union-attr]
    civic = info.find(_q("ca", "civicAddress"))
    if civic is not None:

        def part(name: str) -> str:
            element = civic.find(_q("ca", name))
            return (element.text or "").strip() if element is not None else ""

        street = " ".join(p for p in (part("PRD"), part("RD"), part("STS"), part("POD")) if p)
        address = common_pb2.Address(
            street=street,
            civic_number=part("HNO") + part("HNS"),
            locality=part("A4"),
            postal_code=part("PC"),
            additional_info=part("LOC"),
        )
        if address != common_pb2.Address():
            loc.address.CopyFrom(address)
    if not loc.HasField("point") and not loc.HasField("address"):
        return None
    return loc


def _pidf(loc: common_pb2.Location) -> str:
    """The PIDF-LO the encoder writes for a location (what decode reads back to the same location)."""
    nsmap: dict[str | None, str] = {None: _NS["pidf"], **{k: v for k, v in _NS.items() if k != "pidf"}}
    presence = etree.Element(_q("pidf", "presence"), nsmap=nsmap, entity="pres:location@opsroom.invalid")
    tuple_ = etree.SubElement(presence, _q("pidf", "tuple"), id="location")
    status = etree.SubElement(tuple_, _q("pidf", "status"))
    geopriv = etree.SubElement(status, _q("gp", "geopriv"))
    info = etree.SubElement(geopriv, _q("gp", "location-info"))
    if loc.HasField("point"):
        pos_text = f"{loc.point.latitude!r} {loc.point.longitude!r}"
        if loc.uncertainty_m:
            shape = etree.SubElement(info, _q("gs", "Circle"), srsName="urn:ogc:def:crs:EPSG::4326")
            etree.SubElement(shape, _q("gml", "pos")).text = pos_text
            radius = etree.SubElement(shape, _q("gs", "radius"), uom="urn:ogc:def:uom:EPSG::9001")
            radius.text = repr(loc.uncertainty_m)
        else:
            shape = etree.SubElement(info, _q("gml", "Point"), srsName="urn:ogc:def:crs:EPSG::4326")
            etree.SubElement(shape, _q("gml", "pos")).text = pos_text
    if loc.confidence_percent:
        etree.SubElement(info, _q("con", "confidence"), pdf="normal").text = str(loc.confidence_percent)
    if loc.HasField("address"):
        civic = etree.SubElement(info, _q("ca", "civicAddress"))
        a = loc.address
        for name, value in (
            ("A4", a.locality),
            ("RD", a.street),
            ("HNO", a.civic_number),
            ("LOC", a.additional_info),
            ("PC", a.postal_code),
        ):
            if value:
                etree.SubElement(civic, _q("ca", name)).text = value
    etree.SubElement(geopriv, _q("gp", "usage-rules"))
    return etree.tostring(presence, encoding="unicode")


# -- encode -------------------------------------------------------------------------------


def _cid(incident_id: str, kind: str, n: int) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, f"{incident_id}\n{kind}\n{n}"))


def _agency_type(agency_id: str) -> list[str]:
    """IANA urn:emergency:service:responder type of an opsroom agency: the 112 answering points are PSAPs."""
    return ["psap"] if agency_id.startswith("it.nue.") else ["police"]


def encode(env: envelope_pb2.Envelope) -> bytes:
    """The EIDO 1.0 JSON of an envelope with an incident or a hand-over request, valid against the schema."""
    which = env.WhichOneof("payload")
    if which == "incident":
        inc, transferred = env.incident, []
    elif which == "handover_request":
        inc = env.handover_request.incident
        known = {a.agency_id for a in inc.agencies}
        transferred = [r for r in env.recipients if r not in known]
        if not transferred:
            raise DocumentError("recipients", "a hand-over needs the receiving agency among the recipients")
    else:
        raise DocumentError("payload", f"{which or 'no payload'} has no EIDO form; EIDO carries an incident")
    if not inc.id:
        raise DocumentError("incident.id", "is required: it is the EIDO $id")
    own = env.origin.format == FORMAT
    doc = _Encoder(env, inc, transferred, native=not own).document()
    if own:
        doc = _overlay(doc, env.origin.unmapped)
    if not isinstance(doc, dict):  # pragma: no cover - the overlay keeps the root an object
        raise DocumentError("origin.unmapped", "rebuilds no EIDO object")
    check_json(doc, validator())
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


class _Encoder:
    def __init__(
        self, env: envelope_pb2.Envelope, inc: incident_pb2.Incident, transferred: list[str], *, native: bool
    ) -> None:
        self.env, self.inc, self.transferred, self.native = env, inc, transferred, native
        self.agency = env.sender.agency_id
        self.when = _iso(env.sent_at)

    def prologue(self, kind: str, n: int, when: str | None = None) -> dict[str, Any]:
        return {
            "$id": _cid(self.inc.id, kind, n),
            "lastUpdateTimeStamp": when or self.when,
            "updatedByAgencyReference": {"$ref": self.agency},
        }

    def document(self) -> dict[str, Any]:
        env, inc = self.env, self.inc
        issuer = env.origin.sender if env.origin.format == FORMAT and env.origin.sender else self.agency
        doc: dict[str, Any] = {
            "$id": inc.id,
            "lastUpdateTimeStamp": self.when,
            "updatedByAgencyReference": {"$ref": self.agency},
            "eidoVersion": VERSION,
            "issuingElementIdentification": issuer,
        }
        if env.sender.operator_id:
            doc["updatedByAgentReference"] = {"$ref": env.sender.operator_id}
        component = self.incident_component()
        if component is not None:
            doc["incidentComponent"] = component
        self.call(doc)
        persons = [self.person(i, p) for i, p in enumerate(inc.persons)]
        if persons:
            doc.setdefault("personComponent", []).extend(persons)
        if inc.vehicles:
            doc["vehicleComponent"] = [
                {
                    **self.prologue("vehicle", i),
                    "vehicleRelationshipType": [v.relationship or "InvolvedVehicle"],
                    "vehicleRelationshipTimeStamp": self.when,
                }
                for i, v in enumerate(inc.vehicles)
            ]
        if inc.locations:
            doc["locationComponent"] = [
                {
                    **self.prologue("location", i),
                    "locationTypeDescriptionRegistryText": loc.type or "CurrentIncident",
                    "locationByValue": _pidf(loc),
                }
                for i, loc in enumerate(inc.locations)
            ]
        if inc.notes:
            doc["notesComponent"] = [self.note(i, n) for i, n in enumerate(inc.notes)]
        if inc.media:
            doc["mediaComponent"] = [self.media(i, m) for i, m in enumerate(inc.media)]
        agencies = [(a.agency_id, a.role) for a in inc.agencies] + [(t, TRANSFERRED_TO) for t in self.transferred]
        doc["agencyComponent"] = [
            {
                "$id": agency_id,
                "lastUpdateTimeStamp": self.when,
                "updatedByAgencyReference": {"$ref": self.agency},
                "agencyRoleDescriptionRegistryText": [role] if role else [],
                "agencyType": _agency_type(agency_id),
            }
            for agency_id, role in agencies
        ]
        return doc

    def incident_component(self) -> dict[str, Any] | None:
        inc = self.inc
        if not (inc.HasField("type") or inc.status or inc.priority or inc.local_reference or inc.description):
            return None
        code = inc.type.eido_code or (codes.eido_for(inc.type.emsi_category) or "")
        if not code:
            raise DocumentError("incident.type.eido_code", "is required: EIDO incidentTypeCommonRegistryText")
        out: dict[str, Any] = {**self.prologue("incident", 0), "incidentTypeCommonRegistryText": code}
        if inc.description:
            out["incidentTypeInternalText"] = inc.description
        if inc.status:
            out["incidentStatusCommonRegistryText"] = [_STATUS_NAME[inc.status]]
        if inc.local_reference:
            out["internalIncidentId"] = inc.local_reference
        if inc.priority:
            out["incidentCommonPriorityNumber"] = _PRIORITY_NUMBER[inc.priority]
        return out

    def call(self, doc: dict[str, Any]) -> None:
        inc = self.inc
        if not inc.HasField("call"):
            return
        call = inc.call
        if call.HasField("started_at"):
            started = _iso(call.started_at)
        elif inc.HasField("occurred_at"):
            started = _iso(inc.occurred_at)
        else:
            started = self.when
        call_doc: dict[str, Any] = {
            **self.prologue("call", 0),
            "standardPrimaryCallType": "emergency",
            "direction": "incoming",
            "callStartTimestamp": started,
            "callStateRegistryText": "callAnswered",
        }
        if call.call_id:
            call_doc["$id"] = call.call_id
        doc["callComponent"] = [call_doc]
        if not call.HasField("caller"):
            return
        person: dict[str, Any] = {**self.prologue("caller", 0), "personIncidentRoleRegistryText": [CALLER]}
        doc["personComponent"] = [person]
        if self.native:
            call_doc["personReference"] = [{"$ref": person["$id"]}]
        if call.caller.phone:
            callback = {**self.prologue("callback", 0), "callBackInformationUri": [f"tel:{call.caller.phone}"]}
            doc["callbackComponent"] = [callback]
            if self.native:
                person["callBackReference"] = {"$ref": callback["$id"]}
                call_doc["callBackReference"] = {"$ref": callback["$id"]}

    def person(self, n: int, person: incident_pb2.Person) -> dict[str, Any]:
        return {**self.prologue("person", n), "personIncidentRoleRegistryText": [person.role] if person.role else []}

    def note(self, n: int, note: incident_pb2.Note) -> dict[str, Any]:
        when = _iso(note.created_at) if note.HasField("created_at") else None
        out: dict[str, Any] = {**self.prologue("note", n, when), "notesActionComments": note.text}
        if note.author_operator_id:
            out["agentReference"] = {"$ref": note.author_operator_id}
        return out

    def media(self, n: int, media: common_pb2.MediaReference) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.prologue("media", n),
            "uri": media.uri,
            "contentType": media.media_type or "application/octet-stream",
        }
        if media.description:
            out["label"] = media.description
        return out


def _overlay(typed: Any, unmapped: Sequence[envelope_pb2.OriginField]) -> Any:
    """Write origin.unmapped back at their paths over the typed document.

    A value at an array index keeps that index; the typed items fill the other indices in order.
    """
    entries: list[tuple[list[str | int], Any]] = []
    for i, item in enumerate(unmapped):
        try:
            entries.append((_tokens(item.path), json.loads(item.value)))
        except (ValueError, RecursionError) as exc:
            raise DocumentError(f"origin.unmapped[{i}]", f"is not a JSON Pointer and a JSON value ({exc})") from None
    return _merge(typed, entries, f"origin.unmapped ({FORMAT})")


def _merge(typed: Any, entries: list[tuple[list[str | int], Any]], where: str) -> Any:
    if not entries:
        return typed
    whole = [(tokens, value) for tokens, value in entries if not tokens]
    if whole:
        return whole[-1][1]
    index_keys = isinstance(entries[0][0][0], int)
    if any(isinstance(tokens[0], int) != index_keys for tokens, _ in entries):
        raise DocumentError(where, "mixes array indices and object keys at one path")
    groups: dict[str | int, list[tuple[list[str | int], Any]]] = {}
    for tokens, value in entries:
        groups.setdefault(tokens[0], []).append((tokens[1:], value))
    if not index_keys:
        out = dict(typed) if isinstance(typed, Mapping) else {}
        for key, sub in groups.items():
            out[str(key)] = _merge(out.get(str(key)), sub, where)
        return out
    return _merge_list(typed, groups, where)


def _merge_list(typed: Any, groups: dict[str | int, list[tuple[list[str | int], Any]]], where: str) -> list[Any]:
    items = list(typed) if isinstance(typed, list) else []
    fixed = {int(k): sub for k, sub in groups.items() if any(not t for t, _ in sub)}
    size = len(items) + len(fixed)
    if groups and max(int(k) for k in groups) >= size + 1_000:
        raise DocumentError(where, "has an array index far beyond the array")
    result: list[Any] = []
    typed_iter = iter(items)
    position = 0
    while position < size or position <= max(int(k) for k in groups):
        if position in fixed:
            result.append(None)
        else:
            result.append(next(typed_iter, None))
        position += 1
    for key, sub in groups.items():
        result[int(key)] = _merge(result[int(key)], sub, where)
    return [item for item in result if item is not None]
