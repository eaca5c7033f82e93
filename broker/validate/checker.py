"""Validation of an envelope against the contract's rules and the real code lists (pure; returns every violation).

Paths are proto field names relative to the envelope ("incident.locations[0].comune_istat");
the gRPC edge places them under the request ("envelope." or "envelopes[3].").
Rule ids are stable and listed in docs/errors.md.
"""

from __future__ import annotations

from datetime import datetime

from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker import ids
from broker.errors import Violation
from broker.validate.alert import AlertRules
from broker.validate.fields import (
    _AGREEMENT_RE,
    _CONFIDENTIALITY,
    _KIND,
    _KIND_PAYLOADS,
    _PURPOSE,
    _STATUS,
    KINDS_WITH_REFERENCE,
    RULES,
    Limits,
    ValidationContext,
    _ts_seconds,
)
from broker.validate.request import RequestRules

__all__ = ["KINDS_WITH_REFERENCE", "RULES", "Limits", "ValidationContext", "validate_envelope"]


class _Checker(RequestRules, AlertRules):
    """Accumulates violations; one instance per envelope: the envelope's own rules, then its payload's."""

    __slots__ = ()

    def envelope(self, env: envelope_pb2.Envelope) -> None:
        """Check the envelope; record each violation."""
        lim = self.limits
        self.pattern("distribution_id", env.distribution_id, ids.UUID_RE, "a lowercase UUID", required=True)
        if not env.HasField("sender"):
            self.fail("sender", "required", "is required")
        else:
            self.agency("sender.agency_id", env.sender.agency_id)
            self.pattern("sender.operator_id", env.sender.operator_id, ids.LOCAL_ID_RE, "a staff id")
            self.pattern("sender.workstation_id", env.sender.workstation_id, ids.LOCAL_ID_RE, "a station id")
        sent_ok = self.timestamp("sent_at", env.sent_at, present=env.HasField("sent_at"), required=True)
        if sent_ok:
            sent = _ts_seconds(env.sent_at)
            if sent > self.now + lim.max_future_skew.total_seconds():
                self.fail("sent_at", "future", "must not be in the future (clock skew above limit)")
            elif sent < self.now - lim.max_sent_age.total_seconds():
                self.fail("sent_at", "too_old", f"must be less than {lim.max_sent_age} old")
        self.enum("status", env.status, _STATUS)
        self.enum("kind", env.kind, _KIND)
        self.recipients(env)
        self.max_items("target_areas", env.target_areas, lim.max_target_areas)
        for i, area in enumerate(env.target_areas[: lim.max_target_areas]):
            self.area(f"target_areas[{i}]", area)
        self.enum("confidentiality", env.confidentiality, _CONFIDENTIALITY)
        self.max_items("incident_ids", env.incident_ids, lim.max_incident_ids)
        seen: set[str] = set()
        for i, incident_id in enumerate(env.incident_ids[: lim.max_incident_ids]):
            path = f"incident_ids[{i}]"
            self.pattern(path, incident_id, ids.INCIDENT_ID_RE, "an incident id (UUID or URN)", required=True)
            if incident_id in seen:
                self.fail(path, "unique", "must not repeat")
            seen.add(incident_id)
        self.incident_ids = frozenset(seen)
        self.references(env)
        self.legal_basis(env)
        if (
            self.timestamp("expires_at", env.expires_at, present=env.HasField("expires_at"))
            and sent_ok
            and _ts_seconds(env.expires_at) <= _ts_seconds(env.sent_at)
        ):
            self.fail("expires_at", "after_sent_at", "must be after sent_at")
        if env.HasField("origin"):
            self.origin(env.origin)
        self.payload(env)

    def origin(self, origin: envelope_pb2.Origin) -> None:
        """Check the origin (the standard document an adapter decoded); record each violation."""
        lim = self.limits
        self.code("origin.format", origin.format, ORIGIN_FORMATS, "the adapters' formats", required=True)
        self.text("origin.identifier", origin.identifier)
        self.text("origin.sender", origin.sender)
        self.max_items("origin.unmapped", origin.unmapped, lim.max_unmapped)
        for i, item in enumerate(origin.unmapped[: lim.max_unmapped]):
            self.text(f"origin.unmapped[{i}].path", item.path, required=True)
            self.text(f"origin.unmapped[{i}].value", item.value, max_len=lim.max_text)
            self.code(
                f"origin.unmapped[{i}].category", item.category, ORIGIN_CATEGORIES, "the personal-data categories"
            )

    def recipients(self, env: envelope_pb2.Envelope) -> None:
        """Check the recipients; record each violation."""
        self.max_items("recipients", env.recipients, self.limits.max_recipients)
        seen: set[str] = set()
        for i, agency_id in enumerate(env.recipients[: self.limits.max_recipients]):
            path = f"recipients[{i}]"
            if not self.agency(path, agency_id):
                continue
            if agency_id in seen:
                self.fail(path, "unique", "must not repeat")
            elif agency_id == env.sender.agency_id:
                self.fail(path, "not_sender", "must not be the sender itself")
            elif not self.ctx.is_registered(agency_id):
                self.fail(path, "registered", "must be an agency registered at the hub")
            seen.add(agency_id)

    def area(self, path: str, area: common_pb2.Area) -> None:
        """Check the area at path; record each violation."""
        which = area.WhichOneof("code")
        codes = self.ctx.codes
        if which is None:
            self.fail(path, "required", "must set one of comune_istat, provincia_istat, regione_istat")
        elif which == "comune_istat":
            self.comune(f"{path}.comune_istat", area.comune_istat, required=True)
        elif which == "provincia_istat":
            self.code(
                f"{path}.provincia_istat",
                area.provincia_istat,
                codes.provinces,
                "the ISTAT provinces (three digits)",
                required=True,
            )
        else:
            self.code(
                f"{path}.regione_istat",
                area.regione_istat,
                codes.regions,
                "the ISTAT regions (two digits)",
                required=True,
            )

    def references(self, env: envelope_pb2.Envelope) -> None:
        """Check the references; record each violation."""
        self.max_items("references", env.references, self.limits.max_references)
        if env.kind in KINDS_WITH_REFERENCE and not env.references:
            self.fail("references", "required", "must name the message this one acts on")
        for i, ref in enumerate(env.references[: self.limits.max_references]):
            path = f"references[{i}]"
            self.pattern(f"{path}.distribution_id", ref.distribution_id, ids.UUID_RE, "a lowercase UUID", required=True)
            if ref.distribution_id and ref.distribution_id == env.distribution_id:
                self.fail(f"{path}.distribution_id", "not_self", "must not reference the envelope itself")
            self.agency(f"{path}.sender_agency_id", ref.sender_agency_id)

    def legal_basis(self, env: envelope_pb2.Envelope) -> None:
        """Check the legal basis; record each violation."""
        if not env.HasField("legal_basis"):
            self.fail("legal_basis", "required", "is required (law and purpose)")
            return
        basis = env.legal_basis
        self.text("legal_basis.law", basis.law, required=True)
        self.enum("legal_basis.purpose", basis.purpose, _PURPOSE)
        self.pattern("legal_basis.agreement_id", basis.agreement_id, _AGREEMENT_RE, "an agreement id")

    def payload(self, env: envelope_pb2.Envelope) -> None:
        """Check the payload; record each violation."""
        which = env.WhichOneof("payload")
        if which is None:
            self.fail("payload", "required", "exactly one payload is required")
            return
        allowed = _KIND_PAYLOADS.get(env.kind)
        if allowed is not None and which not in allowed:
            self.fail(which, "kind_payload", f"is not a payload of this kind; allowed: {sorted(allowed)}")
        if which == "incident":
            self.incident("incident", env.incident)
        elif which == "alert":
            self.alert("alert", env.alert)
        elif which == "closure":
            self.closure("closure", env.closure)
        elif which == "assistance_request":
            self.assistance_request("assistance_request", env.assistance_request)
        elif which == "assistance_response":
            self.assistance_response("assistance_response", env.assistance_response)
        elif which == "handover_request":
            self.handover_request("handover_request", env.handover_request)
        elif which == "handover_response":
            self.handover_response("handover_response", env.handover_response)
        else:
            self.acknowledgement("acknowledgement", env.acknowledgement)

    # -- payloads ------------------------------------------------------------------------


# Formats of Origin.format: the standards the adapters decode.
ORIGIN_FORMATS = frozenset({"cap-1.2", "eido-1.0", "emsi-1.0", "nue112-rev3"})
# Categories an OriginField may name: the redaction catalogue's, free text aside (the default).
ORIGIN_CATEGORIES = frozenset({"caller", "network_location", "persons", "vehicles", "media", "staff"})


def validate_envelope(env: envelope_pb2.Envelope, ctx: ValidationContext, now: datetime) -> list[Violation]:
    """Every rule the envelope breaks, in field order (empty when it is valid)."""
    checker = _Checker(ctx, now)
    checker.envelope(env)
    return checker.out
