"""NENA EIDO 1.0 JSON: the official sample both ways, each field's mapping, personal data under the masks, precise errors."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2

from adapters import eido
from adapters.document import Context, DocumentError, UnsupportedDocument
from adapters.schemas import check_json
from broker.policy import redact
from broker.validate import codelists
from broker.validate.checker import ValidationContext, validate_envelope
from tests import factories

SAMPLE_PATH = Path(__file__).parent / "examples" / "eido" / "sample-call-transfer-eido.json"
SAMPLE = SAMPLE_PATH.read_bytes()
CTX = Context(agency_id=factories.CUR)
INCIDENT_URN = "urn:emergency:uid:incidentid:a56e556d871:bcf.state.pa.us"
TIME_KEYS = ("TimeStamp", "Timestamp", "Date", "eta")


def sample() -> dict[str, Any]:
    return json.loads(SAMPLE)


def dump(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def normalise(node: Any, key: str = "") -> Any:
    """Equivalent date-time notations made equal (offsets to UTC, fractions trimmed)."""
    if isinstance(node, dict):
        return {k: normalise(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [normalise(v, key) for v in node]
    if isinstance(node, str) and any(key.endswith(t) for t in TIME_KEYS):
        return datetime.fromisoformat(node).astimezone(UTC)
    return node


def richer() -> dict[str, Any]:
    """The sample with the components it lacks: incident, notes, a suspect, a vehicle, media, opsroom agencies."""
    doc = sample()
    prologue = {
        "lastUpdateTimeStamp": "2021-04-30T14:43:00.0-04:00",
        "updatedByAgencyReference": {"$ref": "state.pa.us"},
    }
    doc["incidentComponent"] = {
        "$id": "urn:emergency:uid:incidentcomponent:1",
        **prologue,
        "incidentTypeCommonRegistryText": "VEHSTLN",
        "incidentTypeInternalText": "furto auto in corso",
        "incidentStatusCommonRegistryText": ["FireUnderControl", "Active"],
        "internalIncidentId": "PA-2021-77",
        "incidentCommonPriorityNumber": 2,
        "beatOrDispatchGroupText": "B12",
    }
    doc["notesComponent"] = [
        {"$id": "note-1", **prologue, "notesActionComments": "caller says the thief wears a red jacket",
         "agentReference": {"$ref": "OP-17"}},
        {"$id": "note-2", **prologue, "notesActionComments": "second note",
         "agentReference": {"$ref": "tjones.atroop@state.pa.us"}},
    ]  # fmt: skip
    doc["personComponent"].append(
        {"$id": "person-2", **prologue, "personIncidentRoleRegistryText": ["Suspect", "PersonOfInterest"],
         "ncPersonComponent": {"description": [{"value": "tall"}]}}
    )  # fmt: skip
    doc["vehicleComponent"] = [
        {"$id": "vehicle-1", **prologue, "vehicleRelationshipType": ["SuspectVehicle"],
         "vehicleRelationshipTimeStamp": "2021-04-30T14:41:00.0-04:00",
         "ncVehicleComponent": {"plate": "QQ123QQ"}}
    ]  # fmt: skip
    doc["mediaComponent"] = [
        {
            "$id": "media-1",
            **prologue,
            "uri": "https://video.example/clip/1",
            "contentType": "video/mp4",
            "label": "cam 7",
        }
    ]
    doc["agencyComponent"].extend(
        [
            {"$id": "it.ps.questura.to", **prologue, "agencyRoleDescriptionRegistryText": ["Dispatched"],
             "agencyType": ["police"]},
            {"$id": factories.CUR, **prologue, "agencyRoleDescriptionRegistryText": ["CallReceiving"],
             "agencyType": ["psap"]},
        ]
    )  # fmt: skip
    doc["locationComponent"].append(
        {
            "$id": "loc-3",
            **prologue,
            "locationTypeDescriptionRegistryText": "CurrentIncident",
            "locationByValue": (
                '<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:gp="urn:ietf:params:xml:ns:pidf:geopriv10" '
                'xmlns:gml="http://www.opengis.net/gml" xmlns:gs="http://www.opengis.net/pidflo/1.0" '
                'xmlns:con="urn:ietf:params:xml:ns:geopriv:conf" entity="pres:x@example.com"><tuple id="t">'
                '<status><gp:geopriv><gp:location-info><gs:Circle srsName="urn:ogc:def:crs:EPSG::4326">'
                '<gml:pos>45.070312 7.686856</gml:pos><gs:radius uom="urn:ogc:def:uom:EPSG::9001">30</gs:radius>'
                '</gs:Circle><con:confidence pdf="normal">95</con:confidence></gp:location-info>'
                "</gp:geopriv></status></tuple></presence>"
            ),
        }
    )
    return doc


# -- the schema ------------------------------------------------------------------------


def test_schema_is_derived_from_the_openapi_components() -> None:
    schema = eido.json_schema()
    assert schema["$ref"] == "#/$defs/EmergencyIncidentDataObjectType"
    text = json.dumps(schema)
    assert "#/components/schemas/" not in text
    assert "NIEMComponents" not in text
    agent = schema["$defs"]["AgentType"]["allOf"][1]["properties"]["agentRoleRegistryText"]
    assert agent["minItems"] == 1
    person = schema["$defs"]["PersonInformationType"]["allOf"][1]["properties"]["ncPersonComponent"]
    assert person["type"] == "object"
    assert schema["$defs"]["AgencyType"]["allOf"][0] == {"$ref": "#/$defs/PrologueType"}


def test_the_official_sample_is_valid_and_a_bad_date_time_is_not() -> None:
    check_json(sample(), eido.validator())
    doc = sample()
    doc["callComponent"][0]["answerDate"] = "30/04/2021 14:42"
    with pytest.raises(DocumentError) as err:
        check_json(doc, eido.validator())
    assert err.value.path == "/callComponent/0/answerDate"


# -- the official sample -------------------------------------------------------------


def test_sample_decodes_to_an_incident() -> None:
    env = eido.decode(SAMPLE, CTX)
    assert env.WhichOneof("payload") == "incident"
    assert env.kind == common_pb2.KIND_UPDATE
    assert env.sender.agency_id == factories.CUR  # the connector's, never the document's
    assert list(env.incident_ids) == [INCIDENT_URN]
    assert env.incident.id == INCIDENT_URN
    assert env.sent_at.ToJsonString() == "2021-04-30T18:43:49.439Z"
    assert env.origin.format == "eido-1.0"
    assert env.origin.identifier == INCIDENT_URN
    assert env.origin.sender == "idx.state.pa.us"
    call = env.incident.call
    assert call.call_id == "urn:emergency:uid:callid:a56e556d871:bcf.state.pa.us"
    assert call.started_at.ToJsonString() == "2021-04-30T18:40:00Z"
    assert env.incident.occurred_at == call.started_at
    assert call.caller.phone == "8195551212"
    [loc] = env.incident.locations
    assert loc.type == "RoutingLocation"
    assert (loc.address.street, loc.address.civic_number) == ("W Cellular Street", "42")
    assert not env.recipients  # state.pa.us is no opsroom agency
    assert not env.incident.agencies
    paths = [f.path for f in env.origin.unmapped]
    assert "/agencyComponent/0" in paths
    assert "/locationComponent/1" in paths  # by reference only: no typed place
    assert "/locationComponent/0/locationByValue" in paths  # the PIDF-LO as it came
    assert "/callbackComponent/0/callBackInformationUri/0" in paths  # the sip: URI
    assert "/callbackComponent/0/callBackInformationUri/1" not in paths  # the tel: URI is the phone
    assert "/@context" in paths
    assert paths.index("/callComponent/0/queueIdentifier") < paths.index("/agencyComponent/0")


def test_sample_distribution_id_is_the_state_at_a_time() -> None:
    first = eido.decode(SAMPLE, CTX)
    assert eido.decode(SAMPLE, CTX).distribution_id == first.distribution_id
    later = sample()
    later["lastUpdateTimeStamp"] = "2021-04-30T14:50:00.000-04:00"
    assert eido.decode(dump(later), CTX).distribution_id != first.distribution_id


def test_sample_round_trips_field_by_field() -> None:
    again = json.loads(eido.encode(eido.decode(SAMPLE, CTX)))
    assert normalise(again) == normalise(sample())


def test_sample_violations_at_the_hub_are_only_what_the_document_lacks() -> None:
    env = eido.decode(SAMPLE, CTX)
    env.sent_at.FromDatetime(datetime.now(UTC))
    vctx = ValidationContext(codes=codelists.load(), is_registered=lambda a: True)
    found = {(v.field, v.rule) for v in validate_envelope(env, vctx, datetime.now(UTC))}
    # The sample has no incidentComponent: no type, status nor priority.
    assert found == {("incident.type", "required"), ("incident.status", "required"), ("incident.priority", "required")}


# -- each field ------------------------------------------------------------------------


def test_richer_document_maps_each_field() -> None:
    env = eido.decode(dump(richer()), CTX)
    inc = env.incident
    assert (inc.type.eido_code, inc.type.emsi_category) == ("VEHSTLN", "PSW")
    assert inc.description == "furto auto in corso"
    assert inc.status == incident_pb2.INCIDENT_STATUS_ACTIVE  # the first status the contract knows
    assert inc.local_reference == "PA-2021-77"
    assert inc.priority == common_pb2.PRIORITY_HIGH
    assert [(p.role) for p in inc.persons] == ["Suspect"]
    assert [v.relationship for v in inc.vehicles] == ["SuspectVehicle"]
    assert [(n.text, n.author_operator_id) for n in inc.notes] == [
        ("caller says the thief wears a red jacket", "OP-17"),
        ("second note", ""),  # an e-mail is no staff id: kept in unmapped
    ]
    assert inc.notes[0].created_at.ToJsonString() == "2021-04-30T18:43:00Z"
    assert [(m.uri, m.media_type, m.description) for m in inc.media] == [
        ("https://video.example/clip/1", "video/mp4", "cam 7")
    ]
    assert [(a.agency_id, a.role) for a in inc.agencies] == [
        ("it.ps.questura.to", "Dispatched"),
        (factories.CUR, "CallReceiving"),
    ]
    assert list(env.recipients) == ["it.ps.questura.to"]  # the sender itself is no recipient
    point = inc.locations[1]
    assert point.type == "CurrentIncident"
    assert (point.point.latitude, point.point.longitude) == (45.070312, 7.686856)
    assert (point.uncertainty_m, point.confidence_percent) == (30, 95)
    paths = {f.path: f.value for f in env.origin.unmapped}
    assert json.loads(paths["/incidentComponent/incidentStatusCommonRegistryText/0"]) == "FireUnderControl"
    assert "/personComponent/1/personIncidentRoleRegistryText/1" in paths
    assert "/personComponent/1/ncPersonComponent" in paths
    assert "/vehicleComponent/0/ncVehicleComponent" in paths
    assert "/incidentComponent/beatOrDispatchGroupText" in paths
    assert json.loads(eido.encode(env)) is not None
    assert normalise(json.loads(eido.encode(env))) == normalise(richer())


@pytest.mark.parametrize(
    ("number", "priority"),
    [(1, common_pb2.PRIORITY_IMMEDIATE), (3, common_pb2.PRIORITY_NORMAL), (4, common_pb2.PRIORITY_LOW),
     (10, common_pb2.PRIORITY_LOW), (0, common_pb2.PRIORITY_UNSPECIFIED)],
)  # fmt: skip
def test_priority_scale_and_numbers_outside_it_round_trip(number: int, priority: int) -> None:
    doc = richer()
    doc["incidentComponent"]["incidentCommonPriorityNumber"] = number
    env = eido.decode(dump(doc), CTX)
    assert env.incident.priority == priority
    assert json.loads(eido.encode(env))["incidentComponent"]["incidentCommonPriorityNumber"] == number


def test_closed_status_keeps_the_incident_and_the_disposition_in_unmapped() -> None:
    doc = richer()
    doc["incidentComponent"]["incidentStatusCommonRegistryText"] = ["Closed"]
    doc["incidentComponent"]["dispositionComponent"] = [
        {"$id": "d1", "lastUpdateTimeStamp": "2021-04-30T15:00:00Z", "updatedByAgencyReference": {"$ref": "x"},
         "dispositionCommonRegistryCode": "03"}
    ]  # fmt: skip
    env = eido.decode(dump(doc), CTX)
    assert env.incident.status == incident_pb2.INCIDENT_STATUS_CLOSED
    assert "/incidentComponent/dispositionComponent" in {f.path for f in env.origin.unmapped}
    assert normalise(json.loads(eido.encode(env))) == normalise(doc)


def test_transferred_to_an_opsroom_agency_is_a_handover() -> None:
    doc = richer()
    doc["agencyComponent"][1]["agencyRoleDescriptionRegistryText"] = ["TransferredTo"]
    env = eido.decode(dump(doc), CTX)
    assert env.WhichOneof("payload") == "handover_request"
    assert env.kind == common_pb2.KIND_REQUEST
    assert "it.ps.questura.to" in env.recipients
    assert "it.ps.questura.to" not in [a.agency_id for a in env.handover_request.incident.agencies]
    again = json.loads(eido.encode(env))
    roles = {a["$id"]: a["agencyRoleDescriptionRegistryText"] for a in again["agencyComponent"]}
    assert roles["it.ps.questura.to"] == ["TransferredTo"]


def test_personal_data_lands_in_masked_fields() -> None:
    env = eido.decode(dump(richer()), CTX)
    text = env.SerializeToString()
    assert b"8195551212" in text
    assert b"red jacket" in text
    mask = redact.mask_for(personal_data=(), hide=())
    hidden = redact.redact(env, mask)
    out = hidden.SerializeToString()
    assert b"8195551212" not in out  # caller phone (typed) and the sip: URI (unmapped)
    assert b"red jacket" not in out  # note text
    assert b"QQ123QQ" not in out  # the NIEM vehicle, kept in unmapped
    assert not hidden.origin.unmapped
    assert not hidden.incident.persons


# -- envelopes of the contract ----------------------------------------------------------


def test_factory_incident_round_trips_where_eido_can_express_it() -> None:
    env = factories.envelope()
    data = eido.encode(env)
    check_json(json.loads(data), eido.validator())
    back = eido.decode(data, Context(agency_id=env.sender.agency_id))
    expected = incident_pb2.Incident()
    expected.CopyFrom(env.incident)
    # Not expressible in EIDO 1.0 without the NIEM schemas, or at all: say so, field by field.
    expected.ClearField("involved_count")
    expected.call.ClearField("network_location")
    expected.call.ClearField("language")
    expected.call.caller.ClearField("name")
    expected.call.caller.ClearField("surname")
    for person in expected.persons:
        person.ClearField("name")
        person.ClearField("birth_date")
        person.ClearField("description")
    for vehicle in expected.vehicles:
        for name in ("plate", "plate_country", "make"):
            vehicle.ClearField(name)  # type: ignore[arg-type]
    for media in expected.media:
        media.ClearField("sha256")
        media.ClearField("captured_at")
    for loc in expected.locations:
        loc.ClearField("comune_istat")
        loc.ClearField("source")
    assert back.incident == expected
    assert back.sender.operator_id == env.sender.operator_id
    assert back.sent_at == env.sent_at
    assert back.origin.sender == env.sender.agency_id
    # What stays unmapped is the EIDO bookkeeping the encoder wrote: ids, times, links, call fields.
    bookkeeping = {"$id", "lastUpdateTimeStamp", "updatedByAgencyReference", "agencyType", "personReference",
                   "callBackReference", "standardPrimaryCallType", "direction", "callStateRegistryText",
                   "vehicleRelationshipTimeStamp"}  # fmt: skip
    assert {f.path.rsplit("/", 1)[-1] for f in back.origin.unmapped} <= bookkeeping
    assert json.loads(eido.encode(back)) == json.loads(data)
    assert eido.decode(data, CTX).distribution_id == back.distribution_id


def test_factory_handover_names_the_receiving_agency() -> None:
    env = factories.envelope(kind=common_pb2.KIND_REQUEST, handover_request=factories.handover_request())
    doc = json.loads(eido.encode(env))
    roles = {a["$id"]: a["agencyRoleDescriptionRegistryText"] for a in doc["agencyComponent"]}
    assert roles == {factories.QUESTURA: ["Dispatched"], factories.PL: ["TransferredTo"]}
    back = eido.decode(dump(doc), Context(agency_id=factories.CUR))
    assert back.WhichOneof("payload") == "handover_request"
    assert factories.PL in back.recipients


@pytest.mark.parametrize("env", factories.every_valid_envelope(), ids=lambda e: e.WhichOneof("payload"))
def test_encode_refuses_what_eido_cannot_carry_and_validates_the_rest(env: envelope_pb2.Envelope) -> None:
    if env.WhichOneof("payload") in {"incident", "handover_request"}:
        check_json(json.loads(eido.encode(env)), eido.validator())
    else:
        with pytest.raises(DocumentError) as err:
            eido.encode(env)
        assert err.value.path == "payload"


def test_encode_refuses_an_incident_without_a_type() -> None:
    env = factories.envelope()
    env.incident.ClearField("type")
    with pytest.raises(DocumentError) as err:
        eido.encode(env)
    assert err.value.path == "incident.type.eido_code"


def test_encode_ignores_unmapped_of_another_format_and_refuses_bad_ones() -> None:
    env = factories.envelope()
    env.origin.CopyFrom(factories.origin())  # CAP paths: never written into an EIDO
    assert "addresses" not in json.loads(eido.encode(env))
    env.origin.format = eido.FORMAT
    env.origin.unmapped[0].path = "addresses"
    with pytest.raises(DocumentError) as err:
        eido.encode(env)
    assert err.value.path == "origin.unmapped[0]"


def test_encode_validates_its_output() -> None:
    env = eido.decode(SAMPLE, CTX)
    env.origin.unmapped.add(path="/callComponent/0/direction", value='"sideways"')
    with pytest.raises(DocumentError) as err:
        eido.encode(env)
    assert err.value.path == "/callComponent/0/direction"


# -- errors ------------------------------------------------------------------------------


def _mutated(change: Any) -> bytes:
    doc = sample()
    change(doc)
    return dump(doc)


@pytest.mark.parametrize(
    ("data", "path", "kind"),
    [
        (b"[1, 2]", "/", UnsupportedDocument),
        (b'{"alert": {}}', "/eidoVersion", UnsupportedDocument),
        (_mutated(lambda d: d.update(eidoVersion="2.0")), "/eidoVersion", UnsupportedDocument),
        (_mutated(lambda d: d.pop("eidoVersion")), "/eidoVersion", UnsupportedDocument),
        (_mutated(lambda d: d.update(EIDOVersion="1.0")), "/EIDOVersion", UnsupportedDocument),
        (_mutated(lambda d: d.update(incidentTrackingIdentifier="x")), "/incidentTrackingIdentifier", UnsupportedDocument),
        (_mutated(lambda d: d.update(incidentComponent=[{}])), "/incidentComponent", UnsupportedDocument),
        (_mutated(lambda d: d["agentComponent"][0].update(OwningAgencyIdentifier="x")),
         "/agentComponent/0/OwningAgencyIdentifier", UnsupportedDocument),
        (_mutated(lambda d: d.pop("issuingElementIdentification")), "/", DocumentError),
        (_mutated(lambda d: d["callComponent"][0].update(direction="sideways")), "/callComponent/0/direction",
         DocumentError),
        (_mutated(lambda d: d.update(lastUpdateTimeStamp="yesterday")), "/lastUpdateTimeStamp", DocumentError),
        (_mutated(lambda d: d.update({"$id": "urn:emergency:uid:incidentid:" + "x" * 200})), "/$id", DocumentError),
        (_mutated(lambda d: d["locationComponent"][0].update(locationByValue="<presence")),
         "/locationComponent/0/locationByValue", DocumentError),
        (b'{"eidoVersion": "1.0", "eidoVersion": "1.0"}', "/eidoVersion", DocumentError),
    ],
)  # fmt: skip
def test_errors_name_the_field(data: bytes, path: str, kind: type[DocumentError]) -> None:
    with pytest.raises(kind) as err:
        eido.decode(data, CTX)
    assert err.value.path == path, err.value
    assert err.value.reason


def test_missing_required_member_names_it() -> None:
    doc = sample()
    del doc["callComponent"][0]["callStartTimestamp"]
    with pytest.raises(DocumentError) as err:
        eido.decode(dump(doc), CTX)
    assert err.value.path == "/callComponent/0"
    assert "callStartTimestamp" in err.value.reason


def test_older_draft_sample_is_refused() -> None:
    draft = {
        "$id": "incidentid:0:psap.allegheny.pa.us:header",
        "LastUpdateTimeStamp": "2020-10-29T18:40:04.337Z",
        "EIDOVersion": "1.0",
        "incidentTrackingIdentifier": "urn:emergency:uid:incidentid:0:psap.allegheny.pa.us",
    }
    with pytest.raises(UnsupportedDocument, match="2019-2020"):
        eido.decode(dump(draft), CTX)


def test_decode_does_not_change_the_input() -> None:
    doc = richer()
    before = copy.deepcopy(doc)
    eido.decode(dump(doc), CTX)
    assert doc == before


def test_unmapped_caller_and_staff_data_need_their_category_not_only_free_text() -> None:
    env = eido.decode(SAMPLE, CTX)
    by_path = {u.path: u.category for u in env.origin.unmapped}
    assert by_path["/callbackComponent/0/callBackInformationUri/0"] == "caller"
    assert by_path["/updatedByAgentReference"] == "staff"
    assert by_path.get("/@context", "") == ""
    seen = redact.redact(env, redact.mask_for({"free_text"}, ()))
    kept = json.dumps([u.value for u in seen.origin.unmapped])
    assert "8195551212" not in kept
    assert "tjones.atroop" not in kept
    assert "8195551212" in json.dumps([u.value for u in env.origin.unmapped])
