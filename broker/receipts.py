"""Receipts: the records written for acknowledgements and answers, and the Receipt built from them (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from opsroom.hub.v1 import hub_pb2
from opsroom.store.v1 import store_pb2

from broker.layout import Layout
from broker.transport.jetstream import OutMsg, StoredMsg


def timestamp(at: datetime) -> Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


def delivered_message(layout: Layout, distribution_id: str, agency_id: str, sequence: int, at: datetime) -> OutMsg:
    """The record that agency_id's client acknowledged delivery `sequence` of distribution_id."""
    record = store_pb2.DeliveredRecord(agency_id=agency_id, delivered_at=timestamp(at), sequence=sequence)
    return OutMsg(layout.delivered_subject(distribution_id, agency_id), record.SerializeToString())


def response_message(layout: Layout, request_id: str, agency_id: str, response: hub_pb2.BusinessResponse) -> OutMsg:
    """The record of agency_id's operator answering request_id."""
    record = store_pb2.ResponseRecord(agency_id=agency_id, response=response)
    return OutMsg(
        layout.response_subject(request_id, agency_id),
        record.SerializeToString(),
        {"Nats-Msg-Id": f"rsp:{response.response_distribution_id}"},
    )


def build_receipt(layout: Layout, accepted: store_pb2.AcceptedRecord, records: Iterable[StoredMsg]) -> hub_pb2.Receipt:
    """The Receipt of an envelope from its acceptance record and the last receipt record per subject."""
    acceptance = accepted.acceptance
    dist = acceptance.distribution_id
    by_agency: dict[str, hub_pb2.RecipientReceipt] = {}
    for agency_id in acceptance.recipients:
        by_agency[agency_id] = hub_pb2.RecipientReceipt(agency_id=agency_id, state=hub_pb2.DELIVERY_STATE_STORED)
    for stored in records:
        for agency_id, entry in by_agency.items():
            if stored.subject == layout.delivered_subject(dist, agency_id):
                delivered = store_pb2.DeliveredRecord.FromString(stored.data)
                entry.state = hub_pb2.DELIVERY_STATE_DELIVERED
                entry.delivered_at.CopyFrom(delivered.delivered_at)
            elif stored.subject == layout.response_subject(dist, agency_id):
                entry.response.CopyFrom(store_pb2.ResponseRecord.FromString(stored.data).response)
    return hub_pb2.Receipt(
        distribution_id=dist,
        sender_agency_id=accepted.sender_agency_id,
        kind=accepted.kind,
        accepted_at=acceptance.accepted_at,
        recipients=[by_agency[a] for a in acceptance.recipients],
    )
