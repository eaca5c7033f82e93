"""The 112 NUE contact card codec (pure): ContactCard (EMMA_SF_NUE112_SchedaContatto Rev3) ⇄ opsroom Envelope.

The card is the record a CUR (Centrale Unica di Risposta, the 112 answering point) pushes to an
agency's operations room. `decode` turns one card into an incident REPORT (an UPDATE when the
card links an earlier card); `encode` writes an incident, or a hand-over's incident, as a card,
valid against the XSD by construction (it validates before returning).

Mapping (DOMAIN.md, field map, column "card"):

- ID -> incident.call.call_id and origin.identifier; distribution_id = uuid5 of the format, the
  connector's agency and the ID (the card has no sender element: a card sent again gets the
  same id); incident.id = "urn:emergency:uid:incidentid:<ID>:<agency>".
- ContactCardLink (another card's ID) -> kind UPDATE, references[0] (that card's distribution id)
  and incident.id built from the linked ID, so the cards of one event share the incident id.
- CreateDate -> sent_at and call.started_at (a date-time without offset is Italian local time;
  encode writes Europe/Rome local time with its offset).
- Operator -> sender.operator_id when it is a staff id (broker.ids.LOCAL_ID_RE).
- Reference -> incident.local_reference.
- Classification (CUR free text) -> incident.type.eido_code through adapters/data/
  nue112-classifications.csv (compared case- and accent-insensitively, punctuation and Italian
  articles and prepositions ignored); a text that is itself an EIDO incident-type code decodes
  to it; any other text decodes to FALLBACK_EIDO ("TROUBLE", "Unknown Type Trouble") and is kept
  in origin.unmapped. emsi_category comes from adapters.codes.emsi_for when the map has one.
- ClassificationDetail -> incident.description; Notes/Note -> incident.notes (free text).
- HighPriority TRUE -> PRIORITY_HIGH, FALSE -> PRIORITY_NORMAL; InvolvedNumber -> involved_count.
- MainLocation/Point -> incident.locations[type=CurrentIncident] (source OPERATOR: the CUR
  operator's placing of the event); its comune (nearest ISTAT centroid) -> target_areas.
- Caller Number/Surname/Name -> call.caller; Caller/Location/Manual -> a location of type
  "Caller" (source CALLER): Toponymy+Address -> street, CivicNumber[/CivicNumberAdditional] ->
  civic_number, District -> locality, City+Province -> comune_istat (ISTAT list), AdditionalInfo
  -> additional_info; Automatic/CEDInterforze/Localization[0]/Value -> call.network_location.raw_value.
- Companies Code -> recipients through the `companies` directory (CUR company code -> agency id),
  after ctx.recipients; a code not in the directory is never turned into an agency id.
- Everything else, and every leaf whose text encode would not write back exactly (another time
  notation, a text outside the contract's formats), goes to origin.unmapped by path, in document
  order; the Companies block always does (the CUR's codes have no contract field), so that a
  decoded card encodes back element for element. Unmapped values are masked as free text.

The card cannot carry: persons, vehicles, media, agencies' roles, notes' times and authors, the
incident's address and comune, location uncertainty and source, the IMSI and cell id, the call's
language, status (always ACTUAL), confidentiality (decoded as RESTRICTED), expiry, a foreign
incident id (decode builds it from the card's ID), PRIORITY_IMMEDIATE or LOW (HIGH or NORMAL).

The SOAP helpers (`gest_contatto`, `soap_fault`) are for the GestContatto connector: they take the
card out of a SOAP 1.1/1.2 request body and build the fault answering a DocumentError.
"""

from __future__ import annotations

import csv
import re
import unicodedata
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from zoneinfo import ZoneInfo

from google.protobuf.timestamp_pb2 import Timestamp
from lxml import etree
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2

from adapters import codes, document, schemas
from adapters.document import (
    DEFAULT_LIMITS,
    Context,
    DocumentError,
    DocumentTooLarge,
    Limits,
    UnsupportedDocument,
    distribution_id,
    local_name,
    parse_xml,
    xml_path,
)
from broker import ids
from broker.policy import places
from broker.validate import codelists

FORMAT = "nue112-rev3"
NS = "http://NUE.112.it/NUE112"
ROOT = f"{{{NS}}}ContactCard"
XSD = "nue112/EMMA_SF_NUE112_SchedaContatto-Rev3.xsd"
CLASSIFICATIONS = "nue112-classifications.csv"
# The EIDO code a Classification the table does not know decodes to ("Unknown Type Trouble").
FALLBACK_EIDO = "TROUBLE"
INCIDENT_URN = "urn:emergency:uid:incidentid:"
ROME = ZoneInfo("Europe/Rome")

SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
SERVICE_NS = "http://entiservice.ws.nue.gov.it/"
GEST_CONTATTO_PARAMETERS = (
    "EnteMittente",
    "EnteDestinatario",
    "SedeMittente",
    "SedeDestinataria",
    "ProvinciaMittente",
    "ProvinciaDestinatario",
    "SchedaContatto",
)

# Children of each complex element, in the XSD's sequence order (names are unique per meaning).
_CHILDREN: Mapping[str, tuple[str, ...]] = {
    "ContactCard": (
        "ID", "CreateDate", "CallType", "Operator", "Reference", "Classification", "ClassificationDetail",
        "ClassificationAttribute", "HighPriority", "InvolvedNumber", "ContactCardLink", "CompetenceType",
        "MainLocation", "Caller", "Called", "Companies", "Notes",
    ),
    "MainLocation": ("Point",),
    "Point": ("Latitude", "Longitude"),
    "Caller": ("Number", "Ope_ID", "Surname", "Name", "Location"),
    "Location": ("Manual", "Automatic"),
    "Manual": (
        "PointOfInterest", "Toponymy", "Address", "CivicNumber", "CivicNumberAdditional", "City", "District",
        "Province", "CrossRoads", "AdditionalInfo",
    ),
    "CrossRoads": ("Toponymy", "Address"),
    "Automatic": ("CEDInterforze", "eCall", "AutomaticAlarms"),
    "CEDInterforze": ("Localization",),
    "eCall": ("Localization",),
    "AutomaticAlarms": ("Localization",),
    "Localization": ("Value", "Eucaris"),
    "Called": ("Number",),
    "Companies": ("Competence", "ForwardedTo"),
    "Competence": ("Primary", "PublicSecurity"),
    "Primary": ("Company",),
    "PublicSecurity": ("Company",),
    "ForwardedTo": ("Company",),
    "Company": ("Code", "Enabled", "Description"),
    "Notes": ("Note",),
}  # fmt: skip

MANUAL = "Caller/Location/Manual"
# The Manual leaves the caller's location is made of; they are written back as a group.
_MANUAL_TYPED = frozenset(
    f"{MANUAL}/{n}"
    for n in ("Toponymy", "Address", "CivicNumber", "CivicNumberAdditional", "City", "District", "Province")
) | {f"{MANUAL}/AdditionalInfo"}
CED_VALUE = "Caller/Location/Automatic/CEDInterforze/Localization/Value"
PRIMARY = "Companies/Competence/Primary/Company"
PUBLIC_SECURITY = "Companies/Competence/PublicSecurity/Company"

# Words that start an Italian street name: encode splits a street into Toponymy and Address.
_TOPONYMS = frozenset(
    {
        "via", "viale", "vialetto", "piazza", "piazzale", "piazzetta", "corso", "largo", "vicolo", "vico",
        "strada", "stradone", "lungomare", "lungarno", "lungotevere", "localita", "località", "contrada",
        "borgo", "salita", "discesa", "calle", "campo", "rione", "frazione", "traversa", "circonvallazione",
        "galleria", "passaggio", "rotonda", "sentiero", "vicoletto", "baluardo", "bastioni", "riva", "ponte",
    }
)  # fmt: skip
# Articles and prepositions ignored when Classification texts are compared.
_STOP_WORDS = frozenset(
    {
        "di", "d", "del", "dello", "della", "dei", "degli", "delle", "in", "nel", "nello", "nella", "nei", "negli",
        "nelle", "a", "al", "allo", "alla", "ai", "agli", "alle", "da", "dal", "dallo", "dalla", "dai", "dagli",
        "dalle", "con", "su", "sul", "sullo", "sulla", "sui", "sugli", "sulle", "per", "il", "lo", "la", "i", "gli",
        "le", "l", "un", "uno", "una", "e", "ed",
    }
)  # fmt: skip
_COMPANY_CODE_RE = re.compile(r"[0-9A-Za-z{}-]{1,38}")
_PHONE_RE = re.compile(r"\+?[0-9]{3,15}")  # the hub's E.164 rule (the card admits up to 20 digits)
_CIVIC_RE = re.compile(r"[A-Za-z0-9/ -]{1,16}")  # the hub's civic number rule
_CIVIC_SPLIT_RE = re.compile(r"([+-]?[0-9]{1,5})(?:/(.+))?", re.DOTALL)
_XML_DECLARATION_RE = re.compile(r"\A\s*<\?xml[^>]*\?>")
_SHORT_MIN, _SHORT_MAX = -32768, 32767
_UINT_MAX = 2**32 - 1
_LOCAL_REFERENCE_MAX = 64
# Elements a card may have: a real one has fewer than a hundred, and the hub admits 64 notes and
# 64 locations per incident; a card with thousands of notes is refused before it is validated.
MAX_ELEMENTS = 5000

Key = tuple[tuple[str, int], ...]


# -- paths -------------------------------------------------------------------------------


def _key(path: str) -> Key:
    """A path relative to ContactCard ("Notes/Note[1]") as (name, index) pairs, index 0 when absent."""
    out: list[tuple[str, int]] = []
    for part in path.split("/"):
        name, _, index = part.partition("[")
        out.append((name, int(index.rstrip("]")) if index else 0))
    return tuple(out)


def _q(name: str) -> str:
    return f"{{{NS}}}{name}"


def _find(root: etree._Element, path: str) -> etree._Element | None:
    return root.find("/".join(_q(p) for p in path.split("/")))


def _findall(root: etree._Element, path: str) -> list[etree._Element]:
    return list(root.iterfind("/".join(_q(p) for p in path.split("/"))))


def _text(root: etree._Element, path: str) -> str | None:
    element = _find(root, path)
    return None if element is None else (element.text or "")


# -- the classification table ----------------------------------------------------------------


def normalise_classification(text: str) -> str:
    """The comparison form of a Classification: lower case, no accents, no punctuation, no articles."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = re.sub(r"[^0-9a-z]+", " ", plain).split()
    return " ".join(w for w in words if w not in _STOP_WORDS)


@dataclass(frozen=True)
class Classifications:
    """The table: normalised text -> EIDO code, and EIDO code -> its first text."""

    by_text: Mapping[str, str]
    text_for: Mapping[str, str]


@cache
def classifications() -> Classifications:
    """The classification table, read once (adapters/data/nue112-classifications.csv)."""
    by_text: dict[str, str] = {}
    text_for: dict[str, str] = {}
    with (schemas.DATA / CLASSIFICATIONS).open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            text, code = row["classification"].strip(), row["eido_code"].strip()
            by_text.setdefault(normalise_classification(text), code)
            text_for.setdefault(code, text)
    return Classifications(by_text, text_for)


def eido_for_classification(text: str) -> str | None:
    """The EIDO incident type of a CUR Classification, or None when neither the table nor the registry knows it."""
    found = classifications().by_text.get(normalise_classification(text))
    if found is not None:
        return found
    stripped = text.strip()
    return stripped if stripped in codelists.load().eido_incident_types else None


def classification_for(eido_code: str) -> str:
    """The Classification text encode writes for an EIDO code: the table's first, else the code itself."""
    return classifications().text_for.get(eido_code, eido_code)


# -- ISTAT comuni ------------------------------------------------------------------------------


def _place_name(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^0-9a-z]+", " ", plain).split())


@cache
def _comuni_by_name() -> Mapping[tuple[str, str], str]:
    """(normalised name, province sigla) -> ISTAT code, from the current ISTAT list."""
    out: dict[tuple[str, str], str] = {}
    for code, comune in codelists.comuni_by_code().items():
        for name in (comune.name, *comune.name.split("/")):
            out.setdefault((_place_name(name), comune.sigla.upper()), code)
    return out


def comune_for(city: str, province: str) -> str | None:
    """The ISTAT code of a comune named by the card's City and Province (sigla), or None."""
    return _comuni_by_name().get((_place_name(city), province.strip().upper()))


# -- validation --------------------------------------------------------------------------------


def check_card(root: etree._Element) -> None:
    """Raise DocumentError at the first XSD error, naming the element by path and quoting the XSD message."""
    schema = schemas.xsd(XSD)
    if schema.validate(root):
        return
    errors = schema.error_log.filter_from_errors()
    if not errors:  # pragma: no cover - lxml reports at least one error when validation fails
        raise DocumentError("/ContactCard", "is not valid against the contact card XSD")
    error = errors[0]
    where = error.path or "/"
    try:
        found = root.getroottree().xpath(where)
    except etree.XPathError:
        found = None
    if isinstance(found, list) and found and isinstance(found[0], etree._Element):  # noqa: SLF001
        where = xml_path(found[0])
    message = error.message.replace(f"{{{NS}}}", "")
    raise DocumentError(where, f"line {error.line}: {message}")


# -- decode ------------------------------------------------------------------------------------


def decode(data: bytes, ctx: Context, *, companies: Mapping[str, str] | None = None) -> envelope_pb2.Envelope:
    """The envelope of one ContactCard; companies maps the CUR's company codes to agency ids.

    Raises UnsupportedDocument for another root or namespace, DocumentError (with the element
    path) for a card the XSD refuses or whose dates or coordinates cannot be used, and
    DocumentTooLarge over ctx.limits.
    """
    directory = _directory(companies)
    root = parse_xml(data, ctx.limits)
    if root.tag != ROOT:
        qname = etree.QName(root)
        where = f"{{{qname.namespace}}}{qname.localname}" if qname.namespace else qname.localname
        raise UnsupportedDocument(
            f"/{local_name(root)}", f"root {where} is not a 112 NUE contact card (ContactCard in {NS})"
        )
    count = sum(1 for _ in root.iter())
    if count > MAX_ELEMENTS:
        raise DocumentTooLarge("/ContactCard", f"has {count} elements, over the card bound of {MAX_ELEMENTS}")
    check_card(root)
    env = _Decoder(root, ctx, directory).envelope()
    typed = _typed_leaves(env, env.incident, _reverse(directory), with_companies=False)
    doc = _leaves(root)
    manual_differs = {_key(k): v for k, v in doc if _is_manual(k)} != {k: v for k, v in typed.items() if _is_manual(k)}
    for path, value in doc:
        key = _key(path)
        if key in typed and typed[key] == value and not (manual_differs and _is_manual(key)):
            continue
        env.origin.unmapped.append(envelope_pb2.OriginField(path=path, value=value))
    document.classify(env.origin, PERSONAL_PATHS)
    return env


# The personal-data category of a card's unmapped elements, by path: the network's data about
# the caller (CED Interforze, eCall, alarms; vehicle data of an eCall as vehicles), anything
# else about the caller, and the CUR operator.
PERSONAL_PATHS = (
    (r"^Caller/Location/Automatic/.*(Eucaris|VIN|Vehicle)", "vehicles"),
    (r"^Caller/Location/Automatic/", "network_location"),
    (r"^Caller/", "caller"),
    (r"^Operator$", "staff"),
)


def _directory(companies: Mapping[str, str] | None) -> Mapping[str, str]:
    directory = dict(companies or {})
    for code, agency in directory.items():
        if not ids.is_agency_id(agency):
            raise ValueError(f"companies[{code!r}] = {agency!r} is not an agency id (such as it.ps.questura-mi)")
    return directory


def _reverse(directory: Mapping[str, str]) -> Mapping[str, str]:
    out: dict[str, str] = {}
    for code, agency in directory.items():
        out.setdefault(agency, code)
    return out


def _is_manual(key: Key | str) -> bool:
    path = key if isinstance(key, str) else "/".join(n for n, _ in key)
    return path in _MANUAL_TYPED


def _leaves(root: etree._Element) -> list[tuple[str, str]]:
    """Every leaf of the card (and every empty complex element, with ""), in document order.

    Paths as document.xml_path spells them, computed in one walk (a card may have thousands of notes).
    """
    out: list[tuple[str, str]] = []

    def walk(element: etree._Element, prefix: str) -> None:
        children = list(element.iterchildren(tag=etree.Element))
        counts: dict[str, int] = {}
        for child in children:
            counts[str(child.tag)] = counts.get(str(child.tag), 0) + 1
        seen: dict[str, int] = {}
        for child in children:
            name, tag = local_name(child), str(child.tag)
            index = seen.get(tag, 0)
            seen[tag] = index + 1
            path = f"{prefix}{name}[{index}]" if counts[tag] > 1 else f"{prefix}{name}"
            if name not in _CHILDREN:
                out.append((path, child.text or ""))
            elif len(child) == 0:
                out.append((path, ""))
            else:
                walk(child, path + "/")

    walk(root, "")
    return out


class _Decoder:
    """One card's decoding to typed fields (origin.unmapped is filled by decode afterwards)."""

    def __init__(self, root: etree._Element, ctx: Context, directory: Mapping[str, str]) -> None:
        self.root = root
        self.ctx = ctx
        self.directory = directory

    def envelope(self) -> envelope_pb2.Envelope:
        root, ctx = self.root, self.ctx
        card_id = str(int(_text(root, "ID") or "0"))
        created = _timestamp(_text(root, "CreateDate") or "", "/ContactCard/CreateDate")
        link_text = _text(root, "ContactCardLink")
        link = str(int(link_text)) if link_text is not None else None
        env = envelope_pb2.Envelope(
            distribution_id=distribution_id(FORMAT, ctx.agency_id, card_id),
            sender=common_pb2.Sender(agency_id=ctx.agency_id),
            sent_at=created,
            status=common_pb2.STATUS_ACTUAL,
            kind=common_pb2.KIND_REPORT,
            confidentiality=common_pb2.CONFIDENTIALITY_RESTRICTED,
            legal_basis=ctx.legal_basis(),
            origin=envelope_pb2.Origin(format=FORMAT, identifier=card_id),
        )
        incident_number = card_id
        if link is not None and link != card_id:
            env.kind = common_pb2.KIND_UPDATE
            env.references.append(
                common_pb2.Reference(
                    distribution_id=distribution_id(FORMAT, ctx.agency_id, link), sender_agency_id=ctx.agency_id
                )
            )
            incident_number = link
        operator = (_text(root, "Operator") or "").strip()
        if ids.LOCAL_ID_RE.fullmatch(operator):
            env.sender.operator_id = operator
        inc = env.incident
        inc.id = f"{INCIDENT_URN}{incident_number}:{ctx.agency_id}"
        env.incident_ids.append(inc.id)
        inc.status = incident_pb2.INCIDENT_STATUS_ACTIVE
        reference = (_text(root, "Reference") or "").strip()
        if reference and len(reference) <= _LOCAL_REFERENCE_MAX:
            inc.local_reference = reference
        classification = _text(root, "Classification") or ""
        eido = eido_for_classification(classification) or FALLBACK_EIDO
        inc.type.eido_code = eido
        emsi = codes.emsi_for(eido)
        if emsi:
            inc.type.emsi_category = emsi
        detail = _text(root, "ClassificationDetail")
        if detail:
            inc.description = detail
        inc.priority = common_pb2.PRIORITY_HIGH if _text(root, "HighPriority") == "TRUE" else common_pb2.PRIORITY_NORMAL
        involved = _text(root, "InvolvedNumber")
        if involved is not None and int(involved) > 0:
            inc.involved_count = int(involved)
        self.main_location(env)
        self.call(inc, card_id, created)
        self.caller_location(inc)
        for note in _findall(root, "Notes/Note"):
            if note.text:
                inc.notes.append(incident_pb2.Note(text=note.text))
        self.recipients(env)
        return env

    def main_location(self, env: envelope_pb2.Envelope) -> None:
        lat_text = _text(self.root, "MainLocation/Point/Latitude")
        lon_text = _text(self.root, "MainLocation/Point/Longitude")
        if lat_text is None or lon_text is None:
            return
        lat = _coordinate(lat_text, 90, "/ContactCard/MainLocation/Point/Latitude")
        lon = _coordinate(lon_text, 180, "/ContactCard/MainLocation/Point/Longitude")
        env.incident.locations.append(
            common_pb2.Location(
                type="CurrentIncident",
                point=common_pb2.GeoPoint(latitude=lat, longitude=lon),
                source=common_pb2.LOCATION_SOURCE_OPERATOR,
            )
        )
        comune = places.place_index().comune_at(lat, lon)
        if comune:
            env.target_areas.append(common_pb2.Area(comune_istat=comune))

    def call(self, inc: incident_pb2.Incident, card_id: str, created: Timestamp) -> None:
        root = self.root
        call = inc.call
        call.call_id = card_id
        call.started_at.CopyFrom(created)
        number = _text(root, "Caller/Number")
        if number and _PHONE_RE.fullmatch(number):
            call.caller.phone = number
        surname = _text(root, "Caller/Surname")
        if surname:
            call.caller.surname = surname
        name = _text(root, "Caller/Name")
        if name:
            call.caller.name = name
        value = _text(root, CED_VALUE)
        if value:
            call.network_location.raw_value = value

    def caller_location(self, inc: incident_pb2.Incident) -> None:
        manual = _find(self.root, MANUAL)
        if manual is None:
            return

        def get(name: str) -> str:
            return (_text(manual, name) or "").strip()

        address = common_pb2.Address()
        address.street = " ".join(p for p in (get("Toponymy"), get("Address")) if p)
        number, additional = get("CivicNumber"), get("CivicNumberAdditional")
        civic = "/".join(p for p in (str(int(number)) if number else "", additional) if p)
        if civic and _CIVIC_RE.fullmatch(civic):
            address.civic_number = civic
        address.locality = get("District")
        info = _text(manual, "AdditionalInfo")
        if info:
            address.additional_info = info
        city, province = get("City"), get("Province")
        comune = comune_for(city, province) if city and province else None
        if not (address.ListFields() or comune):
            return
        location = inc.locations.add(type="Caller", source=common_pb2.LOCATION_SOURCE_CALLER)
        if address.ListFields():
            location.address.CopyFrom(address)
        if comune:
            location.comune_istat = comune

    def recipients(self, env: envelope_pb2.Envelope) -> None:
        found = list(self.ctx.recipients)
        for code in (
            _findall(self.root, "Companies/Competence/Primary/Company/Code")
            + _findall(self.root, "Companies/Competence/PublicSecurity/Company/Code")
            + _findall(self.root, "Companies/ForwardedTo/Company/Code")
        ):
            agency = self.directory.get((code.text or "").strip())
            if agency:
                found.append(agency)
        seen: set[str] = set()
        for agency in found:
            if agency not in seen and agency != self.ctx.agency_id:
                env.recipients.append(agency)
            seen.add(agency)


def _timestamp(text: str, path: str) -> Timestamp:
    """An xs:dateTime as a Timestamp; without an offset it is Italian local time."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise DocumentError(path, f"{text.strip()!r} is not a usable date-time ({exc})") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=ROME)
    out = Timestamp()
    try:
        out.FromDatetime(at.astimezone(UTC))
    except (ValueError, OverflowError) as exc:
        raise DocumentError(path, f"{text.strip()!r} is out of the representable range ({exc})") from None
    return out


def _coordinate(text: str, bound: int, path: str) -> float:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise DocumentError(path, f"{text.strip()!r} is not a decimal number") from None
    if not value.is_finite() or not -bound <= value <= bound:
        raise DocumentError(path, f"{text.strip()} is out of range: must be between -{bound} and {bound} degrees")
    return float(value)


# -- encode ------------------------------------------------------------------------------------


def encode(env: envelope_pb2.Envelope, *, companies: Mapping[str, str] | None = None) -> bytes:
    """The ContactCard of an envelope with an incident (or a hand-over's incident), validated against the XSD.

    companies is the same directory decode takes (CUR company code -> agency id), read the other
    way to write the recipients' codes. Raises DocumentError naming the envelope field when
    the card cannot express the envelope (another payload, a cancellation, a required value missing).
    """
    payload = env.WhichOneof("payload")
    if payload == "incident":
        incident = env.incident
    elif payload == "handover_request":
        incident = env.handover_request.incident
    else:
        raise DocumentError(
            str(payload or "payload"), "a contact card carries an incident or a hand-over's incident only"
        )
    if env.kind == common_pb2.KIND_CANCEL:
        raise DocumentError("kind", "a contact card cannot withdraw an earlier card (KIND_CANCEL)")
    ours = env.origin.format == FORMAT
    unmapped = list(env.origin.unmapped) if ours else []
    keys = [_unmapped_key(i, f.path) for i, f in enumerate(unmapped)]
    from_unmapped = set(keys)
    has_companies = any(k[0][0] == "Companies" for k in from_unmapped)
    leaves = _typed_leaves(env, incident, _reverse(_directory(companies)), with_companies=not has_companies)
    if any(_is_manual(k) for k in from_unmapped):
        leaves = {k: v for k, v in leaves.items() if not _is_manual(k)}
    for key, item in zip(keys, unmapped, strict=True):
        if key == (("Classification", 0),) and (
            (eido_for_classification(item.value) or FALLBACK_EIDO) != incident.type.eido_code
        ):
            continue  # the classification changed since the card was decoded: the table's text is written
        leaves[key] = item.value
    root = _build(leaves)
    check_card(root)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True)


def _unmapped_key(index: int, path: str) -> Key:
    try:
        return _key(path)
    except ValueError:
        raise DocumentError(f"origin.unmapped[{index}].path", f"{path!r} is not a contact card path") from None


def _typed_leaves(
    env: envelope_pb2.Envelope, inc: incident_pb2.Incident, reverse: Mapping[str, str], *, with_companies: bool
) -> dict[Key, str]:
    """The card's leaves the envelope's typed fields write, by path."""
    out: dict[Key, str] = {}

    def put(path: str, value: str) -> None:
        out[_key(path)] = value

    _head_leaves(env, inc, put)
    _caller_leaves(inc, put)
    if with_companies:
        _companies(env, reverse, put)
    for i, note in enumerate(n for n in inc.notes if n.text):
        put(f"Notes/Note[{i}]", note.text)
    return out


def _head_leaves(env: envelope_pb2.Envelope, inc: incident_pb2.Incident, put: Callable[[str, str], None]) -> None:
    """ID to MainLocation."""
    card_id = _card_id(env, inc)
    put("ID", card_id)
    when = inc.call.started_at if inc.call.HasField("started_at") else env.sent_at if env.HasField("sent_at") else None
    if when is None:
        raise DocumentError("sent_at", "is required: it is the card's CreateDate")
    put("CreateDate", _xs_datetime(when))
    if env.sender.operator_id:
        put("Operator", env.sender.operator_id)
    if inc.local_reference:
        put("Reference", inc.local_reference)
    if not inc.type.eido_code:
        raise DocumentError("incident.type.eido_code", "is required: it is the card's Classification")
    put("Classification", classification_for(inc.type.eido_code))
    if inc.description:
        put("ClassificationDetail", inc.description)
    high = inc.priority in (common_pb2.PRIORITY_HIGH, common_pb2.PRIORITY_IMMEDIATE)
    put("HighPriority", "TRUE" if high else "FALSE")
    if inc.involved_count:
        if inc.involved_count > 9999:
            raise DocumentError("incident.involved_count", f"is {inc.involved_count}; a card holds at most 9999")
        put("InvolvedNumber", str(inc.involved_count))
    link = _linked_card(inc.id, card_id)
    if link:
        put("ContactCardLink", link)
    main = next((loc for loc in inc.locations if loc.type == "CurrentIncident" and loc.HasField("point")), None)
    if main is not None:
        put("MainLocation/Point/Latitude", _xs_decimal(main.point.latitude, "incident.locations.point.latitude"))
        put("MainLocation/Point/Longitude", _xs_decimal(main.point.longitude, "incident.locations.point.longitude"))


def _caller_leaves(inc: incident_pb2.Incident, put: Callable[[str, str], None]) -> None:
    """Caller and Called."""
    caller = inc.call.caller
    put("Caller", "")
    if caller.phone:
        put("Caller/Number", caller.phone)
    if caller.surname:
        put("Caller/Surname", caller.surname)
    if caller.name:
        put("Caller/Name", caller.name)
    where = next((loc for loc in inc.locations if loc.type == "Caller"), None)
    if where is not None:
        for name, value in _manual(where).items():
            put(f"{MANUAL}/{name}", value)
    if inc.call.network_location.raw_value:
        put(CED_VALUE, inc.call.network_location.raw_value)
    put("Called", "")


def _card_id(env: envelope_pb2.Envelope, inc: incident_pb2.Incident) -> str:
    """The card's ID: the decoded card's own, else the call id when it is one, else derived from the distribution id."""
    if env.origin.format == FORMAT and env.origin.identifier.isdigit() and int(env.origin.identifier) <= _UINT_MAX:
        return str(int(env.origin.identifier))
    if inc.call.call_id.isdigit() and int(inc.call.call_id) <= _UINT_MAX:
        return str(int(inc.call.call_id))
    try:
        return str(uuid.UUID(env.distribution_id).int % (_UINT_MAX + 1))
    except ValueError:
        raise DocumentError("distribution_id", "is not a UUID, and no numeric card id is known") from None


def _linked_card(incident_id: str, card_id: str) -> str | None:
    """The ID of the card an incident id built by decode names, when it is another card's."""
    if not incident_id.startswith(INCIDENT_URN):
        return None
    number = incident_id.removeprefix(INCIDENT_URN).split(":", 1)[0]
    if number.isdigit() and int(number) <= _UINT_MAX and str(int(number)) != card_id:
        return str(int(number))
    return None


def _manual(location: common_pb2.Location) -> dict[str, str]:
    """The Manual elements of a caller's location (name -> text)."""
    out: dict[str, str] = {}
    address = location.address
    if address.street:
        first, _, rest = address.street.partition(" ")
        if first.casefold() in _TOPONYMS and rest.strip():
            out["Toponymy"], out["Address"] = first, rest.strip()
        else:
            out["Address"] = address.street
    if address.civic_number:
        match = _CIVIC_SPLIT_RE.fullmatch(address.civic_number)
        if match and _SHORT_MIN <= int(match.group(1)) <= _SHORT_MAX:
            out["CivicNumber"] = str(int(match.group(1)))
            if match.group(2):
                out["CivicNumberAdditional"] = match.group(2)
        else:
            out["CivicNumberAdditional"] = address.civic_number
    comune = codelists.comuni_by_code().get(location.comune_istat) if location.comune_istat else None
    if comune is not None and comune.sigla:
        out["City"], out["Province"] = comune.name, comune.sigla
    if address.locality:
        out["District"] = address.locality
    if address.additional_info:
        out["AdditionalInfo"] = address.additional_info
    return out


def _companies(env: envelope_pb2.Envelope, reverse: Mapping[str, str], put: Callable[[str, str], None]) -> None:
    """Companies from the recipients: the first is the Primary competence, all are PublicSecurity."""
    if not env.recipients:
        raise DocumentError("recipients", "a card needs at least one company (Companies/Competence/Primary)")
    codes_ = [_company_code(agency, reverse, f"recipients[{i}]") for i, agency in enumerate(env.recipients)]
    put(f"{PRIMARY}/Code", codes_[0])
    put(f"{PRIMARY}/Enabled", "TRUE")
    for i, code in enumerate(codes_):
        put(f"{PUBLIC_SECURITY}[{i}]/Code", code)
        put(f"{PUBLIC_SECURITY}[{i}]/Enabled", "TRUE")
    put("Companies/ForwardedTo", "")


def _company_code(agency: str, reverse: Mapping[str, str], path: str) -> str:
    """The CUR's code of an agency: from the directory, else the agency id with hyphens for dots."""
    code = reverse.get(agency) or agency.replace(".", "-")
    if not _COMPANY_CODE_RE.fullmatch(code):
        raise DocumentError(path, f"{agency} has no company code in the directory and {code!r} is not one")
    return code


def _xs_datetime(ts: Timestamp) -> str:
    at = ts.ToDatetime(tzinfo=UTC).astimezone(ROME)
    return at.isoformat(timespec="microseconds" if at.microsecond else "seconds")


def _xs_decimal(value: float, path: str) -> str:
    decimal = Decimal(repr(value)) if value == value else Decimal("NaN")  # noqa: PLR0124
    if not decimal.is_finite():
        raise DocumentError(path, "is not a finite number")
    return format(decimal, "f")


def _build(leaves: Mapping[Key, str]) -> etree._Element:
    """The card holding these leaves, every element in the XSD's order."""
    root = etree.Element(ROOT, nsmap={None: NS})
    nodes: dict[Key, etree._Element] = {(): root}
    for key, value in leaves.items():
        parent = root
        for depth in range(1, len(key) + 1):
            prefix = key[:depth]
            node = nodes.get(prefix)
            if node is None:
                node = etree.SubElement(parent, _q(prefix[-1][0]))
                nodes[prefix] = node
            parent = node
        if key[-1][0] not in _CHILDREN:
            try:
                parent.text = value
            except ValueError:
                raise DocumentError(
                    "/ContactCard/" + "/".join(n for n, _ in key), "has characters XML cannot carry"
                ) from None
    position = {id(node): key[-1][1] for key, node in nodes.items() if key}
    for node in nodes.values():
        if len(node) > 1:
            names = _CHILDREN.get(local_name(node), ())

            def rank(child: etree._Element, names: tuple[str, ...] = names) -> tuple[int, int]:
                name = local_name(child)
                return (names.index(name) if name in names else len(names), position[id(child)])

            node[:] = sorted(node, key=rank)
    return root


# -- SOAP (GestContatto) -----------------------------------------------------------------------


@dataclass(frozen=True)
class GestContatto:
    """A GestContatto call: its SOAP version, its string parameters, and the card it carries."""

    soap_version: str
    parameters: Mapping[str, str]
    card: bytes


def gest_contatto(data: bytes, limits: Limits = DEFAULT_LIMITS) -> GestContatto:
    """The ContactCard of a SOAP 1.1 or 1.2 GestContatto request (the card is the SchedaContatto string).

    SchedaContatto is a string parameter holding the card's XML (escaped or in CDATA); a
    ContactCard element in its place is accepted too. Raises UnsupportedDocument for another
    envelope or operation, DocumentError naming the element when the card is missing.
    """
    root = parse_xml(data, limits)
    qname = etree.QName(root)
    versions = {SOAP11_NS: "1.1", SOAP12_NS: "1.2"}
    if qname.localname != "Envelope" or qname.namespace not in versions:
        raise UnsupportedDocument(f"/{qname.localname}", f"is not a SOAP 1.1 or 1.2 Envelope ({qname.namespace})")
    body = root.find(f"{{{qname.namespace}}}Body")
    if body is None:
        raise DocumentError("/Envelope/Body", "is missing")
    operation = next(iter(body.iterchildren(tag=etree.Element)), None)
    if operation is None or operation.tag != f"{{{SERVICE_NS}}}GestContatto":
        what = "nothing" if operation is None else etree.QName(operation).text
        raise UnsupportedDocument("/Envelope/Body", f"holds {what}, not a GestContatto call ({SERVICE_NS})")
    parameters: dict[str, str] = {}
    card: bytes | None = None
    for child in operation.iterchildren(tag=etree.Element):
        name = etree.QName(child)
        if name.namespace not in (SERVICE_NS, None) or name.localname not in GEST_CONTATTO_PARAMETERS:
            continue
        if name.localname != "SchedaContatto":
            parameters[name.localname] = child.text or ""
            continue
        inner = next(iter(child.iterchildren(tag=etree.Element)), None)
        if inner is not None:
            card = etree.tostring(inner, encoding="utf-8")
        elif (child.text or "").strip():
            card = _XML_DECLARATION_RE.sub("", child.text or "", count=1).strip().encode("utf-8")
    if card is None:
        raise DocumentError(xml_path(operation) + "/SchedaContatto", "is missing or empty: no contact card")
    return GestContatto(versions[qname.namespace], parameters, card)


def soap_fault(error: DocumentError, *, soap_version: str = "1.1", server: bool = False) -> bytes:
    """The SOAP fault answering a refused card: faultstring "<path>: <reason>".

    The sender's fault (Client, Sender) unless server: then the receiver's (Server, Receiver), a
    call worth making again later.
    """
    if soap_version == "1.1":
        envelope = etree.Element(f"{{{SOAP11_NS}}}Envelope", nsmap={"soap": SOAP11_NS})
        fault = etree.SubElement(etree.SubElement(envelope, f"{{{SOAP11_NS}}}Body"), f"{{{SOAP11_NS}}}Fault")
        etree.SubElement(fault, "faultcode").text = "soap:Server" if server else "soap:Client"
        etree.SubElement(fault, "faultstring").text = _xml_safe(f"{error.path}: {error.reason}")
    elif soap_version == "1.2":
        envelope = etree.Element(f"{{{SOAP12_NS}}}Envelope", nsmap={"env": SOAP12_NS})
        fault = etree.SubElement(etree.SubElement(envelope, f"{{{SOAP12_NS}}}Body"), f"{{{SOAP12_NS}}}Fault")
        code = etree.SubElement(fault, f"{{{SOAP12_NS}}}Code")
        etree.SubElement(code, f"{{{SOAP12_NS}}}Value").text = "env:Receiver" if server else "env:Sender"
        reason = etree.SubElement(fault, f"{{{SOAP12_NS}}}Reason")
        text = etree.SubElement(reason, f"{{{SOAP12_NS}}}Text")
        text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        text.text = _xml_safe(f"{error.path}: {error.reason}")
    else:
        raise ValueError(f"soap_version must be '1.1' or '1.2', not {soap_version!r}")
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def _xml_safe(text: str) -> str:
    """The text without the characters XML 1.0 cannot carry (a reason may quote a hostile value)."""
    return "".join(c if _xml_char(c) else "?" for c in text)


def _xml_char(c: str) -> bool:
    return c in "\t\n\r" or " " <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd" or c >= "\U00010000"


# The GestContatto answer of the published PSAP2 service (vvfosprojects/sovvf, SO115App.WSNue:
# GestContattoResponse, one string field `response`, "OK" or "Error: <why>"), as WCF writes it.
RESULT_NS = "http://schemas.datacontract.org/2004/07/SO115App.WSNue.DataContract"
OK = "OK"


def gest_contatto_request(card: bytes, parameters: Mapping[str, str]) -> bytes:
    """A SOAP 1.1 GestContatto call carrying a card (the SchedaContatto string) and the other parameters."""
    envelope = etree.Element(f"{{{SOAP11_NS}}}Envelope", nsmap={"soap": SOAP11_NS})
    body = etree.SubElement(envelope, f"{{{SOAP11_NS}}}Body")
    call = etree.SubElement(body, f"{{{SERVICE_NS}}}GestContatto", nsmap={None: SERVICE_NS})
    for name in GEST_CONTATTO_PARAMETERS:
        value = card.decode("utf-8") if name == "SchedaContatto" else parameters.get(name)
        if value is not None:
            etree.SubElement(call, f"{{{SERVICE_NS}}}{name}").text = _xml_safe(value)
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def gest_contatto_response(result: str) -> bytes:
    """The SOAP 1.1 answer of a GestContatto call: "OK", or "Error: <why>"."""
    envelope = etree.Element(f"{{{SOAP11_NS}}}Envelope", nsmap={"soap": SOAP11_NS})
    body = etree.SubElement(envelope, f"{{{SOAP11_NS}}}Body")
    answer = etree.SubElement(body, f"{{{SERVICE_NS}}}GestContattoResponse", nsmap={None: SERVICE_NS})
    result_element = etree.SubElement(answer, f"{{{SERVICE_NS}}}GestContattoResult", nsmap={"a": RESULT_NS})
    etree.SubElement(result_element, f"{{{RESULT_NS}}}response").text = _xml_safe(result)
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def gest_contatto_result(data: bytes, limits: Limits = DEFAULT_LIMITS) -> str:
    """The result string of a GestContatto answer ("OK", "Error: ..."); a SOAP fault as "Fault: <reason>"."""
    root = parse_xml(data, limits)
    fault = next(root.iter(f"{{{SOAP11_NS}}}Fault", f"{{{SOAP12_NS}}}Fault"), None)
    if fault is not None:
        reason = fault.findtext("faultstring") or "".join(fault.itertext()).strip()
        return f"Fault: {reason}"
    response = next(root.iter(f"{{{RESULT_NS}}}response", "response", f"{{{SERVICE_NS}}}response"), None)
    if response is None:
        raise DocumentError(xml_path(root), "holds no GestContatto result")
    return (response.text or "").strip()


def company_directory(pairs: Sequence[str]) -> dict[str, str]:
    """The CUR company directory from "CODE=AGENCY" pairs; ValueError naming a malformed pair."""
    out: dict[str, str] = {}
    for pair in pairs:
        code, sep, agency = pair.partition("=")
        if not (sep and code and agency):
            raise ValueError(f"{pair!r} is not CODE=AGENCY")
        out[code] = agency
    return out
