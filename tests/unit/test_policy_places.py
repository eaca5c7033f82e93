"""Where an envelope's event happens: comuni from coordinates, and the comuni and territory keys of each payload."""

from __future__ import annotations

import math

import pytest
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker.policy.places import event_comuni, event_keys, place_index
from tests import factories as f

TORINO, LODI, MILANO = "001272", "098031", "015146"
POINTS = {TORINO: (45.070312, 7.686856), LODI: (45.3097, 9.5037), MILANO: (45.464211, 9.191383)}
LODI_KEYS = frozenset({"c:098031", "p:098", "r:03"})
TORINO_KEYS = frozenset({"c:001272", "p:001", "r:01"})


def point(comune: str) -> common_pb2.GeoPoint:
    """A point inside that comune."""
    lat, lon = POINTS[comune]
    return common_pb2.GeoPoint(latitude=lat, longitude=lon)


def at_point(comune: str, kind: str = "CurrentIncident") -> common_pb2.Location:
    """A location given only by a point inside that comune."""
    return common_pb2.Location(type=kind, point=point(comune))


def no_areas(env: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
    """env without target areas (the factories name Torino there)."""
    del env.target_areas[:]
    return env


def incident_at(*locations: common_pb2.Location) -> envelope_pb2.Envelope:
    """An incident report with these locations and no target areas."""
    env = no_areas(f.envelope())
    del env.incident.locations[:]
    env.incident.locations.extend(locations)
    return env


# -- coordinates --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lat", "lon", "expected"),
    [
        (45.070312, 7.686856, TORINO),
        (45.3097, 9.5037, LODI),
        (45.464211, 9.191383, MILANO),
        (45.7640, 4.8357, None),  # Lyon
        (48.8566, 2.3522, None),  # Paris
        (0.0, 0.0, None),
        (math.nan, 9.5037, None),
        (45.3097, math.nan, None),
        (math.inf, 9.5037, None),
    ],
)
def test_comune_at(lat: float, lon: float, expected: str | None) -> None:
    """Known points resolve to their comune; points outside Italy and non-finite ones to None."""
    assert expected == place_index().comune_at(lat, lon)


def test_keys_of_comuni() -> None:
    """A comune's keys are the comune, its province and its region."""
    assert LODI_KEYS | TORINO_KEYS == place_index().keys([LODI, TORINO])
    assert "03" == place_index().region_of(MILANO)
    assert "" == place_index().region_of("999999")


# -- each payload -------------------------------------------------------------------------------------------------


def test_incident_comune_given_wins_over_point() -> None:
    """An incident location's comune is used as given, even if its point lies elsewhere."""
    loc = common_pb2.Location(type="CurrentIncident", point=point(TORINO), comune_istat=LODI)
    env = incident_at(loc)
    assert frozenset({LODI}) == event_comuni(env, place_index())
    assert LODI_KEYS == event_keys(env, place_index())


def test_incident_with_only_a_point() -> None:
    """An incident located only by coordinates gets the comune at that point."""
    env = incident_at(at_point(MILANO))
    assert frozenset({MILANO}) == event_comuni(env, place_index())
    assert frozenset({"c:015146", "p:015", "r:03"}) == event_keys(env, place_index())


def test_incident_with_several_locations() -> None:
    """Every event location counts."""
    env = incident_at(at_point(MILANO), common_pb2.Location(type="CurrentIncident", comune_istat=LODI))
    assert frozenset({MILANO, LODI}) == event_comuni(env, place_index())


def test_caller_location_is_not_the_event_place() -> None:
    """A Caller location does not count as the place of the event."""
    env = incident_at(at_point(LODI, "Caller"), common_pb2.Location(type="Caller", comune_istat=LODI))
    assert frozenset() == event_comuni(env, place_index())
    assert frozenset() == event_keys(env, place_index())
    env.incident.locations.append(at_point(TORINO))
    assert frozenset({TORINO}) == event_comuni(env, place_index())


def test_caller_location_falls_back_to_target_areas() -> None:
    """With only a Caller location, the target areas say where the event is."""
    env = incident_at(at_point(LODI, "Caller"))
    env.target_areas.add(comune_istat=MILANO)
    assert frozenset({MILANO}) == event_comuni(env, place_index())


def test_point_outside_italy_falls_back_to_target_areas() -> None:
    """A point that resolves to no comune leaves the target areas to decide."""
    env = incident_at(
        common_pb2.Location(type="CurrentIncident", point=common_pb2.GeoPoint(latitude=45.764, longitude=4.8357))
    )
    assert frozenset() == event_comuni(env, place_index())
    env.target_areas.add(comune_istat=LODI)
    assert frozenset({LODI}) == event_comuni(env, place_index())


def test_location_places_beat_target_areas() -> None:
    """When the payload says where, the target areas are not added."""
    env = incident_at(at_point(LODI))
    env.target_areas.add(comune_istat=TORINO)
    env.target_areas.add(provincia_istat="001")
    assert LODI_KEYS == event_keys(env, place_index())


def test_factories_incident_is_in_torino() -> None:
    """The factories' incident is in Torino (comune given)."""
    assert TORINO_KEYS == event_keys(f.envelope(), place_index())


def test_handover_request() -> None:
    """A handover request is where its incident is."""
    env = no_areas(f.envelope(kind=common_pb2.KIND_REQUEST, handover_request=f.handover_request()))
    del env.handover_request.incident.locations[:]
    env.handover_request.incident.locations.append(at_point(LODI))
    env.handover_request.incident.locations.append(at_point(MILANO, "Caller"))
    assert frozenset({LODI}) == event_comuni(env, place_index())


def test_assistance_request_with_location() -> None:
    """An assistance request is where its location is, by comune or by point."""
    env = no_areas(f.envelope(kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request()))
    assert frozenset({TORINO}) == event_comuni(env, place_index())
    env.assistance_request.location.CopyFrom(at_point(LODI))
    assert frozenset({LODI}) == event_comuni(env, place_index())


def test_assistance_request_without_location_uses_target_areas() -> None:
    """Without a location, the target areas place an assistance request."""
    env = no_areas(f.envelope(kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request()))
    env.assistance_request.ClearField("location")
    assert frozenset() == event_comuni(env, place_index())
    env.target_areas.add(comune_istat=MILANO)
    assert frozenset({MILANO}) == event_comuni(env, place_index())


def test_alert_areas_comuni_and_circles() -> None:
    """An alert is in the comuni its areas name and those at the centres of its circles."""
    env = no_areas(f.envelope(alert=f.alert()))
    area = env.alert.infos[0].areas[0]
    assert frozenset({TORINO}) == event_comuni(env, place_index())
    del area.comuni_istat[:]
    area.circles[0].center.CopyFrom(point(LODI))
    assert frozenset({LODI}) == event_comuni(env, place_index())
    env.alert.infos.add(areas=[alert_pb2.AlertArea(comuni_istat=[MILANO])])
    assert frozenset({LODI, MILANO}) == event_comuni(env, place_index())


def test_alert_with_only_polygons_uses_target_areas() -> None:
    """Polygons do not place an alert: the target areas do."""
    env = no_areas(f.envelope(alert=f.alert()))
    area = env.alert.infos[0].areas[0]
    del area.comuni_istat[:]
    del area.circles[:]
    assert frozenset() == event_comuni(env, place_index())
    env.target_areas.add(comune_istat=LODI)
    assert frozenset({LODI}) == event_comuni(env, place_index())


@pytest.mark.parametrize(
    "payload",
    [
        {"closure": f.closure()},
        {"acknowledgement": f.acknowledgement()},
        {"assistance_response": f.assistance_response()},
        {"handover_response": f.handover_response()},
    ],
    ids=lambda p: next(iter(p)),
)
def test_payloads_without_place_use_target_areas(payload: dict[str, object]) -> None:
    """Closures, acknowledgements and responses are placed by the target areas only."""
    env = no_areas(f.envelope(**payload))
    assert frozenset() == event_keys(env, place_index())
    env.target_areas.add(comune_istat=LODI)
    assert LODI_KEYS == event_keys(env, place_index())


def test_target_area_province_only() -> None:
    """A target area naming only a province gives only the province key."""
    env = no_areas(f.envelope(closure=f.closure()))
    env.target_areas.add(provincia_istat="098")
    assert frozenset() == event_comuni(env, place_index())
    assert frozenset({"p:098"}) == event_keys(env, place_index())


def test_target_area_region_only() -> None:
    """A target area naming only a region gives only the region key."""
    env = no_areas(f.envelope(closure=f.closure()))
    env.target_areas.add(regione_istat="03")
    assert frozenset({"r:03"}) == event_keys(env, place_index())


def test_target_areas_mixed() -> None:
    """Provinces and regions named beside no comune all count; a comune among them takes over."""
    env = no_areas(f.envelope(closure=f.closure()))
    env.target_areas.add(provincia_istat="098")
    env.target_areas.add(regione_istat="01")
    assert frozenset({"p:098", "r:01"}) == event_keys(env, place_index())
    env.target_areas.add(comune_istat=MILANO)
    assert frozenset({"c:015146", "p:015", "r:03"}) == event_keys(env, place_index())
