"""Receipts: the records written for acknowledgements and answers, and the Receipt built from what is stored (pure)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom.store.v1 import store_pb2

from broker.lanes import Lane
from broker.store.layout import ACCEPTED_AT_HEADER, DIGEST_HEADER, EXPIRES_HEADER, HUB_AGENCY, SENDER_HEADER, Layout
from broker.store.model import OutMsg, StoredMsg
from broker.times import timestamp, timestamp_ns


def delivery_headers(
    layout: Layout, distribution_id: str, agency_id: str, *, sender: str, accepted_ns: int, digest: bytes
) -> dict[str, str]:
    """Headers of one delivery: dedup keys and what a retry or a receipt needs later."""
    return {
        "Nats-Msg-Id": layout.delivery_msg_id(distribution_id, agency_id),
        # Each delivery subject is written once, ever: a retry after the duplicate window is caught too.
        "Nats-Expected-Last-Subject-Sequence": "0",
        SENDER_HEADER: sender,
        ACCEPTED_AT_HEADER: str(accepted_ns),
        DIGEST_HEADER: digest.hex(),
    }


def claim_headers(claim: str) -> dict[str, str]:
    """Expectations of an envelope's first delivery: no message matching claim (its deliveries) is stored yet.

    This claims the distribution id for good in the lane's stream: a second envelope with the
    same id, to whatever recipient, finds it taken (nats-server 2.11+).
    """
    return {"Nats-Expected-Last-Subject-Sequence": "0", "Nats-Expected-Last-Subject-Sequence-Subject": claim}


def ack_message(  # noqa: PLR0917 - the record's fields
    layout: Layout,
    agency_id: str,
    sequences: Sequence[int],
    at: datetime,
    session_id: str,
    expired: Sequence[int] = (),
) -> OutMsg:
    """The record that agency_id's client acknowledged these deliveries (and that the hub dropped the expired ones)."""
    record = store_pb2.AckRecord(
        sequences=sorted(sequences), acked_at=timestamp(at), session_id=session_id, expired_sequences=sorted(expired)
    )
    return OutMsg(layout.ack_subject(agency_id), record.SerializeToString())


def session_message(
    layout: Layout,
    agency_id: str,
    session_id: str,
    replica: str,
    at: datetime,
    *,
    last_seen: datetime | None = None,
    closed: bool = False,
    epoch: int = 0,
) -> OutMsg:
    """The record that session_id, on replica, is agency_id's delivery session (last heard from, or ended).

    epoch is the agency's session number (see broker.delivery.numbering); the take-over sets it
    on the session's first record (see broker.delivery.handoff).
    """
    record = store_pb2.SessionRecord(
        session_id=session_id,
        replica=replica,
        opened_at=timestamp(at),
        last_seen=timestamp(last_seen or at),
        closed=closed,
        epoch=epoch,
    )
    return OutMsg(layout.session_subject(agency_id), record.SerializeToString(), {})


def presence(record: store_pb2.SessionRecord | None, now: datetime, timeout: float) -> tuple[bool, Timestamp | None]:
    """(online, last seen) of a room from its last session record: online while open and heard from within timeout."""
    if record is None:
        return False, None
    seen = record.last_seen if record.HasField("last_seen") else record.opened_at
    online = not record.closed and (now - seen.ToDatetime(tzinfo=now.tzinfo)).total_seconds() <= timeout
    return online, seen


def response_message(layout: Layout, request_id: str, agency_id: str, response: hub_pb2.BusinessResponse) -> OutMsg:
    """The record of agency_id's operator answering request_id."""
    record = store_pb2.ResponseRecord(agency_id=agency_id, response=response)
    return OutMsg(
        layout.response_subject(request_id, agency_id),
        record.SerializeToString(),
        {"Nats-Msg-Id": f"rsp:{response.response_distribution_id}"},
    )


def first_acceptance(layout: Layout, deliveries: Sequence[StoredMsg]) -> tuple[hub_pb2.Acceptance, bytes, str]:
    """The acceptance given when these deliveries were stored, their envelope's digest and sender."""
    ordered = sorted(deliveries, key=lambda d: d.seq)
    head = ordered[0].headers
    acceptance = hub_pb2.Acceptance(
        distribution_id=layout.parse_delivery(ordered[0].subject)[2],
        accepted_at=timestamp_ns(int(head.get(ACCEPTED_AT_HEADER, "0"))),
        recipients=[layout.parse_delivery(d.subject)[0] for d in ordered],
    )
    return acceptance, bytes.fromhex(head.get(DIGEST_HEADER, "")), head.get(SENDER_HEADER, "")


@dataclass(frozen=True)
class Expired:
    """A delivery dropped at `at` because it expired before the room took it."""

    at: Timestamp


def acked_at(record: store_pb2.AckRecord, sequence: int) -> Timestamp | Expired | None:
    """When the record says the delivery was acknowledged (or dropped as expired), if it lists it."""
    if sequence in record.sequences:
        return record.acked_at
    if sequence in record.expired_sequences:
        return Expired(record.acked_at)
    return None


def expires_ns(headers: Mapping[str, str]) -> int:
    """When a delivery with these headers expires (ns since the epoch); 0 if it carries no expiry."""
    return int(headers.get(EXPIRES_HEADER, "0") or 0)


def expiry_notice(layout: Layout, sender: str, distribution_id: str, recipient: str, at: datetime) -> OutMsg:
    """The notice to sender that its envelope expired before recipient took it (kind ERROR, DELIVERY_EXPIRED)."""
    return hub_notice(
        layout,
        sender,
        distribution_id,
        at,
        code="DELIVERY_EXPIRED",
        description=f"not delivered to {recipient} before it expired; dropped",
        key=f"expired:{distribution_id}:{recipient}",
    )


def hub_notice(
    layout: Layout, sender: str, distribution_id: str, at: datetime, *, code: str, description: str, key: str
) -> OutMsg:
    """A notice from the hub to sender about its envelope (kind ERROR, to the sender's urgent lane).

    Its id is derived from key, so a notice written twice is stored once.
    """
    notice = envelope_pb2.Envelope(
        distribution_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:opsroom:{key}")),
        sender=common_pb2.Sender(agency_id=HUB_AGENCY),
        sent_at=timestamp(at),
        status=common_pb2.STATUS_SYSTEM,
        kind=common_pb2.KIND_ERROR,
        recipients=[sender],
        references=[common_pb2.Reference(distribution_id=distribution_id, sender_agency_id=sender)],
        acknowledgement=envelope_pb2.Acknowledgement(code=code, description=description),
    )
    data = notice.SerializeToString()
    headers = delivery_headers(
        layout,
        notice.distribution_id,
        sender,
        sender=HUB_AGENCY,
        accepted_ns=notice.sent_at.ToNanoseconds(),
        digest=hashlib.sha256(data).digest(),
    )
    return OutMsg(layout.delivery_subject(sender, Lane.URGENT, notice.distribution_id), data, headers)


def escalation_timer(layout: Layout, distribution_id: str, due: datetime, to_agency_id: str, rule: str) -> OutMsg:
    """The timer written with a request whose agreement sets a deadline for an answer (written once per request)."""
    timer = store_pb2.EscalationTimer(
        distribution_id=distribution_id, due_at=timestamp(due), to_agency_id=to_agency_id, rule=rule
    )
    headers = {"Nats-Expected-Last-Subject-Sequence": "0", "Nats-Msg-Id": f"esc:{distribution_id}"}
    return OutMsg(layout.escalation_timer_subject(distribution_id), timer.SerializeToString(), headers)


def build_receipt(
    layout: Layout,
    deliveries: Sequence[StoredMsg],
    delivered: Mapping[str, Timestamp | Expired | bool],
    responses: Sequence[StoredMsg],
    kind: common_pb2.Kind.ValueType,
    *,
    now_ns: int = 0,
) -> hub_pb2.Receipt:
    """The Receipt of an envelope from its stored deliveries, what is known of their acknowledgement, and answers.

    delivered maps a recipient to the time its client acknowledged, True when it did at an
    unknown time, or Expired when the hub dropped it; recipients missing from it are STORED, or
    EXPIRED once past their expiry (now_ns; the hub drops them when it reaches them).
    """
    acceptance, _digest, sender = first_acceptance(layout, deliveries)
    expiry = {layout.parse_delivery(d.subject)[0]: expires_ns(d.headers) for d in deliveries}
    by_agency: dict[str, hub_pb2.RecipientReceipt] = {}
    for agency_id in acceptance.recipients:
        entry = hub_pb2.RecipientReceipt(agency_id=agency_id, state=hub_pb2.DELIVERY_STATE_STORED)
        when = delivered.get(agency_id)
        if isinstance(when, Expired) or (when is None and 0 < expiry.get(agency_id, 0) < now_ns):
            entry.state = hub_pb2.DELIVERY_STATE_EXPIRED
        elif when is not None and when is not False:
            entry.state = hub_pb2.DELIVERY_STATE_DELIVERED
            if isinstance(when, Timestamp):
                entry.delivered_at.CopyFrom(when)
        by_agency[agency_id] = entry
    for stored in sorted(responses, key=lambda r: r.seq):
        request_id, agency_id = layout.parse_response(stored.subject)
        if request_id == acceptance.distribution_id and agency_id in by_agency:
            by_agency[agency_id].response.CopyFrom(store_pb2.ResponseRecord.FromString(stored.data).response)
    return hub_pb2.Receipt(
        distribution_id=acceptance.distribution_id,
        sender_agency_id=sender,
        kind=kind,
        accepted_at=acceptance.accepted_at,
        recipients=[by_agency[a] for a in acceptance.recipients],
    )
