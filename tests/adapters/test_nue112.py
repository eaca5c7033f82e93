"""The 112 NUE contact card codec: the example both ways, each field's mapping, redaction, errors, SOAP helpers."""

from __future__ import annotations

import csv
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from adapters import nue112, schemas
from adapters.document import Context, DocumentError, UnsupportedDocument, distribution_id
from broker.policy import redact
from broker.validate import codelists
from broker.validate.checker import ValidationContext, validate_envelope
from tests import factories

EXAMPLE = Path(__file__).parent / "examples" / "nue112" / "example-synthetic-contactcard.xml"
NS = {"n": nue112.NS}
CUR = "it.nue.cur.mi"
DIRECTORY = {"QUESTURA-MI": "it.ps.questura-mi", "CC-MI": "it.cc.mi"}
CTX = Context(agency_id=CUR)
CREATED = datetime(2025, 3, 14, 20, 7, 33, tzinfo=UTC)


def example() -> bytes:
    return EXAMPLE.read_bytes()


def decoded(data: bytes | None = None, ctx: Context = CTX) -> envelope_pb2.Envelope:
    return nue112.decode(example() if data is None else data, ctx, companies=DIRECTORY)


def edit(change: str, to: str, data: bytes | None = None) -> bytes:
    """The example with one piece of text replaced (which must occur)."""
    source = (example() if data is None else data).decode()
    assert change in source, change
    return source.replace(change, to, 1).encode()


def leaves(data: bytes) -> list[tuple[str, str]]:
    """(path, whitespace-normalised text) of every element, in document order."""
    root = etree.fromstring(data)
    tree = root.getroottree()
    out = []
    for element in root.iter(etree.Element):
        text = " ".join((element.text or "").split()) if len(element) == 0 else ""
        out.append((re.sub(r"\{[^}]*\}", "", tree.getpath(element)), text))
    return out


def validation_context() -> ValidationContext:
    return ValidationContext(codes=codelists.load(), is_registered=lambda _a: True)


# -- the example, both ways ---------------------------------------------------------------


def test_example_round_trips_element_by_element() -> None:
    env = decoded()
    again = nue112.encode(env)
    assert leaves(example()) == leaves(again)
    assert nue112.decode(again, CTX, companies=DIRECTORY) == env


def test_example_decodes_every_mapped_field() -> None:
    env = decoded()
    inc = env.incident
    assert env.kind == common_pb2.KIND_REPORT
    assert env.distribution_id == distribution_id(nue112.FORMAT, CUR, "1234567")
    assert env.sender.agency_id == CUR
    assert env.sender.operator_id == "OP-CUR-017"
    assert env.sent_at.ToDatetime(tzinfo=UTC) == CREATED
    assert inc.call.started_at == env.sent_at
    assert env.origin.format == "nue112-rev3"
    assert env.origin.identifier == "1234567"
    assert inc.call.call_id == "1234567"
    assert inc.id == f"urn:emergency:uid:incidentid:1234567:{CUR}"
    assert list(env.incident_ids) == [inc.id]
    assert inc.type.eido_code == "FIGHT"
    assert inc.type.emsi_category == "PSW/RIOT"
    assert inc.description == "Persone che litigano in strada, una ferita"
    assert inc.priority == common_pb2.PRIORITY_HIGH
    assert inc.involved_count == 3
    main = inc.locations[0]
    assert main.type == "CurrentIncident"
    assert (main.point.latitude, main.point.longitude) == (45.464211, 9.191383)
    assert main.source == common_pb2.LOCATION_SOURCE_OPERATOR
    assert [a.comune_istat for a in env.target_areas] == ["015146"]  # Milano
    caller = inc.call.caller
    assert (caller.name, caller.surname, caller.phone) == ("Mario", "Rossi", "+39333000000")
    where = inc.locations[1]
    assert where.type == "Caller"
    assert where.address.street == "Via Esempio"
    assert where.address.civic_number == "10"
    assert where.address.additional_info == "davanti al bar"
    assert where.comune_istat == "015146"
    assert inc.call.network_location.raw_value.startswith("cella: area circa 800 m")
    assert [n.text for n in inc.notes] == ["Chiamante agitato, richiamato una volta"]
    assert list(env.recipients) == ["it.ps.questura-mi", "it.cc.mi"]


def test_example_keeps_what_the_contract_has_no_field_for_in_document_order() -> None:
    unmapped = [(f.path, f.value) for f in decoded().origin.unmapped]
    assert unmapped[:3] == [("CallType", "CellularPhoneCall"), ("CompetenceType", "PS"), ("Called/Number", "112")]
    assert ("Companies/ForwardedTo/Company/Code", "AREU-118-MI") in unmapped
    assert ("Companies/Competence/PublicSecurity/Company[1]/Code", "CC-MI") in unmapped
    # no personal value of the caller is kept twice
    values = {v for _p, v in unmapped}
    assert not values & {"Mario", "Rossi", "+39333000000", "Esempio", "davanti al bar"}


def test_decoded_example_passes_the_hub_validation() -> None:
    violations = validate_envelope(decoded(), validation_context(), CREATED + timedelta(minutes=1))
    assert violations == []


def test_card_sent_twice_gets_the_same_distribution_id_and_agency_is_the_connectors() -> None:
    assert decoded().distribution_id == decoded().distribution_id
    other = decoded(ctx=Context(agency_id="it.nue.cur.to"))
    assert other.distribution_id != decoded().distribution_id
    assert other.sender.agency_id == "it.nue.cur.to"


def test_redaction_without_grants_removes_caller_network_and_free_text() -> None:
    env = decoded()
    mask = redact.mask_for((), ())
    out = redact.redact(env, mask)
    text = str(out)
    for value in (
        "Mario",
        "Rossi",
        "+39333000000",
        "cella: area",
        "Chiamante agitato",
        "Persone che litigano",
        "davanti al bar",
        "Esempio",
        "AREU-118-MI",
    ):
        assert value in str(env)
        assert value not in text, value
    assert redact.present_hidden(out, mask) == []
    assert out.incident.type.eido_code == "FIGHT"  # what is not personal stays


def test_redaction_with_caller_grant_only_keeps_caller_not_network() -> None:
    out = redact.redact(decoded(), redact.mask_for(("caller",), ()))
    assert out.incident.call.caller.surname == "Rossi"
    assert not out.incident.call.HasField("network_location")
    assert out.incident.description == ""


# -- field mapping ------------------------------------------------------------------------


def test_linked_card_decodes_as_update_of_the_linked_cards_incident() -> None:
    env = decoded(edit("<CompetenceType>", "<ContactCardLink>1234000</ContactCardLink><CompetenceType>"))
    assert env.kind == common_pb2.KIND_UPDATE
    assert env.incident.id == f"urn:emergency:uid:incidentid:1234000:{CUR}"
    assert env.incident.call.call_id == "1234567"
    assert env.references[0].distribution_id == distribution_id(nue112.FORMAT, CUR, "1234000")
    assert env.references[0].sender_agency_id == CUR
    assert validate_envelope(env, validation_context(), CREATED) == []
    card = etree.fromstring(nue112.encode(env))
    assert card.findtext("n:ContactCardLink", namespaces=NS) == "1234000"


def test_low_priority_and_no_involved() -> None:
    env = decoded(edit("<HighPriority>TRUE", "<HighPriority>FALSE", edit("<InvolvedNumber>3</InvolvedNumber>", "")))
    assert env.incident.priority == common_pb2.PRIORITY_NORMAL
    assert env.incident.involved_count == 0


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Lite / rissa", "FIGHT"),
        ("LITE/RISSA", "FIGHT"),
        ("Furto", "LARCENY"),
        ("Rapina", "ROBBERY"),
        ("incidente stradale", "MVA"),
        ("Incendio", "FUNK"),
        ("Aggressione", "ASSAULT"),
        ("Violenza domestica", "DVA"),
        ("Persona scomparsa", "PERMISS"),
        ("Disturbo alla quiete pubblica", "NOISE"),
        ("Veicolo sospetto", "VEHSUSP"),
        ("Allarme", "ALRU"),
        ("attivita' sospetta", "SUSP"),
        ("HAZMAT", "HAZMAT"),  # an EIDO code written as such
    ],
)
def test_classification_table(text: str, code: str) -> None:
    env = decoded(edit("Lite / rissa", text))
    assert env.incident.type.eido_code == code
    assert "Classification" not in {f.path for f in env.origin.unmapped} or text != nue112.classification_for(code)
    assert leaves(nue112.encode(env)) == leaves(edit("Lite / rissa", text))


def test_unknown_classification_falls_back_and_is_kept() -> None:
    env = decoded(edit("Lite / rissa", "Furto di rame dai binari"))
    assert env.incident.type.eido_code == nue112.FALLBACK_EIDO == "TROUBLE"
    assert ("Classification", "Furto di rame dai binari") in [(f.path, f.value) for f in env.origin.unmapped]
    assert b"<Classification>Furto di rame dai binari</Classification>" in nue112.encode(env)
    env.incident.type.eido_code = "ROBBERY"  # changed since: the table's text is written
    assert b"<Classification>Rapina</Classification>" in nue112.encode(env)


def test_classification_table_codes_are_real_and_unambiguous() -> None:
    registry = codelists.load().eido_incident_types
    assert nue112.FALLBACK_EIDO in registry
    seen: dict[str, str] = {}
    with (schemas.DATA / nue112.CLASSIFICATIONS).open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 40
    for row in rows:
        assert row["eido_code"] in registry, row
        key = nue112.normalise_classification(row["classification"])
        assert seen.setdefault(key, row["eido_code"]) == row["eido_code"], row


def test_operator_that_is_not_a_staff_id_stays_unmapped() -> None:
    env = decoded(edit("OP-CUR-017", "Operatore 17 (turno B)"))
    assert env.sender.operator_id == ""
    assert ("Operator", "Operatore 17 (turno B)") in [(f.path, f.value) for f in env.origin.unmapped]


def test_time_notations_decode_to_the_same_instant_and_encode_back_as_written() -> None:
    for written in ("2025-03-14T20:07:33Z", "2025-03-14T21:07:33", "2025-03-14T20:07:33.000+00:00"):
        data = edit("2025-03-14T21:07:33+01:00", written)
        env = decoded(data)
        assert env.sent_at.ToDatetime(tzinfo=UTC) == CREATED, written
        assert leaves(nue112.encode(env)) == leaves(data)


def test_unknown_company_code_is_not_invented_as_an_agency() -> None:
    env = nue112.decode(example(), Context(agency_id=CUR, recipients=("it.pl.015146",)), companies={})
    assert list(env.recipients) == ["it.pl.015146"]
    assert ("Companies/Competence/Primary/Company/Code", "QUESTURA-MI") in [
        (f.path, f.value) for f in env.origin.unmapped
    ]


def test_companies_directory_must_name_agency_ids() -> None:
    with pytest.raises(ValueError, match="not an agency id"):
        nue112.decode(example(), CTX, companies={"QUESTURA-MI": "Questura di Milano"})


def test_manual_address_written_differently_is_kept_whole() -> None:
    data = edit("<Toponymy>Via</Toponymy>", "", edit("<Address>Esempio</Address>", "<Address>via Esempio</Address>"))
    env = decoded(data)
    assert env.incident.locations[1].address.street == "via Esempio"
    assert leaves(nue112.encode(env)) == leaves(data)
    paths = [f.path for f in env.origin.unmapped]
    assert "Caller/Location/Manual/City" in paths  # the group goes back as written


def test_odd_card_round_trips() -> None:
    """Empty optional containers, repeated localizations, eCall, a zero count and an unknown city."""
    data = edit(
        "<AdditionalInfo>davanti al bar</AdditionalInfo>",
        "<CrossRoads/><AdditionalInfo>davanti al bar</AdditionalInfo>",
        edit(
            "</CEDInterforze>",
            "</CEDInterforze><eCall><Localization><Value>MSD 45.1 9.2</Value><Eucaris>AB123CD</Eucaris>"
            "</Localization></eCall>",
            edit(
                "<InvolvedNumber>3</InvolvedNumber>",
                "<InvolvedNumber>0</InvolvedNumber>",
                edit("<City>Milano</City>", "<City>Atlantide</City>"),
            ),
        ),
    )
    env = decoded(data)
    assert env.incident.locations[1].comune_istat == ""
    assert leaves(nue112.encode(env)) == leaves(data)


# -- encode -------------------------------------------------------------------------------


def test_factory_envelope_encodes_to_a_valid_card_and_back() -> None:
    env = factories.envelope(recipients=(factories.QUESTURA, factories.PL))
    directory = {"QUESTURA-TO": factories.QUESTURA, "PL-TO": factories.PL}
    card = nue112.encode(env, companies=directory)
    schemas.xsd(nue112.XSD).assertValid(etree.fromstring(card))
    back = nue112.decode(card, Context(agency_id=factories.CUR), companies=directory)
    a, b = env.incident, back.incident
    # what the card expresses comes back
    assert back.kind == env.kind
    assert back.sender.operator_id == env.sender.operator_id
    assert back.sent_at == a.call.started_at
    assert list(back.recipients) == list(env.recipients)
    assert b.local_reference == a.local_reference
    assert b.type.eido_code == a.type.eido_code
    assert b.type.emsi_category == a.type.emsi_category
    assert b.priority == a.priority
    assert b.involved_count == a.involved_count
    assert b.description == a.description
    assert b.call.call_id == a.call.call_id
    assert b.call.started_at == a.call.started_at
    assert b.call.caller == a.call.caller
    assert b.call.network_location.raw_value == a.call.network_location.raw_value
    assert b.locations[0].point == a.locations[0].point
    assert [n.text for n in b.notes] == [n.text for n in a.notes]
    # what it cannot express (the module docstring lists it)
    assert b.id != a.id
    assert not b.persons
    assert not b.vehicles
    assert not b.media
    assert not b.agencies
    assert b.call.network_location.imsi == ""
    assert b.locations[0].address.street == ""


def test_factory_envelope_without_directory_writes_codes_from_agency_ids() -> None:
    card = etree.fromstring(nue112.encode(factories.envelope()))
    codes = card.xpath("//n:Company/n:Code/text()", namespaces=NS)
    assert codes == ["it-ps-questura-to", "it-ps-questura-to", "it-pl-001272"]
    back = nue112.decode(etree.tostring(card), Context(agency_id=factories.CUR))
    assert list(back.recipients) == []  # unknown codes are never turned back into agency ids


def test_handover_incident_encodes() -> None:
    env = factories.envelope(kind=common_pb2.KIND_REQUEST, handover_request=factories.handover_request())
    card = etree.fromstring(nue112.encode(env))
    assert card.findtext("n:Classification", namespaces=NS) == "Lite / rissa"


@pytest.mark.parametrize(
    ("env", "path"),
    [
        (factories.envelope(alert=factories.alert()), "alert"),
        (factories.envelope(kind=common_pb2.KIND_CANCEL, references=(("x", "y"),)), "kind"),
        (factories.envelope(recipients=()), "recipients"),
    ],
)
def test_encode_refuses_what_a_card_cannot_carry(env: envelope_pb2.Envelope, path: str) -> None:
    with pytest.raises(DocumentError) as caught:
        nue112.encode(env)
    assert caught.value.path == path


def test_encode_names_missing_required_fields() -> None:
    env = factories.envelope()
    env.incident.type.eido_code = ""
    with pytest.raises(DocumentError) as caught:
        nue112.encode(env)
    assert caught.value.path == "incident.type.eido_code"
    env = factories.envelope()
    env.incident.call.ClearField("started_at")
    env.ClearField("sent_at")
    with pytest.raises(DocumentError, match="CreateDate") as caught:
        nue112.encode(env)
    assert caught.value.path == "sent_at"
    env = factories.envelope()
    env.incident.involved_count = 10000
    with pytest.raises(DocumentError, match="9999"):
        nue112.encode(env)


def test_encode_validates_its_output() -> None:
    env = decoded()
    env.origin.unmapped.append(envelope_pb2.OriginField(path="CallType", value="Pigeon"))
    with pytest.raises(DocumentError, match="CallType") as caught:
        nue112.encode(env)
    assert caught.value.path == "/ContactCard/CallType"


def test_encode_ignores_unmapped_of_other_formats() -> None:
    env = factories.envelope()
    env.origin.CopyFrom(factories.origin())
    assert b"questura carabinieri" not in nue112.encode(env)


# -- errors -------------------------------------------------------------------------------


def test_other_root_or_namespace_is_unsupported() -> None:
    with pytest.raises(UnsupportedDocument) as caught:
        decoded(b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"/>')
    assert caught.value.path == "/alert"
    assert "urn:oasis:names:tc:emergency:cap:1.2" in caught.value.reason
    with pytest.raises(UnsupportedDocument, match="root ContactCard is not"):
        decoded(edit(' xmlns="http://NUE.112.it/NUE112"', ""))


@pytest.mark.parametrize(
    ("change", "to", "path", "message"),
    [
        ("<Classification>Lite / rissa</Classification>", "", "/ContactCard/ClassificationDetail", "Classification"),
        ("<HighPriority>TRUE", "<HighPriority>SI", "/ContactCard/HighPriority", "'SI'"),
        ("<CallType>CellularPhoneCall", "<CallType>Piccione", "/ContactCard/CallType", "enumeration"),
        ("2025-03-14T21:07:33+01:00", "14/03/2025 21:07", "/ContactCard/CreateDate", "dateTime"),
        ("<Number>+39333000000", "<Number>333-000", "/ContactCard/Caller/Number", "pattern"),
        ("<InvolvedNumber>3", "<InvolvedNumber>10000", "/ContactCard/InvolvedNumber", "maxInclusive"),
        ("<Province>MI", "<Province>Milano", "/ContactCard/Caller/Location/Manual/Province", "pattern"),
        (
            "<Code>CC-MI</Code>",
            "<Code>CC.MI</Code>",
            "/ContactCard/Companies/Competence/PublicSecurity/Company[1]/Code",
            "pattern",
        ),
    ],
)
def test_card_invalid_against_the_xsd_names_element_and_xsd_message(
    change: str, to: str, path: str, message: str
) -> None:
    with pytest.raises(DocumentError) as caught:
        decoded(edit(change, to))
    assert caught.value.path == path
    assert message in caught.value.reason
    assert "line " in caught.value.reason


@pytest.mark.parametrize(
    ("change", "to", "path"),
    [
        ("<Latitude>45.464211", "<Latitude>95.5", "/ContactCard/MainLocation/Point/Latitude"),
        ("<Longitude>9.191383", "<Longitude>-181", "/ContactCard/MainLocation/Point/Longitude"),
        ("2025-03-14T21:07:33+01:00", "2025-03-14T24:00:00Z", "/ContactCard/CreateDate"),
        ("2025-03-14T21:07:33+01:00", "12025-03-14T21:07:33Z", "/ContactCard/CreateDate"),
    ],
)
def test_bad_coordinates_and_dates(change: str, to: str, path: str) -> None:
    with pytest.raises(DocumentError) as caught:
        decoded(edit(change, to))
    assert caught.value.path == path


def test_not_xml_is_a_document_error() -> None:
    with pytest.raises(DocumentError, match="well-formed"):
        decoded(b"<ContactCard")


# -- SOAP helpers -------------------------------------------------------------------------


def soap(version: str, card: str) -> bytes:
    ns = nue112.SOAP11_NS if version == "1.1" else nue112.SOAP12_NS
    return (
        f'<s:Envelope xmlns:s="{ns}"><s:Header/><s:Body>'
        f'<GestContatto xmlns="{nue112.SERVICE_NS}"><EnteMittente>CUR-MI</EnteMittente>'
        f"<EnteDestinatario>QUESTURA-MI</EnteDestinatario><SchedaContatto>{card}</SchedaContatto>"
        "</GestContatto></s:Body></s:Envelope>"
    ).encode()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_gest_contatto_escaped_string_parameter(version: str) -> None:
    text = example().decode().replace('encoding="utf-8"', 'encoding="utf-16"')
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    call = nue112.gest_contatto(soap(version, escaped))
    assert call.soap_version == version
    assert call.parameters == {"EnteMittente": "CUR-MI", "EnteDestinatario": "QUESTURA-MI"}
    assert decoded(call.card) == decoded()


def test_gest_contatto_cdata_and_element_forms() -> None:
    body = example().decode().split("-->", 1)[1]
    assert decoded(nue112.gest_contatto(soap("1.1", f"<![CDATA[{body}]]>")).card) == decoded()
    assert decoded(nue112.gest_contatto(soap("1.2", body)).card) == decoded()


def test_gest_contatto_errors() -> None:
    with pytest.raises(UnsupportedDocument, match="SOAP"):
        nue112.gest_contatto(example())
    other = soap("1.1", "x").replace(b"GestContatto", b"Altro")
    with pytest.raises(UnsupportedDocument, match="not a GestContatto"):
        nue112.gest_contatto(other)
    with pytest.raises(DocumentError) as caught:
        nue112.gest_contatto(soap("1.1", "  "))
    assert caught.value.path == "/Envelope/Body/GestContatto/SchedaContatto"


def test_soap_fault_carries_path_and_reason() -> None:
    with pytest.raises(DocumentError) as caught:
        decoded(edit("<HighPriority>TRUE", "<HighPriority>SI"))
    for version, ns in (("1.1", nue112.SOAP11_NS), ("1.2", nue112.SOAP12_NS)):
        fault = etree.fromstring(nue112.soap_fault(caught.value, soap_version=version))
        assert etree.QName(fault).namespace == ns
        text = fault.findtext(".//faultstring") if version == "1.1" else fault.findtext(f".//{{{ns}}}Text")
        assert text == f"/ContactCard/HighPriority: {caught.value.reason}"
        code = fault.findtext(".//faultcode") if version == "1.1" else fault.findtext(f".//{{{ns}}}Value")
        assert code in {"soap:Client", "env:Sender"}
    hostile = nue112.soap_fault(DocumentError("/x", "bad \x01 value"))
    assert b"bad ? value" in hostile
    with pytest.raises(ValueError, match="soap_version"):
        nue112.soap_fault(caught.value, soap_version="2.0")


def test_unmapped_caller_data_is_masked_as_caller_and_network_data() -> None:
    card = EXAMPLE.read_bytes().replace(
        b"</CEDInterforze>",
        b"</CEDInterforze><eCall><Localization><Value>VIN WVWZZZ1JZXW000001 cella 222-01</Value></Localization></eCall>",
    )
    env = nue112.decode(card, CTX)
    categories = {u.path: u.category for u in env.origin.unmapped if u.path.startswith("Caller/")}
    assert categories
    assert set(categories.values()) <= {"network_location", "vehicles"}
    seen = redact.redact(env, redact.mask_for({"free_text", "caller"}, ()))
    assert "WVWZZZ" not in str(seen)
    assert "WVWZZZ" in str(env)


def test_gest_contatto_call_and_answer_round_trip() -> None:
    card = EXAMPLE.read_bytes()
    call = nue112.gest_contatto(nue112.gest_contatto_request(card, {"EnteMittente": "CUR-MI", "Bogus": "x"}))
    assert call.soap_version == "1.1"
    assert call.parameters == {"EnteMittente": "CUR-MI"}
    assert nue112.decode(call.card, CTX).incident.call.call_id == "1234567"
    assert nue112.gest_contatto_result(nue112.gest_contatto_response("OK")) == "OK"
    assert (
        nue112.gest_contatto_result(nue112.gest_contatto_response("Error: SCHEDA DUPLICATA"))
        == "Error: SCHEDA DUPLICATA"
    )
    fault = nue112.soap_fault(DocumentError("hub", "HUB_OVERLOADED: later"), server=True)
    assert b"soap:Server" in fault
    assert nue112.gest_contatto_result(fault) == "Fault: hub: HUB_OVERLOADED: later"
    with pytest.raises(DocumentError, match="no GestContatto result"):
        nue112.gest_contatto_result(b"<x/>")


def test_company_directory() -> None:
    assert nue112.company_directory(["A=it.ps.a", "B=it.cc.b"]) == {"A": "it.ps.a", "B": "it.cc.b"}
    with pytest.raises(ValueError, match="is not CODE=AGENCY"):
        nue112.company_directory(["A"])
