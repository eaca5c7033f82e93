"""Where an envelope's event happens, as ISTAT comuni: given, or derived from coordinates (pure after loading).

Coordinates resolve with the 2023 municipal centroids and bounding boxes (broker/data/istat):
the comuni whose box holds the point, then the nearest centroid among them. Near a border this
is approximate (exact needs the polygons, not shipped); a room that knows the comune sends it.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2

from broker.validate import codelists

_CELL = 0.1  # degrees; Italy spans about 120 x 120 cells


@dataclass(frozen=True, slots=True)
class _Comune:
    code: str
    lat: float
    lon: float
    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float


class PlaceIndex:
    """Point to comune, and comune to province and region."""

    def __init__(self, comuni: Iterable[_Comune], regions: dict[str, str]) -> None:
        """Index the comuni's bounding boxes in a grid of 0.1 degree cells."""
        self._cells: dict[tuple[int, int], list[_Comune]] = {}
        for c in comuni:
            for x in range(math.floor(c.min_lon / _CELL), math.floor(c.max_lon / _CELL) + 1):
                for y in range(math.floor(c.min_lat / _CELL), math.floor(c.max_lat / _CELL) + 1):
                    self._cells.setdefault((x, y), []).append(c)
        self._regions = regions

    def comune_at(self, lat: float, lon: float) -> str | None:
        """The comune at a WGS84 point, or None outside Italy's comuni."""
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return None
        candidates = self._cells.get((math.floor(lon / _CELL), math.floor(lat / _CELL)), [])
        inside = [c for c in candidates if c.min_lon <= lon <= c.max_lon and c.min_lat <= lat <= c.max_lat]
        if not inside:
            return None
        scale = math.cos(math.radians(lat))
        return min(inside, key=lambda c: ((c.lon - lon) * scale) ** 2 + (c.lat - lat) ** 2).code

    def centroids(self) -> dict[str, tuple[float, float]]:
        """Every indexed comune's centroid (latitude, longitude)."""
        return {c.code: (c.lat, c.lon) for cells in self._cells.values() for c in cells}

    def region_of(self, comune: str) -> str:
        """The two-digit region code of a comune ("" if unknown)."""
        return self._regions.get(comune, "")

    def keys(self, comuni: Iterable[str]) -> frozenset[str]:
        """Territory index keys of these comuni: the comune, its province and its region."""
        out: set[str] = set()
        for c in comuni:
            out.add(f"c:{c}")
            out.add(f"p:{c[:3]}")
            region = self.region_of(c)
            if region:
                out.add(f"r:{region}")
        return frozenset(out)


@functools.cache
def place_index() -> PlaceIndex:
    """The index over the shipped ISTAT data, built once."""
    text = (resources.files("broker") / "data" / "istat" / "comuni-2023-centroids-derived.csv").read_text("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    comuni = [
        _Comune(
            r["istat_code"],
            float(r["centroid_lat"]),
            float(r["centroid_lon"]),
            float(r["bbox_min_lon"]),
            float(r["bbox_min_lat"]),
            float(r["bbox_max_lon"]),
            float(r["bbox_max_lat"]),
        )
        for r in rows
    ]
    regions = {r["istat_code"]: f"{int(r['region_code']):02d}" for r in rows}
    regions.update({code: c.region_code for code, c in codelists.comuni_by_code().items()})
    return PlaceIndex(comuni, regions)


def _location_comuni(locations: Iterable[common_pb2.Location], index: PlaceIndex) -> set[str]:
    out: set[str] = set()
    for loc in locations:
        if loc.type == "Caller":
            continue  # where the caller is, not where the event is
        if loc.comune_istat:
            out.add(loc.comune_istat)
        elif loc.HasField("point"):
            found = index.comune_at(loc.point.latitude, loc.point.longitude)
            if found:
                out.add(found)
    return out


def _incident_comuni(incident: incident_pb2.Incident, index: PlaceIndex) -> set[str]:
    return _location_comuni(incident.locations, index)


def event_comuni(env: envelope_pb2.Envelope, index: PlaceIndex) -> frozenset[str]:
    """The comuni where the envelope's event happens (empty when it says nothing of a place)."""
    found: set[str] = set()
    payload = env.WhichOneof("payload")
    if payload == "incident":
        found = _incident_comuni(env.incident, index)
    elif payload == "handover_request":
        found = _incident_comuni(env.handover_request.incident, index)
    elif payload == "assistance_request" and env.assistance_request.HasField("location"):
        found = _location_comuni([env.assistance_request.location], index)
    elif payload == "alert":
        for info in env.alert.infos:
            for area in info.areas:
                found.update(area.comuni_istat)
                for circle in area.circles:
                    hit = index.comune_at(circle.center.latitude, circle.center.longitude)
                    if hit:
                        found.add(hit)
    if not found:
        found = {a.comune_istat for a in env.target_areas if a.WhichOneof("code") == "comune_istat"}
    return frozenset(found)


def event_keys(env: envelope_pb2.Envelope, index: PlaceIndex) -> frozenset[str]:
    """Territory keys of the event: its comuni, their provinces and regions, and areas named only as such."""
    keys = set(index.keys(event_comuni(env, index)))
    if not keys:
        for area in env.target_areas:
            which = area.WhichOneof("code")
            if which == "provincia_istat":
                keys.add(f"p:{area.provincia_istat}")
            elif which == "regione_istat":
                keys.add(f"r:{area.regione_istat}")
    return frozenset(keys)
