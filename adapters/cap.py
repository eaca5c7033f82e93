"""OASIS CAP 1.2 codec (pure): a CAP <alert>, bare or in EDXL-DE 1.0/2.0 or Atom, both ways with an Envelope.

Decode refuses CAP 1.1 and any other root (UnsupportedDocument naming the root), validates the
document against adapters/data/cap/CAP-v1.2.xsd, then maps it:

- header: identifier and sender -> Envelope.origin (identifier only when it is not the
  distribution id); sent -> sent_at; status Actual/Exercise/System/Test -> Status ("Draft" has no
  counterpart and is refused); msgType Alert/Update/Cancel/Ack/Error -> Kind REPORT/UPDATE/
  CANCEL/ACK/ERROR; scope -> Alert.scope and Envelope.confidentiality (Public -> UNCLASSIFIED,
  Restricted and Private -> RESTRICTED); restriction, source, code, note -> Alert; incidents ->
  incident_ids; references -> references (below). The sending agency, the recipients and the
  legal basis come from the Context, never from the document; addresses stay in origin.unmapped.
- distribution id: a CAP identifier that is a lowercase UUID is the distribution id itself (so an
  envelope the hub sent as CAP, and every CAP reference to it, come back to the same id); any
  other identifier gives document.distribution_id("cap-1.2", sender, identifier). A reference
  "sender,identifier,sent" maps by the same rule, so a reference and the document it names agree.
  Its sender_agency_id is the connector's agency when the reference names the document's own
  sender, the reference's sender when that is an agency id, else "" (the hub's validator then
  asks for one). The references text itself is kept in origin.unmapped ("references") and written
  back as is while it still names the same messages.
- info -> AlertInfo, one to one (language absent means CAP's default "en-US"); every info's
  expires -> Envelope.expires_at (the latest). area -> AlertArea: polygon and circle parsed
  ("lat,lon ..." and "lat,lon radius_km"), geocode valueName "ISTAT" -> comuni_istat (and the
  envelope's target_areas: the comuni, or their provinces when there are more than 64), other
  geocodes -> geocodes, altitude/ceiling -> altitude_ft/ceiling_ft.
- resource -> MediaReference: resourceDesc -> description, mimeType -> media_type, size ->
  size_bytes, uri -> uri, digest (SHA-1 in CAP 1.2) -> sha1. derefUri (the media inline, base64)
  is REFUSED: the hub carries references to media, never the media; the sender publishes the media
  at an https uri instead. A SHA-256, which CAP has no element for, travels as the info parameter
  "RESOURCE_<n>_SHA256" (n: the resource's 1-based position in its info).
- Ack and Error -> KIND_ACK / KIND_ERROR with an Acknowledgement: note -> description; code is
  "ACK" or "ERROR" unless a CAP <code> "opsroom-ack:<CODE>" names another. An Ack or Error has no
  info block here (refused if it has one); its scope, restriction, source and other codes go to
  origin.unmapped.

Plates: Alert.vehicles travel as CAP parameters of every info block, valueName
"VEHICLE_<n>_<FIELD>" with n the vehicle's 1-based index and FIELD one of RELATIONSHIP, PLATE,
PLATE_COUNTRY, MAKE, MODEL, COLOR, VIN (e.g. VEHICLE_1_PLATE = "AB123CD"). Decode takes them out
of the parameters into alert.vehicles, where the redaction catalogue masks the plate; a
parameter named VEHICLE_* outside this scheme, a gap in the indexes, or info blocks naming
different vehicles are refused, so a plate never stays in info.parameters.

origin.unmapped (paths relative to <alert>, repeated elements always indexed): "addresses",
"references" (the text as written), the original notation of a time ("sent",
"info[0]/expires"...) when it is not the UTC "-00:00" the encoder writes, xmldsig
"Signature[i]" (its XML), and for Ack/Error "scope", "restriction", "source", "code[i]".

Encode writes the CAP 1.2 document of an envelope with an alert (REPORT/UPDATE/CANCEL) or an
acknowledgement (ACK/ERROR) payload, validated against the XSD before it is returned. What CAP
cannot say is dropped: the sender's staff ids, target_areas, expires_at (CAP has it per info),
the confidentiality of an alert (its scope says it), sub-second time, a resource's captured_at.
A reference needs the referenced message's sent time, which the contract does not carry: it is
taken from the references text decoded with the envelope, else from `reference_sent`, else the
envelope is refused.
"""

from __future__ import annotations

import math
import re
import struct
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp
from lxml import etree
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2

from adapters import document, edxl, schemas
from adapters.codes import cap_category, cap_category_name
from adapters.document import Context, DocumentError, UnsupportedDocument, local_name, xml_path
from broker import ids

FORMAT = "cap-1.2"
NS = "urn:oasis:names:tc:emergency:cap:1.2"
XMLDSIG = "http://www.w3.org/2000/09/xmldsig#"
XSD = "cap/CAP-v1.2.xsd"
_OLDER = {
    "urn:oasis:names:tc:emergency:cap:1.1": "CAP 1.1",
    "http://www.incident.com/cap/1.0": "CAP 1.0",
}

_STATUS = {
    "Actual": common_pb2.STATUS_ACTUAL,
    "Exercise": common_pb2.STATUS_EXERCISE,
    "System": common_pb2.STATUS_SYSTEM,
    "Test": common_pb2.STATUS_TEST,
}
_KIND = {
    "Alert": common_pb2.KIND_REPORT,
    "Update": common_pb2.KIND_UPDATE,
    "Cancel": common_pb2.KIND_CANCEL,
    "Ack": common_pb2.KIND_ACK,
    "Error": common_pb2.KIND_ERROR,
}
_ACK_KINDS = frozenset({common_pb2.KIND_ACK, common_pb2.KIND_ERROR})
_SCOPE = {
    "Public": alert_pb2.SCOPE_PUBLIC,
    "Restricted": alert_pb2.SCOPE_RESTRICTED,
    "Private": alert_pb2.SCOPE_PRIVATE,
}
_CONFIDENTIALITY = {
    "Public": common_pb2.CONFIDENTIALITY_UNCLASSIFIED,
    "Restricted": common_pb2.CONFIDENTIALITY_RESTRICTED,
    "Private": common_pb2.CONFIDENTIALITY_RESTRICTED,
}
_URGENCY = {
    n: getattr(alert_pb2, f"URGENCY_{n.upper()}") for n in ("Immediate", "Expected", "Future", "Past", "Unknown")
}
_SEVERITY = {
    n: getattr(alert_pb2, f"SEVERITY_{n.upper()}") for n in ("Extreme", "Severe", "Moderate", "Minor", "Unknown")
}
_CERTAINTY = {
    n: getattr(alert_pb2, f"CERTAINTY_{n.upper()}") for n in ("Observed", "Likely", "Possible", "Unlikely", "Unknown")
}
_DEFAULT_ACK_CODE = {common_pb2.KIND_ACK: "ACK", common_pb2.KIND_ERROR: "ERROR"}
_ACK_CODE_PREFIX = "opsroom-ack:"
_CAP_DEFAULT_LANGUAGE = "en-US"
_CONTRACT_DEFAULT_LANGUAGE = "it-IT"

# Vehicle parameters: VEHICLE_<n>_<FIELD>, FIELD -> the Vehicle field.
_VEHICLE_FIELDS = {
    "RELATIONSHIP": "relationship",
    "PLATE": "plate",
    "PLATE_COUNTRY": "plate_country",
    "MAKE": "make",
    "MODEL": "model",
    "COLOR": "color",
    "VIN": "vin",
}
_VEHICLE_RE = re.compile(r"VEHICLE_([1-9][0-9]{0,2})_(" + "|".join(_VEHICLE_FIELDS) + ")")
_RESOURCE_SHA256_RE = re.compile(r"RESOURCE_([1-9][0-9]{0,2})_SHA256")
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}[+-][0-9]{2}:[0-9]{2}")
_NOT_POLYGON_RE = re.compile(r"[^0-9.+\-,\s]")
_TOKEN_RE = re.compile(r'"([^"]*)"|(\S+)')
_TIME_ELEMENTS: tuple[Literal["effective", "onset", "expires"], ...] = ("effective", "onset", "expires")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TS_MIN = -62135596800  # 0001-01-01T00:00:00Z
_TS_MAX = 253402300799  # 9999-12-31T23:59:59Z
_MAX_TARGET_AREAS = 64

ReferenceSent = Callable[[common_pb2.Reference], datetime | None]


def _q(name: str) -> str:
    return f"{{{NS}}}{name}"


# -- decode ----------------------------------------------------------------------------------


def decode(data: bytes, ctx: Context) -> envelope_pb2.Envelope:
    """The envelope of a CAP 1.2 document (bare, in EDXL-DE 1.0/2.0 or in Atom); DocumentError if it is not one."""
    root = edxl.unwrap_xml(document.parse_xml(data, ctx.limits))
    qname = etree.QName(root)
    if qname.localname == "alert" and qname.namespace in _OLDER:
        raise UnsupportedDocument(
            xml_path(root), f"is {_OLDER[qname.namespace]} ({qname.namespace}); only CAP 1.2 ({NS}) is decoded"
        )
    if qname.namespace != NS or qname.localname != "alert":
        raise UnsupportedDocument(
            xml_path(root), f"root {{{qname.namespace or ''}}}{qname.localname} is not a CAP 1.2 alert"
        )
    _check(root)
    return _Decoder(root, ctx).envelope()


def _check(root: etree._Element) -> None:
    """Validate against the XSD; the error's path as local names ("/alert/info/urgency"), like every other."""
    try:
        schemas.check_xml(root, XSD)
    except DocumentError as exc:
        path = exc.path
        try:
            found = root.getroottree().xpath(path) if path.startswith("/") else []
        except etree.XPathError:
            found = []
        if isinstance(found, list) and found and isinstance(found[0], etree.ElementBase | type(root)):
            path = xml_path(found[0])
        raise DocumentError(path, exc.reason) from None


class _Decoder:
    """One decode: the alert element, the context, and the origin being filled."""

    def __init__(self, root: etree._Element, ctx: Context) -> None:
        self.root = root
        self.ctx = ctx
        self.origin = envelope_pb2.Origin(format=FORMAT)

    def child(self, parent: etree._Element, name: str) -> etree._Element | None:
        return parent.find(_q(name))

    def need(self, parent: etree._Element, name: str) -> etree._Element:
        element = parent.find(_q(name))
        if element is None:  # pragma: no cover - the XSD requires it
            raise DocumentError(xml_path(parent), f"has no {name}")
        return element

    def text(self, parent: etree._Element, name: str) -> str:
        element = parent.find(_q(name))
        return (element.text or "") if element is not None else ""

    def keep(self, path: str, value: str) -> None:
        self.origin.unmapped.append(envelope_pb2.OriginField(path=path, value=value))

    def time(self, element: etree._Element, path: str) -> Timestamp:
        """A CAP dateTime as a Timestamp; its notation kept when it is not the encoder's own."""
        raw = (element.text or "").strip()
        stamp = _parse_time(raw, xml_path(element))
        if raw != _format_time(stamp):
            self.keep(path, raw)
        return stamp

    def envelope(self) -> envelope_pb2.Envelope:
        root = self.root
        identifier = self.text(root, "identifier")
        sender = self.text(root, "sender")
        status = self.text(root, "status")
        if status == "Draft":
            raise UnsupportedDocument(
                xml_path(self.need(root, "status")),
                "is Draft, which has no counterpart in the hub (rooms exchange actual, exercise, system or test "
                "messages); send the alert when it is final",
            )
        kind = _KIND[self.text(root, "msgType")]
        env = envelope_pb2.Envelope(
            distribution_id=reference_id(sender, identifier),
            sender=common_pb2.Sender(agency_id=self.ctx.agency_id),
            status=_STATUS[status],
            kind=kind,
            recipients=list(self.ctx.recipients),
            legal_basis=self.ctx.legal_basis(),
        )
        if identifier != env.distribution_id:
            self.origin.identifier = identifier
        self.origin.sender = sender
        env.sent_at.CopyFrom(self.time(self.need(root, "sent"), "sent"))
        scope = self.text(root, "scope")
        env.confidentiality = _CONFIDENTIALITY[scope]
        addresses = self.child(root, "addresses")
        if addresses is not None:
            self.keep("addresses", addresses.text or "")
        incidents = self.child(root, "incidents")
        if incidents is not None:
            env.incident_ids.extend(_tokens(incidents.text or "", xml_path(incidents)))
        references = self.child(root, "references")
        if references is not None:
            env.references.extend(self.references(references, sender))
        infos = root.findall(_q("info"))
        if kind in _ACK_KINDS:
            env.acknowledgement.CopyFrom(self.acknowledgement(kind, infos))
        else:
            env.alert.CopyFrom(self.alert(scope, infos))
            expires = [info.expires for info in env.alert.infos if info.HasField("expires")]
            if expires:
                env.expires_at.CopyFrom(max(expires, key=lambda t: (t.seconds, t.nanos)))
            env.target_areas.extend(_target_areas(env.alert))
        for i, signature in enumerate(root.findall(f"{{{XMLDSIG}}}*")):
            self.keep(f"{local_name(signature)}[{i}]", etree.tostring(signature, encoding="unicode"))
        env.origin.CopyFrom(self.origin)
        return env

    def references(self, element: etree._Element, sender: str) -> list[common_pb2.Reference]:
        path = xml_path(element)
        text = element.text or ""
        out = []
        for n, entry in enumerate(text.split()):
            parts = entry.split(",")
            if len(parts) != 3 or not parts[0] or not parts[1]:
                raise DocumentError(path, f"entry {n + 1} ({entry[:80]!r}) is not sender,identifier,sent")
            _parse_time(parts[2], f"{path} (entry {n + 1}: sent)")
            ref_sender, ref_id = parts[0], parts[1]
            if ref_sender == sender:
                agency = self.ctx.agency_id
            elif ids.is_agency_id(ref_sender):
                agency = ref_sender
            else:
                agency = ""
            out.append(common_pb2.Reference(distribution_id=reference_id(ref_sender, ref_id), sender_agency_id=agency))
        if not out:
            raise DocumentError(path, "is empty; it must list sender,identifier,sent entries")
        self.keep("references", text)
        return out

    def acknowledgement(
        self, kind: common_pb2.Kind.ValueType, infos: Sequence[etree._Element]
    ) -> envelope_pb2.Acknowledgement:
        if infos:
            raise DocumentError(
                xml_path(infos[0]), "an Ack or Error message carries no info block in the hub; send the alert as Alert"
            )
        root = self.root
        ack = envelope_pb2.Acknowledgement(code=_DEFAULT_ACK_CODE[kind], description=self.text(root, "note"))
        for name in ("source", "scope", "restriction"):
            element = self.child(root, name)
            if element is not None:
                self.keep(name, element.text or "")
        for i, code in enumerate(root.findall(_q("code"))):
            value = code.text or ""
            if value.startswith(_ACK_CODE_PREFIX) and ack.code == _DEFAULT_ACK_CODE[kind]:
                ack.code = value.removeprefix(_ACK_CODE_PREFIX)
            else:
                self.keep(f"code[{i}]", value)
        return ack

    def alert(self, scope: str, infos: Sequence[etree._Element]) -> alert_pb2.Alert:
        root = self.root
        alert = alert_pb2.Alert(
            scope=_SCOPE[scope],
            restriction=self.text(root, "restriction"),
            source=self.text(root, "source"),
            note=self.text(root, "note"),
            codes=[code.text or "" for code in root.findall(_q("code"))],
        )
        vehicles_seen: tuple[incident_pb2.Vehicle, ...] | None = None
        for i, element in enumerate(infos):
            info, vehicles = self.info(element, i)
            alert.infos.append(info)
            if vehicles:
                if vehicles_seen is None:
                    vehicles_seen = vehicles
                    alert.vehicles.extend(vehicles)
                elif vehicles != vehicles_seen:
                    raise DocumentError(
                        xml_path(element),
                        "names other vehicles than an earlier info block; every info block must describe the same "
                        "vehicles (VEHICLE_<n>_<FIELD> parameters)",
                    )
        return alert

    def info(self, element: etree._Element, index: int) -> tuple[alert_pb2.AlertInfo, tuple[incident_pb2.Vehicle, ...]]:
        info = alert_pb2.AlertInfo(
            language=self.text(element, "language") or _CAP_DEFAULT_LANGUAGE,
            categories=[cap_category(c.text or "") for c in element.findall(_q("category"))],
            event=self.text(element, "event"),
            response_types=[r.text or "" for r in element.findall(_q("responseType"))],
            urgency=_URGENCY[self.text(element, "urgency")],
            severity=_SEVERITY[self.text(element, "severity")],
            certainty=_CERTAINTY[self.text(element, "certainty")],
            audience=self.text(element, "audience"),
            event_codes=_named_values(element, "eventCode"),
            sender_name=self.text(element, "senderName"),
            headline=self.text(element, "headline"),
            description=self.text(element, "description"),
            instruction=self.text(element, "instruction"),
            web=self.text(element, "web"),
            contact=self.text(element, "contact"),
        )
        for name in _TIME_ELEMENTS:
            found = self.child(element, name)
            if found is not None:
                getattr(info, name).CopyFrom(self.time(found, f"info[{index}]/{name}"))
        parameters, vehicles, sha256 = _parameters(element)
        info.parameters.extend(parameters)
        for resource in element.findall(_q("resource")):
            info.resources.append(_resource(resource))
        for n, (value, parameter) in sha256.items():
            if n > len(info.resources):
                raise DocumentError(
                    xml_path(parameter), f"names resource {n}, but the info block has {len(info.resources)}"
                )
            info.resources[n - 1].sha256 = value
        for area in element.findall(_q("area")):
            info.areas.append(_area(area))
        return info, vehicles


def _parameters(
    element: etree._Element,
) -> tuple[list[alert_pb2.NamedValue], tuple[incident_pb2.Vehicle, ...], dict[int, tuple[str, etree._Element]]]:
    """An info's parameters split: the others, the vehicles (VEHICLE_<n>_<FIELD>), the resources' SHA-256."""
    others: list[alert_pb2.NamedValue] = []
    vehicles: dict[int, incident_pb2.Vehicle] = {}
    sha256: dict[int, tuple[str, etree._Element]] = {}
    seen: set[str] = set()
    for parameter, nv in zip(element.findall(_q("parameter")), _named_values(element, "parameter"), strict=True):
        vehicle = _VEHICLE_RE.fullmatch(nv.name)
        digest = _RESOURCE_SHA256_RE.fullmatch(nv.name)
        if not (vehicle or digest):
            if nv.name.startswith("VEHICLE_"):
                raise DocumentError(
                    xml_path(parameter),
                    f"valueName {nv.name[:60]!r} is not VEHICLE_<n>_<FIELD> with FIELD one of "
                    f"{', '.join(_VEHICLE_FIELDS)}; vehicles travel only in that form",
                )
            others.append(nv)
            continue
        if nv.name in seen:
            raise DocumentError(xml_path(parameter), f"{nv.name} appears twice in this info block")
        seen.add(nv.name)
        if vehicle:
            target = vehicles.setdefault(int(vehicle.group(1)), incident_pb2.Vehicle())
            setattr(target, _VEHICLE_FIELDS[vehicle.group(2)], nv.value)
        elif digest:
            sha256[int(digest.group(1))] = (nv.value, parameter)
    if sorted(vehicles) != list(range(1, len(vehicles) + 1)):
        raise DocumentError(
            xml_path(element), f"vehicle parameters number vehicles {sorted(vehicles)}; they must run 1 to n"
        )
    return others, tuple(vehicles[n] for n in sorted(vehicles)), sha256


def reference_id(sender: str, identifier: str) -> str:
    """The distribution id of the CAP message (sender, identifier): the identifier when it is a lowercase UUID."""
    try:
        if str(uuid.UUID(identifier)) == identifier:
            return identifier
    except ValueError:
        pass
    return document.distribution_id(FORMAT, sender, identifier)


def _named_values(parent: etree._Element, name: str) -> list[alert_pb2.NamedValue]:
    out = []
    for element in parent.findall(_q(name)):
        value_name = element.find(_q("valueName"))
        value = element.find(_q("value"))
        out.append(
            alert_pb2.NamedValue(
                name=(value_name.text or "") if value_name is not None else "",
                value=(value.text or "") if value is not None else "",
            )
        )
    return out


def _tokens(text: str, path: str) -> list[str]:
    """A CAP list: space-delimited values, values with whitespace in double quotes."""
    if text.count('"') % 2:
        raise DocumentError(path, "has an unbalanced double quote")
    return [bare or quoted for quoted, bare in _TOKEN_RE.findall(text)]


def _join(values: Iterable[str], path: str) -> str:
    out = []
    for value in values:
        if '"' in value:
            raise DocumentError(path, f"value {value[:60]!r} has a double quote, which a CAP list cannot carry")
        out.append(f'"{value}"' if not value or any(c.isspace() for c in value) else value)
    return " ".join(out)


def _parse_time(raw: str, path: str) -> Timestamp:
    """A CAP dateTime (offset required, no fraction) as a Timestamp; DocumentError naming path if it is not one."""
    wrong = DocumentError(path, f"{raw[:40]!r} is not a CAP date and time (YYYY-MM-DDThh:mm:ss+hh:mm)")
    if not _TIME_RE.fullmatch(raw):
        raise wrong
    try:
        seconds = (datetime.fromisoformat(raw) - _EPOCH) // timedelta(seconds=1)
    except (ValueError, OverflowError):
        raise wrong from None
    if not _TS_MIN <= seconds <= _TS_MAX:
        raise DocumentError(path, f"{raw!r} is outside the years 0001 to 9999 in UTC")
    return Timestamp(seconds=seconds)


def _format_time(stamp: Timestamp) -> str:
    """The encoder's notation: UTC written "-00:00", as CAP 1.2 requires; sub-second time dropped."""
    if not _TS_MIN <= stamp.seconds <= _TS_MAX:
        raise DocumentError("/", f"timestamp {stamp.seconds} is outside the years 0001 to 9999")
    at = _EPOCH + timedelta(seconds=stamp.seconds)
    return f"{at.year:04d}-{at.month:02d}-{at.day:02d}T{at.hour:02d}:{at.minute:02d}:{at.second:02d}-00:00"


def _number(raw: str, path: str, what: str) -> float:
    if not _NUMBER_RE.fullmatch(raw):
        raise DocumentError(path, f"{raw[:40]!r} is not a decimal {what}")
    value = float(raw)
    if not math.isfinite(value):
        raise DocumentError(path, f"{raw[:40]!r} is not a finite {what}")
    return value


def _point(pair: str, path: str) -> common_pb2.GeoPoint:
    latitude, comma, longitude = pair.partition(",")
    if not comma:
        raise DocumentError(path, f"{pair[:40]!r} is not latitude,longitude")
    return common_pb2.GeoPoint(
        latitude=_number(latitude, path, "latitude"), longitude=_number(longitude, path, "longitude")
    )


def _points_wire(numbers: list[float]) -> bytes:
    """Polygon.points in protobuf wire form: per point, field 1 holding a GeoPoint of two doubles (18 bytes)."""
    count = len(numbers) // 2
    size = 20  # tag 0x0A, length 18, tag 0x09, 8 bytes latitude, tag 0x11, 8 bytes longitude
    out = bytearray(size * count)
    out[0::size] = b"\x0a" * count
    out[1::size] = b"\x12" * count
    out[2::size] = b"\x09" * count
    out[11::size] = b"\x11" * count
    latitudes = struct.pack(f"<{count}d", *numbers[0::2])
    longitudes = struct.pack(f"<{count}d", *numbers[1::2])
    for k in range(8):
        out[3 + k :: size] = latitudes[k::8]
        out[12 + k :: size] = longitudes[k::8]
    return bytes(out)


def _polygon(text: str, pairs: list[str], path: str) -> alert_pb2.Polygon:
    """A polygon's points; a megabyte of them in well under a second.

    The common case (only digits, signs, dots, one comma per pair) is read in bulk and the
    Polygon parsed from its wire form in one call, which is several times faster than building
    one GeoPoint object per point; anything else is read pair by pair, for the precise error.
    """
    if len(pairs) == text.count(",") and not _NOT_POLYGON_RE.search(text):
        try:
            numbers = list(map(float, text.replace(",", " ").split()))
        except ValueError:
            numbers = []
        if len(numbers) == 2 * len(pairs) and all(map(math.isfinite, numbers)):
            return alert_pb2.Polygon.FromString(_points_wire(numbers))
    return alert_pb2.Polygon(points=[_point(pair, path) for pair in pairs])


def _area(element: etree._Element) -> alert_pb2.AlertArea:
    description = element.find(_q("areaDesc"))
    area = alert_pb2.AlertArea(area_desc=(description.text or "") if description is not None else "")
    for polygon in element.findall(_q("polygon")):
        path = xml_path(polygon)
        pairs = (polygon.text or "").split()
        if len(pairs) < 4:
            raise DocumentError(
                path, f"has {len(pairs)} points; a CAP polygon has at least 4, the first equal to the last"
            )
        area.polygons.append(_polygon(polygon.text or "", pairs, path))
    for circle in element.findall(_q("circle")):
        path = xml_path(circle)
        parts = (circle.text or "").split()
        if len(parts) != 2:
            raise DocumentError(path, "is not 'latitude,longitude radius' (radius in km)")
        area.circles.append(
            alert_pb2.Circle(center=_point(parts[0], path), radius_km=_number(parts[1], path, "radius"))
        )
    for geocode in _named_values(element, "geocode"):
        if geocode.name == "ISTAT":
            area.comuni_istat.append(geocode.value)
        else:
            area.geocodes.append(geocode)
    for name, field in (("altitude", "altitude_ft"), ("ceiling", "ceiling_ft")):
        found = element.find(_q(name))
        if found is not None:
            setattr(area, field, _number((found.text or "").strip(), xml_path(found), name))
    return area


def _resource(element: etree._Element) -> common_pb2.MediaReference:
    deref = element.find(_q("derefUri"))
    if deref is not None:
        raise DocumentError(
            xml_path(deref),
            "carries the media inline; the hub carries references to media, never the media: publish it at an "
            "https uri and send uri and digest instead",
        )

    def text(name: str) -> str:
        found = element.find(_q(name))
        return (found.text or "") if found is not None else ""

    media = common_pb2.MediaReference(
        description=text("resourceDesc"), media_type=text("mimeType"), uri=text("uri").strip(), sha1=text("digest")
    )
    size = element.find(_q("size"))
    if size is not None:
        try:
            value = int((size.text or "").strip())
        except ValueError:
            raise DocumentError(xml_path(size), "is not an integer") from None
        if not 0 <= value < 2**64:
            raise DocumentError(xml_path(size), f"{value} is not a size in bytes")
        media.size_bytes = value
    return media


def _target_areas(alert: alert_pb2.Alert) -> list[common_pb2.Area]:
    """The comuni the alert's areas name (ISTAT geocodes), or their provinces when they are too many."""
    comuni = list(dict.fromkeys(code for info in alert.infos for area in info.areas for code in area.comuni_istat))
    if len(comuni) <= _MAX_TARGET_AREAS:
        return [common_pb2.Area(comune_istat=code) for code in comuni]
    provinces = list(dict.fromkeys(code[:3] for code in comuni))
    return [common_pb2.Area(provincia_istat=code) for code in provinces[:_MAX_TARGET_AREAS]]


# -- encode ----------------------------------------------------------------------------------


def encode(env: envelope_pb2.Envelope, *, reference_sent: ReferenceSent | None = None) -> bytes:
    """The CAP 1.2 document (UTF-8, with an XML declaration) of an envelope with an alert or acknowledgement.

    reference_sent gives the sent time of a referenced message when the envelope was not decoded
    from CAP (CAP names a message by sender, identifier and sent; the contract keeps no sent time).
    """
    return _Encoder(env, reference_sent).document()


class _Encoder:
    def __init__(self, env: envelope_pb2.Envelope, reference_sent: ReferenceSent | None) -> None:
        self.env = env
        self.reference_sent = reference_sent
        own = env.origin.format == FORMAT
        self.unmapped: dict[str, str] = {}
        if own:
            for i, field in enumerate(env.origin.unmapped):
                if not _known_path(field.path):
                    raise DocumentError(
                        f"origin.unmapped[{i}].path",
                        f"{field.path[:60]!r} is not an element the CAP encoder writes back",
                    )
                self.unmapped[field.path] = field.value
        self.identifier = (env.origin.identifier if own else "") or env.distribution_id
        self.sender = (env.origin.sender if own else "") or env.sender.agency_id

    def sub(self, parent: etree._Element, name: str, value: str, path: str) -> etree._Element:
        element = etree.SubElement(parent, _q(name))
        try:
            element.text = value
        except ValueError:
            raise DocumentError(path, "has characters XML cannot carry (control characters)") from None
        return element

    def time(self, parent: etree._Element, name: str, stamp: Timestamp, path: str, hint: str) -> None:
        try:
            text = _format_time(stamp)
        except DocumentError:
            raise DocumentError(path, "is outside the years 0001 to 9999") from None
        noted = self.unmapped.get(hint)
        if noted is not None:
            try:
                if _parse_time(noted.strip(), hint) == Timestamp(seconds=stamp.seconds):
                    text = noted
            except DocumentError:
                pass
        self.sub(parent, name, text, path)

    def check(self) -> tuple[str, str, str]:
        """The payload's name, the msgType and the status, or DocumentError if CAP cannot say them."""
        env = self.env
        which = env.WhichOneof("payload")
        if which not in ("alert", "acknowledgement"):
            raise DocumentError(
                "payload", f"is {which or 'not set'}; CAP carries alerts only (and acknowledgements as Ack or Error)"
            )
        kinds = {v: k for k, v in _KIND.items()}
        msg_type = kinds.get(env.kind)
        if msg_type is None:
            raise DocumentError("kind", f"{common_pb2.Kind.Name(env.kind)} has no CAP msgType")
        if (which == "acknowledgement") != (env.kind in _ACK_KINDS):
            raise DocumentError(
                "kind", f"{common_pb2.Kind.Name(env.kind)} does not go with a {which} payload in CAP (Ack/Error only)"
            )
        status = {v: k for k, v in _STATUS.items()}.get(env.status)
        if status is None:
            raise DocumentError("status", "is unspecified; CAP needs Actual, Exercise, System or Test")
        if not env.HasField("sent_at"):
            raise DocumentError("sent_at", "is required (CAP sent)")
        if not self.identifier or not self.sender:
            raise DocumentError("distribution_id", "is required (CAP identifier and sender)")
        return which, msg_type, status

    def document(self) -> bytes:
        env = self.env
        which, msg_type, status = self.check()
        root = etree.Element(_q("alert"), nsmap={None: NS})
        self.sub(root, "identifier", self.identifier, "origin.identifier")
        self.sub(root, "sender", self.sender, "origin.sender")
        self.time(root, "sent", env.sent_at, "sent_at", "sent")
        self.sub(root, "status", status, "status")
        self.sub(root, "msgType", msg_type, "kind")
        if which == "alert":
            self.alert_header(root, env.alert)
        else:
            self.ack_header(root, env.acknowledgement)
        if env.incident_ids:
            self.sub(root, "incidents", _join(env.incident_ids, "incident_ids"), "incident_ids")
        if which == "alert":
            for i, info in enumerate(env.alert.infos):
                self.info(root, info, i, env.alert.vehicles)
        for path, value in self.unmapped.items():
            if path.startswith("Signature["):
                try:
                    root.append(document.parse_xml(value.encode("utf-8")))
                except DocumentError as exc:
                    raise DocumentError(f"origin.unmapped {path}", exc.reason) from None
        out = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
        checked = document.parse_xml(out)
        try:
            _check(checked)
        except DocumentError as exc:
            raise DocumentError(exc.path, f"the encoded CAP is not valid: {exc.reason}") from None
        return out

    def after_scope(self, root: etree._Element, note: str, codes: Sequence[str]) -> None:
        """addresses, code, note, references: the header elements after scope and restriction."""
        env = self.env
        if "addresses" in self.unmapped:
            self.sub(root, "addresses", self.unmapped["addresses"], "origin.unmapped addresses")
        elif env.recipients:
            self.sub(root, "addresses", _join(env.recipients, "recipients"), "recipients")
        for i, code in enumerate(codes):
            self.sub(root, "code", code, f"codes[{i}]")
        if note:
            self.sub(root, "note", note, "note")
        if env.references:
            self.sub(root, "references", self.references(), "references")

    def references(self) -> str:
        env = self.env
        noted = self.unmapped.get("references")
        if noted is not None:
            entries = [entry.split(",") for entry in noted.split()]
            if [reference_id(p[0], p[1]) if len(p) == 3 else "" for p in entries] == [
                r.distribution_id for r in env.references
            ]:
                return noted
        out = []
        for i, ref in enumerate(env.references):
            path = f"references[{i}]"
            if not ref.sender_agency_id:
                raise DocumentError(f"{path}.sender_agency_id", "is required: a CAP reference names the sender")
            sent = self.reference_sent(ref) if self.reference_sent is not None else None
            if sent is None:
                raise DocumentError(
                    path,
                    "a CAP reference needs the referenced message's sent time, which the envelope does not carry; "
                    "pass reference_sent to encode",
                )
            if sent.tzinfo is None:
                raise DocumentError(path, "reference_sent returned a time without a UTC offset")
            stamp = Timestamp(seconds=(sent - _EPOCH) // timedelta(seconds=1))
            out.append(f"{ref.sender_agency_id},{ref.distribution_id},{_format_time(stamp)}")
        return " ".join(out)

    def alert_header(self, root: etree._Element, alert: alert_pb2.Alert) -> None:
        if alert.source:
            self.sub(root, "source", alert.source, "alert.source")
        scope = {v: k for k, v in _SCOPE.items()}.get(alert.scope)
        if scope is None:
            raise DocumentError("alert.scope", "is unspecified; CAP needs Public, Restricted or Private")
        self.sub(root, "scope", scope, "alert.scope")
        if alert.restriction:
            self.sub(root, "restriction", alert.restriction, "alert.restriction")
        self.after_scope(root, alert.note, alert.codes)

    def ack_header(self, root: etree._Element, ack: envelope_pb2.Acknowledgement) -> None:
        env = self.env
        if "source" in self.unmapped:
            self.sub(root, "source", self.unmapped["source"], "origin.unmapped source")
        default_scope = "Public" if env.confidentiality == common_pb2.CONFIDENTIALITY_UNCLASSIFIED else "Private"
        self.sub(root, "scope", self.unmapped.get("scope", default_scope), "origin.unmapped scope")
        if "restriction" in self.unmapped:
            self.sub(root, "restriction", self.unmapped["restriction"], "origin.unmapped restriction")
        codes = [value for path, value in self.unmapped.items() if path.startswith("code[")]
        if ack.code and ack.code != _DEFAULT_ACK_CODE[env.kind]:
            codes.append(_ACK_CODE_PREFIX + ack.code)
        self.after_scope(root, ack.description, codes)

    def info(
        self, root: etree._Element, info: alert_pb2.AlertInfo, index: int, vehicles: Sequence[incident_pb2.Vehicle]
    ) -> None:
        p = f"alert.infos[{index}]"
        element = etree.SubElement(root, _q("info"))
        self.sub(element, "language", info.language or _CONTRACT_DEFAULT_LANGUAGE, f"{p}.language")
        self.categories(element, info, p)
        self.sub(element, "event", info.event, f"{p}.event")
        for i, response in enumerate(info.response_types):
            self.sub(element, "responseType", response, f"{p}.response_types[{i}]")
        for name, table, value in (
            ("urgency", _URGENCY, info.urgency),
            ("severity", _SEVERITY, info.severity),
            ("certainty", _CERTAINTY, info.certainty),
        ):
            found = {v: k for k, v in table.items()}.get(value)
            if found is None:
                raise DocumentError(f"{p}.{name}", f"is unspecified; CAP needs one of {', '.join(table)}")
            self.sub(element, name, found, f"{p}.{name}")
        if info.audience:
            self.sub(element, "audience", info.audience, f"{p}.audience")
        self.named_values(element, "eventCode", info.event_codes, f"{p}.event_codes")
        for name in _TIME_ELEMENTS:
            if info.HasField(name):
                self.time(element, name, getattr(info, name), f"{p}.{name}", f"info[{index}]/{name}")
        self.info_texts(element, info, p)
        self.parameters(element, info, p, vehicles)
        for i, media in enumerate(info.resources):
            self.resource(element, media, f"{p}.resources[{i}]")
        for i, area in enumerate(info.areas):
            self.area(element, area, f"{p}.areas[{i}]")

    def info_texts(self, element: etree._Element, info: alert_pb2.AlertInfo, p: str) -> None:
        """senderName, headline, description, instruction, web, contact."""
        for name, field in (
            ("senderName", "sender_name"),
            ("headline", "headline"),
            ("description", "description"),
            ("instruction", "instruction"),
            ("web", "web"),
            ("contact", "contact"),
        ):
            if getattr(info, field):
                self.sub(element, name, getattr(info, field), f"{p}.{field}")

    def parameters(
        self, element: etree._Element, info: alert_pb2.AlertInfo, p: str, vehicles: Sequence[incident_pb2.Vehicle]
    ) -> None:
        """The info's parameters, then the resources' SHA-256, then the vehicles."""
        parameters = list(info.parameters)
        for i, media in enumerate(info.resources):
            if media.sha256:
                parameters.append(alert_pb2.NamedValue(name=f"RESOURCE_{i + 1}_SHA256", value=media.sha256))
        for n, vehicle in enumerate(vehicles, 1):
            for suffix, field in _VEHICLE_FIELDS.items():
                if getattr(vehicle, field):
                    parameters.append(alert_pb2.NamedValue(name=f"VEHICLE_{n}_{suffix}", value=getattr(vehicle, field)))
        for i, parameter in enumerate(info.parameters):
            if parameter.name.startswith("VEHICLE_") or _RESOURCE_SHA256_RE.fullmatch(parameter.name):
                raise DocumentError(
                    f"{p}.parameters[{i}].name",
                    f"{parameter.name[:60]!r} is reserved for vehicles and resource digests",
                )
        self.named_values(element, "parameter", parameters, f"{p}.parameters")

    def categories(self, element: etree._Element, info: alert_pb2.AlertInfo, p: str) -> None:
        """The info's categories, at least one."""
        if not info.categories:
            raise DocumentError(f"{p}.categories", "is empty; CAP needs at least one category")
        for i, category in enumerate(info.categories):
            if category == alert_pb2.CATEGORY_UNSPECIFIED or category not in alert_pb2.Category.values():
                raise DocumentError(f"{p}.categories[{i}]", "is not a CAP category")
            self.sub(element, "category", cap_category_name(category), f"{p}.categories[{i}]")

    def named_values(
        self, parent: etree._Element, name: str, values: Iterable[alert_pb2.NamedValue], path: str
    ) -> None:
        for i, nv in enumerate(values):
            element = etree.SubElement(parent, _q(name))
            self.sub(element, "valueName", nv.name, f"{path}[{i}].name")
            self.sub(element, "value", nv.value, f"{path}[{i}].value")

    def resource(self, parent: etree._Element, media: common_pb2.MediaReference, path: str) -> None:
        element = etree.SubElement(parent, _q("resource"))
        self.sub(element, "resourceDesc", media.description, f"{path}.description")
        self.sub(element, "mimeType", media.media_type, f"{path}.media_type")
        if media.HasField("size_bytes"):
            self.sub(element, "size", str(media.size_bytes), f"{path}.size_bytes")
        if media.uri:
            self.sub(element, "uri", media.uri, f"{path}.uri")
        if media.sha1:
            self.sub(element, "digest", media.sha1, f"{path}.sha1")

    def area(self, parent: etree._Element, area: alert_pb2.AlertArea, path: str) -> None:
        element = etree.SubElement(parent, _q("area"))
        self.sub(element, "areaDesc", area.area_desc, f"{path}.area_desc")
        for i, polygon in enumerate(area.polygons):
            p = f"{path}.polygons[{i}]"
            self.sub(element, "polygon", " ".join(_format_point(pt, p) for pt in polygon.points), p)
        for i, circle in enumerate(area.circles):
            p = f"{path}.circles[{i}]"
            self.sub(element, "circle", f"{_format_point(circle.center, p)} {_format_number(circle.radius_km, p)}", p)
        geocodes = [alert_pb2.NamedValue(name="ISTAT", value=code) for code in area.comuni_istat]
        self.named_values(element, "geocode", [*geocodes, *area.geocodes], f"{path}.geocodes")
        if area.HasField("altitude_ft"):
            self.sub(element, "altitude", _format_number(area.altitude_ft, path), f"{path}.altitude_ft")
        if area.HasField("ceiling_ft"):
            self.sub(element, "ceiling", _format_number(area.ceiling_ft, path), f"{path}.ceiling_ft")


def _known_path(path: str) -> bool:
    return bool(
        path in ("addresses", "references", "sent", "source", "scope", "restriction")
        or re.fullmatch(r"info\[[0-9]+\]/(?:effective|onset|expires)", path)
        or re.fullmatch(r"(?:code|Signature)\[[0-9]+\]", path)
    )


def _format_number(value: float, path: str) -> str:
    """A decimal without exponent: the shortest text that reads back as the same double."""
    if not math.isfinite(value):
        raise DocumentError(path, f"{value} is not a finite number")
    try:
        text = format(Decimal(repr(value)), "f")
    except InvalidOperation:  # pragma: no cover - repr of a finite float is a decimal
        raise DocumentError(path, f"{value} is not a decimal") from None
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _format_point(point: common_pb2.GeoPoint, path: str) -> str:
    return f"{_format_number(point.latitude, path)},{_format_number(point.longitude, path)}"
