"""The CAP 1.2 codec: the appendix examples both ways, every field's mapping, plates in masked paths, precise errors."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from adapters import cap, document, schemas
from adapters.document import Context, DocumentError, DocumentTooLarge, Limits, UnsupportedDocument
from broker.policy import redact
from broker.validate import codelists
from broker.validate.checker import ValidationContext, validate_envelope
from tests import factories

EXAMPLES = Path(__file__).parent / "examples" / "cap"
APPENDIX = sorted(EXAMPLES.glob("cap-1.2-appendix-A*.xml"))
AGENCY = "it.pl.001272"
CTX = Context(agency_id=AGENCY)
LIVENESS_S = 2.0  # the liveness bound every decode must stay well under
DIGEST = "3f786850e387550fdab836ed7e6dc881de23001b"

# An Italian plate-reader hit as a Polizia Locale's reader system would send it.
PLATE_READER = f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>PLT-2026-000123</identifier>
  <sender>varchi@pl.torino.example</sender>
  <sent>2026-11-23T13:00:00+01:00</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <source>varco-07</source>
  <scope>Restricted</scope>
  <restriction>sale operative</restriction>
  <addresses>questura "sala operativa carabinieri"</addresses>
  <code>PLATE-READER</code>
  <note>lettura confermata dall'operatore</note>
  <incidents>urn:emergency:uid:incidentid:test-0001:nue.to.it</incidents>
  <info>
    <language>it-IT</language>
    <category>Security</category>
    <event>Transito veicolo segnalato</event>
    <responseType>Monitor</responseType>
    <urgency>Immediate</urgency>
    <severity>Moderate</severity>
    <certainty>Observed</certainty>
    <audience>sale operative</audience>
    <eventCode><valueName>SCNTT</valueName><value>RUBATO</value></eventCode>
    <expires>2026-11-23T14:00:00+01:00</expires>
    <senderName>Polizia Locale di Torino</senderName>
    <headline>Veicolo rubato in transito</headline>
    <description>Transito di {factories.PLATE} al varco 07, corso Regina Margherita</description>
    <web>https://pl.example/varchi</web>
    <contact>sala operativa</contact>
    <parameter><valueName>VARCO</valueName><value>07</value></parameter>
    <parameter><valueName>VEHICLE_1_RELATIONSHIP</valueName><value>SuspectVehicle</value></parameter>
    <parameter><valueName>VEHICLE_1_PLATE</valueName><value>{factories.PLATE}</value></parameter>
    <parameter><valueName>VEHICLE_1_PLATE_COUNTRY</valueName><value>IT</value></parameter>
    <parameter><valueName>VEHICLE_1_MAKE</valueName><value>Fiat</value></parameter>
    <resource>
      <resourceDesc>foto del transito</resourceDesc>
      <mimeType>image/jpeg</mimeType>
      <size>48213</size>
      <uri>https://varchi.pl.torino.example/foto/000123.jpg</uri>
      <digest>{DIGEST}</digest>
    </resource>
    <area>
      <areaDesc>Torino, corso Regina Margherita</areaDesc>
      <polygon>45.07,7.67 45.08,7.67 45.08,7.68 45.07,7.67</polygon>
      <circle>45.0781,7.6761 0.1</circle>
      <geocode><valueName>ISTAT</valueName><value>001272</value></geocode>
      <geocode><valueName>NUTS3</valueName><value>ITC11</value></geocode>
      <altitude>780</altitude>
      <ceiling>1200.5</ceiling>
    </area>
  </info>
</alert>
""".encode()
PLATE_READER_SENT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


# -- comparing documents field by field --------------------------------------------------------

_TIMES = {"sent", "effective", "onset", "expires"}


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


def _numbers(text: str) -> list[float]:
    return [float(n) for n in re.split(r"[\s,]+", text.strip())]


def canonical(element: etree._Element) -> Any:
    """A document as nested tuples: whitespace collapsed, times as instants, coordinates as numbers.

    An info without language gets CAP's default "en-US" (the XSD's default, an equivalent notation).
    """
    name = etree.QName(element).localname
    text = " ".join((element.text or "").split())
    value: Any = text
    if name in _TIMES:
        value = _instant(text)
    elif name in ("polygon", "circle", "altitude", "ceiling"):
        value = _numbers(text)
    elif name == "references":
        value = [(s, i, _instant(t)) for s, i, t in (entry.split(",") for entry in text.split())]
    children = [canonical(child) for child in element if isinstance(child.tag, str)]
    if name == "info" and not any(child[0] == "language" for child in children):
        children.insert(0, ("language", "en-US", ()))
    return (name, value, tuple(children))


def same_document(a: bytes, b: bytes) -> None:
    assert canonical(document.parse_xml(a)) == canonical(document.parse_xml(b))


# -- the appendix examples -------------------------------------------------------------------


@pytest.mark.parametrize("path", APPENDIX, ids=lambda p: p.stem)
def test_appendix_examples_round_trip_field_by_field(path: Path) -> None:
    original = path.read_bytes()
    env = cap.decode(original, CTX)
    encoded = cap.encode(env)
    schemas.check_xml(document.parse_xml(encoded), "cap/CAP-v1.2.xsd")
    same_document(encoded, original)
    # and the offsets of the originals are written back as they were
    assert re.search(rb"<sent>([^<]+)</sent>", encoded).group(1) == re.search(rb"<sent>([^<]+)</sent>", original).group(
        1
    )  # type: ignore[union-attr]
    assert cap.decode(encoded, CTX) == env


def test_comparison_can_fail() -> None:
    original = APPENDIX[0].read_bytes()
    with pytest.raises(AssertionError):
        same_document(original, original.replace(b"Severe", b"Extreme"))
    with pytest.raises(AssertionError):
        same_document(original, original.replace(b"14:39:01-05:00", b"14:39:01-04:00"))


def test_a1_header_info_and_resource() -> None:
    env = cap.decode(APPENDIX[0].read_bytes(), Context(agency_id=AGENCY, recipients=("it.ps.questura.to",)))
    assert env.distribution_id == document.distribution_id("cap-1.2", "hsas@dhs.gov", "43b080713727")
    assert env.sender.agency_id == AGENCY  # the connector's, never the document's
    assert env.recipients == ["it.ps.questura.to"]
    assert env.origin.format == "cap-1.2"
    assert env.origin.identifier == "43b080713727"
    assert env.origin.sender == "hsas@dhs.gov"
    assert env.sent_at.ToDatetime(UTC) == datetime(2003, 4, 2, 19, 39, 1, tzinfo=UTC)
    assert env.status == common_pb2.STATUS_ACTUAL
    assert env.kind == common_pb2.KIND_REPORT
    assert env.confidentiality == common_pb2.CONFIDENTIALITY_UNCLASSIFIED
    assert env.legal_basis == CTX.legal_basis()
    alert = env.alert
    assert alert.scope == alert_pb2.SCOPE_PUBLIC
    (info,) = alert.infos
    assert info.language == "en-US"  # CAP's default
    assert list(info.categories) == [alert_pb2.CATEGORY_SECURITY]
    assert info.event == "Homeland Security Advisory System Update"
    assert (info.urgency, info.severity, info.certainty) == (
        alert_pb2.URGENCY_IMMEDIATE,
        alert_pb2.SEVERITY_SEVERE,
        alert_pb2.CERTAINTY_LIKELY,
    )
    assert info.sender_name == "U.S. Government, Department of Homeland Security"
    assert info.headline == "Homeland Security Sets Code ORANGE"
    assert info.description.startswith("The Department of Homeland Security has elevated")
    assert info.instruction.startswith(" A High Condition")
    assert info.web == "http://www.dhs.gov/dhspublic/display?theme=29"
    assert list(info.parameters) == [alert_pb2.NamedValue(name="HSAS", value="ORANGE")]
    assert list(info.resources) == [
        common_pb2.MediaReference(
            description="Image file (GIF)", media_type="image/gif", uri="http://www.dhs.gov/dhspublic/getAdvisoryImage"
        )
    ]
    assert [a.area_desc for a in info.areas] == ["U.S. nationwide and interests worldwide"]
    assert not env.HasField("expires_at")
    assert [(f.path, f.value) for f in env.origin.unmapped] == [("sent", "2003-04-02T14:39:01-05:00")]


def test_a2_polygon_geocodes_expires_contact() -> None:
    env = cap.decode(APPENDIX[1].read_bytes(), CTX)
    (info,) = env.alert.infos
    assert list(info.response_types) == ["Shelter"]
    assert list(info.event_codes) == [alert_pb2.NamedValue(name="SAME", value="SVR")]
    assert info.expires.ToDatetime(UTC) == datetime(2003, 6, 17, 23, 0, tzinfo=UTC)
    assert env.expires_at == info.expires  # the latest info expiry
    assert info.contact == "BARUFFALDI/JUSKIE"
    (area,) = info.areas
    (polygon,) = area.polygons
    assert [(p.latitude, p.longitude) for p in polygon.points] == [
        (38.47, -120.14),
        (38.34, -119.95),
        (38.52, -119.74),
        (38.62, -119.89),
        (38.47, -120.14),
    ]
    assert [(g.name, g.value) for g in area.geocodes] == [("SAME", "006109"), ("SAME", "006009"), ("SAME", "006003")]
    assert not area.comuni_istat
    assert not env.target_areas


def test_a3_update_references_circle() -> None:
    env = cap.decode(APPENDIX[2].read_bytes(), CTX)
    assert env.kind == common_pb2.KIND_UPDATE
    (ref,) = env.references
    assert ref.distribution_id == document.distribution_id("cap-1.2", "trinet@caltech.edu", "TRI13970876.1")
    assert ref.sender_agency_id == AGENCY  # the reference names the document's own sender: the same room
    assert ("references", "trinet@caltech.edu,TRI13970876.1,2003-06-11T20:30:00-07:00") in [
        (f.path, f.value) for f in env.origin.unmapped
    ]
    (circle,) = env.alert.infos[0].areas[0].circles
    assert (circle.center.latitude, circle.center.longitude, circle.radius_km) == (32.9525, -115.5527, 0.0)
    assert [p.name for p in env.alert.infos[0].parameters] == ["EventID", "Version", "Magnitude", "Depth", "Quality"]


def test_a3_reference_points_to_the_decoded_earlier_message() -> None:
    earlier = APPENDIX[2].read_bytes().replace(b"TRI13970876.2", b"TRI13970876.1")
    assert (
        cap.decode(APPENDIX[2].read_bytes(), CTX).references[0].distribution_id
        == cap.decode(earlier, CTX).distribution_id
    )


def test_a4_two_languages_and_source() -> None:
    env = cap.decode(APPENDIX[3].read_bytes(), CTX)
    assert env.alert.source == "SW"
    assert [i.language for i in env.alert.infos] == ["en-US", "es-US"]
    assert env.alert.infos[1].event == "Abducción de Niño"
    assert env.alert.infos[0].contact.startswith("DET. SMITH")


# -- the Italian plate-reader alert: validation, masks -------------------------------------


def validation_context() -> ValidationContext:
    return ValidationContext(codes=codelists.load(), is_registered=lambda _agency: True)


def test_plate_reader_alert_maps_plates_geocodes_digest_and_passes_the_hub_validator() -> None:
    env = cap.decode(PLATE_READER, CTX)
    alert = env.alert
    (info,) = alert.infos
    (vehicle,) = alert.vehicles
    assert (vehicle.relationship, vehicle.plate, vehicle.plate_country, vehicle.make) == (
        "SuspectVehicle",
        factories.PLATE,
        "IT",
        "Fiat",
    )
    assert [p.name for p in info.parameters] == ["VARCO"]  # plates never stay in parameters
    assert factories.PLATE not in str(list(info.parameters))
    assert list(info.event_codes) == [alert_pb2.NamedValue(name="SCNTT", value="RUBATO")]
    (media,) = info.resources
    assert media == common_pb2.MediaReference(
        uri="https://varchi.pl.torino.example/foto/000123.jpg",
        sha1=DIGEST,
        media_type="image/jpeg",
        description="foto del transito",
        size_bytes=48213,
    )
    (area,) = info.areas
    assert list(area.comuni_istat) == ["001272"]
    assert [(g.name, g.value) for g in area.geocodes] == [("NUTS3", "ITC11")]
    assert (area.altitude_ft, area.ceiling_ft) == (780.0, 1200.5)
    assert list(env.target_areas) == [common_pb2.Area(comune_istat="001272")]
    assert list(env.incident_ids) == [factories.INCIDENT_ID]
    assert env.confidentiality == common_pb2.CONFIDENTIALITY_RESTRICTED
    assert (alert.scope, alert.restriction, alert.source, list(alert.codes), alert.note) == (
        alert_pb2.SCOPE_RESTRICTED,
        "sale operative",
        "varco-07",
        ["PLATE-READER"],
        "lettura confermata dall'operatore",
    )
    assert (info.audience, info.sender_name, info.web, info.contact) == (
        "sale operative",
        "Polizia Locale di Torino",
        "https://pl.example/varchi",
        "sala operativa",
    )
    assert env.sent_at.ToDatetime(UTC) == PLATE_READER_SENT
    assert env.expires_at.ToDatetime(UTC) == PLATE_READER_SENT + timedelta(hours=1)
    assert ("addresses", 'questura "sala operativa carabinieri"') in [(f.path, f.value) for f in env.origin.unmapped]
    assert validate_envelope(env, validation_context(), PLATE_READER_SENT + timedelta(minutes=1)) == []
    same_document(cap.encode(env), PLATE_READER)
    assert cap.encode(env).count(b"+01:00") == 2  # the sender's offsets written back


def test_validator_does_report_a_broken_decoded_alert() -> None:
    broken = PLATE_READER.replace(b"<value>001272</value>", b"<value>999999</value>")
    violations = validate_envelope(cap.decode(broken, CTX), validation_context(), PLATE_READER_SENT)
    assert "alert.infos[0].areas[0].comuni_istat[0]" in [v.field for v in violations]


def test_redaction_without_vehicles_and_free_text_removes_plate_and_description() -> None:
    env = cap.decode(PLATE_READER, CTX)
    assert factories.PLATE.encode() in env.SerializeToString()
    granted = set(redact.CATEGORIES) - {"vehicles", "free_text"}
    out = redact.redact(env, redact.mask_for(granted, ()))
    assert factories.PLATE.encode() not in out.SerializeToString()
    assert out.alert.vehicles[0].plate == ""
    assert out.alert.vehicles[0].make == "Fiat"
    assert out.alert.infos[0].description == ""
    assert out.alert.infos[0].headline == ""
    assert out.alert.note == ""
    assert not out.origin.unmapped
    full = redact.redact(env, redact.mask_for(redact.CATEGORIES, ()))
    assert full.alert.vehicles[0].plate == factories.PLATE


# -- envelopes from the factories, both ways ---------------------------------------------------

SENT = datetime(2026, 11, 23, 11, 59, 30, tzinfo=UTC)
REF_SENT = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)


def cap_view(env: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
    """What CAP carries of an envelope: without the staff ids, territory, expiry, confidentiality and origin."""
    out = envelope_pb2.Envelope()
    out.CopyFrom(env)
    out.sender.ClearField("operator_id")
    out.sender.ClearField("workstation_id")
    for name in ("target_areas", "expires_at", "confidentiality", "origin"):
        out.ClearField(name)  # type: ignore[arg-type]
    return out


def factory_envelopes() -> list[envelope_pb2.Envelope]:
    ref = (("5f0c8a56-3c1e-4a57-9d0e-2b7f4f7f1a01", factories.QUESTURA),)
    ack = factories.envelope(
        kind=common_pb2.KIND_ACK, references=ref, sent=SENT, acknowledgement=factories.acknowledgement()
    )
    error = factories.envelope(
        kind=common_pb2.KIND_ERROR,
        references=ref,
        sent=SENT,
        acknowledgement=envelope_pb2.Acknowledgement(code="ERROR", description="incidente sconosciuto"),
    )
    return [
        factories.envelope(kind=common_pb2.KIND_REPORT, sent=SENT, alert=factories.alert()),
        factories.envelope(kind=common_pb2.KIND_REPORT, sent=SENT, alert=factories.cap_alert()),
        factories.envelope(kind=common_pb2.KIND_UPDATE, sent=SENT, references=ref, alert=factories.plate_read()),
        factories.envelope(kind=common_pb2.KIND_CANCEL, sent=SENT, references=ref, alert=factories.alert()),
        ack,
        error,
    ]


def ref_sent(_ref: common_pb2.Reference) -> datetime:
    return REF_SENT


@pytest.mark.parametrize("env", factory_envelopes(), ids=lambda e: common_pb2.Kind.Name(e.kind))
def test_factory_envelopes_round_trip(env: envelope_pb2.Envelope) -> None:
    ctx = Context(agency_id=env.sender.agency_id, recipients=tuple(env.recipients))
    encoded = cap.encode(env, reference_sent=ref_sent)
    schemas.check_xml(document.parse_xml(encoded), "cap/CAP-v1.2.xsd")
    back = cap.decode(encoded, ctx)
    assert cap_view(back) == cap_view(env)
    assert back.distribution_id == env.distribution_id  # a UUID identifier is the distribution id
    assert back.origin.identifier == ""
    assert back.origin.sender == env.sender.agency_id
    if env.references:
        assert back.references[0].sender_agency_id == factories.QUESTURA
        assert f"{factories.QUESTURA},{env.references[0].distribution_id},2026-11-23T11:00:00-00:00".encode() in encoded
    assert validate_envelope(back, validation_context(), SENT + timedelta(seconds=10)) == []
    # and once decoded, encoding again gives the same document
    assert cap.encode(back) == encoded


def test_sha256_travels_as_a_resource_parameter() -> None:
    env = factories.envelope(sent=SENT, alert=factories.cap_alert())
    encoded = cap.encode(env)
    assert b"<valueName>RESOURCE_1_SHA256</valueName>" in encoded
    back = cap.decode(encoded, CTX)
    assert back.alert.infos[0].resources[0].sha256 == "b" * 64
    assert [p.name for p in back.alert.infos[0].parameters] == []


def test_vehicles_are_written_in_every_info_and_read_once() -> None:
    alert = factories.alert()
    second = alert.infos.add()
    second.CopyFrom(alert.infos[0])
    second.language = "en-GB"
    env = factories.envelope(sent=SENT, alert=alert)
    encoded = cap.encode(env)
    assert encoded.count(b"<valueName>VEHICLE_1_PLATE</valueName>") == 2
    back = cap.decode(encoded, CTX)
    assert list(back.alert.vehicles) == list(alert.vehicles)


def test_ack_code_other_than_the_default_travels_as_a_cap_code() -> None:
    env = factory_envelopes()[4]
    encoded = cap.encode(env, reference_sent=ref_sent)
    assert b"<code>opsroom-ack:RECEIVED</code>" in encoded
    assert b"<note>ricevuto</note>" in encoded
    back = cap.decode(encoded, CTX)
    assert back.acknowledgement == env.acknowledgement
    assert back.kind == common_pb2.KIND_ACK


def test_cap_ack_decodes_to_an_acknowledgement() -> None:
    data = b"""<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>ACK-1</identifier>
<sender>KSTO@NWS.NOAA.GOV</sender><sent>2003-06-17T15:00:00-07:00</sent><status>Actual</status>
<msgType>Error</msgType><scope>Private</scope><addresses>trinet@caltech.edu</addresses><code>X1</code>
<note>unknown event</note><references>trinet@caltech.edu,TRI13970876.1,2003-06-11T20:30:00-07:00</references></alert>"""
    env = cap.decode(data, CTX)
    assert env.kind == common_pb2.KIND_ERROR
    assert env.acknowledgement == envelope_pb2.Acknowledgement(code="ERROR", description="unknown event")
    assert env.references[0].sender_agency_id == ""  # neither the document's sender nor an agency id
    assert env.confidentiality == common_pb2.CONFIDENTIALITY_RESTRICTED
    assert [(f.path, f.value) for f in env.origin.unmapped] == [
        ("sent", "2003-06-17T15:00:00-07:00"),
        ("addresses", "trinet@caltech.edu"),
        ("references", "trinet@caltech.edu,TRI13970876.1,2003-06-11T20:30:00-07:00"),
        ("scope", "Private"),
        ("code[0]", "X1"),
    ]
    same_document(cap.encode(env), data)


def test_signature_is_kept_and_written_back() -> None:
    signature = b'<Signature xmlns="http://www.w3.org/2000/09/xmldsig#"><SignedInfo/></Signature>'
    data = APPENDIX[0].read_bytes().replace(b"</alert>", signature + b"</alert>")
    env = cap.decode(data, CTX)
    assert env.origin.unmapped[-1].path == "Signature[0]"
    same_document(cap.encode(env), data)


def test_uuid_identifier_is_the_distribution_id_and_others_are_derived() -> None:
    assert cap.reference_id("a@b", "5f0c8a56-3c1e-4a57-9d0e-2b7f4f7f1a01") == "5f0c8a56-3c1e-4a57-9d0e-2b7f4f7f1a01"
    assert cap.reference_id("a@b", "5F0C8A56-3C1E-4A57-9D0E-2B7F4F7F1A01") == document.distribution_id(
        "cap-1.2", "a@b", "5F0C8A56-3C1E-4A57-9D0E-2B7F4F7F1A01"
    )
    assert cap.reference_id("a@b", "x") != cap.reference_id("a@c", "x")


def test_a_changed_sent_time_is_written_in_utc_not_in_the_stale_notation() -> None:
    env = cap.decode(APPENDIX[0].read_bytes(), CTX)
    env.sent_at.seconds += 60
    assert b"<sent>2003-04-02T19:40:01-00:00</sent>" in cap.encode(env)


# -- wrappers ----------------------------------------------------------------------------------


def _bare(path: Path) -> bytes:
    return path.read_bytes().split(b"?>", 1)[1]


WRAPPERS: dict[str, Callable[[bytes], bytes]] = {
    "edxl-de-1.0": lambda cap_xml: (
        b'<EDXLDistribution xmlns="urn:oasis:names:tc:emergency:EDXL:DE:1.0"><distributionID>d1</distributionID>'
        b"<contentObject><xmlContent><embeddedXMLContent>" + cap_xml + b"</embeddedXMLContent></xmlContent>"
        b"</contentObject></EDXLDistribution>"
    ),
    "edxl-de-2.0": lambda cap_xml: (
        b'<edxlDistribution xmlns="urn:oasis:names:tc:emergency:EDXL:DE:2.0"><content><contentObject><contentXML>'
        b"<embeddedXMLContent>" + cap_xml + b"</embeddedXMLContent></contentXML></contentObject></content>"
        b"</edxlDistribution>"
    ),
    "atom": lambda cap_xml: (
        b'<entry xmlns="http://www.w3.org/2005/Atom"><id>x</id><content type="text/xml">'
        + cap_xml
        + b"</content></entry>"
    ),
}


@pytest.mark.parametrize("wrapper", WRAPPERS, ids=str)
def test_wrapped_cap_is_unwrapped_and_decoded(wrapper: str) -> None:
    bare = cap.decode(APPENDIX[3].read_bytes(), CTX)
    assert cap.decode(WRAPPERS[wrapper](_bare(APPENDIX[3])), CTX) == bare


def test_wrapper_with_two_alerts_is_refused() -> None:
    two = _bare(APPENDIX[0]) + _bare(APPENDIX[1])
    with pytest.raises(DocumentError, match="carries 2 documents"):
        cap.decode(WRAPPERS["edxl-de-2.0"](two), CTX)


# -- precise errors ----------------------------------------------------------------------------


def _a1(old: bytes, new: bytes) -> bytes:
    data = APPENDIX[0].read_bytes()
    assert old in data
    return data.replace(old, new, 1)


def _it(old: bytes, new: bytes) -> bytes:
    assert old in PLATE_READER
    return PLATE_READER.replace(old, new, 1)


@pytest.mark.parametrize(
    ("data", "error", "path", "reason"),
    [
        (
            _a1(b"cap:1.2", b"cap:1.1"),
            UnsupportedDocument,
            "/alert",
            "is CAP 1.1 (urn:oasis:names:tc:emergency:cap:1.1); only CAP 1.2",
        ),
        (
            b'<EMSI xmlns="urn:x"><CONTEXT/></EMSI>',
            UnsupportedDocument,
            "/EMSI",
            "root {urn:x}EMSI is not a CAP 1.2 alert",
        ),
        (_a1(b"<status>Actual</status>", b"<status>Draft</status>"), UnsupportedDocument, "/alert/status", "is Draft"),
        (
            _a1(b"<sender>hsas@dhs.gov</sender>", b""),
            DocumentError,
            "/alert/sent",
            "Expected is ( {urn:oasis:names:tc:emergency:cap:1.2}sender )",
        ),
        (
            _a1(b"<urgency>Immediate</urgency>", b"<urgency>Soon</urgency>"),
            DocumentError,
            "/alert/info/urgency",
            "'Soon' is not an element of the set",
        ),
        (
            _a1(b"2003-04-02T14:39:01-05:00", b"2003-04-02T14:39:01Z"),
            DocumentError,
            "/alert/sent",
            "is not accepted by the pattern",
        ),
        (
            _a1(b"2003-04-02T14:39:01-05:00", b"2003-02-30T14:39:01-05:00"),
            DocumentError,
            "/alert/sent",
            "not a valid value",
        ),
        (
            _it(b"45.07,7.67 45.08,7.67", b"45.07;7.67 45.08,7.67"),
            DocumentError,
            "/alert/info/area/polygon",
            "is not latitude,longitude",
        ),
        (
            _it(b"45.07,7.67 45.08,7.67 45.08,7.68 45.07,7.67", b"45.07,7.67 45.07,7.67"),
            DocumentError,
            "/alert/info/area/polygon",
            "has 2 points",
        ),
        (
            _it(b"45.0781,7.6761 0.1", b"45.0781,7.6761"),
            DocumentError,
            "/alert/info/area/circle",
            "is not 'latitude,longitude radius'",
        ),
        (
            _it(b"45.0781,7.6761 0.1", b"45.0781,nan 0.1"),
            DocumentError,
            "/alert/info/area/circle",
            "is not a decimal longitude",
        ),
        (
            _it(b"<digest>", b"<derefUri>aGVsbG8=</derefUri><digest>"),
            DocumentError,
            "/alert/info/resource/derefUri",
            "carries the media inline",
        ),
        (
            _it(b"VEHICLE_1_MAKE", b"VEHICLE_1_BRAND"),
            DocumentError,
            "/alert/info/parameter[4]",
            "is not VEHICLE_<n>_<FIELD>",
        ),
        (_it(b"VEHICLE_1_MAKE", b"VEHICLE_3_MAKE"), DocumentError, "/alert/info", "must run 1 to n"),
        (_it(b"VEHICLE_1_MAKE", b"VEHICLE_1_PLATE"), DocumentError, "/alert/info/parameter[4]", "appears twice"),
        (
            _it(b"<size>48213</size>", b"<size>-1</size>"),
            DocumentError,
            "/alert/info/resource/size",
            "is not a size in bytes",
        ),
        (_it(b"<incidents>urn", b'<incidents>"urn'), DocumentError, "/alert/incidents", "unbalanced double quote"),
        (
            _a1(b"<scope>Public</scope>", b"<scope>Public</scope><references>hsas@dhs.gov,1</references>"),
            DocumentError,
            "/alert/references",
            "is not sender,identifier,sent",
        ),
        (
            _a1(
                b"<scope>Public</scope>", b"<scope>Public</scope><references>a,1,2003-13-01T00:00:00-00:00</references>"
            ),
            DocumentError,
            "/alert/references (entry 1: sent)",
            "is not a CAP date and time",
        ),
        (
            _a1(b"<msgType>Alert</msgType>", b"<msgType>Ack</msgType>"),
            DocumentError,
            "/alert/info",
            "carries no info block",
        ),
        (
            _a1(b"2003-04-02T14:39:01-05:00", b"0001-01-01T00:00:00+05:00"),
            DocumentError,
            "/alert/sent",
            "outside the years 0001 to 9999",
        ),
        (b"<alert", DocumentError, "/", "is not well-formed XML"),
    ],
)
def test_bad_documents_are_refused_with_path_and_reason(
    data: bytes, error: type[DocumentError], path: str, reason: str
) -> None:
    with pytest.raises(error) as caught:
        cap.decode(data, CTX)
    assert type(caught.value) is error
    assert caught.value.path == path
    assert reason in caught.value.reason


def test_vehicles_differing_between_infos_are_refused() -> None:
    env = factories.envelope(sent=SENT, alert=factories.alert())
    env.alert.infos.add().CopyFrom(env.alert.infos[0])
    encoded = cap.encode(env)
    tampered = encoded.replace(factories.PLATE.encode(), b"ZZ999ZZ", 1)
    with pytest.raises(DocumentError) as caught:
        cap.decode(tampered, CTX)
    assert caught.value.path == "/alert/info[1]"
    assert "names other vehicles" in caught.value.reason


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        (
            lambda e: e.ClearField("alert") or e.incident.CopyFrom(factories.incident()),
            "payload",
            "CAP carries alerts only",
        ),
        (lambda e: setattr(e, "kind", common_pb2.KIND_REQUEST), "kind", "has no CAP msgType"),
        (lambda e: setattr(e, "kind", common_pb2.KIND_ACK), "kind", "does not go with a alert payload"),
        (lambda e: setattr(e, "status", common_pb2.STATUS_UNSPECIFIED), "status", "is unspecified"),
        (lambda e: e.ClearField("sent_at"), "sent_at", "is required"),
        (lambda e: setattr(e.alert, "scope", alert_pb2.SCOPE_UNSPECIFIED), "alert.scope", "is unspecified"),
        (lambda e: e.alert.infos[0].ClearField("categories"), "alert.infos[0].categories", "at least one category"),
        (lambda e: setattr(e.alert.infos[0], "urgency", 0), "alert.infos[0].urgency", "is unspecified"),
        (
            lambda e: setattr(e.alert.infos[0], "event", "bad\x00"),
            "alert.infos[0].event",
            "characters XML cannot carry",
        ),
        (
            lambda e: e.alert.infos[0].parameters.add(name="VEHICLE_1_PLATE", value="X"),
            "alert.infos[0].parameters[0].name",
            "is reserved for vehicles",
        ),
        (
            lambda e: e.alert.infos[0].areas[0].circles[0].center.__setattr__("latitude", float("inf")),
            "alert.infos[0].areas[0].circles[0]",
            "is not a finite number",
        ),
        (
            lambda e: e.references.add(
                distribution_id="5f0c8a56-3c1e-4a57-9d0e-2b7f4f7f1a01", sender_agency_id="it.cc.cp.to"
            ),
            "references[0]",
            "pass reference_sent",
        ),
        (
            lambda e: e.references.add(distribution_id="5f0c8a56-3c1e-4a57-9d0e-2b7f4f7f1a01"),
            "references[0].sender_agency_id",
            "is required",
        ),
        (lambda e: e.incident_ids.append('a"b'), "incident_ids", "has a double quote"),
    ],
)
def test_envelopes_cap_cannot_express_are_refused(
    change: Callable[[envelope_pb2.Envelope], object], path: str, reason: str
) -> None:
    env = factories.envelope(sent=SENT, alert=factories.alert())
    change(env)
    with pytest.raises(DocumentError) as caught:
        cap.encode(env)
    assert caught.value.path == path
    assert reason in caught.value.reason


def test_unknown_unmapped_path_of_a_cap_origin_is_refused() -> None:
    env = cap.decode(APPENDIX[0].read_bytes(), CTX)
    env.origin.unmapped.add(path="info[0]/foo", value="x")
    with pytest.raises(DocumentError) as caught:
        cap.encode(env)
    assert caught.value.path == "origin.unmapped[1].path"


# -- bounds ------------------------------------------------------------------------------------


def _polygon_alert(points: int) -> bytes:
    ring = " ".join(f"{45 + i * 1e-6:.6f},{7 + i * 1e-6:.6f}" for i in range(points - 1)) + " 45.000000,7.000000"
    return _it(b"45.07,7.67 45.08,7.67 45.08,7.68 45.07,7.67", ring.encode())


def test_one_megabyte_polygon_is_decoded_within_the_bounds_and_in_time() -> None:
    data = _polygon_alert(54_000)
    assert len(data) > 1_000_000
    start = time.monotonic()
    env = cap.decode(data, CTX)
    assert time.monotonic() - start < LIVENESS_S / 2
    assert len(env.alert.infos[0].areas[0].polygons[0].points) == 54_000


def test_one_megabyte_polygon_over_tighter_bounds_is_refused() -> None:
    start = time.monotonic()
    with pytest.raises(DocumentTooLarge) as caught:
        cap.decode(_polygon_alert(54_000), Context(agency_id=AGENCY, limits=Limits(max_text=256 * 1024)))
    assert time.monotonic() - start < LIVENESS_S / 2
    assert caught.value.path == "/alert/info/area/polygon"


def _geocode_alert(count: int) -> bytes:
    geocodes = "".join(f"<geocode><valueName>SAME</valueName><value>{i:06d}</value></geocode>" for i in range(count))
    return _it(b"<altitude>", geocodes.encode() + b"<altitude>")


def test_thousand_geocodes_are_decoded_in_time() -> None:
    start = time.monotonic()
    env = cap.decode(_geocode_alert(1000), CTX)
    assert time.monotonic() - start < LIVENESS_S / 2
    assert len(env.alert.infos[0].areas[0].geocodes) == 1001


def test_thousand_geocodes_over_tighter_bounds_are_refused() -> None:
    with pytest.raises(DocumentTooLarge, match="more than 2000 elements"):
        cap.decode(_geocode_alert(1000), Context(agency_id=AGENCY, limits=Limits(max_elements=2000)))


def test_many_istat_comuni_give_provinces_as_target_areas() -> None:
    geocodes = "".join(
        f"<geocode><valueName>ISTAT</valueName><value>{p:03d}{c:03d}</value></geocode>"
        for p in (1, 2)
        for c in range(1, 41)
    )
    env = cap.decode(_it(b"<altitude>", geocodes.encode() + b"<altitude>"), CTX)
    assert list(env.target_areas) == [common_pb2.Area(provincia_istat="001"), common_pb2.Area(provincia_istat="002")]


@pytest.mark.parametrize(
    "text",
    ["45.07,7.67 45.08,7.67 45.08,7.68 45.07,7.67", "\n 45,+7 -45.5,.5 0.,-0 45,+7 \n", "1,2 3,4 5,6 1,2"],
)
def test_bulk_polygon_reading_agrees_with_pair_by_pair(text: str) -> None:
    pairs = text.split()
    bulk = cap._polygon(text, pairs, "/p")
    assert bulk == alert_pb2.Polygon(points=[cap._point(pair, "/p") for pair in pairs])
