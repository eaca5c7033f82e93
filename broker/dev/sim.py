"""Simulated operations rooms and a short Torino scenario, for the demo, drills and integration tests.

Each room is a real client of the hub with its own certificate. It prints what it receives
(kind, payload, incident type, place; never the personal data in the envelope) and answers
like an operator would: the Carabinieri room accepts requests for backup, the Questura accepts
hand-overs. The scenario follows the flows of the design: a 112 contact card, an update, a
request for backup and its answer, a plate-reader hit, a hand-over and the closure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom.incident.v1 import incident_pb2
from opsroom.request.v1 import request_pb2
from opsroom_client import HubClient, new_envelope, timestamp

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

Printer = Callable[[str], None]


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


@dataclass
class Room:
    """A simulated room: prints deliveries, acknowledges them, answers requests."""

    agency_id: str
    name: str
    client: HubClient
    out: Printer
    accepts: frozenset[str] = frozenset()
    received: list[envelope_pb2.Envelope] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Receive until cancelled."""
        inbox = self.client.inbox(max_batch=32, window=256)
        async for delivery in inbox:
            env = delivery.envelope
            self.out(f"  [{self.name}] <- {summary(env)}")
            inbox.ack(delivery)
            self.received.append(env)
            self.changed.set()
            if env.kind == common_pb2.KIND_REQUEST and env.WhichOneof("payload") in self.accepts:
                await self.answer(env)

    async def answer(self, request: envelope_pb2.Envelope) -> None:
        """Accept a request like the operator on duty would."""
        now = timestamp()
        payload: dict[str, object]
        if request.WhichOneof("payload") == "assistance_request":
            eta = timestamp(datetime.now(UTC) + timedelta(minutes=6))
            payload = {
                "assistance_response": request_pb2.AssistanceResponse(
                    outcome=common_pb2.OUTCOME_ACCEPTED,
                    cause="due pattuglie in zona",
                    responded_at=now,
                    resources=[
                        request_pb2.CommittedResource(
                            resource_id="TO-A12", resource_name="Alfa 12", resource_type="PatrolUnit", eta=eta
                        ),
                        request_pb2.CommittedResource(
                            resource_id="TO-A14", resource_name="Alfa 14", resource_type="PatrolUnit", eta=eta
                        ),
                    ],
                )
            }
        else:
            payload = {
                "handover_response": request_pb2.HandoverResponse(
                    outcome=common_pb2.OUTCOME_ACCEPTED, cause="presa in carico", responded_at=now
                )
            }
        response = new_envelope(
            self.agency_id,
            kind=common_pb2.KIND_RESPONSE,
            recipients=[request.sender.agency_id],
            incident_ids=request.incident_ids,
            references=[(request.distribution_id, request.sender.agency_id)],
            operator_id="OP-SIM-1",
            **payload,  # type: ignore[arg-type]
        )
        await self.client.publish(response)
        self.out(f"  [{self.name}] -> RESPONSE {common_pb2.Outcome.Name(common_pb2.OUTCOME_ACCEPTED)} sent")

    async def wait_for(self, count: int, patience: float) -> None:
        """Until at least count envelopes arrived."""
        async with asyncio.timeout(patience):
            while len(self.received) < count:
                self.changed.clear()
                await self.changed.wait()


def _incident(incident_id: str, status: int) -> incident_pb2.Incident:
    now = timestamp()
    return incident_pb2.Incident(
        id=incident_id,
        local_reference="CUR-TO-2026-001234",
        type=incident_pb2.IncidentType(eido_code="FIGHT", emsi_category="PSW"),
        status=status,  # type: ignore[arg-type]
        priority=common_pb2.PRIORITY_HIGH,
        occurred_at=now,
        involved_count=3,
        description="Persone che litigano in strada, una ferita (dati di esempio)",
        locations=[
            common_pb2.Location(
                type="CurrentIncident",
                point=common_pb2.GeoPoint(latitude=45.070312, longitude=7.686856),
                uncertainty_m=35,
                confidence_percent=90,
                address=common_pb2.Address(street="Via Roma", civic_number="10", postal_code="10121"),
                comune_istat="001272",
                source=common_pb2.LOCATION_SOURCE_AML,
            )
        ],
        call=incident_pb2.Call(
            call_id="1234567",
            started_at=now,
            language="it",
            caller=incident_pb2.Caller(name="Mario", surname="Esempio", phone="+390000000000"),
            network_location=incident_pb2.NetworkLocation(raw_value="cella: area circa 800 m (esempio)"),
        ),
        agencies=[incident_pb2.AgencyInvolvement(agency_id=QUESTURA, role="Dispatched")],
    )


async def run_scenario(rooms: dict[str, Room], out: Printer, patience: float = 30.0) -> dict[str, hub_pb2.Receipt]:
    """Play the Torino scenario; returns the receipts of the request and hand-over."""
    incident_id = "urn:emergency:uid:incidentid:cur-to-2026-001234:nue.to.it"
    cur, pl, cc, questura = rooms[CUR], rooms[PL], rooms[CC], rooms[QUESTURA]

    async def send(room: Room, env: envelope_pb2.Envelope, what: str) -> envelope_pb2.Envelope:
        acceptance = await room.client.publish(env)
        out(f"[{room.name}] -> {what}: stored for {', '.join(acceptance.recipients)}")
        return env

    out("1. A 112 call: the CUR hands the contact card to the Questura and the Polizia Locale")
    report = new_envelope(
        CUR,
        kind=common_pb2.KIND_REPORT,
        recipients=[QUESTURA, PL],
        incident_ids=[incident_id],
        operator_id="OP-CUR-017",
        incident=_incident(incident_id, incident_pb2.INCIDENT_STATUS_ACTIVE),
    )
    await send(cur, report, "REPORT incident")
    await questura.wait_for(1, patience)
    await pl.wait_for(1, patience)

    out("2. The Questura dispatches a patrol and updates the incident")
    update = new_envelope(
        QUESTURA,
        kind=common_pb2.KIND_UPDATE,
        recipients=[CUR, PL],
        incident_ids=[incident_id],
        references=[(report.distribution_id, CUR)],
        incident=_incident(incident_id, incident_pb2.INCIDENT_STATUS_RESOURCES_ENROUTE),
    )
    await send(questura, update, "UPDATE incident")
    await pl.wait_for(2, patience)

    out("3. The Polizia Locale asks the Carabinieri for backup; their operator accepts")
    request = new_envelope(
        PL,
        kind=common_pb2.KIND_REQUEST,
        recipients=[CC],
        incident_ids=[incident_id],
        operator_id="PL-TO-088",
        assistance_request=request_pb2.AssistanceRequest(
            incident_id=incident_id,
            resources=[request_pb2.ResourceNeed(resource_type="PatrolUnit", quantity=2)],
            priority=common_pb2.PRIORITY_HIGH,
        ),
    )
    await send(pl, request, "REQUEST assistance")
    await pl.wait_for(3, patience)

    out("4. A plate reader of the Polizia Locale hits a vehicle on the SCNTT stolen list")
    alert = new_envelope(
        PL,
        kind=common_pb2.KIND_REPORT,
        recipients=[QUESTURA, CC],
        alert=alert_pb2.Alert(
            scope=alert_pb2.SCOPE_RESTRICTED,
            restriction="sale operative forze di polizia",
            infos=[
                alert_pb2.AlertInfo(
                    language="it-IT",
                    categories=[alert_pb2.CATEGORY_SECURITY],
                    event="Transito veicolo segnalato",
                    urgency=alert_pb2.URGENCY_IMMEDIATE,
                    severity=alert_pb2.SEVERITY_MODERATE,
                    certainty=alert_pb2.CERTAINTY_OBSERVED,
                    event_codes=[alert_pb2.NamedValue(name="SCNTT", value="RUBATO")],
                    areas=[alert_pb2.AlertArea(area_desc="Torino, corso Regina Margherita", comuni_istat=["001272"])],
                )
            ],
            vehicles=[incident_pb2.Vehicle(relationship="SuspectVehicle", plate="ZZ000ZZ", plate_country="IT")],
        ),
    )
    await send(pl, alert, "REPORT plate alert")
    await cc.wait_for(2, patience)

    out("5. The Polizia Locale hands the incident over to the Questura, which accepts")
    handover = new_envelope(
        PL,
        kind=common_pb2.KIND_REQUEST,
        recipients=[QUESTURA],
        incident_ids=[incident_id],
        handover_request=request_pb2.HandoverRequest(
            incident=_incident(incident_id, incident_pb2.INCIDENT_STATUS_RESOURCES_ONSCENE),
            reason="competenza per reati contro la persona",
        ),
    )
    await send(pl, handover, "REQUEST hand-over")
    await pl.wait_for(4, patience)

    out("6. The Questura closes the incident")
    closure = new_envelope(
        QUESTURA,
        kind=common_pb2.KIND_UPDATE,
        recipients=[CUR, PL, CC],
        incident_ids=[incident_id],
        closure=incident_pb2.IncidentClosure(
            incident_id=incident_id,
            closed_at=timestamp(),
            status=incident_pb2.COMPLETION_STATUS_COMPLETED,
            disposition_code="03",
        ),
    )
    await send(questura, closure, "UPDATE closure")
    await cur.wait_for(2, patience)
    await cc.wait_for(3, patience)

    receipts = {}
    for name, env, sender in (("report", report, cur), ("request", request, pl), ("hand-over", handover, pl)):
        receipts[name] = await _settled_receipt(sender.client, env.distribution_id, patience)
    return receipts


async def _settled_receipt(client: HubClient, distribution_id: str, patience: float) -> hub_pb2.Receipt:
    """The receipt once every recipient's client acknowledged (rooms acknowledge in the background)."""
    receipt = await client.receipt(distribution_id)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(patience):
            while any(r.state != hub_pb2.DELIVERY_STATE_DELIVERED for r in receipt.recipients):
                await asyncio.sleep(0.05)
                receipt = await client.receipt(distribution_id)
    return receipt


def describe_receipt(name: str, receipt: hub_pb2.Receipt) -> list[str]:
    """Lines describing a receipt."""
    lines = [f"receipt of the {name} {receipt.distribution_id}:"]
    for r in receipt.recipients:
        state = hub_pb2.DeliveryState.Name(r.state).removeprefix("DELIVERY_STATE_")
        answer = ""
        if r.HasField("response"):
            outcome = common_pb2.Outcome.Name(r.response.outcome).removeprefix("OUTCOME_")
            answer = f", operator answered {outcome} ({r.response.cause})"
        lines.append(f"  {r.agency_id}: {state}{answer}")
    return lines
