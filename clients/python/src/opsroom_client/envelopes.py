"""Owns the helpers that build what an agency sends: a new envelope with a fresh id, timestamps."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2


def timestamp(at: datetime | None = None) -> Timestamp:
    """A Timestamp for `at` (default: now)."""
    ts = Timestamp()
    ts.FromDatetime(at or datetime.now(UTC))
    return ts


def new_envelope(
    sender_agency: str,
    *,
    kind: int,
    recipients: Iterable[str] = (),
    status: int = common_pb2.STATUS_ACTUAL,
    operator_id: str = "",
    purpose: int = common_pb2.PURPOSE_PUBLIC_SECURITY,
    law: str = "d.l. 14/2017 art. 2",
    confidentiality: int = common_pb2.CONFIDENTIALITY_RESTRICTED,
    incident_ids: Iterable[str] = (),
    references: Iterable[tuple[str, str]] = (),
    **payload: Any,
) -> envelope_pb2.Envelope:
    """A new envelope with a fresh distribution id and sent_at now; payload is one keyword, e.g. incident=..."""
    return envelope_pb2.Envelope(
        distribution_id=str(uuid.uuid4()),
        sender=common_pb2.Sender(agency_id=sender_agency, operator_id=operator_id),
        sent_at=timestamp(),
        status=status,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        recipients=list(recipients),
        confidentiality=confidentiality,  # type: ignore[arg-type]
        incident_ids=list(incident_ids),
        references=[common_pb2.Reference(distribution_id=d, sender_agency_id=a) for d, a in references],
        legal_basis=common_pb2.LegalBasis(law=law, purpose=purpose),  # type: ignore[arg-type]
        **payload,
    )
