"""The demo's four Torino rooms, and how a simulated room shows what it receives.

The demo's story is a drill scenario file (deploy/scenarios/torino-demo.yaml, played by
broker/drill/demo.py); this module names its rooms and prints a delivery in one line (kind,
payload, incident type, place; never the personal data in the envelope).
"""

from __future__ import annotations

from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2

from broker.policy.routing import AllowRule
from broker.validate import codelists

CUR = "it.nue.cur.to"
PL = "it.pl.001272"
CC = "it.cc.cp.to"
QUESTURA = "it.ps.questura.to"

TORINO_ROOMS = {
    CUR: "112 NUE - CUR Torino",
    PL: "Polizia Locale di Torino",
    CC: "Carabinieri - Comando Provinciale di Torino",
    QUESTURA: "Questura di Torino",
}
TORINO_ALLOW = (AllowRule("torino-sicurezza-integrata", frozenset(TORINO_ROOMS), frozenset(TORINO_ROOMS)),)


def summary(env: envelope_pb2.Envelope) -> str:
    """One line describing an envelope without its personal data."""
    kind = common_pb2.Kind.Name(env.kind).removeprefix("KIND_")
    payload = env.WhichOneof("payload") or "-"
    detail = ""
    if payload == "incident":
        inc = env.incident
        place = _place(inc.locations[0].comune_istat) if inc.locations else "?"
        status = incident_pb2.IncidentStatus.Name(inc.status).removeprefix("INCIDENT_STATUS_")
        priority = common_pb2.Priority.Name(inc.priority).removeprefix("PRIORITY_")
        detail = f"{inc.type.eido_code} at {place}, {status}, priority {priority}"
    elif payload == "assistance_request":
        needs = ", ".join(f"{n.quantity} x {n.resource_type}" for n in env.assistance_request.resources)
        detail = f"needs {needs}"
    elif payload in ("assistance_response", "handover_response"):
        answer = getattr(env, payload)
        detail = common_pb2.Outcome.Name(answer.outcome).removeprefix("OUTCOME_")
    elif payload == "handover_request":
        detail = f"hand-over of {env.handover_request.incident.type.eido_code}"
    elif payload == "alert":
        info = env.alert.infos[0]
        detail = f"{info.event} ({len(env.alert.vehicles)} vehicle(s), plate withheld)"
    elif payload == "closure":
        detail = incident_pb2.CompletionStatus.Name(env.closure.status).removeprefix("COMPLETION_STATUS_")
    return f"{kind} {payload} from {env.sender.agency_id}: {detail}"


def _place(istat: str) -> str:
    comune = codelists.comuni_by_code().get(istat)
    return f"{comune.name} ({istat})" if comune else istat
