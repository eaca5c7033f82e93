"""The rules of requests and their answers (pure): assistance, hand-over, application acknowledgements."""

from __future__ import annotations

from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.request.v1 import request_pb2

from broker import ids
from broker.validate.fields import (
    _CODE_RE,
    _OUTCOME,
    _PRIORITY,
)
from broker.validate.incident import IncidentRules


class RequestRules(IncidentRules):
    """Rules of assistance and hand-over requests and responses, and of acknowledgements."""

    __slots__ = ()

    def assistance_request(self, path: str, r: request_pb2.AssistanceRequest) -> None:
        """Check the assistance request at path; record each violation."""
        self.incident_ref(f"{path}.incident_id", r.incident_id)
        if not r.resources:
            self.fail(f"{path}.resources", "required", "must name at least one resource")
        self.max_items(f"{path}.resources", r.resources, self.limits.max_items)
        for i, need in enumerate(r.resources[: self.limits.max_items]):
            p = f"{path}.resources[{i}]"
            self.code(
                f"{p}.resource_type",
                need.resource_type,
                self.ctx.codes.eido_resource_types,
                "the EIDO emergency-resource-type-common registry",
                required=True,
            )
            if not 1 <= need.quantity <= 100:
                self.fail(f"{p}.quantity", "range", "must be between 1 and 100")
        if r.HasField("location"):
            self.location(f"{path}.location", r.location)
        self.enum(f"{path}.priority", r.priority, _PRIORITY)
        self.timestamp(f"{path}.needed_by", r.needed_by, present=r.HasField("needed_by"))
        self.text(f"{path}.remarks", r.remarks, max_len=self.limits.max_text)

    def outcome(self, path: str, outcome: int, cause: str) -> None:
        """Check the outcome at path; record each violation."""
        self.enum(f"{path}.outcome", outcome, _OUTCOME)
        self.text(f"{path}.cause", cause, required=outcome == common_pb2.OUTCOME_REJECTED, max_len=500)

    def assistance_response(self, path: str, r: request_pb2.AssistanceResponse) -> None:
        """Check the assistance response at path; record each violation."""
        self.outcome(path, r.outcome, r.cause)
        self.max_items(f"{path}.resources", r.resources, self.limits.max_items)
        for i, res in enumerate(r.resources[: self.limits.max_items]):
            p = f"{path}.resources[{i}]"
            self.pattern(f"{p}.resource_id", res.resource_id, ids.LOCAL_ID_RE, "a unit id", required=True)
            self.text(f"{p}.resource_name", res.resource_name, required=True, max_len=64)
            self.code(
                f"{p}.resource_type",
                res.resource_type,
                self.ctx.codes.eido_resource_types,
                "the EIDO emergency-resource-type-common registry",
                required=True,
            )
            self.timestamp(f"{p}.eta", res.eta, present=res.HasField("eta"))
        self.timestamp(f"{path}.responded_at", r.responded_at, present=r.HasField("responded_at"), required=True)

    def handover_request(self, path: str, r: request_pb2.HandoverRequest) -> None:
        """Check the handover request at path; record each violation."""
        if not r.HasField("incident"):
            self.fail(f"{path}.incident", "required", "is required")
        else:
            self.incident(f"{path}.incident", r.incident)
        self.text(f"{path}.reason", r.reason, max_len=self.limits.max_text)

    def handover_response(self, path: str, r: request_pb2.HandoverResponse) -> None:
        """Check the handover response at path; record each violation."""
        if r.outcome == common_pb2.OUTCOME_PARTIALLY_ACCEPTED:
            self.fail(f"{path}.outcome", "enum", "a hand-over is accepted or rejected, not in part")
        self.outcome(path, r.outcome, r.cause)
        self.timestamp(f"{path}.responded_at", r.responded_at, present=r.HasField("responded_at"), required=True)

    def acknowledgement(self, path: str, a: envelope_pb2.Acknowledgement) -> None:
        """Check the acknowledgement at path; record each violation."""
        self.pattern(f"{path}.code", a.code, _CODE_RE, "upper-case letters, digits and _", required=True)
        self.text(f"{path}.description", a.description, max_len=self.limits.max_text)
