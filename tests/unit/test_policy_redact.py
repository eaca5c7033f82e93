"""Redaction: masks from personal-data grants, and the removal of hidden fields from copies of envelopes."""

from __future__ import annotations

import pytest
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker.policy.redact import (
    CATEGORIES,
    FULL,
    PERSONAL_DATA,
    PathError,
    check_path,
    compile_mask,
    mask_for,
    present_hidden,
    redact,
)
from broker.validate.checker import ORIGIN_CATEGORIES
from tests import factories as f

ALL_PERSONAL = frozenset(path for paths in PERSONAL_DATA.values() for path in paths)
HEADER = (
    "distribution_id",
    "sender",
    "sender.agency_id",
    "sent_at",
    "status",
    "kind",
    "recipients",
    "target_areas",
    "confidentiality",
    "incident_ids",
    "references",
    "legal_basis",
    "expires_at",
)


def payload_envelopes() -> dict[str, envelope_pb2.Envelope]:
    """A factories envelope for each payload that carries personal data."""
    ref = (("0b7e4a53-35a7-4c55-9d0c-4f0f6a9c2b11", f.QUESTURA),)
    closure = f.closure()
    closure.remarks = f.NOTE_TEXT
    return {
        "incident": f.envelope(),
        "handover_request": f.envelope(kind=common_pb2.KIND_REQUEST, handover_request=f.handover_request()),
        "alert": f.envelope(kind=common_pb2.KIND_REPORT, alert=f.alert()),
        "assistance_request": f.envelope(kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request()),
        "closure": f.envelope(kind=common_pb2.KIND_UPDATE, closure=closure),
        "acknowledgement": f.envelope(kind=common_pb2.KIND_ACK, references=ref, acknowledgement=f.acknowledgement()),
    }


ENVELOPES = payload_envelopes()


def caller_location() -> common_pb2.Location:
    """Where the caller is (a different place from the event)."""
    return common_pb2.Location(
        type="Caller", point=common_pb2.GeoPoint(latitude=45.3097, longitude=9.5037), comune_istat="098031"
    )


def with_caller_location(env: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
    """env with a Caller location added among the incident's locations."""
    out = envelope_pb2.Envelope()
    out.CopyFrom(env)
    out.incident.locations.insert(0, caller_location())
    out.incident.locations.append(caller_location())
    return out


# -- masks --------------------------------------------------------------------------------------------------------


def test_no_grant_hides_every_personal_data_path() -> None:
    """A role with no grant and no extra paths hides exactly the whole personal-data catalogue."""
    assert ALL_PERSONAL == mask_for((), ()).hidden


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_granting_one_category_shows_exactly_its_paths(category: str) -> None:
    """Granting one category hides every personal-data path except that category's."""
    assert ALL_PERSONAL - frozenset(PERSONAL_DATA[category]) == mask_for({category}, ()).hidden


def test_hide_paths_are_added_to_the_personal_data() -> None:
    """Extra hide paths are hidden on top of the categories not granted."""
    granted = {"caller", "persons", "free_text"}
    extra = {"incident.locations.point", "incident.agencies"}
    expected = frozenset({p for c, paths in PERSONAL_DATA.items() if c not in granted for p in paths} | extra)
    assert expected == mask_for(granted, extra).hidden


def test_granting_all_categories_hides_nothing() -> None:
    """A role granted every category sees every envelope whole."""
    mask = mask_for(CATEGORIES, ())
    assert mask.empty
    for env in (*ENVELOPES.values(), with_caller_location(f.envelope())):
        assert env == redact(env, mask)


def test_full_mask_is_empty() -> None:
    """FULL hides nothing."""
    assert frozenset() == FULL.hidden
    assert FULL.empty


# -- redaction of each payload ------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", sorted(ENVELOPES))
def test_redact_removes_every_personal_field(payload: str) -> None:
    """Without grants, no personal-data path is left in the redacted envelope, and the original is untouched."""
    env = ENVELOPES[payload]
    before = env.SerializeToString(deterministic=True)
    mask = mask_for((), ())
    assert present_hidden(env, mask), "the factory envelope carries personal data to remove"
    out = redact(env, mask)
    assert [] == present_hidden(out, mask)
    assert before == env.SerializeToString(deterministic=True)
    assert payload == out.WhichOneof("payload")


@pytest.mark.parametrize("payload", sorted(ENVELOPES))
def test_redact_leaves_no_personal_value(payload: str) -> None:
    """Without grants, none of the synthetic personal values appears anywhere in the redacted bytes."""
    out = redact(ENVELOPES[payload], mask_for((), ())).SerializeToString()
    assert [] == [value for value in (*f.PERSONAL_VALUES, "OP-CUR-017", "PDL-3") if value.encode() in out]


def test_redact_keeps_what_is_not_hidden() -> None:
    """Redaction removes only the hidden paths: the header and the event's facts stay."""
    env = f.envelope()
    out = redact(env, mask_for((), ()))
    assert env.distribution_id == out.distribution_id
    assert env.sender.agency_id == out.sender.agency_id
    assert list(env.recipients) == list(out.recipients)
    assert env.legal_basis == out.legal_basis
    assert env.target_areas == out.target_areas
    assert "FIGHT" == out.incident.type.eido_code
    assert env.incident.locations == out.incident.locations  # the event's place is not the caller's
    assert "Fiat" == out.incident.vehicles[0].make
    assert "" == out.incident.vehicles[0].plate
    assert "cella 800 m" not in str(out)
    assert 1 == len(out.incident.notes)
    assert "" == out.incident.notes[0].text


def test_one_category_granted_shows_that_category_only() -> None:
    """Granting vehicles shows the plate, and still hides the caller."""
    out = redact(f.envelope(), mask_for({"vehicles"}, ()))
    assert f.PLATE == out.incident.vehicles[0].plate
    assert not out.incident.call.HasField("caller")
    assert not out.incident.persons


def test_caller_selector_removes_caller_locations_only() -> None:
    """The caller category removes locations of type Caller and keeps the others, in order."""
    env = with_caller_location(f.envelope())
    assert ["Caller", "CurrentIncident", "Caller"] == [loc.type for loc in env.incident.locations]
    out = redact(env, mask_for(CATEGORIES - {"caller"}, ()))
    assert ["CurrentIncident"] == [loc.type for loc in out.incident.locations]
    assert f.location() == out.incident.locations[0]
    assert 3 == len(env.incident.locations)


def test_caller_selector_in_handover_request() -> None:
    """The Caller location of an incident handed over is removed too."""
    env = f.envelope(kind=common_pb2.KIND_REQUEST, handover_request=f.handover_request())
    env.handover_request.incident.locations.append(caller_location())
    out = redact(env, mask_for(CATEGORIES - {"caller"}, ()))
    assert ["CurrentIncident"] == [loc.type for loc in out.handover_request.incident.locations]


def test_caller_selector_with_free_text_hidden() -> None:
    """Caller locations go, and the landmark text of the other locations goes with free text."""
    env = with_caller_location(f.envelope())
    env.incident.locations[1].address.additional_info = "davanti al bar"
    out = redact(env, mask_for(CATEGORIES - {"caller", "free_text"}, ()))
    assert [("CurrentIncident", "")] == [(loc.type, loc.address.additional_info) for loc in out.incident.locations]
    assert "Via Roma" == out.incident.locations[0].address.street


def test_present_hidden_finds_caller_locations() -> None:
    """present_hidden sees a Caller location left in place."""
    mask = compile_mask(["incident.locations[type=Caller]"])
    assert ["incident.locations[type=Caller]"] == present_hidden(with_caller_location(f.envelope()), mask)
    assert [] == present_hidden(f.envelope(), mask)


# -- paths --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["nowhere", "incident.nowhere", "incident.description.text", "incident.call.caller.nickname", ""]
)
def test_unknown_paths_are_rejected(path: str) -> None:
    """A path that names no envelope field is refused by check_path and compile_mask."""
    with pytest.raises(PathError):
        check_path(path)
    with pytest.raises(PathError):
        compile_mask(["incident.call", path])


@pytest.mark.parametrize("path", HEADER)
def test_protected_header_paths_are_rejected(path: str) -> None:
    """The header fields can never be hidden."""
    with pytest.raises(PathError, match="header"):
        check_path(path)
    with pytest.raises(PathError, match="header"):
        compile_mask([path])


@pytest.mark.parametrize("path", sorted(ALL_PERSONAL | {"incident.locations.point", "sender.operator_id"}))
def test_catalogue_and_staff_paths_are_accepted(path: str) -> None:
    """Every path of the personal-data catalogue names a field that may be hidden."""
    check_path(path)


@pytest.mark.parametrize(
    "paths",
    [
        ["incident.call", "incident.call.caller", "incident.call.caller.name"],
        ["incident.call.caller.name", "incident.call"],
        ["incident.call.network_location.imsi", "incident.call"],
    ],
)
def test_parent_path_hides_children(paths: list[str]) -> None:
    """A parent path removes the whole field, whatever other paths below it say."""
    mask = compile_mask(paths)
    assert frozenset(paths) == mask.hidden
    out = redact(f.envelope(), mask)
    assert not out.incident.HasField("call")
    assert [] == present_hidden(out, mask)
    assert "FIGHT" == out.incident.type.eido_code


def test_parent_of_selector_hides_all_locations() -> None:
    """Hiding incident.locations removes every location, Caller or not."""
    mask = compile_mask(["incident.locations[type=Caller]", "incident.locations"])
    out = redact(with_caller_location(f.envelope()), mask)
    assert [] == list(out.incident.locations)
    assert [] == present_hidden(out, mask)


def test_paths_of_absent_payload_are_ignored() -> None:
    """Hiding incident paths leaves an alert untouched."""
    env = ENVELOPES["alert"]
    assert env == redact(env, compile_mask(["incident.call", "incident.persons", "closure.remarks"]))


def test_repeated_path_applies_to_every_element() -> None:
    """incident.vehicles.plate clears the plate of every vehicle and keeps the vehicles."""
    env = f.envelope()
    env.incident.vehicles.add(relationship="InvolvedVehicle", plate="ZZ999ZZ", make="Lancia")
    out = redact(env, compile_mask(["incident.vehicles.plate"]))
    assert [("", "Fiat"), ("", "Lancia")] == [(v.plate, v.make) for v in out.incident.vehicles]


@pytest.mark.parametrize("path", ["legal_basis.purpose", "sent_at.seconds", "target_areas.comune_istat"])
def test_fields_inside_protected_header_are_rejected(path: str) -> None:
    """A field inside a protected header field is part of the header too."""
    with pytest.raises(PathError):
        check_path(path)


def test_selector_on_unknown_field_is_rejected() -> None:
    """A selector naming no field of the repeated message is refused up front."""
    with pytest.raises(PathError):
        check_path("incident.locations[kind=Caller]")


def test_unmapped_elements_of_a_decoded_document_are_masked_by_their_category() -> None:
    env = f.envelope()
    env.origin.CopyFrom(
        envelope_pb2.Origin(
            format="eido-1.0",
            unmapped=[
                envelope_pb2.OriginField(
                    path="/callbackComponent/0/callBackInformationUri/0", value="sip:1@x", category="caller"
                ),
                envelope_pb2.OriginField(path="/vehicleComponent/0/vehicle", value="{}", category="vehicles"),
                envelope_pb2.OriginField(path="/@context", value='"x"'),
            ],
        )
    )
    paths = lambda e: [u.path for u in e.origin.unmapped]  # noqa: E731
    free_text_only = redact(env, mask_for({"free_text"}, ()))
    assert paths(free_text_only) == ["/@context"]
    with_caller = redact(env, mask_for({"free_text", "caller"}, ()))
    assert paths(with_caller) == ["/callbackComponent/0/callBackInformationUri/0", "/@context"]
    without_free_text = redact(env, mask_for({"caller", "vehicles"}, ()))
    assert paths(without_free_text) == []
    assert paths(redact(env, mask_for(CATEGORIES, ()))) == paths(env)


def test_origin_categories_are_the_catalogue_but_free_text() -> None:
    assert ORIGIN_CATEGORIES == CATEGORIES - {"free_text"}
