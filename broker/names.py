"""Short names of the contract's enum values (KIND_REPORT is "REPORT"), as agreements and the audit log use them."""

from __future__ import annotations

from google.protobuf.descriptor import EnumDescriptor
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2


def _short(enum: EnumDescriptor, prefix: str) -> dict[int, str]:
    return {value.number: value.name.removeprefix(prefix) for value in enum.values}


KINDS = _short(common_pb2.Kind.DESCRIPTOR, "KIND_")
STATUSES = _short(common_pb2.Status.DESCRIPTOR, "STATUS_")
PURPOSES = _short(common_pb2.Purpose.DESCRIPTOR, "PURPOSE_")


def kind(env: envelope_pb2.Envelope) -> str:
    """The envelope's kind ("" for a value the contract does not name)."""
    return KINDS.get(env.kind, "")


def status(env: envelope_pb2.Envelope) -> str:
    """The envelope's status ("" for a value the contract does not name)."""
    return STATUSES.get(env.status, "")


def purpose(env: envelope_pb2.Envelope) -> str:
    """The purpose in the envelope's legal basis ("" for a value the contract does not name)."""
    return PURPOSES.get(env.legal_basis.purpose, "")
