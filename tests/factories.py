"""Valid envelopes of every payload, built from real code values, for tests to start from and break.

Personal values used here are fixed and synthetic, so tests can search logs, metrics and stored
records for them (PERSONAL_VALUES).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2
from opsroom.request.v1 import request_pb2

CUR = "it.nue.cur.to"
PL = "it.pl.001272"
CC = "it.cc.cp.to"
QUESTURA = "it.ps.questura.to"
PL_MILANO = "it.pl.015146"
ROGUE = "it.xx.rogue"  # has a certificate from the CA but is not registered at the hub

INCIDENT_ID = "urn:emergency:uid:incidentid:test-0001:nue.to.it"

# Synthetic personal data: none of it may appear in logs, metrics or audit records.
CALLER_NAME = "Gianfranco"
CALLER_SURNAME = "Zzyzxtestperson"
CALLER_PHONE = "+393331234567"
IMSI = "222019876543210"
PLATE = "QQ123QQ"
NOTE_TEXT = "il chiamante riferisce di un uomo con giacca rossa"
PERSONAL_VALUES = (CALLER_NAME, CALLER_SURNAME, CALLER_PHONE, IMSI, PLATE, NOTE_TEXT)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def ts(at: datetime | None = None) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(at or datetime.now(UTC))
    return t


def location(comune: str = "001272") -> common_pb2.Location:
    return common_pb2.Location(
        type="CurrentIncident",
        point=common_pb2.GeoPoint(latitude=45.070312, longitude=7.686856),
        uncertainty_m=30,
        confidence_percent=95,
        address=common_pb2.Address(street="Via Roma", civic_number="10", postal_code="10121"),
        comune_istat=comune,
        source=common_pb2.LOCATION_SOURCE_AML,
    )


def incident(incident_id: str = INCIDENT_ID, sent: datetime | None = None) -> incident_pb2.Incident:
    at = ts(sent)
    return incident_pb2.Incident(
        id=incident_id,
        local_reference="CUR-TO-1",
        type=incident_pb2.IncidentType(eido_code="FIGHT", emsi_category="PSW/RIOT"),
        status=incident_pb2.INCIDENT_STATUS_ACTIVE,
        priority=common_pb2.PRIORITY_HIGH,
        occurred_at=at,
        locations=[location()],
        call=incident_pb2.Call(
            call_id="1234567",
            started_at=at,
            caller=incident_pb2.Caller(name=CALLER_NAME, surname=CALLER_SURNAME, phone=CALLER_PHONE),
            network_location=incident_pb2.NetworkLocation(raw_value="cella 800 m", imsi=IMSI, cell_id="LAC-1"),
            language="it",
        ),
        persons=[incident_pb2.Person(role="Suspect", name="Ignoto", birth_date="1990-01-31", description="alto")],
        vehicles=[incident_pb2.Vehicle(relationship="SuspectVehicle", plate=PLATE, plate_country="IT", make="Fiat")],
        notes=[incident_pb2.Note(created_at=at, author_operator_id="OP-CUR-017", text=NOTE_TEXT)],
        agencies=[incident_pb2.AgencyInvolvement(agency_id=QUESTURA, role="Dispatched")],
        media=[
            common_pb2.MediaReference(
                uri="https://video.comune.torino.it/clip/1", sha256="a" * 64, media_type="video/mp4", captured_at=at
            )
        ],
        involved_count=3,
        description="lite in strada",
    )


def alert() -> alert_pb2.Alert:
    return alert_pb2.Alert(
        scope=alert_pb2.SCOPE_RESTRICTED,
        restriction="sale operative",
        infos=[
            alert_pb2.AlertInfo(
                language="it-IT",
                categories=[alert_pb2.CATEGORY_SECURITY],
                event="Transito veicolo segnalato",
                urgency=alert_pb2.URGENCY_IMMEDIATE,
                severity=alert_pb2.SEVERITY_MODERATE,
                certainty=alert_pb2.CERTAINTY_OBSERVED,
                event_codes=[alert_pb2.NamedValue(name="SCNTT", value="RUBATO")],
                resources=[common_pb2.MediaReference(uri="https://x.example/p.jpg", sha256="b" * 64)],
                areas=[
                    alert_pb2.AlertArea(
                        area_desc="Torino",
                        comuni_istat=["001272"],
                        circles=[
                            alert_pb2.Circle(center=common_pb2.GeoPoint(latitude=45.07, longitude=7.68), radius_km=1)
                        ],
                        polygons=[
                            alert_pb2.Polygon(
                                points=[
                                    common_pb2.GeoPoint(latitude=45.0, longitude=7.6),
                                    common_pb2.GeoPoint(latitude=45.1, longitude=7.6),
                                    common_pb2.GeoPoint(latitude=45.1, longitude=7.7),
                                    common_pb2.GeoPoint(latitude=45.0, longitude=7.6),
                                ]
                            )
                        ],
                    )
                ],
            )
        ],
        vehicles=[incident_pb2.Vehicle(relationship="SuspectVehicle", plate=PLATE, plate_country="IT")],
    )


def plate_read() -> alert_pb2.Alert:
    """A plate-reader transit that matched nothing urgent: bulk traffic."""
    read = alert()
    info = read.infos[0]
    info.event = "Transito veicolo"
    info.urgency = alert_pb2.URGENCY_UNKNOWN
    info.severity = alert_pb2.SEVERITY_MINOR
    info.certainty = alert_pb2.CERTAINTY_OBSERVED
    del info.event_codes[:]
    return read


def cap_alert() -> alert_pb2.Alert:
    """An alert with every CAP 1.2 element the contract carries set, as the CAP adapter decodes one."""
    out = alert()
    out.source = "varco-07"
    out.codes.append("PLATE-READER")
    out.note = "lettura confermata"
    info = out.infos[0]
    info.response_types.append("Monitor")
    info.audience = "sale operative"
    info.sender_name = "Polizia Locale di Torino"
    info.web = "https://pl.example/varchi"
    info.contact = "sala operativa"
    info.resources.append(
        common_pb2.MediaReference(
            uri="https://x.example/c.mp4", sha1="c" * 40, description="clip", size_bytes=1024, media_type="video/mp4"
        )
    )
    area = info.areas[0]
    area.geocodes.append(alert_pb2.NamedValue(name="NUTS3", value="ITC11"))
    area.altitude_ft = 0.0
    area.ceiling_ft = 1000.0
    return out


def origin() -> envelope_pb2.Origin:
    """The origin of an envelope the CAP adapter decoded."""
    return envelope_pb2.Origin(
        format="cap-1.2",
        identifier="PLT-2026-000123",
        sender="varchi@pl.torino.example",
        unmapped=[envelope_pb2.OriginField(path="addresses", value="questura carabinieri")],
    )


def envelope(
    sender: str = CUR,
    recipients: tuple[str, ...] = (QUESTURA, PL),
    *,
    kind: int = common_pb2.KIND_REPORT,
    status: int = common_pb2.STATUS_ACTUAL,
    sent: datetime | None = None,
    distribution_id: str | None = None,
    incident_ids: tuple[str, ...] = (INCIDENT_ID,),
    references: tuple[tuple[str, str], ...] = (),
    **payload: object,
) -> envelope_pb2.Envelope:
    """A valid envelope; the default payload is a full incident report."""
    if not payload:
        payload = {"incident": incident(sent=sent)}
    return envelope_pb2.Envelope(
        distribution_id=distribution_id or str(uuid.uuid4()),
        sender=common_pb2.Sender(agency_id=sender, operator_id="OP-CUR-017", workstation_id="PDL-3"),
        sent_at=ts(sent),
        status=status,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        recipients=list(recipients),
        target_areas=[common_pb2.Area(comune_istat="001272"), common_pb2.Area(provincia_istat="001")],
        confidentiality=common_pb2.CONFIDENTIALITY_RESTRICTED,
        incident_ids=list(incident_ids),
        references=[common_pb2.Reference(distribution_id=d, sender_agency_id=a) for d, a in references],
        legal_basis=common_pb2.LegalBasis(law="d.l. 14/2017 art. 2", purpose=common_pb2.PURPOSE_PUBLIC_SECURITY),
        expires_at=ts((sent or datetime.now(UTC)) + timedelta(hours=24)),
        **payload,  # type: ignore[arg-type]
    )


def assistance_request() -> request_pb2.AssistanceRequest:
    return request_pb2.AssistanceRequest(
        incident_id=INCIDENT_ID,
        resources=[request_pb2.ResourceNeed(resource_type="PatrolUnit", quantity=2)],
        location=location(),
        priority=common_pb2.PRIORITY_HIGH,
        needed_by=ts(datetime.now(UTC) + timedelta(minutes=10)),
        remarks="rinforzo",
    )


def assistance_response(outcome: int = common_pb2.OUTCOME_ACCEPTED, cause: str = "") -> request_pb2.AssistanceResponse:
    return request_pb2.AssistanceResponse(
        outcome=outcome,  # type: ignore[arg-type]
        cause=cause,
        responded_at=ts(),
        resources=[
            request_pb2.CommittedResource(resource_id="TO-A12", resource_name="Alfa 12", resource_type="PatrolUnit")
        ],
    )


def handover_request() -> request_pb2.HandoverRequest:
    return request_pb2.HandoverRequest(incident=incident(), reason="competenza")


def handover_response(outcome: int = common_pb2.OUTCOME_ACCEPTED, cause: str = "") -> request_pb2.HandoverResponse:
    return request_pb2.HandoverResponse(outcome=outcome, cause=cause, responded_at=ts())  # type: ignore[arg-type]


def closure() -> incident_pb2.IncidentClosure:
    return incident_pb2.IncidentClosure(
        incident_id=INCIDENT_ID, closed_at=ts(), status=incident_pb2.COMPLETION_STATUS_COMPLETED, disposition_code="03"
    )


def acknowledgement() -> envelope_pb2.Acknowledgement:
    return envelope_pb2.Acknowledgement(code="RECEIVED", description="ricevuto")


def every_valid_envelope() -> list[envelope_pb2.Envelope]:
    """One valid envelope per payload, with a kind that admits it."""
    ref = ((str(uuid.uuid4()), QUESTURA),)
    return [
        envelope(),
        envelope(kind=common_pb2.KIND_REPORT, alert=alert()),
        envelope(kind=common_pb2.KIND_UPDATE, closure=closure()),
        envelope(kind=common_pb2.KIND_REQUEST, assistance_request=assistance_request()),
        envelope(kind=common_pb2.KIND_RESPONSE, references=ref, assistance_response=assistance_response()),
        envelope(kind=common_pb2.KIND_REQUEST, handover_request=handover_request()),
        envelope(kind=common_pb2.KIND_RESPONSE, references=ref, handover_response=handover_response()),
        envelope(kind=common_pb2.KIND_ACK, references=ref, acknowledgement=acknowledgement()),
        envelope(kind=common_pb2.KIND_CANCEL, references=ref, alert=alert()),
    ]


def agreement_head(agreement_id: str, title: str) -> str:
    """The first lines of a test agreement (YAML): id, title, validity, legal basis, the province of Torino.

    Tests add their parties, roles and rules below it.
    """
    return (
        f"id: {agreement_id}\n"
        f"title: {title}\n"
        "valid_from: 2020-01-01\n"
        "legal_basis:\n"
        '  law: "d.l. 14/2017 art. 2"\n'
        "  purposes: [PUBLIC_SECURITY]\n"
        'territory: {provinces: ["001"]}\n'
    )
