"""Audit records for each processing operation, built from what the hub decided; ids and hashes only (pure).

One envelope accepted makes one collection record, one disclosure record per recipient (with
the fields it received and those withheld from it), an alteration record for an UPDATE or
CANCEL, and a combination record when it links earlier messages. Free text, names, numbers and
plates never enter a record: fields are named by their paths, data by its SHA-256.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from opsroom.audit.v1 import audit_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker.policy.redact import PROTECTED_HEADER
from broker.receipts import timestamp

# Fields every recipient gets (the envelope's header); disclosures list the others.
HEADER_FIELDS = PROTECTED_HEADER | {"sender"}
HUB = "hub"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a call to the hub: the agency of the certificate, and the certificate's SHA-256."""

    agency_id: str
    certificate_sha256: str = ""


@dataclass(frozen=True, slots=True)
class View:
    """What one recipient received: the copy's SHA-256, the fields present, the fields withheld, the rule."""

    recipient: str
    rule: str
    data_sha256: bytes
    fields: tuple[str, ...]
    withheld: tuple[str, ...]


def present_fields(message: Any, prefix: str = "", *, skip: frozenset[str] = HEADER_FIELDS) -> list[str]:
    """Paths of the set leaf fields of a message (repeated elements share one path), sorted."""
    out: set[str] = set()
    _collect(message, prefix, skip, out)
    return sorted(out)


def _collect(message: Any, prefix: str, skip: frozenset[str], out: set[str]) -> None:
    for descriptor, value in message.ListFields():
        if not prefix and descriptor.name in skip:
            continue
        path = f"{prefix}.{descriptor.name}" if prefix else descriptor.name
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE or descriptor.message_type.full_name.startswith(
            "google.protobuf."
        ):
            out.add(path)
        elif descriptor.is_repeated:
            for item in value:
                _collect(item, path, frozenset(), out)
        else:
            _collect(value, path, frozenset(), out)


def under(paths: frozenset[str], hidden: frozenset[str]) -> frozenset[str]:
    """The paths that are, or lie inside, one of the hidden paths (what a mask removes of a message)."""
    if not hidden:
        return frozenset()
    out = set()
    for path in paths:
        prefix = ""
        for name in path.split("."):
            prefix = f"{prefix}.{name}" if prefix else name
            if prefix in hidden:
                out.add(path)
                break
    return frozenset(out)


def withheld(original: Any, redacted: Any, paths: frozenset[str], hidden: frozenset[str]) -> frozenset[str]:
    """What a redaction withheld: field paths removed whole, and selector paths whose elements it removed.

    A selector path of the mask (like "incident.locations[type=Caller]") is listed when the
    redacted message has fewer elements there than the original.
    """
    out = set(under(paths, hidden))
    for path in hidden:
        base, selector, _ = path.partition("[")
        if selector and _count(original, base.split(".")) > _count(redacted, base.split(".")):
            out.add(path)
    return frozenset(out)


def _count(message: Any, names: list[str]) -> int:
    """How many values a dotted path reaches in a message (through repeated fields too)."""
    field = message.DESCRIPTOR.fields_by_name.get(names[0])
    if field is None:
        return 0
    value = getattr(message, names[0])
    rest = names[1:]
    if field.is_repeated:
        return len(value) if not rest else sum(_count(item, rest) for item in value)
    if field.type != FieldDescriptor.TYPE_MESSAGE or not message.HasField(names[0]):
        return 0
    return _count(value, rest) if rest else 1


def _actor(env: envelope_pb2.Envelope, caller: Caller) -> audit_pb2.Actor:
    return audit_pb2.Actor(
        agency_id=caller.agency_id,
        operator_id=env.sender.operator_id,
        workstation_id=env.sender.workstation_id,
        certificate_sha256=caller.certificate_sha256,
    )


def _why(env: envelope_pb2.Envelope, rule: str = "") -> audit_pb2.Justification:
    purpose = env.legal_basis.purpose
    agreement = rule.split("/", 1)[0] if "/" in rule else env.legal_basis.agreement_id
    return audit_pb2.Justification(
        law=env.legal_basis.law,
        purpose=common_pb2.Purpose.Name(purpose).removeprefix("PURPOSE_")
        if purpose in common_pb2.Purpose.values()
        else "",
        agreement_id=agreement,
        rule=rule,
    )


def publish_records(
    env: envelope_pb2.Envelope, caller: Caller, digest: bytes, views: Sequence[View], at: datetime
) -> list[audit_pb2.AuditRecord]:
    """Every record an accepted envelope makes: collection, disclosures, and alteration or combination if any."""
    ts = timestamp(at)
    actor = _actor(env, caller)
    kind = common_pb2.Kind.Name(env.kind).removeprefix("KIND_") if env.kind in common_pb2.Kind.values() else ""
    status = (
        common_pb2.Status.Name(env.status).removeprefix("STATUS_") if env.status in common_pb2.Status.values() else ""
    )
    common: dict[str, Any] = {
        "at": ts,
        "actor": actor,
        "distribution_id": env.distribution_id,
        "incident_ids": list(env.incident_ids),
        "kind": kind,
        "status": status,
    }
    records = [audit_pb2.AuditRecord(action=audit_pb2.ACTION_COLLECTION, why=_why(env), data_sha256=digest, **common)]
    if env.kind in (common_pb2.KIND_UPDATE, common_pb2.KIND_CANCEL):
        records.append(audit_pb2.AuditRecord(action=audit_pb2.ACTION_ALTERATION, why=_why(env), data_sha256=digest,
                                             linked=[r.distribution_id for r in env.references], **common))  # fmt: skip
    elif env.references:
        records.append(audit_pb2.AuditRecord(action=audit_pb2.ACTION_COMBINATION, why=_why(env), data_sha256=digest,
                                             linked=[r.distribution_id for r in env.references], **common))  # fmt: skip
    records.extend(
        audit_pb2.AuditRecord(
            action=audit_pb2.ACTION_DISCLOSURE,
            why=_why(env, view.rule),
            data_sha256=view.data_sha256,
            recipient=view.recipient,
            fields=view.fields,
            withheld=view.withheld,
            **common,
        )
        for view in views
    )
    return records


def consultation(actor: audit_pb2.Actor, at: datetime, detail: str, why: str = "") -> audit_pb2.AuditRecord:
    """A read: a room's backlog, or a query of the audit log."""
    return audit_pb2.AuditRecord(
        action=audit_pb2.ACTION_CONSULTATION, at=timestamp(at), actor=actor, detail=detail,
        why=audit_pb2.Justification(law=why),
    )  # fmt: skip


BACKLOG_WHY = "deliveries addressed to the agency, each disclosed under the agreement and rule in its disclosure record"


def backlog_read(caller: Caller, at: datetime, backlog: int, session_id: str) -> audit_pb2.AuditRecord:
    """A room opened a delivery session: it reads its backlog (backlog deliveries waiting) and live traffic."""
    actor = audit_pb2.Actor(agency_id=caller.agency_id, certificate_sha256=caller.certificate_sha256)
    return consultation(actor, at, f"delivery session {session_id} opened; backlog {backlog}", BACKLOG_WHY)


def hub_record(action: audit_pb2.Action.ValueType, at: datetime, detail: str) -> audit_pb2.AuditRecord:
    """An operation of the hub itself (erasure under retention, tamper detected)."""
    return audit_pb2.AuditRecord(action=action, at=timestamp(at), actor=audit_pb2.Actor(agency_id=HUB), detail=detail)
