"""broker.delivery.sessions: the frame logic of a delivery session (consumer-sequence gaps), with a fake transport (no servers)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from opsroom.hub.v1 import hub_pb2
from opsroom.store.v1 import store_pb2

from broker.config import NatsConfig
from broker.delivery.sessions import MAX_BATCH, MAX_WINDOW, DeliverySession
from broker.errors import OpsroomError, Reason, Refused, StoreUnavailable
from broker.lanes import Lane
from broker.ops.metrics import Metrics
from broker.publish.committer import GroupResult, Outcome
from broker.store import receipts
from broker.store.layout import Layout
from broker.store.model import ConsumerGone, OutMsg, Pulled, StoredMsg
from broker.times import ManualClock, SystemClock

AGENCY = "it.ps.questura.to"


class FakePuller:
    """A puller whose deliveries the test queues itself."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.queue: asyncio.Queue[Pulled | BaseException] = asyncio.Queue()
        self.outstanding = 0

    def stalled(self) -> bool:
        return False

    def forget_outstanding(self) -> None:
        self.outstanding = 0

    async def request(self, count: int) -> None:
        self.outstanding += count

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def put(self, item: Pulled | BaseException) -> None:
        self.queue.put_nowait(item)


class FakeJetStream:
    """Consumers that exist for the asking (no earlier session), a session record the test may set."""

    def __init__(self) -> None:
        self.cfg = NatsConfig()
        self.layout = Layout()
        self.pullers: dict[Lane, FakePuller] = {}

    def puller(
        self, _agency_id: str, lane: Lane, _ready: asyncio.Event | None = None, _session_id: str = ""
    ) -> FakePuller:
        self.pullers[lane] = FakePuller(lane)
        return self.pullers[lane]

    async def consumer_floor(self, _name: str, _lane: Lane) -> int | None:
        return None

    async def create_session_consumer(self, _agency_id: str, _lane: Lane, _session_id: str, _start_seq: int) -> int:
        return 0

    async def delete_consumer(self, _name: str, _lane: Lane) -> bool:
        return True

    def forget(self, _puller: FakePuller) -> None:
        pass

    async def last_by_subject(self, subject: str, stream: str = "") -> StoredMsg | None:
        """The agency's last session record, as set by a test (None: no other session)."""
        return getattr(self, "current", None)

    async def publish_each(self, messages: Sequence[OutMsg]) -> list[int | BaseException]:
        self.records = [*getattr(self, "records", []), *messages]
        return [len(self.records) for _ in messages]


class FakeCommitter:
    async def submit(self, _messages: Sequence[OutMsg]) -> GroupResult:
        return GroupResult(Outcome.STORED, 1)


def pulled(stream_seq: int, consumer_seq: int) -> Pulled:
    return Pulled(stream_seq, 1, 0, 0, f"reply.{stream_seq}", f"d{stream_seq}", b"", {}, consumer_seq)


async def opened(js: FakeJetStream | None = None) -> tuple[DeliverySession, FakeJetStream, Metrics]:
    js = js or FakeJetStream()
    metrics = Metrics()
    session = DeliverySession(AGENCY, js, FakeCommitter(), metrics, SystemClock(), heartbeat=5.0)
    await session.open()
    return session, js, metrics


def sequences(frame: bytes) -> list[int]:
    return [d.sequence for d in hub_pb2.ConnectResponse.FromString(frame).deliveries.deliveries]


def gaps(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("opsroom_session_gaps_total", {"agency": AGENCY}) or 0.0


async def test_the_first_deliveries_of_a_new_consumer_are_sent() -> None:
    """A session's consumer is new: the first delivery carries consumer sequence 1, the next 2; both go out."""
    session, js, metrics = await opened()
    js.pullers[Lane.URGENT].put(pulled(7, 1))
    js.pullers[Lane.URGENT].put(pulled(9, 2))
    frame = await session.next_frame()
    assert [(1 << 32) | 1, (1 << 32) | 2] == sequences(frame)  # the agency's first session: numbered 1, 2
    assert 0.0 == gaps(metrics)


async def test_a_gap_before_the_first_delivery_ends_the_session() -> None:
    """First delivery 2: delivery 1 went elsewhere (a pull lost with a connection); nothing is sent, the gap is counted."""
    session, js, metrics = await opened()
    js.pullers[Lane.URGENT].put(pulled(8, 2))
    with pytest.raises(StoreUnavailable):
        await session.next_frame()
    assert 1.0 == gaps(metrics)


async def test_a_gap_after_the_first_delivery_ends_the_session() -> None:
    """1 then 3: the second frame is refused."""
    session, js, metrics = await opened()
    js.pullers[Lane.URGENT].put(pulled(1, 1))
    await session.next_frame()
    js.pullers[Lane.URGENT].put(pulled(3, 3))
    with pytest.raises(StoreUnavailable):
        await session.next_frame()
    assert 1.0 == gaps(metrics)


def another_session_opened(js: FakeJetStream) -> None:
    """Another session of the agency (here or on another replica) stored its record since."""
    record = receipts.session_message(js.layout, AGENCY, "newer-session", "hub-b", datetime.now(UTC))
    js.current = StoredMsg(record.subject, 99, record.payload, 0)


async def test_a_gap_caused_by_a_newer_session_tells_the_room_it_was_superseded() -> None:
    """A newer session took the agency over: the room is told SESSION_SUPERSEDED, not to come back."""
    session, js, metrics = await opened()
    another_session_opened(js)
    js.pullers[Lane.URGENT].put(pulled(8, 2))
    with pytest.raises(Refused) as caught:
        await session.next_frame()
    assert caught.value.reason is Reason.SESSION_SUPERSEDED
    assert 1.0 == gaps(metrics)


async def test_a_consumer_gone_is_unavailable_unless_a_newer_session_took_it() -> None:
    session, js, _metrics = await opened()
    js.pullers[Lane.URGENT].put(ConsumerGone("deleted"))
    with pytest.raises(StoreUnavailable):
        await session.next_frame()
    session, js, _metrics = await opened()
    another_session_opened(js)
    js.pullers[Lane.URGENT].put(ConsumerGone("deleted"))
    with pytest.raises(Refused) as caught:
        await session.next_frame()
    assert caught.value.reason is Reason.SESSION_SUPERSEDED


# -- presence, on the hub's one clock: moved by the test, nothing sleeps ------------------------


async def test_a_room_silent_past_the_presence_timeout_ends_its_session_and_one_heard_from_does_not() -> None:
    clock = ManualClock(datetime(2026, 12, 7, 9, 0, tzinfo=UTC))
    js = FakeJetStream()
    session = DeliverySession(AGENCY, js, FakeCommitter(), Metrics(), clock, heartbeat=5.0, presence_timeout=60.0)
    await session.open()
    clock.advance(59)
    await session._presence()  # 59 s of silence: still present (and its record refreshed)
    assert len(js.records) == 2  # the record stored when it opened, and the refresh
    clock.advance(30)
    session.seen()  # an acknowledgement or keepalive at 89 s
    clock.advance(59)
    await session._presence()
    clock.advance(2)  # 61 s since it was last heard from
    with pytest.raises(Refused) as caught:
        await session._presence()
    assert caught.value.reason is Reason.ROOM_SILENT


# -- what the room sees and acknowledges: its session's own numbers --------------------------


def previous_session(js: FakeJetStream, epoch: int) -> None:
    """The agency's last session record is of a session with this epoch."""
    record = receipts.session_message(js.layout, AGENCY, "earlier", "hub-b", datetime.now(UTC), epoch=epoch)
    js.current = StoredMsg(record.subject, 12, record.payload, 0)


async def test_deliveries_are_numbered_by_the_session_both_lanes_in_one_count_above_the_previous_session() -> None:
    """Stream sequences 500 and 9000 (other agencies' traffic in between), both lanes: the room sees 1, 2, 3."""
    js = FakeJetStream()
    previous_session(js, epoch=41)
    session, js, _metrics = await opened(js)
    js.pullers[Lane.URGENT].put(pulled(500, 1))
    js.pullers[Lane.BULK].put(pulled(500, 1))  # the bulk stream numbers its messages apart
    js.pullers[Lane.URGENT].put(pulled(9000, 2))
    frame = await session.next_frame()
    assert [(42 << 32) | n for n in (1, 2, 3)] == sequences(frame)  # urgent first, then bulk
    # Its record carries its epoch, for the next session to count on from.
    assert 42 == store_pb2.SessionRecord.FromString(js.records[-1].payload).epoch


async def test_an_ack_maps_back_to_the_delivery_a_repeated_one_and_an_earlier_sessions_are_ignored() -> None:
    js = FakeJetStream()
    previous_session(js, epoch=1)
    session, js, _metrics = await opened(js)
    js.pullers[Lane.URGENT].put(pulled(500, 1))
    js.pullers[Lane.BULK].put(pulled(77, 1))
    first, second = sequences(await session.next_frame())
    session.on_ack([second, (1 << 32) | 1])  # a sequence of the session before: ignored
    session.on_ack([second])  # repeated: ignored
    assert [Layout.delivery_sequence(Lane.BULK, 77)] == session._to_record  # as ack records keep them
    session.on_ack([first])
    assert Layout.delivery_sequence(Lane.URGENT, 500) == session._to_record[-1]


@pytest.mark.parametrize("bad", [(2 << 32) | 3, (3 << 32) | 1, 0])
async def test_an_ack_of_a_sequence_never_sent_is_refused_naming_it_and_nothing_of_it_is_acknowledged(bad: int) -> None:
    """Not yet numbered (3), a later session's, or none at all: ACK_NOT_SENT on ack.sequences[1]."""
    js = FakeJetStream()
    previous_session(js, epoch=1)
    session, js, _metrics = await opened(js)
    js.pullers[Lane.URGENT].put(pulled(500, 1))
    js.pullers[Lane.URGENT].put(pulled(501, 2))
    first, _second = sequences(await session.next_frame())
    with pytest.raises(OpsroomError) as caught:
        session.on_ack([first, bad])
    assert Reason.ACK_NOT_SENT is caught.value.reason
    assert ["ack.sequences[1]"] == [v.field for v in caught.value.violations]
    assert caught.value.message.startswith("ack.sequences[1]: ")
    assert [] == session._to_record


def test_session_parameters_take_their_defaults_and_bounds() -> None:
    """0 means the default; anything above the bound is taken as the bound (and SessionOpened says so)."""
    js = FakeJetStream()

    def session(max_batch: int, window: int) -> tuple[int, int]:
        made = DeliverySession(AGENCY, js, FakeCommitter(), Metrics(), SystemClock(), heartbeat=5.0,
                               max_batch=max_batch, window=window)  # fmt: skip
        return made.max_batch, made.window

    assert (64, 1024) == session(0, 0)
    assert (MAX_BATCH, MAX_WINDOW) == session(4_000_000_000, 4_000_000_000)
    assert (1000, 10_000) == (MAX_BATCH, MAX_WINDOW)  # as the contract documents them
    assert (7, 9) == session(7, 9)
    js.cfg = NatsConfig(max_ack_pending=500)
    assert (MAX_BATCH, 500) == session(5000, 5000)  # never more than the consumer lets wait
