"""Audit records for each processing operation, built from what the hub decided; ids and hashes only (pure).

One envelope accepted makes one collection record, one disclosure record per recipient (with
the fields it received and those withheld from it), an alteration record for an UPDATE or
CANCEL, and a combination record when it links earlier messages. Free text, names, numbers and
plates never enter a record: fields are named by their paths, data by its SHA-256.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from opsroom.audit.v1 import audit_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker import names
from broker.policy.redact import PROTECTED_HEADER
from broker.times import timestamp

# Fields every recipient gets (the envelope's header); disclosures list the others.
HEADER_FIELDS = PROTECTED_HEADER | {"sender"}
HUB = "hub"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a call to the hub: the agency of the certificate, and the certificate's SHA-256."""

    agency_id: str
    certificate_sha256: str = ""


class View(NamedTuple):
    """What one recipient received: the copy's SHA-256, the fields present and withheld, the rule, the format."""

    recipient: str
    rule: str
    data_sha256: bytes
    fields: tuple[str, ...]
    withheld: tuple[str, ...]
    format: str = "grpc"


def present_fields(message: Any, prefix: str = "", *, skip: frozenset[str] = HEADER_FIELDS) -> list[str]:
    """Paths of the set leaf fields of a message (repeated elements share one path), sorted."""
    out: set[str] = set()
    oneof = _body_oneof(message.DESCRIPTOR, skip)
    if oneof is not None:  # an envelope: its body is the one payload set, the rest is header
        name = message.WhichOneof(oneof)
        fields = [(message.DESCRIPTOR.fields_by_name[name], getattr(message, name))] if name else []
    else:
        fields = [(d, v) for d, v in message.ListFields() if d.name not in skip]
    for descriptor, value in fields:
        _collect(descriptor, value, f"{prefix}.{descriptor.name}" if prefix else descriptor.name, out)
    return sorted(out)


@functools.cache
def _body_oneof(message: Descriptor, skip: frozenset[str]) -> str | None:
    """The oneof that holds every field of message not skipped, if there is one."""
    oneofs = {f.containing_oneof.name if f.containing_oneof else None for f in message.fields if f.name not in skip}
    return oneofs.pop() if len(oneofs) == 1 else None


_LEAF, _ONE, _MANY = 0, 1, 2
_SHAPES: dict[FieldDescriptor, int] = {}


def _shape(descriptor: FieldDescriptor) -> int:
    """_LEAF for a scalar or a well-known type (a timestamp is one value), else _ONE or _MANY messages."""
    shape = _SHAPES.get(descriptor)
    if shape is None:
        kind = descriptor.message_type if descriptor.type == FieldDescriptor.TYPE_MESSAGE else None
        if kind is None or kind.full_name.startswith("google.protobuf."):
            shape = _LEAF
        else:
            shape = _MANY if descriptor.is_repeated else _ONE
        _SHAPES[descriptor] = shape
    return shape


def _collect(descriptor: FieldDescriptor, value: Any, path: str, out: set[str]) -> None:
    shape = _shape(descriptor)
    if shape == _LEAF:
        out.add(path)
        return
    for item in value if shape == _MANY else (value,):
        for inner, inner_value in item.ListFields():
            _collect(inner, inner_value, f"{path}.{inner.name}", out)


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


# Enum value -> name as recorded ("KIND_REPORT" -> "REPORT"); unknown values record "".


def publish_records(
    env: envelope_pb2.Envelope, caller: Caller, digest: bytes, views: Sequence[View], at: datetime | Timestamp
) -> list[audit_pb2.AuditRecord]:
    """Every record an accepted envelope makes: collection, disclosures, and alteration or combination if any."""
    return list(publish_entry(env, caller, digest, views, at).records)


def publish_entry(
    env: envelope_pb2.Envelope, caller: Caller, digest: bytes, views: Sequence[View], at: datetime | Timestamp
) -> audit_pb2.AuditEntry:
    """publish_records, built in place in an entry holding only them (the writer adds the chain's fields)."""
    sender, basis = env.sender, env.legal_basis
    law, purpose, agreement = basis.law, names.purpose(env), basis.agreement_id
    # What every record of the envelope shares, merged into each.
    common = audit_pb2.AuditRecord(
        at=at if isinstance(at, Timestamp) else timestamp(at),
        actor=audit_pb2.Actor(
            agency_id=caller.agency_id,
            operator_id=sender.operator_id,
            workstation_id=sender.workstation_id,
            certificate_sha256=caller.certificate_sha256,
        ),
        distribution_id=env.distribution_id,
        incident_ids=env.incident_ids,
        kind=names.kind(env),
        status=names.status(env),
    )
    why = audit_pb2.Justification(law=law, purpose=purpose, agreement_id=agreement)
    entry = audit_pb2.AuditEntry()
    add = entry.records.add
    add(action=audit_pb2.ACTION_COLLECTION, why=why, data_sha256=digest).MergeFrom(common)
    linked = [r.distribution_id for r in env.references]
    if env.kind in (common_pb2.KIND_UPDATE, common_pb2.KIND_CANCEL):
        add(action=audit_pb2.ACTION_ALTERATION, why=why, data_sha256=digest, linked=linked).MergeFrom(common)
    elif linked:
        add(action=audit_pb2.ACTION_COMBINATION, why=why, data_sha256=digest, linked=linked).MergeFrom(common)
    by_rule: dict[str, audit_pb2.Justification] = {}
    for view in views:
        rule_why = by_rule.get(view.rule)
        if rule_why is None:  # the agreement is the rule's ("<agreement>/<rule>"), else the envelope's
            rule_agreement = view.rule.split("/", 1)[0] if "/" in view.rule else agreement
            rule_why = by_rule[view.rule] = audit_pb2.Justification(
                law=law, purpose=purpose, agreement_id=rule_agreement, rule=view.rule
            )
        add(
            action=audit_pb2.ACTION_DISCLOSURE,
            why=rule_why,
            data_sha256=view.data_sha256,
            recipient=view.recipient,
            fields=view.fields,
            withheld=view.withheld,
            format=view.format,
        ).MergeFrom(common)
    return entry


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
