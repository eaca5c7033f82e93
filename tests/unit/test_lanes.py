"""Which lane each kind of envelope travels (broker.lanes), over every payload and alert level."""

from __future__ import annotations

import itertools

from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.hub.v1 import hub_pb2

from broker.lanes import LANES, Lane, lane_of
from tests import factories as f


def test_urgent_lane_is_served_first() -> None:
    """The order of LANES is the order of service."""
    assert (Lane.URGENT, Lane.BULK) == LANES
    assert hub_pb2.LANE_URGENT == Lane.URGENT.proto
    assert hub_pb2.LANE_BULK == Lane.BULK.proto


def test_every_non_alert_payload_is_urgent() -> None:
    """Incidents at every priority, requests, answers, closures: urgent, so an incident's events keep their order."""
    for priority in (common_pb2.PRIORITY_IMMEDIATE, common_pb2.PRIORITY_NORMAL, common_pb2.PRIORITY_LOW):
        incident = f.incident()
        incident.priority = priority
        assert Lane.URGENT is lane_of(f.envelope(incident=incident))
    assert Lane.URGENT is lane_of(f.envelope(kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request()))
    assert Lane.URGENT is lane_of(
        f.envelope(kind=common_pb2.KIND_RESPONSE, assistance_response=f.assistance_response())
    )


def test_plate_read_is_bulk_and_plate_hit_is_urgent() -> None:
    """A read that calls for nothing now is bulk; the hit on the wanted list (urgency Immediate) is urgent."""
    assert Lane.BULK is lane_of(f.envelope(alert=f.plate_read()))
    assert Lane.URGENT is lane_of(f.envelope(alert=f.alert()))


def test_alert_lane_over_every_urgency_and_severity() -> None:
    """Urgent exactly when an info is Immediate, or Extreme or Severe; one such info among others is enough."""
    urgencies = list(alert_pb2.Urgency.values())
    severities = list(alert_pb2.Severity.values())
    for urgency, severity in itertools.product(urgencies, severities):
        read = f.plate_read()
        read.infos[0].urgency = urgency
        read.infos[0].severity = severity
        expected = (
            Lane.URGENT
            if urgency == alert_pb2.URGENCY_IMMEDIATE
            or severity in (alert_pb2.SEVERITY_EXTREME, alert_pb2.SEVERITY_SEVERE)
            else Lane.BULK
        )
        assert expected is lane_of(f.envelope(alert=read)), (urgency, severity)
        read.infos.add().CopyFrom(f.alert().infos[0])  # a second info, immediate
        assert Lane.URGENT is lane_of(f.envelope(alert=read))
