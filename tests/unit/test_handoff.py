"""broker.delivery.handoff: a session takes an agency's deliveries over from the previous one (fake transport, no servers)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from opsroom.store.v1 import store_pb2

from broker.config import NatsConfig
from broker.delivery import handoff
from broker.errors import StoreUnavailable
from broker.lanes import Lane
from broker.store import receipts
from broker.store.layout import Layout
from broker.store.model import ConsumerState, OutMsg, StoredMsg, WrongLastSequence

AGENCY = "it.ps.questura.to"
LAYOUT = Layout()
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class FakeJetStream:
    """Consumers by name (lane, ack floor), session records, and the calls made; writes may be made to fail."""

    def __init__(self) -> None:
        self.cfg = NatsConfig()
        self.layout = LAYOUT
        self.floors: dict[str, int] = {}  # consumer name -> ack floor
        self.created: list[tuple[str, int]] = []  # (name, start sequence)
        self.deleted: list[str] = []
        self.record: StoredMsg | None = None
        self.written: list[OutMsg] = []
        self.conflicts = 0  # the next this many record writes find another record first

    async def last_by_subject(self, subject: str, stream: str = "") -> StoredMsg | None:
        return self.record

    async def consumer_floor(self, name: str, _lane: Lane) -> int | None:
        return self.floors.get(name)

    async def create_session_consumer(self, agency_id: str, lane: Lane, session_id: str, start_seq: int) -> int:
        name = LAYOUT.consumer_name(agency_id, lane, session_id)
        assert name not in self.floors, "a consumer created twice without being deleted"
        self.floors[name] = start_seq - 1
        self.created.append((name, start_seq))
        return 3

    async def delete_consumer(self, name: str, _lane: Lane) -> bool:
        self.deleted.append(name)
        return self.floors.pop(name, None) is not None

    async def publish_each(self, messages: Sequence[OutMsg]) -> list[int | BaseException]:
        [message] = messages
        self.written.append(message)
        if self.conflicts:
            self.conflicts -= 1
            self.record = session_record("someone-else", seq=(self.record.seq if self.record else 0) + 1)
            return [WrongLastSequence("wrong last sequence")]
        self.record = StoredMsg(message.subject, (self.record.seq if self.record else 0) + 1, message.payload, 0)
        return [self.record.seq]


def session_record(session_id: str, seq: int) -> StoredMsg:
    record = receipts.session_message(LAYOUT, AGENCY, session_id, "hub-a", NOW)
    return StoredMsg(record.subject, seq, record.payload, 0)


def name(lane: Lane, session_id: str = "") -> str:
    return LAYOUT.consumer_name(AGENCY, lane, session_id)


async def take_over(js: FakeJetStream, session_id: str) -> handoff.TakeOver:
    record = receipts.session_message(LAYOUT, AGENCY, session_id, "hub-b", NOW)
    return await handoff.take_over(js, AGENCY, session_id, record)  # type: ignore[arg-type]


async def test_a_first_session_starts_from_the_agencys_first_consumer_and_deletes_it() -> None:
    js = FakeJetStream()
    js.floors = {name(Lane.URGENT): 41, name(Lane.BULK): 0}
    taken = await take_over(js, "s1")
    assert [(name(Lane.URGENT, "s1"), 42), (name(Lane.BULK, "s1"), 1)] == js.created
    assert "0" == js.written[-1].headers[handoff.EXPECTED_LAST_SUBJECT_SEQUENCE]  # no record before
    assert 6 == taken.backlog
    assert js.record is not None
    assert taken.record_seq == js.record.seq
    assert {name(Lane.URGENT), name(Lane.BULK)} <= set(js.deleted)
    assert set(js.floors) == {name(Lane.URGENT, "s1"), name(Lane.BULK, "s1")}


async def test_a_session_starts_after_the_previous_sessions_floors_and_deletes_its_consumers() -> None:
    js = FakeJetStream()
    js.record = session_record("s1", seq=7)
    js.floors = {name(Lane.URGENT, "s1"): 100, name(Lane.BULK, "s1"): 55}
    await take_over(js, "s2")
    assert [(name(Lane.URGENT, "s2"), 101), (name(Lane.BULK, "s2"), 56)] == js.created
    assert "7" == js.written[-1].headers[handoff.EXPECTED_LAST_SUBJECT_SEQUENCE]
    assert set(js.floors) == {name(Lane.URGENT, "s2"), name(Lane.BULK, "s2")}
    stored = js.record
    assert stored is not None
    assert "s2" == store_pb2.SessionRecord.FromString(stored.data).session_id


async def test_a_record_from_before_session_consumers_falls_back_to_the_agencys_first_consumer() -> None:
    js = FakeJetStream()
    js.record = session_record("s0", seq=3)  # its session pulled from the agency's first consumer
    js.floors = {name(Lane.URGENT): 9, name(Lane.BULK): 4}
    await take_over(js, "s1")
    assert [(name(Lane.URGENT, "s1"), 10), (name(Lane.BULK, "s1"), 5)] == js.created


async def test_no_consumer_at_all_starts_from_the_beginning() -> None:
    js = FakeJetStream()
    js.record = session_record("s0", seq=3)
    await take_over(js, "s1")
    assert [(name(Lane.URGENT, "s1"), 1), (name(Lane.BULK, "s1"), 1)] == js.created


async def test_a_session_that_opened_meanwhile_makes_the_take_over_start_again_from_its_floors() -> None:
    js = FakeJetStream()
    js.record = session_record("s1", seq=7)
    js.floors = {name(Lane.URGENT, "s1"): 100, name(Lane.BULK, "s1"): 55}
    js.conflicts = 1  # "someone-else" stores its record first; its consumers hold other floors
    js.floors |= {name(Lane.URGENT, "someone-else"): 120, name(Lane.BULK, "someone-else"): 60}
    await take_over(js, "s2")
    assert [(name(Lane.URGENT, "s2"), 121), (name(Lane.BULK, "s2"), 61)] == js.created[-2:]
    assert "8" == js.written[-1].headers[handoff.EXPECTED_LAST_SUBJECT_SEQUENCE]
    assert name(Lane.URGENT, "someone-else") in js.deleted


async def test_sessions_opening_again_and_again_meanwhile_leave_the_room_unavailable_and_nothing_behind() -> None:
    js = FakeJetStream()
    js.conflicts = handoff.ATTEMPTS
    with pytest.raises(StoreUnavailable):
        await take_over(js, "s2")
    assert name(Lane.URGENT, "s2") not in js.floors
    assert name(Lane.BULK, "s2") not in js.floors


def consumer(consumer_name: str, age: timedelta | None) -> ConsumerState:
    created = None if age is None else NOW - age
    return ConsumerState(consumer_name, "f", 0, 0, created)


def test_the_consumer_holding_the_floor_is_the_current_sessions_else_the_agencys_first() -> None:
    names = handoff.names_of(LAYOUT, AGENCY, Lane.URGENT, "s2")
    current, first = consumer(name(Lane.URGENT, "s2"), None), consumer(name(Lane.URGENT), None)
    assert current == handoff.kept([first, current], names)
    assert first == handoff.kept([first, consumer(name(Lane.URGENT, "s1"), None)], names)
    assert None is handoff.kept([consumer(name(Lane.URGENT, "s1"), None)], names)
    assert (name(Lane.URGENT),) == handoff.names_of(LAYOUT, AGENCY, Lane.URGENT, None)


def test_only_consumers_other_than_the_kept_one_and_old_enough_are_swept() -> None:
    names = handoff.names_of(LAYOUT, AGENCY, Lane.BULK, "s3")
    old = handoff.SWEEP_AFTER + timedelta(seconds=1)
    group = [
        consumer(name(Lane.BULK, "s3"), old),  # the current session's: kept, however old
        consumer(name(Lane.BULK, "s1"), old),  # left by a session cut short: swept
        consumer(name(Lane.BULK, "s4"), timedelta(seconds=5)),  # a hand-over in progress: left alone
        consumer(name(Lane.BULK, "s5"), None),  # no creation time known: left alone
    ]
    assert [name(Lane.BULK, "s1")] == handoff.sweepable(group, names, NOW)


def test_the_agencys_first_consumer_goes_at_once_when_a_sessions_consumer_holds_the_floor() -> None:
    names = handoff.names_of(LAYOUT, AGENCY, Lane.URGENT, "s1")
    young = timedelta(seconds=1)
    assert [name(Lane.URGENT)] == handoff.sweepable(
        [consumer(name(Lane.URGENT, "s1"), young), consumer(name(Lane.URGENT), young)], names, NOW
    )
    # The session's consumer is not there (a record from before session consumers): the first one holds the floor.
    assert [] == handoff.sweepable([consumer(name(Lane.URGENT), handoff.SWEEP_AFTER * 2)], names, NOW)


def epoch_of(message: OutMsg | StoredMsg | None) -> int:
    assert message is not None
    data = message.payload if isinstance(message, OutMsg) else message.data
    return store_pb2.SessionRecord.FromString(data).epoch


async def test_each_session_of_an_agency_counts_one_more_than_the_last_record_read() -> None:
    """The epoch (high bits of the room's sequences) is 1 for a first session and grows by one each take-over."""
    js = FakeJetStream()
    assert 1 == (await take_over(js, "s1")).epoch
    assert 1 == epoch_of(js.record)
    assert 2 == (await take_over(js, "s2")).epoch
    assert 2 == epoch_of(js.record)
    # The record of a session that opened meanwhile is counted on from: here "someone-else", whose
    # record is from before epochs were kept (0), beats the take-over that read epoch 5.
    record = receipts.session_message(LAYOUT, AGENCY, "s4", "hub-a", NOW, epoch=5)
    js.record = StoredMsg(record.subject, 9, record.payload, 0)
    js.conflicts = 1
    taken = await take_over(js, "s5")
    assert [6, 1] == [epoch_of(m) for m in js.written[-2:]]
    assert (1, 1) == (taken.epoch, epoch_of(js.record))
