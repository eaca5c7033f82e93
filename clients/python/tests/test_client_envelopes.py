"""new_envelope and timestamp: a fresh id each time, the sender and legal basis filled in."""

from datetime import UTC, datetime

from opsroom.common.v1 import common_pb2
from opsroom_client import new_envelope, timestamp


def test_each_new_envelope_has_its_own_distribution_id_and_the_given_parts() -> None:
    first = new_envelope(
        "it.pl.001272",
        kind=common_pb2.KIND_REPORT,
        recipients=["it.ps.questura.to"],
        operator_id="op-7",
        incident_ids=["inc-1"],
        references=[("d-0", "it.cc.to")],
    )
    second = new_envelope("it.pl.001272", kind=common_pb2.KIND_REPORT)
    assert first.distribution_id != second.distribution_id
    assert first.sender == common_pb2.Sender(agency_id="it.pl.001272", operator_id="op-7")
    assert list(first.recipients) == ["it.ps.questura.to"]
    assert list(first.incident_ids) == ["inc-1"]
    assert first.references[0].distribution_id == "d-0"
    assert first.legal_basis.law == "d.l. 14/2017 art. 2"
    assert first.status == common_pb2.STATUS_ACTUAL


def test_timestamp_of_a_given_time() -> None:
    at = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
    assert timestamp(at).ToDatetime(tzinfo=UTC) == at
