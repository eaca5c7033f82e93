"""Which lane an envelope travels: urgent or bulk (pure; the gate at the door: broker/publish/gate.py).

Urgent traffic (incidents, requests for assistance, hand-overs, their answers, closures,
application acknowledgements, and alerts that call for action now) must never wait behind bulk
traffic (plate reads, routine camera alerts, statistics). The two lanes are stored under
different subjects, written by the committer urgent first, and pulled by each room through two
consumers, urgent first.

Every message about an incident itself travels the urgent lane whatever its priority, so the
events of one incident keep their order: order is kept within a lane, not across lanes. An
alert is urgent when one of its infos says so the CAP way (urgency Immediate, or severity
Extreme or Severe: a plate *hit* on the wanted list is sent like that), otherwise bulk.
"""

from __future__ import annotations

import enum

from opsroom.alert.v1 import alert_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2


class Lane(enum.Enum):
    """A delivery lane; the value is the token used in subjects and consumer names."""

    URGENT = "urgent"
    BULK = "bulk"

    @property
    def proto(self) -> hub_pb2.Lane.ValueType:
        """The lane as the contract's enum (Delivery.lane)."""
        return hub_pb2.LANE_URGENT if self is Lane.URGENT else hub_pb2.LANE_BULK


# Lanes in the order a room is served and the committer writes.
LANES = (Lane.URGENT, Lane.BULK)

_URGENT_SEVERITY = frozenset({alert_pb2.SEVERITY_EXTREME, alert_pb2.SEVERITY_SEVERE})


def lane_of(env: envelope_pb2.Envelope) -> Lane:
    """The lane of env: bulk only for alerts none of whose infos is immediate, extreme or severe."""
    if env.WhichOneof("payload") != "alert":
        return Lane.URGENT
    for info in env.alert.infos:
        if info.urgency == alert_pb2.URGENCY_IMMEDIATE or info.severity in _URGENT_SEVERITY:
            return Lane.URGENT
    return Lane.BULK
