"""Owns reading a receipt: what became of each delivery of an envelope, read back from the store.

For each recipient: stored, delivered (and when: its acknowledgement record, or its consumer's
ack floor), expired; the answer, if any; whether the request was escalated; and the
recipient's presence from its session record. The records are built and decoded by
broker/store/receipts.py (pure); this module only reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom.store.v1 import store_pb2

from broker.delivery import handoff
from broker.errors import NotPermitted, Reason, Refused
from broker.lanes import Lane
from broker.store import receipts
from broker.store.jetstream import JetStream
from broker.store.model import StoredMsg

# Acknowledgement records read after a delivery, at most, before its consumer's ack floor decides.
ACK_SCAN_LIMIT = 32


class ReceiptReader:
    """Receipts of the envelopes an agency sent."""

    def __init__(self, js: JetStream, clock: Callable[[], datetime], presence_timeout: timedelta) -> None:
        """Read from js; presence is judged at clock() against presence_timeout."""
        self._js = js
        self._layout = js.layout
        self._clock = clock
        self._presence_timeout = presence_timeout

    async def receipt(self, distribution_id: str, agency_id: str) -> hub_pb2.Receipt:
        """The receipt of an envelope agency_id sent."""
        stored = await self._js.deliveries_of(distribution_id)
        if not stored:
            raise Refused(Reason.RECEIPT_NOT_FOUND, "the hub accepted no envelope with this distribution id")
        _acceptance, _digest, sender = receipts.first_acceptance(self._layout, stored)
        if sender != agency_id:
            raise NotPermitted(Reason.RECEIPT_NOT_YOURS, "only the sending agency may read a receipt")
        delivered = {}
        for delivery in stored:
            recipient, lane, _ = self._layout.parse_delivery(delivery.subject)
            when = await self._delivered_at(recipient, lane, delivery)
            if when is not None:
                delivered[recipient] = when
        responses = await self._js.last_per_subject(self._layout.responses_of_envelope(distribution_id))
        kind = envelope_pb2.Envelope.FromString(stored[0].data).kind
        now = self._clock()
        receipt = receipts.build_receipt(
            self._layout, stored, delivered, responses, kind, now_ns=int(now.timestamp() * 1e9)
        )
        escalated = await self._js.last_by_subject(self._layout.escalation_subject(distribution_id))
        if escalated is not None:
            receipt.escalation.CopyFrom(store_pb2.EscalationRecord.FromString(escalated.data).escalation)
        for entry in receipt.recipients:
            last = await self._js.last_by_subject(self._layout.session_subject(entry.agency_id))
            record = store_pb2.SessionRecord.FromString(last.data) if last is not None else None
            online, seen = receipts.presence(record, now, self._presence_timeout.total_seconds())
            entry.online = online
            if seen is not None:
                entry.last_seen.CopyFrom(seen)
        return receipt

    async def _delivered_at(
        self, agency_id: str, lane: Lane, delivery: StoredMsg
    ) -> Timestamp | receipts.Expired | bool | None:
        """When agency_id's client acknowledged the delivery; True if it did at a time not found; None if not.

        Acknowledgement records are in the main stream: after an urgent delivery by sequence,
        after a bulk one (other stream) by time.
        """
        subject = self._layout.ack_subject(agency_id)
        sequence = self._layout.delivery_sequence(lane, delivery.seq)
        if lane is Lane.URGENT:
            record = await self._js.next_by_subject(subject, delivery.seq + 1)
        else:
            record = await self._js.next_by_subject_since(subject, delivery.time_ns)
        for _ in range(ACK_SCAN_LIMIT):
            if record is None:
                break
            when = receipts.acked_at(store_pb2.AckRecord.FromString(record.data), sequence)
            if when is not None:
                return when
            record = await self._js.next_by_subject(subject, record.seq + 1)
        return True if await handoff.agency_floor(self._js, agency_id, lane) >= delivery.seq else None
