"""The EMSI codec: every Hub Santé example both ways (JSON and XML, bare and in EDXL-DE), each mapped field, the DC -> RDC answer, precise errors."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2

from adapters import codes, document, emsi, schemas
from adapters.document import Context, DocumentError, UnsupportedDocument
from broker.policy import redact
from broker.validate import codelists
from broker.validate.checker import validate_envelope
from broker.validate.fields import ValidationContext
from tests import factories

EXAMPLES = Path(__file__).parent / "examples"
EMSI_DIR = EXAMPLES / "emsi"
ALL = sorted(p.name for p in EMSI_DIR.glob("example-*"))
JSON_EXAMPLES = [n for n in ALL if n.endswith(".json")]
DC = "example-emsi-DC-message.json"
RDC = "example-EMSI-RDC-message.json"
OPG = "example-EMSI-OPG-message.json"
FULL = "example-EMSI-Complet-DC-RDC-OPG-message.json"
FULL_XML = "example-EMSI-Complet-DC-RDC-OPG-message.xml"
CTX = Context(agency_id="it.pl.001272")
NS = {"e": emsi.NAMESPACE}


def raw(name: str) -> bytes:
    return (EMSI_DIR / name).read_bytes()


def as_json(name: str) -> dict[str, Any]:
    return json.loads(raw(name))  # type: ignore[no-any-return]


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def xml_norm(data: bytes) -> bytes:
    """The canonical form of an XML document, whitespace between elements and around text dropped."""
    root = etree.fromstring(data, etree.XMLParser(remove_blank_text=True))
    for element in root.iter():
        if element.text is not None:
            element.text = element.text.strip()
    return bytes(etree.tostring(root, method="c14n"))


def same_document(out: bytes, original: bytes) -> bool:
    if original.lstrip()[:1] == b"<":
        return xml_norm(out) == xml_norm(original)
    return bool(json.loads(out) == json.loads(original))


def unmapped(env: envelope_pb2.Envelope) -> dict[str, str]:
    return {f.path: f.value for f in env.origin.unmapped}


def same_envelope(a: envelope_pb2.Envelope, b: envelope_pb2.Envelope) -> bool:
    """Equal, the unmapped leaves compared by path (a re-encoded JSON object has the schema's key order)."""
    plain_a, plain_b = envelope_pb2.Envelope(), envelope_pb2.Envelope()
    plain_a.CopyFrom(a)
    plain_b.CopyFrom(b)
    plain_a.origin.ClearField("unmapped")
    plain_b.origin.ClearField("unmapped")
    return plain_a == plain_b and unmapped(a) == unmapped(b) and len(a.origin.unmapped) == len(b.origin.unmapped)


def de_xml(inner: bytes) -> bytes:
    """The EDXL-DE 2.0 example of Hub Santé with its message replaced by this EMSI document."""
    root = etree.fromstring(raw_de("xml"))
    holder = root.find(".//{urn:oasis:names:tc:emergency:EDXL:DE:2.0}embeddedXMLContent")
    assert holder is not None
    for child in list(holder):
        holder.remove(child)
    holder.append(etree.fromstring(inner))
    return bytes(etree.tostring(root))


def de_json(inner: bytes) -> bytes:
    """The EDXL-DE JSON example of Hub Santé carrying this EMSI document as its one message."""
    doc = json.loads(raw_de("json"))
    doc["content"] = [{"jsonContent": {"embeddedJsonContent": {"message": json.loads(inner)}}}]
    return dumps(doc)


def raw_de(ext: str) -> bytes:
    return (EXAMPLES / "edxl-de" / f"example-hubsante-EDXL-DE.{ext}").read_bytes()


# -- every example, both ways ---------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_every_example_is_rebuilt_leaf_for_leaf_in_its_syntax(name: str) -> None:
    env = emsi.decode(raw(name), CTX)
    syntax = "xml" if name.endswith(".xml") else "json"
    out = emsi.encode(env, syntax=syntax)
    assert same_document(out, raw(name))
    assert not [f.path for f in env.origin.unmapped if f.path.startswith("!")]
    assert same_envelope(emsi.decode(out, CTX), env)


@pytest.mark.parametrize("name", JSON_EXAMPLES)
def test_every_json_example_travels_as_xml_and_back(name: str) -> None:
    env = emsi.decode(raw(name), CTX)
    xml = emsi.encode(env, syntax="xml")
    schemas.check_xml(etree.fromstring(xml), emsi.XSD)
    assert same_envelope(emsi.decode(xml, CTX), env)
    assert json.loads(emsi.encode(emsi.decode(xml, CTX))) == as_json(name)


def test_the_xml_and_json_complete_examples_decode_to_the_same_envelope() -> None:
    from_json = emsi.decode(raw(FULL), CTX)
    from_xml = emsi.decode(raw(FULL_XML), CTX)
    assert same_envelope(from_json, from_xml)
    assert json.loads(emsi.encode(from_xml)) == as_json(FULL)


@pytest.mark.parametrize("name", ALL)
def test_every_example_inside_edxl_de_decodes_as_bare(name: str) -> None:
    bare = emsi.decode(raw(name), CTX)
    wrapped = de_xml(raw(name)) if name.endswith(".xml") else de_json(raw(name))
    assert emsi.decode(wrapped, CTX) == bare


def test_the_bare_emsi_object_without_its_wrapper_key_is_decoded_too() -> None:
    inner = dumps(as_json(OPG)["emsi"])
    assert emsi.decode(inner, CTX) == emsi.decode(raw(OPG), CTX)


# -- field mapping --------------------------------------------------------------------------


def test_context_maps_to_the_envelope_header() -> None:
    env = emsi.decode(raw(OPG), CTX)
    assert env.origin.format == emsi.FORMAT
    assert env.origin.identifier == "d350c9d2-9d76-4568-b0b7-a747ffadc949"
    assert env.origin.sender == "fr.health.samu690"
    assert env.distribution_id == document.distribution_id(emsi.FORMAT, "fr.health.samu690", env.origin.identifier)
    assert env.sender.agency_id == CTX.agency_id  # never the document's
    assert env.sender.operator_id == "samu690"
    assert env.status == common_pb2.STATUS_ACTUAL
    assert env.kind == common_pb2.KIND_UPDATE
    assert env.confidentiality == common_pb2.CONFIDENTIALITY_RESTRICTED
    assert env.sent_at.ToDatetime(tzinfo=UTC) == datetime(2024, 1, 9, 15, 0, tzinfo=UTC)
    assert env.legal_basis == CTX.legal_basis()
    kept = unmapped(env)
    assert kept["CONTEXT/LEVEL"] == "OPR"
    assert kept["CONTEXT/ORIGIN/NAME"] == "SAMU 69"
    assert "CONTEXT/ID" not in kept
    assert "CONTEXT/CREATION" not in kept
    assert "CONTEXT/MSGTYPE" not in kept


def test_an_ongoing_operation_is_an_incident_update() -> None:
    env = emsi.decode(raw(OPG), CTX)
    assert env.WhichOneof("payload") == "incident"
    inc = env.incident
    assert inc.id == "fr.health.samu690.DRFR15690240430050" == env.incident_ids[0]
    assert inc.local_reference == "DRFR15690240430050"
    assert inc.type.emsi_category == "TRP/COL"
    assert inc.type.eido_code == (codes.eido_for("TRP/COL") or "")
    assert inc.status == incident_pb2.INCIDENT_STATUS_ACTIVE
    assert inc.priority == common_pb2.PRIORITY_NORMAL  # no URGENCY
    assert inc.occurred_at.ToDatetime(tzinfo=UTC) == datetime(2024, 1, 9, 15, 0, tzinfo=UTC)
    assert inc.involved_count == 2  # one yellow, one green
    assert len(inc.locations) == 1
    assert inc.locations[0].type == "CurrentIncident"
    assert (inc.locations[0].point.latitude, inc.locations[0].point.longitude) == (45.760169, 4.830608)
    kept = unmapped(env)
    assert kept["EVENT/ETYPE/ENV"] == "DIS/TRSPRT"
    assert kept["EVENT/CASUALTIES[0]/TRIAGEYELLOW"] == "1"
    assert kept["EVENT/EGEO[0]/POSITION/ADDRESS[0]"] == "8 Quai des Célestins, Lyon"
    assert kept["MISSION[0]/NAME"] == "#OPERATION_GLOBALE#"
    assert kept["RESOURCE[0]/FREETEXT"] == "IMMATRICULATION#AJ-76-MZ"
    # the unmapped leaves keep the document's order
    paths = [f.path for f in env.origin.unmapped]
    assert paths.index("CONTEXT/LEVEL") < paths.index("EVENT/NAME") < paths.index("MISSION[0]/NAME")


def opg_with(**changes: Any) -> dict[str, Any]:
    doc = as_json(OPG)
    for path, value in changes.items():
        node = doc["emsi"]
        *parents, last = path.split("__")
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return doc


def test_event_status_com_in_an_update_is_a_closure() -> None:
    doc = opg_with(EVENT__STATUS="COM", EVENT__FREETEXT="chiusa senza seguito")
    env = emsi.decode(dumps(doc), CTX)
    assert env.kind == common_pb2.KIND_UPDATE
    assert env.WhichOneof("payload") == "closure"
    assert env.closure.incident_id == env.incident_ids[0] == "fr.health.samu690.DRFR15690240430050"
    assert env.closure.status == incident_pb2.COMPLETION_STATUS_COMPLETED
    assert env.closure.closed_at == env.sent_at
    assert env.closure.remarks == "chiusa senza seguito"
    assert json.loads(emsi.encode(env)) == doc


@pytest.mark.parametrize(
    ("mode", "status"),
    [("EXERCS", common_pb2.STATUS_EXERCISE), ("TEST", common_pb2.STATUS_TEST), ("SYSTEM", common_pb2.STATUS_SYSTEM)],
)
def test_mode_maps_to_status(mode: str, status: int) -> None:
    env = emsi.decode(dumps(opg_with(CONTEXT__MODE=mode)), CTX)
    assert env.status == status
    assert json.loads(emsi.encode(env))["emsi"]["CONTEXT"]["MODE"] == mode


@pytest.mark.parametrize(
    ("msgtype", "kind", "payload"),
    [
        ("ALERT", common_pb2.KIND_REPORT, "incident"),
        ("CANCEL", common_pb2.KIND_CANCEL, "incident"),
        ("ACK", common_pb2.KIND_ACK, "acknowledgement"),
        ("ERROR", common_pb2.KIND_ERROR, "acknowledgement"),
    ],
)
def test_msgtype_maps_to_kind(msgtype: str, kind: int, payload: str) -> None:
    doc = opg_with(CONTEXT__MSGTYPE=msgtype)
    env = emsi.decode(dumps(doc), CTX)
    assert (env.kind, env.WhichOneof("payload")) == (kind, payload)
    if payload == "acknowledgement":
        assert env.acknowledgement.code == {"ACK": "RECEIVED", "ERROR": "ERROR"}[msgtype]
        assert env.acknowledgement.description == doc["emsi"]["CONTEXT"]["FREETEXT"]
    assert json.loads(emsi.encode(env)) == doc


@pytest.mark.parametrize(
    ("seclass", "value", "kept"),
    [
        ("UNCLAS", common_pb2.CONFIDENTIALITY_UNCLASSIFIED, False),
        ("CONFID", common_pb2.CONFIDENTIALITY_CONFIDENTIAL, False),
        ("UNMARK", common_pb2.CONFIDENTIALITY_UNCLASSIFIED, True),
        (None, common_pb2.CONFIDENTIALITY_UNSPECIFIED, False),
    ],
)
def test_seclass_maps_to_confidentiality(seclass: str | None, value: int, kept: bool) -> None:
    doc = opg_with(CONTEXT__SECLASS=seclass)
    env = emsi.decode(dumps(doc), CTX)
    assert env.confidentiality == value
    assert ("CONTEXT/SECLASS" in unmapped(env)) == kept
    assert json.loads(emsi.encode(env)) == doc


@pytest.mark.parametrize("seclass", ["SECRET", "TOPSRT"])
def test_classified_documents_are_refused(seclass: str) -> None:
    with pytest.raises(DocumentError) as err:
        emsi.decode(dumps(opg_with(CONTEXT__SECLASS=seclass)), CTX)
    assert err.value.path == "/emsi/CONTEXT/SECLASS"
    assert seclass in err.value.reason


@pytest.mark.parametrize(
    ("urgency", "priority"),
    [("URGENT", common_pb2.PRIORITY_HIGH), ("NOT_URGENT", common_pb2.PRIORITY_LOW), (None, common_pb2.PRIORITY_NORMAL)],
)
def test_urgency_maps_to_priority(urgency: str | None, priority: int) -> None:
    doc = opg_with(CONTEXT__URGENCY=urgency) if urgency else as_json(OPG)
    env = emsi.decode(dumps(doc), CTX)
    assert env.incident.priority == priority
    assert json.loads(emsi.encode(env)) == doc


def test_a_user_id_that_is_not_a_staff_id_stays_in_the_document() -> None:
    doc = opg_with(CONTEXT__ORIGIN={"ORG_ID": "fr.health.samu690", "USER_ID": "Dr Martin #2"})
    env = emsi.decode(dumps(doc), CTX)
    assert env.sender.operator_id == ""
    assert unmapped(env)["CONTEXT/ORIGIN/USER_ID"] == "Dr Martin #2"
    assert json.loads(emsi.encode(env)) == doc


def test_links_map_to_references() -> None:
    uuid_link = "0f8fad5b-d9cb-469f-a165-70867728950e"
    doc = opg_with(CONTEXT__LINK=[{"ID": uuid_link, "LINK_ROLE": "SPRSDS"}, {"ID": "fr.fire.cgo690.X12"}])
    env = emsi.decode(dumps(doc), CTX)
    assert env.references[0].distribution_id == uuid_link
    assert env.references[1].distribution_id == document.distribution_id(emsi.FORMAT, "", "fr.fire.cgo690.X12")
    kept = unmapped(env)
    assert kept["CONTEXT/LINK[0]/LINK_ROLE"] == "SPRSDS"
    assert kept["CONTEXT/LINK[1]/ID"] == "fr.fire.cgo690.X12"  # not a distribution id: the document's own text
    assert "CONTEXT/LINK[0]/ID" not in kept
    assert json.loads(emsi.encode(env)) == doc


def test_times_in_another_offset_are_kept_as_written() -> None:
    doc = opg_with(CONTEXT__CREATION="2024-01-09T15:00:00+00:00")
    env = emsi.decode(dumps(doc), CTX)
    assert env.sent_at == emsi.decode(raw(OPG), CTX).sent_at
    assert json.loads(emsi.encode(env)) == doc


def test_a_request_for_assistance_is_a_request() -> None:
    env = emsi.decode(raw(DC), CTX)
    assert env.kind == common_pb2.KIND_REQUEST
    req = env.assistance_request
    assert req.incident_id == env.incident_ids[0] == "fr.health.samu690.DRFR15690240430050"
    # no RESOURCE: the mission type FSTT/TA ("appui technique") asks for one resource
    assert [(n.resource_type, n.quantity) for n in req.resources] == [("LightRescue", 1)]
    assert req.location.point.latitude == 45.760169
    assert req.priority == common_pb2.PRIORITY_NORMAL
    assert req.needed_by.ToDatetime(tzinfo=UTC) == datetime(2023, 11, 3, 9, 20, tzinfo=UTC)
    assert req.remarks.startswith("Besoin d'assisance terrain")
    kept = unmapped(env)
    assert kept["MISSION[0]/NAME"] == "#DEMANDE_CONCOURS#CARENCE#Z.01.00.00#"
    assert kept["MISSION[0]/ID"] == "ABC1YU3454"
    assert "MISSION[0]/TYPE" not in kept
    assert "MISSION[0]/FREETEXT" not in kept
    assert "CONTEXT/MSGTYPE" not in kept  # requests are written as UPDATE, as the example is


def test_a_request_with_resources_asks_for_their_eido_types() -> None:
    doc = as_json(DC)
    doc["emsi"]["RESOURCE"] = [
        {"RTYPE": {"RCLASS": ["MAT/VEH/ROADVE/POLICE/PATROL"]}, "ID": "R1", "NAME": "pattuglia", "STATUS": "VIRTUAL"},
        {
            "RTYPE": {"RCLASS": ["MAT/VEH/ROADVE/AMBUL"]},
            "ID": "R2",
            "NAME": "ambulanza",
            "STATUS": "VIRTUAL",
            "QUANTITY": 2,
        },
    ]
    env = emsi.decode(dumps(doc), CTX)
    assert [(n.resource_type, n.quantity) for n in env.assistance_request.resources] == [
        ("PatrolUnit", 1),
        ("GroundBLSAmbulance", 2),
    ]
    assert unmapped(env)["RESOURCE[0]/RTYPE/RCLASS[0]"] == "MAT/VEH/ROADVE/POLICE/PATROL"  # written back as it came
    assert json.loads(emsi.encode(env)) == doc


def test_an_answer_is_a_response_with_its_outcome() -> None:
    env = emsi.decode(raw(RDC), CTX)
    assert env.kind == common_pb2.KIND_RESPONSE
    resp = env.assistance_response
    assert resp.outcome == common_pb2.OUTCOME_ACCEPTED  # DIFFEREE: accepted, later
    assert resp.responded_at == env.sent_at
    assert unmapped(env)["MISSION[0]/NAME"] == "#REPONSE_DEMANDE_CONCOURS#DIFFEREE#"


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        ("ACCEPTE", common_pb2.OUTCOME_ACCEPTED),
        ("PARTIELLE", common_pb2.OUTCOME_PARTIALLY_ACCEPTED),
        ("DIVERGENTE", common_pb2.OUTCOME_PARTIALLY_ACCEPTED),
        ("REFUS", common_pb2.OUTCOME_REJECTED),
    ],
)
def test_answer_codes_map_to_outcomes(code: str, outcome: int) -> None:
    doc = as_json(RDC)
    doc["emsi"]["MISSION"][0]["NAME"] = f"#REPONSE_DEMANDE_CONCOURS#{code}#"
    env = emsi.decode(dumps(doc), CTX)
    assert env.assistance_response.outcome == outcome
    if outcome == common_pb2.OUTCOME_REJECTED:
        assert env.assistance_response.cause == doc["emsi"]["MISSION"][0]["FREETEXT"]
    assert json.loads(emsi.encode(env)) == doc


def test_the_complete_example_answers_with_its_committed_resources() -> None:
    env = emsi.decode(raw(FULL), CTX)
    assert env.kind == common_pb2.KIND_RESPONSE
    resp = env.assistance_response
    assert resp.outcome == common_pb2.OUTCOME_ACCEPTED
    assert [(r.resource_id, r.resource_name) for r in resp.resources] == [
        ("77_22247# VSAV1", "VSAV 1 caserne SDIS69"),
        ("77_22245# VSAV2", "VSAV 2 caserne SDIS69"),
    ]
    assert [r.resource_type for r in resp.resources] == ["", ""]  # MAT/VEH alone names no EIDO type
    assert unmapped(env)["RESOURCE[0]/RTYPE/RCLASS[0]"] == "MAT/VEH"


def test_the_resource_table_uses_real_codes_of_both_lists() -> None:
    model = json.loads((schemas.DATA / emsi.JSON_SCHEMA).read_text(encoding="utf-8"))["definitions"]
    rclass = set(model["rtype"]["properties"]["RCLASS"]["items"]["enum"])
    mission_types = set(model["mission"]["properties"]["TYPE"]["enum"])
    eido = codelists.load().eido_resource_types
    rows = emsi._resource_rows()
    assert rows
    for code, listed, eido_type, _ in rows:
        assert code in (rclass if listed == "RCLASS" else mission_types), code
        assert eido_type in eido, eido_type
    assert emsi.eido_resource_type("MAT/VEH/ROADVE/POLICE/DOGUNT") == "PatrolUnit"  # longest listed prefix
    assert emsi.eido_resource_type("FAC/BRIDGE") == ""
    assert emsi.emsi_resource_code("PatrolUnit") == "MAT/VEH/ROADVE/POLICE"


# -- personal data --------------------------------------------------------------------------


def test_free_text_lands_where_the_redaction_masks_it() -> None:
    doc = opg_with(EVENT__FREETEXT="Mario Rossi ferito, targa AB123CD")
    env = emsi.decode(dumps(doc), CTX)
    assert env.incident.description == "Mario Rossi ferito, targa AB123CD"
    assert "AJ-76-MZ" in env.SerializeToString().decode("utf-8", "replace")
    without_free_text = redact.mask_for(redact.CATEGORIES - {"free_text"}, ())
    seen = redact.redact(env, without_free_text).SerializeToString().decode("utf-8", "replace")
    for secret in ("Mario Rossi", "AB123CD", "AJ-76-MZ", "Quai des Célestins"):
        assert secret not in seen
    assert redact.redact(env, without_free_text).incident.id == env.incident.id
    staff_hidden = redact.redact(env, redact.mask_for(redact.CATEGORIES - {"staff"}, ()))
    assert staff_hidden.sender.operator_id == ""


def test_a_decoded_request_passes_the_hubs_validation() -> None:
    env = emsi.decode(raw(DC), Context(agency_id="it.pl.001272"))
    now = env.sent_at.ToDatetime(tzinfo=UTC)
    ctx = ValidationContext(codes=codelists.load(), is_registered=lambda a: True)
    assert validate_envelope(env, ctx, now) == []


# -- the answer travels back as EMSI --------------------------------------------------------


@pytest.mark.parametrize("syntax", ["json", "xml"])
def test_an_answer_to_a_decoded_request_is_an_emsi_rdc_naming_it(syntax: emsi.Syntax) -> None:
    request = emsi.decode(raw(DC), Context(agency_id="it.cc.cp.to"))
    answer = factories.envelope(
        factories.PL,
        (),
        kind=common_pb2.KIND_RESPONSE,
        incident_ids=tuple(request.incident_ids),
        references=((request.distribution_id, request.sender.agency_id),),
        assistance_response=factories.assistance_response(),
    )
    out = emsi.encode(answer, syntax=syntax, referenced=[request])
    if syntax == "json":
        body = json.loads(out)["emsi"]
        schemas.check_json(body, schemas.json_schema(emsi.JSON_SCHEMA))
        link, mission = body["CONTEXT"]["LINK"][0]["ID"], body["MISSION"][0]
        event_id = body["EVENT"]["ID"]
    else:
        root = etree.fromstring(out)
        schemas.check_xml(root, emsi.XSD)
        link = root.findtext("e:CONTEXT/e:LINK/e:ID", namespaces=NS)
        mission = {child.tag.split("}")[1]: child.text for child in root.find("e:MISSION", NS)}  # type: ignore[union-attr]
        event_id = root.findtext("e:EVENT/e:ID", namespaces=NS)
    assert link == "d350c9d2-9d76-4568-b0b7-a747ffadc949"  # the DC's CONTEXT.ID
    assert mission["NAME"] == "#REPONSE_DEMANDE_CONCOURS#ACCEPTE#"
    assert mission["MAIN_MISSION_ID"] == "ABC1YU3454"  # the DC's mission
    assert mission["TYPE"] == "FSTT/TA"  # the DC's mission type
    assert event_id == "fr.health.samu690.DRFR15690240430050"
    back = emsi.decode(out, Context(agency_id=factories.PL), referenced=[request])
    assert back.kind == common_pb2.KIND_RESPONSE
    assert back.references[0].distribution_id == request.distribution_id
    assert back.references[0].sender_agency_id == "it.cc.cp.to"
    assert back.assistance_response.outcome == common_pb2.OUTCOME_ACCEPTED
    assert [(r.resource_id, r.resource_name, r.resource_type) for r in back.assistance_response.resources] == [
        ("TO-A12", "Alfa 12", "PatrolUnit")
    ]


# -- envelopes born in the hub --------------------------------------------------------------


def expressible(env: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
    """What of a hub envelope EMSI carries (see the module docstring), as decode rebuilds it."""
    out = envelope_pb2.Envelope()
    out.CopyFrom(env)
    for name in ("recipients", "target_areas", "expires_at", "origin", "legal_basis"):
        out.ClearField(name)
    out.sender.ClearField("workstation_id")
    out.sent_at.nanos = 0
    for ref in out.references:
        ref.ClearField("sender_agency_id")
    payload = out.WhichOneof("payload")
    if payload == "incident":
        inc = out.incident
        for name in ("call", "persons", "vehicles", "notes", "agencies", "media", "involved_count"):
            inc.ClearField(name)
        point = inc.locations[0].point
        inc.ClearField("locations")
        inc.locations.add(type="CurrentIncident", point=point)
        inc.type.eido_code = codes.eido_for(inc.type.emsi_category) or ""
        inc.occurred_at.nanos = 0
    elif payload == "closure":
        out.closure.ClearField("disposition_code")
        out.closure.closed_at.CopyFrom(out.sent_at)
    elif payload == "assistance_request":
        req = out.assistance_request
        req.location.CopyFrom(common_pb2.Location(type="CurrentIncident", point=req.location.point))
        req.needed_by.nanos = 0
    elif payload == "assistance_response":
        out.assistance_response.responded_at.CopyFrom(out.sent_at)
    return out


HUB_ENVELOPES = {
    "incident": factories.envelope,
    "closure": lambda: factories.envelope(kind=common_pb2.KIND_UPDATE, closure=factories.closure()),
    "request": lambda: factories.envelope(
        kind=common_pb2.KIND_REQUEST, assistance_request=factories.assistance_request()
    ),
    "response": lambda: factories.envelope(
        kind=common_pb2.KIND_RESPONSE,
        references=(("0f8fad5b-d9cb-469f-a165-70867728950e", factories.QUESTURA),),
        assistance_response=factories.assistance_response(),
    ),
    "rejection": lambda: factories.envelope(
        kind=common_pb2.KIND_RESPONSE,
        references=(("0f8fad5b-d9cb-469f-a165-70867728950e", factories.QUESTURA),),
        assistance_response=factories.assistance_response(common_pb2.OUTCOME_REJECTED, "nessuna pattuglia libera"),
    ),
    "ack": lambda: factories.envelope(
        kind=common_pb2.KIND_ACK,
        references=(("0f8fad5b-d9cb-469f-a165-70867728950e", factories.QUESTURA),),
        acknowledgement=factories.acknowledgement(),
    ),
}


@pytest.mark.parametrize("syntax", ["json", "xml"])
@pytest.mark.parametrize("which", sorted(HUB_ENVELOPES))
def test_hub_envelopes_are_written_valid_and_read_back(which: str, syntax: emsi.Syntax) -> None:
    env = HUB_ENVELOPES[which]()
    out = emsi.encode(env, syntax=syntax)
    if syntax == "json":
        schemas.check_json(json.loads(out)["emsi"], schemas.json_schema(emsi.JSON_SCHEMA))
    else:
        schemas.check_xml(etree.fromstring(out), emsi.XSD)
    back = emsi.decode(out, Context(agency_id=env.sender.agency_id))
    assert back.origin.identifier == env.distribution_id
    assert back.origin.sender == env.sender.agency_id
    assert [f.path for f in back.origin.unmapped] == []  # nothing but typed fields was written
    expected = expressible(env)
    expected.distribution_id = back.distribution_id
    back.ClearField("origin")
    back.ClearField("legal_basis")
    assert back == expected


def test_payloads_emsi_has_no_message_for_are_refused() -> None:
    with pytest.raises(DocumentError) as err:
        emsi.encode(factories.envelope(alert=factories.alert()))
    assert err.value.path == "alert"


def test_a_resource_type_without_an_emsi_class_is_refused_with_its_field() -> None:
    env = HUB_ENVELOPES["request"]()
    env.assistance_request.resources[0].resource_type = "SnowBlower"
    with pytest.raises(DocumentError) as err:
        emsi.encode(env)
    assert err.value.path == "assistance_request.resources[0].resource_type"


def test_an_unmapped_path_that_is_no_emsi_element_is_refused() -> None:
    env = emsi.decode(raw(OPG), CTX)
    env.origin.unmapped.add(path="EVENT/NOPE", value="x")
    with pytest.raises(DocumentError, match="EVENT/NOPE") as err:
        emsi.encode(env)
    assert err.value.path == "origin.unmapped"


def test_an_envelope_the_schema_refuses_is_not_written() -> None:
    env = emsi.decode(raw(OPG), CTX)
    env.origin.unmapped.add(path="EVENT/SCALE", value="9")
    with pytest.raises(DocumentError) as err:
        emsi.encode(env)
    assert err.value.path == "/emsi/EVENT/SCALE"
    with pytest.raises(DocumentError) as err:
        emsi.encode(env, syntax="xml")
    assert "SCALE" in err.value.path + err.value.reason


# -- errors ---------------------------------------------------------------------------------


def test_other_xml_documents_are_unsupported_naming_their_root() -> None:
    cap = b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>x</identifier></alert>'
    with pytest.raises(UnsupportedDocument) as err:
        emsi.decode(cap, CTX)
    assert err.value.path == "/alert"
    assert "urn:oasis:names:tc:emergency:cap:1.2" in err.value.reason
    with pytest.raises(UnsupportedDocument, match="message"):
        emsi.decode(raw_de("xml"), CTX)  # a Hub Santé message, not EMSI
    other_ns = raw(FULL_XML).replace(emsi.NAMESPACE.encode(), b"urn:emergency:eda:2.0:emsi")
    with pytest.raises(UnsupportedDocument, match=r"urn:emergency:eda:2\.0:emsi"):
        emsi.decode(other_ns, CTX)


def test_other_json_documents_are_unsupported_naming_their_keys() -> None:
    with pytest.raises(UnsupportedDocument) as err:
        emsi.decode(b'{"createCase": {"caseId": "x"}}', CTX)
    assert err.value.path == "/"
    assert "createCase" in err.value.reason
    with pytest.raises(DocumentError, match="2 messages"):
        emsi.decode(raw_de("json"), CTX)
    one = json.loads(raw_de("json"))
    one["content"] = one["content"][:1]
    with pytest.raises(UnsupportedDocument) as err:
        emsi.decode(dumps(one), CTX)
    assert err.value.path == "/content/0/jsonContent/embeddedJsonContent/message"
    assert "technicalNoreq" in err.value.reason


def broken(name: str, change: Any) -> bytes:
    doc = as_json(name)
    change(doc["emsi"])
    return dumps(doc)


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (lambda d: d["CONTEXT"].pop("ID"), "/emsi/CONTEXT", "'ID' is a required property"),
        (lambda d: d.pop("EVENT"), "/emsi", "'EVENT' is a required property"),
        (lambda d: d["CONTEXT"].update(MODE="LIVE"), "/emsi/CONTEXT/MODE", "'LIVE' is not one of"),
        (lambda d: d["CONTEXT"].update(CREATION="yesterday"), "/emsi/CONTEXT/CREATION", "yesterday"),
        (lambda d: d["EVENT"]["ETYPE"].update(CATEGORY=["PSW/NOPE"]), "/emsi/EVENT/ETYPE/CATEGORY/0", "PSW/NOPE"),
        (lambda d: d["RESOURCE"][0]["RTYPE"].update(RCLASS=["MAT/XX"]), "/emsi/RESOURCE/0/RTYPE/RCLASS/0", "MAT/XX"),
        (lambda d: d["EVENT"].update(CERTAINTY="high"), "/emsi/EVENT/CERTAINTY", "not of type 'integer'"),
        (lambda d: d["CONTEXT"].update(COLOUR="red"), "/emsi/CONTEXT", "COLOUR"),
    ],
)
def test_json_documents_the_schema_refuses_name_the_field(change: Any, path: str, words: str) -> None:
    with pytest.raises(DocumentError) as err:
        emsi.decode(broken(OPG, change), CTX)
    assert err.value.path == path
    assert words in err.value.reason


def test_xml_documents_the_schema_refuses_name_the_element() -> None:
    bad_mode = raw(FULL_XML).replace(b"<MODE>ACTUAL</MODE>", b"<MODE>LIVE</MODE>")
    with pytest.raises(DocumentError) as err:
        emsi.decode(bad_mode, CTX)
    assert "MODE" in err.value.path
    assert "LIVE" in err.value.reason
    bad_date = raw(FULL_XML).replace(b"<CREATION>2024-01-09T16:00:00+01:00", b"<CREATION>yesterday")
    with pytest.raises(DocumentError) as err:
        emsi.decode(bad_date, CTX)
    assert "CREATION" in err.value.path
    no_id = raw(FULL_XML).replace(b"<ID>d350c9d2-9d76-4568-b0b7-a747ffadc949</ID>", b"")
    with pytest.raises(DocumentError) as err:
        emsi.decode(no_id, CTX)
    assert "CONTEXT" in err.value.path
    assert "ID" in err.value.reason


def test_an_xml_time_without_offset_is_refused() -> None:
    naive = raw(FULL_XML).replace(b"<CREATION>2024-01-09T16:00:00+01:00", b"<CREATION>2024-01-09T16:00:00")
    with pytest.raises(DocumentError) as err:
        emsi.decode(naive, CTX)
    assert err.value.path == "/emsi/CONTEXT/CREATION"
    assert "no UTC offset" in err.value.reason


def test_an_unknown_answer_code_is_refused_with_its_mission() -> None:
    doc = as_json(RDC)
    doc["emsi"]["MISSION"][0]["NAME"] = "#REPONSE_DEMANDE_CONCOURS#PEUTETRE#"
    with pytest.raises(DocumentError) as err:
        emsi.decode(dumps(doc), CTX)
    assert err.value.path == "/emsi/MISSION[0]/NAME"
    assert "PEUTETRE" in err.value.reason
    assert "ACCEPTE" in err.value.reason


def test_coordinates_out_of_range_are_refused() -> None:
    doc = as_json(OPG)
    doc["emsi"]["EVENT"]["EGEO"][0]["POSITION"]["COORD"][0]["LAT"] = 123.0
    with pytest.raises(DocumentError) as err:
        emsi.decode(dumps(doc), CTX)
    assert err.value.path == "/emsi/EVENT/EGEO[0]/POSITION/COORD[0]/LAT"


def test_a_position_in_another_coordinate_system_is_not_read_as_wgs84() -> None:
    doc = as_json(OPG)
    doc["emsi"]["EVENT"]["EGEO"][0]["POSITION"]["COORDSYS"] = "EPSG-3003"
    env = emsi.decode(dumps(doc), CTX)
    assert len(env.incident.locations) == 0
    assert unmapped(env)["EVENT/EGEO[0]/POSITION/COORD[0]/LAT"] == "45.760169"
    assert json.loads(emsi.encode(env)) == doc


def test_decoding_does_not_change_the_document() -> None:
    doc = as_json(FULL)
    before = copy.deepcopy(doc)
    emsi.decode(dumps(doc), CTX)
    assert doc == before


def test_a_cancelled_request_for_assistance_is_a_cancel_of_the_request() -> None:
    doc = as_json(DC)
    doc["emsi"]["CONTEXT"]["MSGTYPE"] = "CANCEL"
    env = emsi.decode(dumps(doc), CTX)
    assert env.kind == common_pb2.KIND_CANCEL
    assert env.WhichOneof("payload") == "assistance_request"
    assert "CONTEXT/MSGTYPE" not in unmapped(env)
    assert json.loads(emsi.encode(env)) == doc
