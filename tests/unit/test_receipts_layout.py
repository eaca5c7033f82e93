"""broker.store.layout subjects and names, broker.ids agency tokens, and broker.store.receipts.build_receipt (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from opsroom.common.v1 import common_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom.store.v1 import store_pb2

from broker import ids
from broker.lanes import LANES, Lane
from broker.store.layout import ACCEPTED_AT_HEADER, DIGEST_HEADER, SENDER_HEADER, Layout
from broker.store.model import StoredMsg
from broker.store.receipts import (
    ack_message,
    acked_at,
    build_receipt,
    delivery_headers,
    first_acceptance,
    response_message,
)
from broker.times import timestamp, timestamp_ns
from tests import factories as f
from tests.strategies import agency_ids, close_agency_ids

DIST = "5f0c6d9e-1f7a-4b7e-9a51-0c2f3b7d8e90"
OTHER_DIST = "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
RESPONSE_DIST = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
LAYOUT = Layout()

# -- layout --------------------------------------------------------------------------------


def test_subjects_for_a_dotted_agency_id() -> None:
    """Dots of the agency id become underscores, so the agency is one subject token."""
    assert ["opsroom.dlv.*.urgent.*", "opsroom.ack.>", "opsroom.rsp.>", "opsroom.ses.>", "opsroom.esc.>"] == (
        LAYOUT.stream_subjects
    )
    assert ["opsroom.dlv.*.bulk.*"] == LAYOUT.bulk_stream_subjects
    assert "opsroom.audit" == LAYOUT.audit_subject
    assert f"opsroom.dlv.it_pl_001272.urgent.{DIST}" == LAYOUT.delivery_subject(f.PL, Lane.URGENT, DIST)
    assert f"opsroom.dlv.it_pl_001272.bulk.{DIST}" == LAYOUT.delivery_subject(f.PL, Lane.BULK, DIST)
    assert "opsroom.dlv.it_pl_001272.urgent.*" == LAYOUT.deliveries_of_agency(f.PL, Lane.URGENT)
    assert "opsroom.dlv.it_pl_001272.bulk.*" == LAYOUT.deliveries_of_agency(f.PL, Lane.BULK)
    assert f"opsroom.dlv.*.*.{DIST}" == LAYOUT.deliveries_of_envelope(DIST)
    assert "opsroom.ack.it_pl_001272" == LAYOUT.ack_subject(f.PL)
    assert f"opsroom.rsp.{DIST}.it_nue_cur_to" == LAYOUT.response_subject(DIST, f.CUR)
    assert f"opsroom.rsp.{DIST}.*" == LAYOUT.responses_of_envelope(DIST)


def test_names_for_a_dotted_agency_id() -> None:
    """Consumer names and delivery message ids use the agency token."""
    assert "dlv_it_pl_001272_urgent" == Layout.consumer_name(f.PL, Lane.URGENT)
    assert "dlv_it_cc_cp_to_bulk" == LAYOUT.consumer_name(f.CC, Lane.BULK)
    assert f"{DIST}:it_pl_001272" == Layout.delivery_msg_id(DIST, f.PL)
    assert f"{DIST}:it_ps_questura_to" == LAYOUT.delivery_msg_id(DIST, f.QUESTURA)


def test_custom_prefix() -> None:
    """Every subject starts with the configured prefix."""
    layout = Layout("hub-to")
    assert ["hub-to.dlv.*.urgent.*", "hub-to.ack.>", "hub-to.rsp.>", "hub-to.ses.>", "hub-to.esc.>"] == (
        layout.stream_subjects
    )
    assert "hub-to.audit" == layout.audit_subject
    assert f"hub-to.dlv.it_pl_001272.urgent.{DIST}" == layout.delivery_subject(f.PL, Lane.URGENT, DIST)
    assert "hub-to.ack.it_pl_001272" == layout.ack_subject(f.PL)
    assert f"hub-to.rsp.{DIST}.it_pl_001272" == layout.response_subject(DIST, f.PL)


def test_agency_token_examples() -> None:
    """agency_token replaces dots with underscores and keeps hyphens; agency_from_token undoes it."""
    assert "it_pl_001272" == ids.agency_token(f.PL)
    assert "it_nue_cur-to_x1" == ids.agency_token("it.nue.cur-to.x1")
    assert f.QUESTURA == ids.agency_from_token("it_ps_questura_to")


@given(agency=agency_ids)
def test_agency_token_round_trip(agency: str) -> None:
    """For any well-formed agency id, the token is one subject token and maps back to the id."""
    assert ids.is_agency_id(agency)
    token = ids.agency_token(agency)
    assert agency == ids.agency_from_token(token)
    assert not set(".*> \t") & set(token)
    assert token.replace("_", ".") == agency


@given(a=close_agency_ids, b=close_agency_ids)
def test_agency_token_is_one_to_one(a: str, b: str) -> None:
    """Two different agency ids never share a token (and so never share a subject or consumer)."""
    assert ids.is_agency_id(a)
    assert ids.is_agency_id(b)
    assert (a == b) == (ids.agency_token(a) == ids.agency_token(b))
    for lane in LANES:
        assert (a == b) == (LAYOUT.delivery_subject(a, lane, DIST) == LAYOUT.delivery_subject(b, lane, DIST))
        assert (a == b) == (Layout.consumer_name(a, lane) == Layout.consumer_name(b, lane))
    assert Layout.consumer_name(a, Lane.URGENT) != Layout.consumer_name(b, Lane.BULK)


@given(agency=agency_ids)
def test_subjects_parse_back(agency: str) -> None:
    """Delivery and response subjects give back the agency and the distribution id, whatever the agency."""
    for lane in LANES:
        assert (agency, lane, DIST) == LAYOUT.parse_delivery(LAYOUT.delivery_subject(agency, lane, DIST))
        assert 5 == len(LAYOUT.delivery_subject(agency, lane, DIST).split("."))
    assert (DIST, agency) == LAYOUT.parse_response(LAYOUT.response_subject(DIST, agency))
    assert 3 == len(LAYOUT.ack_subject(agency).split("."))


@given(seq=st.integers(min_value=1, max_value=2**62))
def test_delivery_sequences_keep_the_lane_and_the_order(seq: int) -> None:
    """A room's sequence gives back lane and stream sequence; the lanes never share one; each lane's increase."""
    for lane in LANES:
        assert (lane, seq) == Layout.parse_sequence(Layout.delivery_sequence(lane, seq))
        assert Layout.delivery_sequence(lane, seq) < Layout.delivery_sequence(lane, seq + 1)
    assert Layout.delivery_sequence(Lane.URGENT, seq) != Layout.delivery_sequence(Lane.BULK, seq)


def test_parse_refuses_other_subjects() -> None:
    """A subject of another kind is not parsed as a delivery or a response."""
    cases = (
        (LAYOUT.parse_delivery, LAYOUT.ack_subject(f.PL)),
        (LAYOUT.parse_delivery, f"opsroom.dlv.it_pl_001272.{DIST}"),  # no lane
        (LAYOUT.parse_delivery, f"opsroom.dlv.it_pl_001272.fast.{DIST}"),  # no such lane
        (LAYOUT.parse_response, "x.y"),
    )
    for parse, subject in cases:
        try:
            parse(subject)
        except ValueError:
            continue
        raise AssertionError(subject)


# -- receipts ------------------------------------------------------------------------------

ACCEPTED_NS = 1_795_000_000_123_456_789
DIGEST = bytes(range(32))
DELIVERED_AT = datetime(2026, 11, 23, 12, 0, 5, tzinfo=UTC)


def delivery(agency: str, seq: int, dist: str = DIST, sender: str = f.CUR) -> StoredMsg:
    """A stored delivery as the hub writes it."""
    headers = delivery_headers(LAYOUT, dist, agency, sender=sender, accepted_ns=ACCEPTED_NS, digest=DIGEST)
    return StoredMsg(LAYOUT.delivery_subject(agency, Lane.URGENT, dist), seq, b"", ACCEPTED_NS, headers)


def business_response(outcome: int = common_pb2.OUTCOME_ACCEPTED, cause: str = "") -> hub_pb2.BusinessResponse:
    return hub_pb2.BusinessResponse(
        outcome=outcome,  # type: ignore[arg-type]
        cause=cause,
        response_distribution_id=RESPONSE_DIST,
        responded_at=timestamp(DELIVERED_AT + timedelta(minutes=1)),
    )


def stored_response(agency: str, response: hub_pb2.BusinessResponse, dist: str = DIST, seq: int = 99) -> StoredMsg:
    msg = response_message(LAYOUT, dist, agency, response)
    return StoredMsg(msg.subject, seq, msg.payload, 0, msg.headers)


def test_delivery_headers_carry_what_a_retry_needs() -> None:
    """Each delivery is written once ever (expected-absent subject) and carries sender, time and digest."""
    headers = delivery_headers(LAYOUT, DIST, f.PL, sender=f.CUR, accepted_ns=ACCEPTED_NS, digest=DIGEST)
    assert {
        "Nats-Msg-Id": f"{DIST}:it_pl_001272",
        "Nats-Expected-Last-Subject-Sequence": "0",
        SENDER_HEADER: f.CUR,
        ACCEPTED_AT_HEADER: str(ACCEPTED_NS),
        DIGEST_HEADER: DIGEST.hex(),
    } == headers


def test_first_acceptance_is_rebuilt_in_stored_order() -> None:
    """The first answer comes back from the deliveries: recipients in sequence order, time and digest from headers."""
    acceptance, digest, sender = first_acceptance(LAYOUT, [delivery(f.PL, 12), delivery(f.QUESTURA, 11)])
    assert (DIST, [f.QUESTURA, f.PL], ACCEPTED_NS, DIGEST, f.CUR) == (
        acceptance.distribution_id,
        list(acceptance.recipients),
        acceptance.accepted_at.ToNanoseconds(),
        digest,
        sender,
    )


def test_receipt_without_acknowledgements_is_stored_for_every_recipient() -> None:
    """No acknowledgement, no answer: every recipient STORED, in stored order."""
    receipt = build_receipt(LAYOUT, [delivery(f.QUESTURA, 1), delivery(f.PL, 2)], {}, [], common_pb2.KIND_REPORT)
    assert [(f.QUESTURA, hub_pb2.DELIVERY_STATE_STORED), (f.PL, hub_pb2.DELIVERY_STATE_STORED)] == [
        (r.agency_id, r.state) for r in receipt.recipients
    ]
    assert (DIST, f.CUR, common_pb2.KIND_REPORT, ACCEPTED_NS) == (
        receipt.distribution_id,
        receipt.sender_agency_id,
        receipt.kind,
        receipt.accepted_at.ToNanoseconds(),
    )


def test_delivered_with_and_without_a_known_time() -> None:
    """A known acknowledgement time sets delivered_at; True means delivered at an unknown time."""
    at = timestamp(DELIVERED_AT)
    receipt = build_receipt(
        LAYOUT,
        [delivery(f.QUESTURA, 1), delivery(f.PL, 2), delivery(f.CC, 3)],
        {f.QUESTURA: at, f.PL: True},
        [],
        common_pb2.KIND_REPORT,
    )
    states = [(r.agency_id, r.state, r.HasField("delivered_at")) for r in receipt.recipients]
    assert [
        (f.QUESTURA, hub_pb2.DELIVERY_STATE_DELIVERED, True),
        (f.PL, hub_pb2.DELIVERY_STATE_DELIVERED, False),
        (f.CC, hub_pb2.DELIVERY_STATE_STORED, False),
    ] == states
    assert at == receipt.recipients[0].delivered_at


def test_business_answers_attach_to_their_recipient_only() -> None:
    """An answer by a recipient attaches to it; answers of other requests or agencies are ignored."""
    answer = business_response(common_pb2.OUTCOME_REJECTED, "nessuna pattuglia")
    receipt = build_receipt(
        LAYOUT,
        [delivery(f.CC, 1), delivery(f.QUESTURA, 2)],
        {},
        [
            stored_response(f.CC, answer),
            stored_response(f.PL, business_response()),  # not a recipient
            stored_response(f.QUESTURA, business_response(), dist=OTHER_DIST),  # another request
        ],
        common_pb2.KIND_REQUEST,
    )
    assert answer == receipt.recipients[0].response
    assert not receipt.recipients[1].HasField("response")


def test_the_last_answer_counts() -> None:
    """When a recipient answered twice, the later answer is the one in the receipt."""
    first = business_response(common_pb2.OUTCOME_ACCEPTED)
    second = business_response(common_pb2.OUTCOME_REJECTED, "revocata")
    receipt = build_receipt(
        LAYOUT,
        [delivery(f.CC, 1)],
        {},
        [stored_response(f.CC, second, seq=50), stored_response(f.CC, first, seq=40)],
        common_pb2.KIND_REQUEST,
    )
    assert second == receipt.recipients[0].response


def test_ack_record_round_trip() -> None:
    """An ack record lists its sequences sorted; acked_at finds a listed one and not another."""
    msg = ack_message(LAYOUT, f.PL, [9, 3, 5], DELIVERED_AT, "s1")
    assert LAYOUT.ack_subject(f.PL) == msg.subject
    record = store_pb2.AckRecord.FromString(msg.payload)
    assert ([3, 5, 9], "s1") == (list(record.sequences), record.session_id)
    assert timestamp(DELIVERED_AT) == acked_at(record, 5)
    assert acked_at(record, 4) is None


def test_timestamp_ns_round_trip() -> None:
    """timestamp_ns keeps every nanosecond."""
    assert ACCEPTED_NS == timestamp_ns(ACCEPTED_NS).ToNanoseconds()
