"""The rules of an alert (pure): CAP 1.2's info blocks, areas and parameters, plate reads and camera alerts."""

from __future__ import annotations

import math
from collections.abc import Sequence

from opsroom.alert.v1 import alert_pb2

from broker.validate.fields import (
    _CATEGORY,
    _CERTAINTY,
    _LANGUAGE_RE,
    _MAX_CATEGORIES,
    _SCOPE,
    _SEVERITY,
    _URGENCY,
)
from broker.validate.incident import IncidentRules

# CAP 1.2 responseType values (CAP-v1.2.xsd).
_RESPONSE_TYPES = frozenset(
    {"Shelter", "Evacuate", "Prepare", "Execute", "Avoid", "Monitor", "Assess", "AllClear", "None"}
)


class AlertRules(IncidentRules):
    """Rules of alert payloads (CAP 1.2 in protobuf)."""

    __slots__ = ()

    def alert(self, path: str, alert: alert_pb2.Alert) -> None:
        """Check the alert at path; record each violation."""
        self.enum(f"{path}.scope", alert.scope, _SCOPE)
        self.text(f"{path}.restriction", alert.restriction, required=alert.scope == alert_pb2.SCOPE_RESTRICTED)
        if not alert.infos:
            self.fail(f"{path}.infos", "required", "must have at least one info block")
        self.max_items(f"{path}.infos", alert.infos, 8)
        for i, info in enumerate(alert.infos[:8]):
            self.alert_info(f"{path}.infos[{i}]", info)
        self.max_items(f"{path}.vehicles", alert.vehicles, self.limits.max_items)
        for i, vehicle in enumerate(alert.vehicles[: self.limits.max_items]):
            self.vehicle(f"{path}.vehicles[{i}]", vehicle)
        self.text(f"{path}.source", alert.source)
        self.max_items(f"{path}.codes", alert.codes, self.limits.max_items)
        for i, code in enumerate(alert.codes[: self.limits.max_items]):
            self.text(f"{path}.codes[{i}]", code, required=True)
        self.text(f"{path}.note", alert.note, max_len=self.limits.max_text)

    def alert_info(self, path: str, info: alert_pb2.AlertInfo) -> None:
        """Check the alert info at path; record each violation."""
        lim = self.limits
        self.pattern(f"{path}.language", info.language, _LANGUAGE_RE, "a BCP 47 language tag")
        if not info.categories:
            self.fail(f"{path}.categories", "required", "must have at least one category")
        self.max_items(f"{path}.categories", info.categories, _MAX_CATEGORIES)
        for i, category in enumerate(info.categories[:_MAX_CATEGORIES]):
            self.enum(f"{path}.categories[{i}]", category, _CATEGORY)
        self.text(f"{path}.event", info.event, required=True)
        self.enum(f"{path}.urgency", info.urgency, _URGENCY)
        self.enum(f"{path}.severity", info.severity, _SEVERITY)
        self.enum(f"{path}.certainty", info.certainty, _CERTAINTY)
        self.named_values(f"{path}.event_codes", info.event_codes)
        self.timestamp(f"{path}.effective", info.effective, present=info.HasField("effective"))
        self.timestamp(f"{path}.onset", info.onset, present=info.HasField("onset"))
        self.timestamp(f"{path}.expires", info.expires, present=info.HasField("expires"))
        self.text(f"{path}.headline", info.headline)
        self.text(f"{path}.description", info.description, max_len=lim.max_text)
        self.text(f"{path}.instruction", info.instruction, max_len=lim.max_text)
        self.named_values(f"{path}.parameters", info.parameters)
        self.media(f"{path}.resources", info.resources)
        if not info.areas:
            self.fail(f"{path}.areas", "required", "must have at least one area")
        self.max_items(f"{path}.areas", info.areas, lim.max_items)
        for i, area in enumerate(info.areas[: lim.max_items]):
            self.alert_area(f"{path}.areas[{i}]", area)
        self.max_items(f"{path}.response_types", info.response_types, len(_RESPONSE_TYPES))
        for i, response in enumerate(info.response_types[: len(_RESPONSE_TYPES)]):
            self.code(f"{path}.response_types[{i}]", response, _RESPONSE_TYPES, "CAP responseType", required=True)
        self.text(f"{path}.audience", info.audience)
        self.text(f"{path}.sender_name", info.sender_name)
        self.text(f"{path}.web", info.web, max_len=2048)
        self.text(f"{path}.contact", info.contact)

    def named_values(self, path: str, values: Sequence[alert_pb2.NamedValue]) -> None:
        """Check the named values at path; record each violation."""
        self.max_items(path, values, self.limits.max_items)
        for i, nv in enumerate(values[: self.limits.max_items]):
            self.text(f"{path}[{i}].name", nv.name, required=True, max_len=100)
            self.text(f"{path}[{i}].value", nv.value, max_len=self.limits.max_short)

    def alert_area(self, path: str, area: alert_pb2.AlertArea) -> None:
        """Check the alert area at path; record each violation."""
        lim = self.limits
        self.text(f"{path}.area_desc", area.area_desc, required=True)
        self.max_items(f"{path}.polygons", area.polygons, lim.max_items)
        for i, polygon in enumerate(area.polygons[: lim.max_items]):
            p = f"{path}.polygons[{i}]"
            points = polygon.points
            if not 4 <= len(points) <= 1000:
                self.fail(f"{p}.points", "polygon", "must have between 4 and 1000 points")
            elif (points[0].latitude, points[0].longitude) != (points[-1].latitude, points[-1].longitude):
                self.fail(f"{p}.points", "polygon", "must be closed: the last point equals the first")
            for j, point in enumerate(points[:1000]):
                self.point(f"{p}.points[{j}]", point)
        self.max_items(f"{path}.circles", area.circles, lim.max_items)
        for i, circle in enumerate(area.circles[: lim.max_items]):
            p = f"{path}.circles[{i}]"
            self.point(f"{p}.center", circle.center)
            if not math.isfinite(circle.radius_km) or not 0 <= circle.radius_km <= 1000:
                self.fail(f"{p}.radius_km", "range", "must be between 0 and 1000")
        self.max_items(f"{path}.comuni_istat", area.comuni_istat, lim.max_items)
        for i, code in enumerate(area.comuni_istat[: lim.max_items]):
            self.comune(f"{path}.comuni_istat[{i}]", code, required=True)
        self.named_values(f"{path}.geocodes", area.geocodes)
        for name in ("altitude_ft", "ceiling_ft"):
            if area.HasField(name) and not math.isfinite(getattr(area, name)):
                self.fail(f"{path}.{name}", "range", "must be a finite number")
