"""EMSI codec (pure): CEN CWA 15931 / ISO/TR 22351 "TSO" as the French Hub Santé publishes it, JSON and XML.

Owns the mapping both ways between an EMSI document (the ANS profile: adapters/data/emsi/
EMSI.schema.json and EMSI.xsd, namespace urn:emergency:eda:1.9:emsi) and an opsroom Envelope.
A document travels bare or inside EDXL-DE (adapters.edxl). In JSON it is {"emsi": {...}} as
the Hub Santé examples write it (a bare {"CONTEXT": ..., "EVENT": ...} object is decoded too;
encode always writes the {"emsi": ...} form); in XML its root is {urn:emergency:eda:1.9:emsi}emsi.
`decode` detects the syntax; `encode(env, syntax="json"|"xml")` writes one and validates it
against the schema of that syntax before returning.

How a document is read
----------------------
Both syntaxes are brought to one tree (the JSON shape; the schema says which elements repeat),
whose leaves are addressed by paths such as "EVENT/EGEO[0]/POSITION/COORD[0]/LAT" (an index on
every repeating element, 0-based). The typed fields below are read from the tree; then the
encoder's rendering of those typed fields is compared with the document, and every leaf it
would not reproduce exactly goes to `origin.unmapped` (path, text), in document order. Encode
renders the typed fields and lays `origin.unmapped` over them (an unmapped value wins at its
path), so encode(decode(x)) rebuilds x leaf for leaf. A path starting with "!" records an
element the typed fields would imply but the document lacks; encode leaves it out. Consequence:
a connector that changes a typed field of a decoded envelope must drop the unmapped entry at
the same path, or the document's old value is written back.

The message kind comes from the missions (the ANS convention of MISSION.NAME):
- a MISSION named "#REPONSE_DEMANDE_CONCOURS#<code>#" (answer to a request for assistance,
  RDC): KIND_RESPONSE with `assistance_response`;
- else a MISSION named "#DEMANDE_CONCOURS#..." (any case; a request for assistance, DC):
  KIND_REQUEST with `assistance_request` (KIND_CANCEL when CONTEXT.MSGTYPE is CANCEL);
- else CONTEXT.MSGTYPE: ALERT -> KIND_REPORT, UPDATE -> KIND_UPDATE, CANCEL -> KIND_CANCEL
  (payload `incident`; an UPDATE whose EVENT.STATUS is COM carries `closure` instead), ACK ->
  KIND_ACK and ERROR -> KIND_ERROR (payload `acknowledgement`: code "RECEIVED" or "ERROR",
  description = CONTEXT.FREETEXT). REQUEST and RESPONSE are written with MSGTYPE UPDATE, as
  the Hub Santé examples are.

CONTEXT (every kind)
- ID -> origin.identifier; distribution_id = document.distribution_id(FORMAT, ORIGIN.ORG_ID, ID).
  Encode writes origin.identifier when origin.format is "emsi-1.0", else the distribution id.
- ORIGIN.ORG_ID -> origin.sender (encode: origin.sender, else sender.agency_id). The envelope's
  sender.agency_id is the connector's (Context.agency_id), never the document's.
- ORIGIN.USER_ID -> sender.operator_id when it is a staff id (broker.ids.LOCAL_ID_RE).
- MODE ACTUAL/EXERCS/SYSTEM/TEST -> status ACTUAL/EXERCISE/SYSTEM/TEST.
- CREATION -> sent_at (written in Europe/Rome time, e.g. "2024-01-09T16:00:00+01:00").
- SECLASS UNCLAS/RESTRC/CONFID -> confidentiality UNCLASSIFIED/RESTRICTED/CONFIDENTIAL;
  UNMARK -> UNCLASSIFIED; SECRET and TOPSRT are refused (the hub carries nothing above
  CONFIDENTIAL); no SECLASS -> UNSPECIFIED (which the hub refuses: set it).
- LINK[i].ID -> references[i]: the envelope among `referenced` whose document id it is (its
  distribution id and sender), else a UUID LINK.ID as the distribution id itself, else
  document.distribution_id(FORMAT, "", ID) with no sender (the hub wants one: pass
  `referenced`). Encode writes a reference as the document id of the `referenced` envelope
  with that distribution id, else the distribution id. LINK_ROLE -> unmapped.
- URGENCY URGENT -> priority HIGH, none -> NORMAL, NOT_URGENT -> LOW (of the incident or the
  request; encode writes IMMEDIATE as URGENT).
- LEVEL, FREETEXT (except in ACK/ERROR), EXTERNAL_INFO, ORIGIN.NAME -> unmapped.

EVENT
- MAIN_EVENT_ID (else ID) -> the shared incident id: incident_ids[0], incident.id,
  assistance_request.incident_id, closure.incident_id. ID -> incident.local_reference when
  MAIN_EVENT_ID is there too.
- ETYPE.CATEGORY[0] -> incident.type.emsi_category, and type.eido_code =
  adapters.codes.eido_for(category) ("" when the map has none). ACTOR ["PPL"] and LOCTYPE
  ["OTH"] are the defaults written with a category; anything else is unmapped.
- STATUS IPR/NST/STOP -> incident.status ACTIVE (NST and STOP kept unmapped), COM -> CLOSED
  (or the closure, see above; closure.closed_at = sent_at, status COMPLETED, remarks =
  EVENT.FREETEXT). Encode: CLOSED -> COM, any other set status -> IPR.
- OCC_DATIME -> incident.occurred_at.
- CASUALTIES[0] -> incident.involved_count = TRIAGERED + TRIAGEYELLOW + TRIAGEGREEN +
  TRIAGEBLACK + MISSING (decode only: the breakdown stays unmapped, and an involved_count
  without it is not written).
- EGEO[0].POSITION.COORD[0] LAT/LONG (COORDSYS absent or EPSG-4326) -> the location point
  (incident.locations[0] of type CurrentIncident, or assistance_request.location).
- FREETEXT -> incident.description (personal data).
- NAME, SOURCE, SCALE, CERTAINTY, DECL/OBS_DATIME, RISK_ASSESMENT, REFERENCE, EVAC, the rest
  of EGEO (ADDRESS, HEIGHT, WEATHER...), CAUSE -> unmapped.

Request for assistance (DC): the DC mission's FREETEXT -> remarks, START_TIME -> needed_by;
each RESOURCE -> a ResourceNeed (RTYPE.RCLASS[0] -> resource_type by the table
adapters/data/emsi-resource-types.csv, longest listed prefix; QUANTITY -> quantity, default
1). A DC without RESOURCE asks for one resource of the type its MISSION.TYPE maps to in the
same table. Encode writes the DC mission (TYPE from the table, default FSTT/TA; ID the
CONTEXT.ID; NAME "#DEMANDE_CONCOURS#AUTRE#AUTRE#"; STATUS NST) and one RESOURCE per need (ID
"<CONTEXT.ID>-<n>", NAME the EIDO type, STATUS VIRTUAL), except when the one need is what the
mission type implies. The request's (answer's) mission is written where origin.unmapped names
it, else at the first MISSION index without a NAME there.

Answer (RDC): the RDC mission's NAME code ACCEPTE/DIFFEREE -> outcome ACCEPTED, PARTIELLE/
DIVERGENTE -> PARTIALLY_ACCEPTED, REFUS -> REJECTED (its FREETEXT -> cause); every RESOURCE ->
a CommittedResource (ID, NAME, RCLASS[0] -> resource_type; STATUS RESRVD written by default);
responded_at = sent_at. Encode writes the RDC mission with ID the CONTEXT.ID and STATUS NST
(ABO when rejected); with the DC among `referenced`, it copies the DC mission's TYPE, names that
mission in MAIN_MISSION_ID, and LINK names the DC's CONTEXT.ID.

Everything else (other missions, the OPG operations, resources of an update) -> unmapped.

Bounds: besides document.Limits, an EMSI document has at most MAX_NODES elements (XML) or
values (JSON), so that its schema check stays near a second; a larger one is DocumentTooLarge.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from google.protobuf.timestamp_pb2 import Timestamp
from lxml import etree
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2
from opsroom.request.v1 import request_pb2

from adapters import codes, document, edxl, schemas
from adapters.document import Context, DocumentError, DocumentTooLarge, UnsupportedDocument
from broker import ids

FORMAT = "emsi-1.0"
NAMESPACE = "urn:emergency:eda:1.9:emsi"
JSON_SCHEMA = "emsi/EMSI.schema.json"
XSD = "emsi/EMSI.xsd"
RESOURCE_TYPES = "emsi-resource-types.csv"

Syntax = Literal["json", "xml"]

_ROME = ZoneInfo("Europe/Rome")
_DC_RE = re.compile(r"#DEMANDE_CONCOURS#", re.IGNORECASE)
_RDC_RE = re.compile(r"#REPONSE_DEMANDE_CONCOURS#([^#]*)#", re.IGNORECASE)
_SEGMENT_RE = re.compile(r"([A-Z][A-Z_]*)(?:\[(\d{1,6})\])?")

_MODE = {
    "ACTUAL": common_pb2.STATUS_ACTUAL,
    "EXERCS": common_pb2.STATUS_EXERCISE,
    "SYSTEM": common_pb2.STATUS_SYSTEM,
    "TEST": common_pb2.STATUS_TEST,
}
_MODE_OUT = {v: k for k, v in _MODE.items()}
_MSGTYPE = {
    "ALERT": common_pb2.KIND_REPORT,
    "UPDATE": common_pb2.KIND_UPDATE,
    "CANCEL": common_pb2.KIND_CANCEL,
    "ACK": common_pb2.KIND_ACK,
    "ERROR": common_pb2.KIND_ERROR,
}
_MSGTYPE_OUT = {v: k for k, v in _MSGTYPE.items()} | {
    common_pb2.KIND_REQUEST: "UPDATE",
    common_pb2.KIND_RESPONSE: "UPDATE",
}
_SECLASS = {
    "UNCLAS": common_pb2.CONFIDENTIALITY_UNCLASSIFIED,
    "UNMARK": common_pb2.CONFIDENTIALITY_UNCLASSIFIED,
    "RESTRC": common_pb2.CONFIDENTIALITY_RESTRICTED,
    "CONFID": common_pb2.CONFIDENTIALITY_CONFIDENTIAL,
}
_SECLASS_OUT = {
    common_pb2.CONFIDENTIALITY_UNCLASSIFIED: "UNCLAS",
    common_pb2.CONFIDENTIALITY_RESTRICTED: "RESTRC",
    common_pb2.CONFIDENTIALITY_CONFIDENTIAL: "CONFID",
}
_URGENCY = {"URGENT": common_pb2.PRIORITY_HIGH, "NOT_URGENT": common_pb2.PRIORITY_LOW}
_URGENCY_OUT = {
    common_pb2.PRIORITY_IMMEDIATE: "URGENT",
    common_pb2.PRIORITY_HIGH: "URGENT",
    common_pb2.PRIORITY_LOW: "NOT_URGENT",
}
_OUTCOME = {
    "ACCEPTE": common_pb2.OUTCOME_ACCEPTED,
    "DIFFEREE": common_pb2.OUTCOME_ACCEPTED,
    "PARTIELLE": common_pb2.OUTCOME_PARTIALLY_ACCEPTED,
    "DIVERGENTE": common_pb2.OUTCOME_PARTIALLY_ACCEPTED,
    "REFUS": common_pb2.OUTCOME_REJECTED,
}
_OUTCOME_OUT = {
    common_pb2.OUTCOME_ACCEPTED: "ACCEPTE",
    common_pb2.OUTCOME_PARTIALLY_ACCEPTED: "PARTIELLE",
    common_pb2.OUTCOME_REJECTED: "REFUS",
}
_CASUALTY_COUNTS = ("TRIAGERED", "TRIAGEYELLOW", "TRIAGEGREEN", "TRIAGEBLACK", "MISSING")
_DEFAULT_ACTOR = "PPL"
_DEFAULT_LOCTYPE = "OTH"
_DEFAULT_MISSION_TYPE = "FSTT/TA"
_DC_NAME = "#DEMANDE_CONCOURS#AUTRE#AUTRE#"
_INCIDENT_LOCATION = "CurrentIncident"
_WGS84 = ("EPSG-4326", "EPSG:4326")
_ACK_CODES = {common_pb2.KIND_ACK: "RECEIVED", common_pb2.KIND_ERROR: "ERROR"}
# Elements (XML) or objects, arrays and values (JSON) an EMSI document may have: 10,000 is a
# polygon of some 2,400 vertices. jsonschema spends some 50 us on each, and the mapping a few us,
# so the bound keeps a decode near a second; a larger document is refused as DocumentTooLarge.
MAX_NODES = 10_000


# -- the schema's shape ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    """One property of an EMSI object: repeated or not, an object (its definition) or a scalar."""

    array: bool
    ref: str | None
    scalar: str


@cache
def _model() -> Mapping[str, Mapping[str, _Field]]:
    """Definition name ("" for the document) -> its properties in schema (= XSD sequence) order."""
    schema = json.loads((schemas.DATA / JSON_SCHEMA).read_text(encoding="utf-8"))

    def props(node: Mapping[str, Any]) -> dict[str, _Field]:
        out: dict[str, _Field] = {}
        for name, spec in node["properties"].items():
            array = spec.get("type") == "array"
            item = spec["items"] if array else spec
            ref = item.get("$ref", "").rsplit("/", 1)[-1] or None
            out[name] = _Field(array=array, ref=ref, scalar=str(item.get("type", "object")))
        return out

    model = {name: props(spec) for name, spec in schema["definitions"].items()}
    model[""] = props(schema)
    return model


@cache
def _validator() -> Any:
    return schemas.json_schema(JSON_SCHEMA)


# -- the resource-type table ----------------------------------------------------------------


@cache
def _resource_rows() -> tuple[tuple[str, str, str, bool], ...]:
    with (schemas.DATA / RESOURCE_TYPES).open(encoding="utf-8", newline="") as handle:
        return tuple(
            (row["emsi_code"], row["list"], row["eido_resource_type"], row["preferred"] == "yes")
            for row in csv.DictReader(handle)
        )


def eido_resource_type(emsi_code: str, listed: str = "RCLASS") -> str:
    """The EIDO resource type of an EMSI RCLASS (longest listed prefix) or MISSION.TYPE; "" if none."""
    table = {code: eido for code, lst, eido, _ in _resource_rows() if lst == listed}
    parts = emsi_code.split("/")
    for end in range(len(parts), 0, -1):
        found = table.get("/".join(parts[:end]))
        if found:
            return found
    return ""


def emsi_resource_code(eido_type: str, listed: str = "RCLASS") -> str | None:
    """The EMSI RCLASS or MISSION.TYPE written for an EIDO resource type (the preferred row), or None."""
    rows = [(code, pref) for code, lst, eido, pref in _resource_rows() if lst == listed and eido == eido_type]
    rows.sort(key=lambda row: not row[1])
    return rows[0][0] if rows else None


# -- values ---------------------------------------------------------------------------------


def _time_text(ts: Timestamp) -> str:
    return datetime.fromtimestamp(ts.seconds, _ROME).isoformat(timespec="seconds")


def _parse_time(path: str, text: str) -> Timestamp:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DocumentError(path, f"{text[:40]!r} is not a date and time (YYYY-MM-DDThh:mm:ss+hh:mm)") from None
    if parsed.tzinfo is None:
        raise DocumentError(path, f"{text[:40]!r} has no UTC offset")
    ts = Timestamp()
    try:
        ts.FromDatetime(parsed)
    except (ValueError, OverflowError):
        raise DocumentError(path, f"{text[:40]!r} is out of range") from None
    return ts


def _number_text(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(value)


def _parse_float(path: str, text: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DocumentError(path, f"{text[:40]!r} is not a number") from None
    if not low <= value <= high:
        raise DocumentError(path, f"{value} is outside {low}..{high}")
    return value


def _parse_count(path: str, text: str, low: int = 0) -> int:
    try:
        value = float(text)
    except ValueError:
        raise DocumentError(path, f"{text[:40]!r} is not a number") from None
    if value != int(value) or not low <= value <= 2**31:
        raise DocumentError(path, f"{text[:40]!r} is not a whole number of at least {low}")
    return int(value)


def _leaf(value: Any) -> str:
    """A JSON scalar as the text an XML document would carry."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _number_text(value)
    return str(value)


# -- tree <-> leaves ------------------------------------------------------------------------


def _from_xml(element: etree._Element, definition: str) -> dict[str, Any]:
    """The JSON-shaped tree of a schema-valid EMSI XML element."""
    fields = _model()[definition]
    out: dict[str, Any] = {}
    for child in element:
        if not isinstance(child.tag, str):
            continue
        name = child.tag.rpartition("}")[2]
        spec = fields[name]
        value: Any = _from_xml(child, spec.ref) if spec.ref else (child.text or "")
        if spec.array:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    return out


def _flatten(tree: Mapping[str, Any], definition: str = "", prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path, text) of every leaf, in document order."""
    fields = _model()[definition]
    for name, value in tree.items():
        spec = fields.get(name)
        if spec is None:  # pragma: no cover - the schema forbids other properties
            continue
        items = list(enumerate(value)) if spec.array and isinstance(value, list) else [(None, value)]
        for index, item in items:
            path = f"{prefix}{name}" if index is None else f"{prefix}{name}[{index}]"
            if spec.ref and isinstance(item, Mapping):
                yield from _flatten(item, spec.ref, path + "/")
            else:
                yield path, _leaf(item)


def _parse_path(path: str) -> list[tuple[str, int | None, _Field]]:
    """The steps of a leaf path, checked against the schema; DocumentError naming the path if not one."""
    steps: list[tuple[str, int | None, _Field]] = []
    definition: str | None = ""
    for segment in path.split("/"):
        match = _SEGMENT_RE.fullmatch(segment)
        fields = _model()[definition] if definition is not None else {}
        spec = fields.get(match.group(1)) if match else None
        if match is None or spec is None or spec.array != (match.group(2) is not None):
            raise DocumentError("origin.unmapped", f"{path[:200]!r} is not the path of an EMSI element")
        index = int(match.group(2)) if match.group(2) is not None else None
        steps.append((match.group(1), index, spec))
        definition = spec.ref
    if steps[-1][2].ref is not None:
        raise DocumentError("origin.unmapped", f"{path[:200]!r} names an element that has elements, not a value")
    return steps


def _scalar(spec: _Field, text: str, path: str, syntax: Syntax) -> Any:
    if syntax == "xml" or spec.scalar not in ("integer", "number"):
        return text
    try:
        if re.fullmatch(r"-?\d{1,30}", text.strip()):
            return int(text)
        if spec.scalar == "number":
            value = float(text)
            if math.isfinite(value):
                return value
    except ValueError:
        pass
    raise DocumentError(path, f"{text[:40]!r} is not a {spec.scalar}")


def _unflatten(leaves: Iterable[tuple[str, str]], syntax: Syntax) -> dict[str, Any]:
    """The JSON-shaped tree of (path, text) leaves; arrays must have no gap."""
    root: dict[str, Any] = {}
    for path, text in leaves:
        steps = _parse_path(path)
        node: dict[str, Any] = root
        for depth, (name, index, spec) in enumerate(steps):
            last = depth == len(steps) - 1
            value = _scalar(spec, text, path, syntax) if last else None
            if index is None:
                if last:
                    node[name] = value
                else:
                    node = node.setdefault(name, {})
                continue
            holder = node.setdefault(name, {})  # index -> item while building
            if last:
                holder[index] = value
            else:
                node = holder.setdefault(index, {})
    return _arrays(root, "")


def _arrays(node: dict[str, Any], definition: str) -> dict[str, Any]:
    """Index dicts -> lists, properties in schema order."""
    fields = _model()[definition]
    out: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in node:
            continue
        value = node[name]
        if spec.array:
            indexes = sorted(value)
            if indexes != list(range(len(indexes))):
                raise DocumentError("origin.unmapped", f"{name} items {indexes[:10]} leave a gap; number them from 0")
            items = [value[i] for i in indexes]
            out[name] = [_arrays(item, spec.ref) for item in items] if spec.ref else items
        else:
            out[name] = _arrays(value, spec.ref) if spec.ref else value
    return out


def _to_xml(tree: Mapping[str, Any], parent: etree._Element) -> None:
    for name, value in tree.items():
        for item in value if isinstance(value, list) else [value]:
            child = etree.SubElement(parent, f"{{{NAMESPACE}}}{name}")
            if isinstance(item, Mapping):
                _to_xml(item, child)
            else:
                child.text = item


# -- rendering: the typed fields as leaves --------------------------------------------------


def document_id(env: envelope_pb2.Envelope) -> str:
    """The CONTEXT.ID an envelope is written with: its EMSI id if it came from EMSI, else its distribution id."""
    if env.origin.format == FORMAT and env.origin.identifier:
        return env.origin.identifier
    return env.distribution_id


def _mission_index(base: Mapping[str, str], pattern: re.Pattern[str]) -> int | None:
    for path, value in base.items():
        if path.startswith("MISSION[") and path.endswith("]/NAME") and pattern.match(value):
            return int(path[len("MISSION[") : -len("]/NAME")])
    return None


def _mission_slot(base: Mapping[str, str], pattern: re.Pattern[str]) -> int:
    """Where the request's (or answer's) mission is written: where base names it, else the first free place.

    Every other mission keeps its NAME (required) in base, so the first index without one is
    the place of the mission whose NAME the typed fields render.
    """
    found = _mission_index(base, pattern)
    if found is not None:
        return found
    index = 0
    while f"MISSION[{index}]/NAME" in base:
        index += 1
    return index


def _is_rdc(base: Mapping[str, str]) -> int | None:
    return _mission_index(base, _RDC_RE)


def _is_dc(base: Mapping[str, str]) -> int | None:
    return _mission_index(base, _DC_RE)


def _base(env: envelope_pb2.Envelope) -> dict[str, str]:
    """The unmapped leaves of an envelope that came from EMSI ("!" paths excluded)."""
    if env.origin.format != FORMAT:
        return {}
    return {f.path: f.value for f in env.origin.unmapped if not f.path.startswith("!")}


def _leaves_of(env: envelope_pb2.Envelope, referenced: Sequence[envelope_pb2.Envelope]) -> dict[str, str]:
    """Every leaf encode writes: the rendering of the typed fields with origin.unmapped laid over it."""
    base = _base(env)
    out = _render(env, base, referenced)
    if env.origin.format == FORMAT:
        for item in env.origin.unmapped:
            if item.path.startswith("!"):
                out.pop(item.path[1:], None)
            else:
                out[item.path] = item.value
    return out


def _render(
    env: envelope_pb2.Envelope, base: Mapping[str, str], referenced: Sequence[envelope_pb2.Envelope]
) -> dict[str, str]:
    """The leaves the typed fields stand for (base: the leaves that will be laid over them)."""
    out: dict[str, str] = {}
    by_id = {ref.distribution_id: ref for ref in referenced}
    out["CONTEXT/ID"] = document_id(env)
    if env.status in _MODE_OUT:
        out["CONTEXT/MODE"] = _MODE_OUT[env.status]
    payload = env.WhichOneof("payload")
    if env.kind in _MSGTYPE_OUT:
        out["CONTEXT/MSGTYPE"] = _MSGTYPE_OUT[env.kind]
    if env.HasField("sent_at"):
        out["CONTEXT/CREATION"] = _time_text(env.sent_at)
    for i, ref in enumerate(env.references):
        known = by_id.get(ref.distribution_id)
        out[f"CONTEXT/LINK[{i}]/ID"] = document_id(known) if known is not None else ref.distribution_id
    if env.confidentiality in _SECLASS_OUT:
        out["CONTEXT/SECLASS"] = _SECLASS_OUT[env.confidentiality]
    if payload == "acknowledgement" and env.acknowledgement.description:
        out["CONTEXT/FREETEXT"] = env.acknowledgement.description
    sender = env.origin.sender if env.origin.format == FORMAT else env.sender.agency_id
    if sender:
        out["CONTEXT/ORIGIN/ORG_ID"] = sender
    if env.sender.operator_id:
        out["CONTEXT/ORIGIN/USER_ID"] = env.sender.operator_id
    priority = (
        env.incident.priority
        if payload == "incident"
        else env.assistance_request.priority
        if payload == "assistance_request"
        else None
    )
    if priority in _URGENCY_OUT:
        out["CONTEXT/URGENCY"] = _URGENCY_OUT[priority]
    _render_payload(env, base, [by_id[r.distribution_id] for r in env.references if r.distribution_id in by_id], out)
    return out


def _render_payload(
    env: envelope_pb2.Envelope,
    base: Mapping[str, str],
    requests: Sequence[envelope_pb2.Envelope],
    out: dict[str, str],
) -> None:
    """The EVENT, MISSION and RESOURCE leaves of the payload."""
    payload = env.WhichOneof("payload")
    if payload == "incident":
        _render_incident(env.incident, out)
    elif payload == "closure":
        out["EVENT/ID"] = env.closure.incident_id
        out["EVENT/STATUS"] = "COM"
        if env.closure.remarks:
            out["EVENT/FREETEXT"] = env.closure.remarks
    elif payload == "assistance_request":
        _render_request(env, base, out)
    elif payload == "assistance_response":
        _render_response(env, base, out, requests)
    else:
        out["EVENT/ID"] = env.incident_ids[0] if env.incident_ids else env.distribution_id


def _render_point(point: common_pb2.GeoPoint, prefix: str, out: dict[str, str]) -> None:
    out[f"{prefix}/COORD[0]/LAT"] = _number_text(point.latitude)
    out[f"{prefix}/COORD[0]/LONG"] = _number_text(point.longitude)


def _render_incident(inc: incident_pb2.Incident, out: dict[str, str]) -> None:
    out["EVENT/ID"] = inc.local_reference or inc.id
    if inc.local_reference:
        out["EVENT/MAIN_EVENT_ID"] = inc.id
    category = inc.type.emsi_category or codes.emsi_for(inc.type.eido_code) or ""
    if category:
        out["EVENT/ETYPE/CATEGORY[0]"] = category
        out["EVENT/ETYPE/ACTOR[0]"] = _DEFAULT_ACTOR
        out["EVENT/ETYPE/LOCTYPE[0]"] = _DEFAULT_LOCTYPE
    if inc.HasField("occurred_at"):
        out["EVENT/OCC_DATIME"] = _time_text(inc.occurred_at)
    if inc.status == incident_pb2.INCIDENT_STATUS_CLOSED:
        out["EVENT/STATUS"] = "COM"
    elif inc.status != incident_pb2.INCIDENT_STATUS_UNSPECIFIED:
        out["EVENT/STATUS"] = "IPR"
    points = [loc for loc in inc.locations if loc.HasField("point")]
    points.sort(key=lambda loc: loc.type != _INCIDENT_LOCATION)
    if points:
        _render_point(points[0].point, "EVENT/EGEO[0]/POSITION", out)
    if inc.description:
        out["EVENT/FREETEXT"] = inc.description


def _render_rclass(eido_type: str, at: str, base: Mapping[str, str], out: dict[str, str], field: str) -> None:
    """RTYPE.RCLASS[0] of a resource; the document's own class (in base) stands when the table has none."""
    rclass = emsi_resource_code(eido_type)
    if rclass is not None:
        out[f"{at}/RTYPE/RCLASS[0]"] = rclass
    elif f"{at}/RTYPE/RCLASS[0]" not in base:
        raise DocumentError(field, f"{eido_type!r} has no EMSI resource class in adapters/data/{RESOURCE_TYPES}")


def _render_request(env: envelope_pb2.Envelope, base: Mapping[str, str], out: dict[str, str]) -> None:
    req = env.assistance_request
    out["EVENT/ID"] = req.incident_id
    if req.HasField("location") and req.location.HasField("point"):
        _render_point(req.location.point, "EVENT/EGEO[0]/POSITION", out)
    at = f"MISSION[{_mission_slot(base, _DC_RE)}]"
    first = req.resources[0].resource_type if req.resources else ""
    mission_type = emsi_resource_code(first, "MISSION.TYPE") or _DEFAULT_MISSION_TYPE
    out[f"{at}/TYPE"] = mission_type
    if req.remarks:
        out[f"{at}/FREETEXT"] = req.remarks
    out[f"{at}/ID"] = document_id(env)
    out[f"{at}/NAME"] = _DC_NAME
    out[f"{at}/STATUS"] = "NST"
    if req.HasField("needed_by"):
        out[f"{at}/START_TIME"] = _time_text(req.needed_by)
    written_type = base.get(f"{at}/TYPE", mission_type)
    implied = eido_resource_type(written_type, "MISSION.TYPE")
    needs = [(n.resource_type, n.quantity) for n in req.resources]
    if needs == [(implied, 1)] and not any(p.startswith("RESOURCE[") for p in base):
        return
    for i, need in enumerate(req.resources):
        at = f"RESOURCE[{i}]"
        _render_rclass(need.resource_type, at, base, out, f"assistance_request.resources[{i}].resource_type")
        out[f"{at}/ID"] = f"{document_id(env)}-{i + 1}"
        out[f"{at}/NAME"] = need.resource_type
        if need.quantity != 1:
            out[f"{at}/QUANTITY"] = str(need.quantity)
        out[f"{at}/STATUS"] = "VIRTUAL"


def _render_response(
    env: envelope_pb2.Envelope,
    base: Mapping[str, str],
    out: dict[str, str],
    requests: Sequence[envelope_pb2.Envelope],
) -> None:
    resp = env.assistance_response
    request = requests[0] if requests else None
    asked = _leaves_of(request, ()) if request is not None else {}
    asked_at = _is_dc(asked)
    if env.incident_ids:
        out["EVENT/ID"] = env.incident_ids[0]
    elif request is not None and request.incident_ids:
        out["EVENT/ID"] = request.incident_ids[0]
    else:
        out["EVENT/ID"] = env.distribution_id
    at = f"MISSION[{_mission_slot(base, _RDC_RE)}]"
    out[f"{at}/TYPE"] = asked.get(f"MISSION[{asked_at}]/TYPE", _DEFAULT_MISSION_TYPE)
    if resp.outcome == common_pb2.OUTCOME_REJECTED and resp.cause:
        out[f"{at}/FREETEXT"] = resp.cause
    out[f"{at}/ID"] = document_id(env)
    out[f"{at}/NAME"] = f"#REPONSE_DEMANDE_CONCOURS#{_OUTCOME_OUT.get(resp.outcome, 'ACCEPTE')}#"
    out[f"{at}/STATUS"] = "ABO" if resp.outcome == common_pb2.OUTCOME_REJECTED else "NST"
    if asked_at is not None and f"MISSION[{asked_at}]/ID" in asked:
        out[f"{at}/MAIN_MISSION_ID"] = asked[f"MISSION[{asked_at}]/ID"]
    for i, res in enumerate(resp.resources):
        at = f"RESOURCE[{i}]"
        _render_rclass(res.resource_type, at, base, out, f"assistance_response.resources[{i}].resource_type")
        out[f"{at}/ID"] = res.resource_id
        out[f"{at}/NAME"] = res.resource_name
        out[f"{at}/STATUS"] = "RESRVD"


# -- decode ---------------------------------------------------------------------------------


def _check_xml(root: etree._Element) -> None:
    """schemas.check_xml, the failing element named by its path of local names."""
    try:
        schemas.check_xml(root, XSD)
    except DocumentError as exc:
        try:
            found: Any = root.getroottree().xpath(exc.path)
        except etree.XPathError:
            found = None
        elements = [item for item in found or () if isinstance(getattr(item, "tag", None), str)]
        if isinstance(found, list) and elements:
            raise DocumentError(document.xml_path(elements[0]), exc.reason) from None
        raise


def _json_nodes(doc: Any, limit: int) -> int:
    """How many objects, arrays and values a JSON document has (counting stops past limit)."""
    count, stack = 0, [doc]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


def _parse(data: bytes, ctx: Context) -> tuple[str, dict[str, Any]]:
    """The document's own path and its JSON-shaped tree, after the schema check."""
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head == b"<":
        root = document.parse_xml(data, ctx.limits)
        if edxl.is_wrapper(root):
            root = edxl.unwrap_xml(root)
        limit = min(MAX_NODES, ctx.limits.max_elements)
        if any(True for _ in itertools.islice(root.iter(), limit, None)):
            raise DocumentTooLarge("/", f"has more than {limit} elements; EMSI documents are bounded to {MAX_NODES}")
        qname = etree.QName(root)
        if (qname.namespace, qname.localname) != (NAMESPACE, "emsi"):
            found = f"{{{qname.namespace}}}{qname.localname}" if qname.namespace else qname.localname
            raise UnsupportedDocument(f"/{qname.localname}", f"root element {found} is not EMSI ({{{NAMESPACE}}}emsi)")
        _check_xml(root)
        return "/emsi", _from_xml(root, "")
    doc = document.load_json(data, ctx.limits)
    limit = min(MAX_NODES, ctx.limits.max_elements)
    if _json_nodes(doc, limit) > limit:
        raise DocumentTooLarge("/", f"has more than {limit} JSON values; EMSI documents are bounded to {MAX_NODES}")
    where, message = edxl.unwrap_json(doc)
    if isinstance(message, dict) and list(message) == ["emsi"] and isinstance(message["emsi"], dict):
        where, inner = f"{where}/emsi", message["emsi"]
    elif isinstance(message, dict) and "CONTEXT" in message:
        inner = message
    else:
        keys = sorted(message)[:10] if isinstance(message, dict) else type(message).__name__
        raise UnsupportedDocument(
            where or "/", f'has {keys}; an EMSI document is {{"emsi": {{"CONTEXT": ..., "EVENT": ...}}}}'
        )
    try:
        schemas.check_json(inner, _validator())
    except DocumentError as exc:
        raise DocumentError(f"{where}{exc.path.rstrip('/')}", exc.reason) from None
    return where, inner


def decode(data: bytes, ctx: Context, *, referenced: Sequence[envelope_pb2.Envelope] = ()) -> envelope_pb2.Envelope:
    """The envelope of an EMSI document (JSON or XML, bare or in EDXL-DE); DocumentError if it is not one.

    referenced: envelopes the document's LINKs may name (by their EMSI CONTEXT.ID or
    distribution id), so that its references carry their distribution ids and senders.
    """
    where, tree = _parse(data, ctx)
    leaves = dict(_flatten(tree))
    env = _Reader(leaves, ctx, referenced, where).envelope()
    rendered = _render(env, leaves, referenced)
    kept = {path for path, value in leaves.items() if rendered.get(path) != value}
    absent = {path for path in rendered if path not in leaves}
    for _ in range(4):  # what the typed fields render may depend on what is kept: settle it
        _set_unmapped(env, leaves, kept, absent)
        rebuilt = _leaves_of(env, referenced)
        missed = {path for path, value in leaves.items() if rebuilt.get(path) != value} - kept
        extra = {path for path in rebuilt if path not in leaves} - absent
        if not missed and not extra:
            document.classify(env.origin, ((r"(^|/)USER_ID$", "staff"),))
            return env
        kept |= missed
        absent |= extra
    raise DocumentError(where, "cannot be kept whole; please report this document")  # pragma: no cover


def _set_unmapped(env: envelope_pb2.Envelope, leaves: Mapping[str, str], kept: set[str], absent: set[str]) -> None:
    del env.origin.unmapped[:]
    env.origin.unmapped.extend(
        envelope_pb2.OriginField(path=path, value=value) for path, value in leaves.items() if path in kept
    )
    env.origin.unmapped.extend(envelope_pb2.OriginField(path=f"!{path}") for path in sorted(absent))


class _Reader:
    """Reads the typed fields of one document's leaves."""

    def __init__(
        self, leaves: Mapping[str, str], ctx: Context, referenced: Sequence[envelope_pb2.Envelope], where: str
    ) -> None:
        self.leaves = leaves
        self.ctx = ctx
        self.referenced = referenced
        self.where = where

    def path(self, path: str) -> str:
        return f"{self.where}/{path}"

    def time(self, path: str) -> Timestamp | None:
        text = self.leaves.get(path)
        return None if text is None else _parse_time(self.path(path), text)

    def envelope(self) -> envelope_pb2.Envelope:
        get = self.leaves.get
        identifier = get("CONTEXT/ID", "")
        org = get("CONTEXT/ORIGIN/ORG_ID", "")
        env = envelope_pb2.Envelope(
            distribution_id=document.distribution_id(FORMAT, org, identifier),
            sender=common_pb2.Sender(agency_id=self.ctx.agency_id),
            recipients=self.ctx.recipients,
            legal_basis=self.ctx.legal_basis(),
            origin=envelope_pb2.Origin(format=FORMAT, identifier=identifier, sender=org),
        )
        user = get("CONTEXT/ORIGIN/USER_ID", "")
        if ids.LOCAL_ID_RE.fullmatch(user):
            env.sender.operator_id = user
        env.status = _MODE[get("CONTEXT/MODE", "ACTUAL")]
        sent = self.time("CONTEXT/CREATION")
        if sent is not None:
            env.sent_at.CopyFrom(sent)
        seclass = get("CONTEXT/SECLASS")
        if seclass in ("SECRET", "TOPSRT"):
            raise DocumentError(
                self.path("CONTEXT/SECLASS"), f"{seclass}: the hub carries nothing classified above CONFIDENTIAL"
            )
        if seclass is not None:
            env.confidentiality = _SECLASS[seclass]
        i = 0
        while f"CONTEXT/LINK[{i}]/ID" in self.leaves:
            env.references.append(self.reference(self.leaves[f"CONTEXT/LINK[{i}]/ID"]))
            i += 1
        self.payload(env)
        return env

    def payload(self, env: envelope_pb2.Envelope) -> None:
        """Kind and payload, from the missions and CONTEXT.MSGTYPE."""
        get = self.leaves.get
        sent = env.sent_at if env.HasField("sent_at") else None
        incident_id = get("EVENT/MAIN_EVENT_ID") or get("EVENT/ID", "")
        if incident_id:
            env.incident_ids.append(incident_id)
        priority = _URGENCY.get(get("CONTEXT/URGENCY", ""), common_pb2.PRIORITY_NORMAL)
        msgtype = get("CONTEXT/MSGTYPE", "")
        if _is_rdc(self.leaves) is not None:
            env.kind = common_pb2.KIND_RESPONSE
            self.response(env)
        elif _is_dc(self.leaves) is not None:
            env.kind = common_pb2.KIND_CANCEL if msgtype == "CANCEL" else common_pb2.KIND_REQUEST
            self.request(env, incident_id, priority)
        else:
            env.kind = _MSGTYPE[msgtype]
            if env.kind in _ACK_CODES:
                env.acknowledgement.code = _ACK_CODES[env.kind]
                env.acknowledgement.description = get("CONTEXT/FREETEXT", "")
            elif env.kind == common_pb2.KIND_UPDATE and get("EVENT/STATUS") == "COM":
                env.closure.incident_id = incident_id
                env.closure.status = incident_pb2.COMPLETION_STATUS_COMPLETED
                env.closure.remarks = get("EVENT/FREETEXT", "")
                if sent is not None:
                    env.closure.closed_at.CopyFrom(sent)
            else:
                self.incident(env.incident, incident_id, priority)

    def reference(self, link_id: str) -> common_pb2.Reference:
        for known in self.referenced:
            if link_id in (document_id(known), known.distribution_id):
                return common_pb2.Reference(
                    distribution_id=known.distribution_id, sender_agency_id=known.sender.agency_id
                )
        if ids.is_uuid(link_id):
            return common_pb2.Reference(distribution_id=link_id)
        return common_pb2.Reference(distribution_id=document.distribution_id(FORMAT, "", link_id))

    def point(self, prefix: str) -> common_pb2.GeoPoint | None:
        coordsys = self.leaves.get(f"{prefix}/COORDSYS")
        lat = self.leaves.get(f"{prefix}/COORD[0]/LAT")
        lon = self.leaves.get(f"{prefix}/COORD[0]/LONG")
        if lat is None or lon is None or (coordsys is not None and coordsys not in _WGS84):
            return None
        return common_pb2.GeoPoint(
            latitude=_parse_float(self.path(f"{prefix}/COORD[0]/LAT"), lat, -90, 90),
            longitude=_parse_float(self.path(f"{prefix}/COORD[0]/LONG"), lon, -180, 180),
        )

    def incident(self, inc: incident_pb2.Incident, incident_id: str, priority: int) -> None:
        get = self.leaves.get
        inc.id = incident_id
        if "EVENT/MAIN_EVENT_ID" in self.leaves:
            inc.local_reference = get("EVENT/ID", "")
        category = get("EVENT/ETYPE/CATEGORY[0]")
        if category is not None:
            inc.type.emsi_category = category
            inc.type.eido_code = codes.eido_for(category) or ""
        status = get("EVENT/STATUS")
        if status == "COM":
            inc.status = incident_pb2.INCIDENT_STATUS_CLOSED
        elif status is not None:
            inc.status = incident_pb2.INCIDENT_STATUS_ACTIVE
        inc.priority = priority  # type: ignore[assignment]
        occurred = self.time("EVENT/OCC_DATIME")
        if occurred is not None:
            inc.occurred_at.CopyFrom(occurred)
        point = self.point("EVENT/EGEO[0]/POSITION")
        if point is not None:
            inc.locations.append(common_pb2.Location(type=_INCIDENT_LOCATION, point=point))
        if any(f"EVENT/CASUALTIES[0]/{name}" in self.leaves for name in _CASUALTY_COUNTS):
            inc.involved_count = sum(
                _parse_count(self.path(f"EVENT/CASUALTIES[0]/{name}"), get(f"EVENT/CASUALTIES[0]/{name}", "0"))
                for name in _CASUALTY_COUNTS
            )
        inc.description = get("EVENT/FREETEXT", "")

    def request(self, env: envelope_pb2.Envelope, incident_id: str, priority: int) -> None:
        get = self.leaves.get
        req = env.assistance_request
        req.incident_id = incident_id
        req.priority = priority  # type: ignore[assignment]
        point = self.point("EVENT/EGEO[0]/POSITION")
        if point is not None:
            req.location.CopyFrom(common_pb2.Location(type=_INCIDENT_LOCATION, point=point))
        at = f"MISSION[{_is_dc(self.leaves)}]"
        req.remarks = get(f"{at}/FREETEXT", "")
        needed = self.time(f"{at}/START_TIME")
        if needed is not None:
            req.needed_by.CopyFrom(needed)
        i = 0
        while f"RESOURCE[{i}]/ID" in self.leaves:
            quantity = get(f"RESOURCE[{i}]/QUANTITY")
            req.resources.append(
                request_pb2.ResourceNeed(
                    resource_type=eido_resource_type(get(f"RESOURCE[{i}]/RTYPE/RCLASS[0]", "")),
                    quantity=1 if quantity is None else _parse_count(self.path(f"RESOURCE[{i}]/QUANTITY"), quantity, 1),
                )
            )
            i += 1
        if not req.resources:
            implied = eido_resource_type(get(f"{at}/TYPE", ""), "MISSION.TYPE")
            req.resources.append(request_pb2.ResourceNeed(resource_type=implied, quantity=1))

    def response(self, env: envelope_pb2.Envelope) -> None:
        get = self.leaves.get
        resp = env.assistance_response
        at = f"MISSION[{_is_rdc(self.leaves)}]"
        name = get(f"{at}/NAME", "")
        match = _RDC_RE.match(name)
        code = match.group(1).upper() if match else ""
        if code not in _OUTCOME:
            raise DocumentError(
                self.path(f"{at}/NAME"),
                f"answer code {code[:40]!r} is not one of {', '.join(_OUTCOME)}",
            )
        resp.outcome = _OUTCOME[code]
        if resp.outcome == common_pb2.OUTCOME_REJECTED:
            resp.cause = get(f"{at}/FREETEXT", "")
        if env.HasField("sent_at"):
            resp.responded_at.CopyFrom(env.sent_at)
        i = 0
        while f"RESOURCE[{i}]/ID" in self.leaves:
            resp.resources.append(
                request_pb2.CommittedResource(
                    resource_id=get(f"RESOURCE[{i}]/ID", ""),
                    resource_name=get(f"RESOURCE[{i}]/NAME", ""),
                    resource_type=eido_resource_type(get(f"RESOURCE[{i}]/RTYPE/RCLASS[0]", "")),
                )
            )
            i += 1


# -- encode ---------------------------------------------------------------------------------


def encode(
    env: envelope_pb2.Envelope,
    *,
    syntax: Syntax = "json",
    referenced: Sequence[envelope_pb2.Envelope] = (),
) -> bytes:
    """The EMSI document of an envelope, in JSON ({"emsi": ...}) or XML, valid against its schema.

    referenced: envelopes the references may name; a LINK is written with the EMSI document id
    of the one it names, and an answer copies the request's mission type and id.
    DocumentError when the envelope cannot be written (a payload EMSI has no place for, a
    resource type without an EMSI class, an unmapped path that is not an EMSI element, or a
    result the schema refuses).
    """
    payload = env.WhichOneof("payload")
    if payload in ("alert", "handover_request", "handover_response"):
        raise DocumentError(payload, "EMSI has no message for this payload; encode it as CAP or EIDO")
    if syntax not in ("json", "xml"):
        raise DocumentError("/", f"syntax {syntax!r} is neither 'json' nor 'xml'")
    tree = _unflatten(_leaves_of(env, referenced).items(), syntax)
    if syntax == "json":
        try:
            schemas.check_json(tree, _validator())
        except DocumentError as exc:
            raise DocumentError(f"/emsi{exc.path.rstrip('/')}", exc.reason) from None
        return json.dumps({"emsi": tree}, ensure_ascii=False, indent=2).encode("utf-8")
    root = etree.Element(f"{{{NAMESPACE}}}emsi", nsmap={None: NAMESPACE})
    _to_xml(tree, root)
    _check_xml(root)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
