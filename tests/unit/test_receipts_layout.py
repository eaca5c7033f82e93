"""broker.layout subjects and names, broker.ids agency tokens, and broker.receipts.build_receipt (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from opsroom.common.v1 import common_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom.store.v1 import store_pb2

from broker import ids
from broker.layout import Layout
from broker.receipts import build_receipt, delivered_message, response_message, timestamp
from broker.transport.jetstream import StoredMsg
from tests import factories as f

DIST = "5f0c6d9e-1f7a-4b7e-9a51-0c2f3b7d8e90"
OTHER_DIST = "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
RESPONSE_DIST = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
LAYOUT = Layout()

agency_ids = st.from_regex(ids.AGENCY_ID_RE, fullmatch=True).filter(lambda a: len(a) <= ids.AGENCY_ID_MAX)
# Built piece by piece from a tiny alphabet, so that pairs often differ only in a dot or a hyphen.
_part = st.text("ab1", min_size=1, max_size=2)
_segment = st.lists(_part, min_size=1, max_size=2).map("-".join)
close_agency_ids = st.builds(
    lambda country, segments: ".".join([country, *segments]),
    st.sampled_from(["it", "fr"]),
    st.lists(_segment, min_size=1, max_size=4),
)


# -- layout --------------------------------------------------------------------------------


def test_subjects_for_a_dotted_agency_id() -> None:
    """Dots of the agency id become underscores, so the agency is one subject token."""
    assert ["opsroom.>"] == LAYOUT.stream_subjects
    assert "opsroom.dlv.it_pl_001272" == LAYOUT.delivery_subject(f.PL)
    assert f"opsroom.acc.{DIST}" == LAYOUT.acceptance_subject(DIST)
    assert f"opsroom.rcpt.{DIST}.it_pl_001272.dlv" == LAYOUT.delivered_subject(DIST, f.PL)
    assert f"opsroom.rcpt.{DIST}.it_nue_cur_to.rsp" == LAYOUT.response_subject(DIST, f.CUR)
    assert f"opsroom.rcpt.{DIST}.>" == LAYOUT.receipts_filter(DIST)


def test_names_for_a_dotted_agency_id() -> None:
    """Consumer names and delivery message ids use the agency token."""
    assert "dlv_it_pl_001272" == Layout.consumer_name(f.PL)
    assert "dlv_it_cc_cp_to" == LAYOUT.consumer_name(f.CC)
    assert f"{DIST}:it_pl_001272" == Layout.delivery_msg_id(DIST, f.PL)
    assert f"{DIST}:it_ps_questura_to" == LAYOUT.delivery_msg_id(DIST, f.QUESTURA)


def test_custom_prefix() -> None:
    """Every subject starts with the configured prefix."""
    layout = Layout("hub-to")
    assert ["hub-to.>"] == layout.stream_subjects
    assert "hub-to.dlv.it_pl_001272" == layout.delivery_subject(f.PL)
    assert f"hub-to.acc.{DIST}" == layout.acceptance_subject(DIST)
    assert f"hub-to.rcpt.{DIST}.it_pl_001272.dlv" == layout.delivered_subject(DIST, f.PL)
    assert f"hub-to.rcpt.{DIST}.it_pl_001272.rsp" == layout.response_subject(DIST, f.PL)
    assert f"hub-to.rcpt.{DIST}.>" == layout.receipts_filter(DIST)


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
    assert (a == b) == (LAYOUT.delivery_subject(a) == LAYOUT.delivery_subject(b))
    assert (a == b) == (Layout.consumer_name(a) == Layout.consumer_name(b))


@given(agency=agency_ids)
def test_subject_shapes_for_any_agency(agency: str) -> None:
    """Subjects have a fixed number of tokens whatever the agency, and receipts fall under the receipts filter."""
    assert 3 == len(LAYOUT.delivery_subject(agency).split("."))
    for subject in (LAYOUT.delivered_subject(DIST, agency), LAYOUT.response_subject(DIST, agency)):
        tokens = subject.split(".")
        assert 5 == len(tokens)
        assert ids.agency_token(agency) == tokens[3]
        assert subject.startswith(LAYOUT.receipts_filter(DIST).removesuffix(">"))
    assert "." not in Layout.consumer_name(agency)


# -- receipts ------------------------------------------------------------------------------

ACCEPTED_AT = datetime(2026, 11, 23, 12, 0, 1, tzinfo=UTC)
DELIVERED_AT = ACCEPTED_AT + timedelta(seconds=2)


def accepted(recipients: tuple[str, ...] = (f.QUESTURA, f.PL, f.CC)) -> store_pb2.AcceptedRecord:
    return store_pb2.AcceptedRecord(
        acceptance=hub_pb2.Acceptance(distribution_id=DIST, accepted_at=timestamp(ACCEPTED_AT), recipients=recipients),
        sender_agency_id=f.CUR,
        kind=common_pb2.KIND_REQUEST,
        status=common_pb2.STATUS_ACTUAL,
        payload="assistance_request",
    )


def stored(subject: str, record: store_pb2.DeliveredRecord | store_pb2.ResponseRecord, seq: int = 7) -> StoredMsg:
    return StoredMsg(subject, seq, record.SerializeToString(), 1_795_000_000_000_000_000 + seq)


def delivered_record(agency: str, at: datetime = DELIVERED_AT, sequence: int = 3) -> store_pb2.DeliveredRecord:
    return store_pb2.DeliveredRecord(agency_id=agency, delivered_at=timestamp(at), sequence=sequence)


def business_response(outcome: int = common_pb2.OUTCOME_ACCEPTED, cause: str = "") -> hub_pb2.BusinessResponse:
    return hub_pb2.BusinessResponse(
        outcome=outcome,  # type: ignore[arg-type]
        cause=cause,
        response_distribution_id=RESPONSE_DIST,
        responded_at=timestamp(DELIVERED_AT + timedelta(minutes=1)),
    )


def stored_only(recipients: tuple[str, ...] = (f.QUESTURA, f.PL, f.CC)) -> hub_pb2.Receipt:
    return hub_pb2.Receipt(
        distribution_id=DIST,
        sender_agency_id=f.CUR,
        kind=common_pb2.KIND_REQUEST,
        accepted_at=timestamp(ACCEPTED_AT),
        recipients=[hub_pb2.RecipientReceipt(agency_id=a, state=hub_pb2.DELIVERY_STATE_STORED) for a in recipients],
    )


def test_receipt_without_records_is_stored_for_every_recipient_in_order() -> None:
    """With no receipt record, every recipient is STORED, in the acceptance's order."""
    receipt = build_receipt(LAYOUT, accepted(), [])
    assert stored_only() == receipt
    assert [f.QUESTURA, f.PL, f.CC] == [r.agency_id for r in receipt.recipients]
    assert not any(r.HasField("delivered_at") or r.HasField("response") for r in receipt.recipients)


def test_recipient_order_follows_acceptance_not_records() -> None:
    """Recipients keep the acceptance order whatever order the records come in."""
    order = (f.CC, f.QUESTURA, f.PL_MILANO, f.PL)
    records = [stored(LAYOUT.delivered_subject(DIST, a), delivered_record(a)) for a in reversed(order)]
    receipt = build_receipt(LAYOUT, accepted(order), records)
    assert list(order) == [r.agency_id for r in receipt.recipients]


def test_delivered_record_sets_delivered_state_and_time() -> None:
    """A DeliveredRecord on a recipient's .dlv subject makes it DELIVERED at the record's time."""
    records = [stored(LAYOUT.delivered_subject(DIST, f.PL), delivered_record(f.PL))]
    receipt = build_receipt(LAYOUT, accepted(), records)
    expected = stored_only()
    expected.recipients[1].state = hub_pb2.DELIVERY_STATE_DELIVERED
    expected.recipients[1].delivered_at.CopyFrom(timestamp(DELIVERED_AT))
    assert expected == receipt
    assert DELIVERED_AT == receipt.recipients[1].delivered_at.ToDatetime(UTC)


def test_response_record_sets_business_response() -> None:
    """A ResponseRecord on a recipient's .rsp subject sets its business response; the state stays STORED."""
    response = business_response(common_pb2.OUTCOME_REJECTED, "nessuna pattuglia libera")
    record = store_pb2.ResponseRecord(agency_id=f.QUESTURA, response=response)
    receipt = build_receipt(LAYOUT, accepted(), [stored(LAYOUT.response_subject(DIST, f.QUESTURA), record)])
    expected = stored_only()
    expected.recipients[0].response.CopyFrom(response)
    assert expected == receipt
    assert hub_pb2.DELIVERY_STATE_STORED == receipt.recipients[0].state


def test_delivered_and_response_for_several_recipients() -> None:
    """Records of several recipients, both kinds, each land on their own recipient."""
    response = business_response()
    records = [
        stored(LAYOUT.response_subject(DIST, f.PL), store_pb2.ResponseRecord(agency_id=f.PL, response=response), 9),
        stored(LAYOUT.delivered_subject(DIST, f.PL), delivered_record(f.PL), 8),
        stored(LAYOUT.delivered_subject(DIST, f.CC), delivered_record(f.CC, DELIVERED_AT + timedelta(seconds=5)), 10),
    ]
    receipt = build_receipt(LAYOUT, accepted(), records)
    assert [
        (f.QUESTURA, hub_pb2.DELIVERY_STATE_STORED, False, False),
        (f.PL, hub_pb2.DELIVERY_STATE_DELIVERED, True, True),
        (f.CC, hub_pb2.DELIVERY_STATE_DELIVERED, True, False),
    ] == [(r.agency_id, r.state, r.HasField("delivered_at"), r.HasField("response")) for r in receipt.recipients]
    assert response == receipt.recipients[1].response
    assert DELIVERED_AT + timedelta(seconds=5) == receipt.recipients[2].delivered_at.ToDatetime(UTC)


def test_unrelated_records_are_ignored() -> None:
    """Records of another envelope, of a non-recipient, under another prefix or another subject change nothing."""
    other = Layout("other")
    rsp = store_pb2.ResponseRecord(agency_id=f.PL, response=business_response())
    records = [
        stored(LAYOUT.delivered_subject(OTHER_DIST, f.PL), delivered_record(f.PL)),
        stored(LAYOUT.response_subject(OTHER_DIST, f.PL), rsp),
        stored(LAYOUT.delivered_subject(DIST, f.PL_MILANO), delivered_record(f.PL_MILANO)),
        stored(LAYOUT.response_subject(DIST, f.ROGUE), store_pb2.ResponseRecord(agency_id=f.ROGUE)),
        stored(other.delivered_subject(DIST, f.PL), delivered_record(f.PL)),
        stored(other.response_subject(DIST, f.QUESTURA), rsp),
        stored(LAYOUT.delivery_subject(f.PL), delivered_record(f.PL)),
        stored(f"{LAYOUT.delivered_subject(DIST, f.PL)}.extra", delivered_record(f.PL)),
        stored(LAYOUT.acceptance_subject(DIST), delivered_record(f.PL)),
    ]
    assert stored_only() == build_receipt(LAYOUT, accepted(), records)


def test_receipt_with_a_custom_prefix_reads_its_own_records() -> None:
    """A layout with another prefix finds records under that prefix only."""
    layout = Layout("hub-to")
    records = [
        stored(layout.delivered_subject(DIST, f.CC), delivered_record(f.CC)),
        stored(LAYOUT.delivered_subject(DIST, f.PL), delivered_record(f.PL)),
    ]
    receipt = build_receipt(layout, accepted(), records)
    assert [hub_pb2.DELIVERY_STATE_STORED, hub_pb2.DELIVERY_STATE_STORED, hub_pb2.DELIVERY_STATE_DELIVERED] == [
        r.state for r in receipt.recipients
    ]


def test_records_written_by_the_hub_helpers_are_read_back() -> None:
    """delivered_message and response_message produce records build_receipt understands."""
    response = business_response(common_pb2.OUTCOME_PARTIALLY_ACCEPTED, "una sola pattuglia")
    dlv = delivered_message(LAYOUT, DIST, f.QUESTURA, 12, DELIVERED_AT)
    rsp = response_message(LAYOUT, DIST, f.QUESTURA, response)
    assert LAYOUT.delivered_subject(DIST, f.QUESTURA) == dlv.subject
    assert LAYOUT.response_subject(DIST, f.QUESTURA) == rsp.subject
    assert {"Nats-Msg-Id": f"rsp:{RESPONSE_DIST}"} == rsp.headers
    assert delivered_record(f.QUESTURA, sequence=12) == store_pb2.DeliveredRecord.FromString(dlv.payload)
    records = [StoredMsg(m.subject, i, m.payload, 0) for i, m in enumerate((dlv, rsp), start=20)]
    entry = build_receipt(LAYOUT, accepted(), records).recipients[0]
    assert (f.QUESTURA, hub_pb2.DELIVERY_STATE_DELIVERED, response) == (entry.agency_id, entry.state, entry.response)
    assert DELIVERED_AT == entry.delivered_at.ToDatetime(UTC)


def test_receipt_header_fields_come_from_the_acceptance_record() -> None:
    """distribution id, sender, kind and accepted_at are those of the AcceptedRecord."""
    record = accepted((f.PL,))
    record.kind = common_pb2.KIND_REPORT
    record.sender_agency_id = f.PL_MILANO
    receipt = build_receipt(LAYOUT, record, [])
    assert (DIST, f.PL_MILANO, common_pb2.KIND_REPORT, ACCEPTED_AT) == (
        receipt.distribution_id,
        receipt.sender_agency_id,
        receipt.kind,
        receipt.accepted_at.ToDatetime(UTC),
    )
