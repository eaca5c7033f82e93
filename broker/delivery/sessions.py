"""Delivery sessions: one per connected room; pull its consumers, forward envelopes, record acknowledgements.

A session takes the agency's deliveries over from the previous session (see handoff): its own
two consumers (urgent and bulk lanes) start at the previous ones' ack floors, so the room gets
every delivery it has not acknowledged, in order within each lane, then live traffic; whatever
is waiting on the urgent lane goes out before the bulk lane's.
Every delivery, the first included, must carry the consumer sequence after the previous one's
(a new consumer starts at 0): a delivery that went elsewhere (a pull request lost with a NATS
connection, a consumer's leader that moved) ends the session instead of being acknowledged
along with the later ones.
The room sees sequences the session numbers itself (see numbering), never the stores': they
tell it nothing of other agencies' traffic; an ack of a sequence the agency was never sent ends
the session (ACK_NOT_SENT).
Deliveries leave in batches without being decoded. The room's acknowledgements are recorded
as receipts (one record for whatever arrived meanwhile) before the consumer is acknowledged up to the highest
sequence below which everything is acknowledged. At most `window` deliveries are unacknowledged
per lane at any time: that bounds the hub's memory per room.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from opsroom.hub.v1 import hub_pb2
from opsroom.store.v1 import store_pb2

from broker.delivery import handoff
from broker.delivery.numbering import Numbering, NumbersExhausted, Sent, Unmapped
from broker.delivery.window import LaneWindow
from broker.errors import OpsroomError, Reason, Refused, StoreUnavailable, Violation
from broker.lanes import LANES, Lane
from broker.ops.logging import debug_enabled, get_logger
from broker.ops.metrics import Metrics
from broker.publish.committer import Committer, GroupResult, Outcome
from broker.store import receipts
from broker.store.consumers import Puller
from broker.store.jetstream import JetStream
from broker.store.layout import SENDER_HEADER, Layout
from broker.store.model import ConsumerGone, DuplicateInBatch, OutMsg, Pulled, Wake
from broker.times import Clock, timestamp

log = get_logger(__name__)


def _trace(event: str, distribution_id: str, agency_id: str, lane: Lane, **more: int) -> None:
    """A per-delivery debug event, built only when debug events are written (one per delivery is hot)."""
    if debug_enabled():
        log.debug(event, distribution_id=distribution_id, agency=agency_id, lane=lane.value, **more)


DEFAULT_MAX_BATCH = 64
DEFAULT_WINDOW = 1024
MAX_BATCH = 1000
MAX_WINDOW = 10_000
# This hub replica, as session records name it.
REPLICA = f"{socket.gethostname()}:{os.getpid()}"


class _Superseded(Exception):
    """The session must end: a newer session of the same agency took over, or the hub is stopping."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.name)
        self.reason = reason


class _LaneState(LaneWindow):
    """One lane of a session: its puller and its acknowledgement window."""

    def __init__(self, puller: Puller) -> None:
        super().__init__(puller.lane)
        self.puller = puller


class DeliverySession:
    """One room's delivery session on this hub: two lanes, urgent served first."""

    def __init__(
        self,
        agency_id: str,
        js: JetStream,
        committer: Committer,
        metrics: Metrics,
        clock: Clock,
        *,
        heartbeat: float,
        presence_timeout: float = 60.0,
        max_batch: int = 0,
        window: int = 0,
        ack_interval: float = 0.02,
    ) -> None:
        """A session for agency_id; max_batch and window (per lane) of 0 take the defaults, larger ones their bounds.

        The values in effect (`self.max_batch`, `self.window`) are told to the room in SessionOpened.
        """
        self._ack_interval = ack_interval
        self.agency_id = agency_id
        self.session_id = uuid.uuid4().hex[:16]
        self._js = js
        self._committer = committer
        self._metrics = metrics
        self._clock = clock
        self._heartbeat = heartbeat
        self._presence_timeout = presence_timeout
        self._last_seen = self._clock.monotonic()
        self._last_refresh = self._clock.monotonic()
        self._record_seq = 0  # stream sequence of this session's last session record
        self._opened_at = clock.now()
        self.max_batch = min(max_batch or DEFAULT_MAX_BATCH, MAX_BATCH)
        self.window = min(window or DEFAULT_WINDOW, MAX_WINDOW, js.cfg.max_ack_pending)
        self._ready = asyncio.Event()
        self._lanes = [_LaneState(js.puller(agency_id, lane, self._ready, self.session_id)) for lane in LANES]
        self._numbering = Numbering(1)  # replaced by the agency's session number when the session opens
        self._to_record: list[int] = []  # stream sequences with the lane in the lowest bit (Layout.delivery_sequence)
        self._expired: list[tuple[int, Pulled]] = []  # dropped as expired, not yet recorded
        self._ack_event = asyncio.Event()

    async def open(self) -> int:
        """Take the agency's deliveries over from its previous session and start pulling; returns the backlog waiting.

        The new session's consumers start where the room acknowledged everything (see
        handoff): the room gets every delivery it has not acknowledged, in order within each
        lane. Its session record, stored on the way, tells a session of the same agency on
        another hub replica to end; the previous session's consumers are deleted.
        """
        self._opened_at = self._clock.now()
        record = receipts.session_message(self._js.layout, self.agency_id, self.session_id, REPLICA, self._opened_at)
        taken = await handoff.take_over(self._js, self.agency_id, self.session_id, record)
        self._record_seq = taken.record_seq
        self._numbering = Numbering(taken.epoch)
        for state in self._lanes:
            await state.puller.start()
        self._metrics.sessions.labels(self.agency_id).inc()
        self._metrics.online.labels(self.agency_id).set(1)
        self._metrics.backlog.labels(self.agency_id).set(taken.backlog)
        return taken.backlog

    def seen(self) -> None:
        """The room sent something (an acknowledgement or a keepalive): it is alive."""
        self._last_seen = self._clock.monotonic()

    async def _presence(self) -> None:
        """End the session if the room fell silent; otherwise refresh its presence record now and then."""
        now = self._clock.monotonic()
        if now - self._last_seen > self._presence_timeout:
            raise Refused(Reason.ROOM_SILENT, "the room sent nothing for the presence timeout; reconnect")
        if now - self._last_refresh >= self._presence_timeout / 3:
            self._last_refresh = now
            if not await self._write_record(closed=False):
                raise Refused(Reason.SESSION_SUPERSEDED, "a newer session of this agency replaced this one")

    async def _write_record(self, *, closed: bool) -> bool:
        """Write this session's record again if it is still the agency's last; False if another session wrote since."""
        silent_for = self._clock.monotonic() - self._last_seen
        record = receipts.session_message(
            self._js.layout,
            self.agency_id,
            self.session_id,
            REPLICA,
            self._opened_at,
            last_seen=self._clock.now() - timedelta(seconds=silent_for),
            closed=closed,
            epoch=self._numbering.epoch,
        )
        record.headers["Nats-Expected-Last-Subject-Sequence"] = str(self._record_seq)
        [result] = await self._js.publish_each([record])
        if isinstance(result, int):
            self._record_seq = result
            return True
        if isinstance(result, DuplicateInBatch):
            return False
        raise result

    def supersede(self, reason: Reason = Reason.SESSION_SUPERSEDED) -> None:
        """End this session: a newer one of the same agency started, or the hub is stopping."""
        self._lanes[0].puller.put(_Superseded(reason))

    async def close(self) -> None:
        """Record acknowledgements already received, mark the room offline (if still its session), stop pulling."""
        try:
            await asyncio.wait_for(self._record_acks(), timeout=5)
        except (TimeoutError, OpsroomError):
            log.warning("session_acks_unrecorded", agency=self.agency_id, count=len(self._to_record))
        try:
            await asyncio.wait_for(self._write_record(closed=True), timeout=5)
        except (TimeoutError, OpsroomError):
            log.warning("session_close_unrecorded", agency=self.agency_id)
        self._metrics.online.labels(self.agency_id).set(0)
        for state in self._lanes:
            await state.puller.stop()
            self._js.forget(state.puller)
        self._metrics.sessions.labels(self.agency_id).dec()

    # -- outbound ------------------------------------------------------------------------

    async def _top_up(self, state: _LaneState) -> None:
        puller = state.puller
        if puller.stalled():
            log.warning("pull_stalled", agency=self.agency_id, session_id=self.session_id, lane=state.lane.value)
            puller.forget_outstanding()
        room = state.room(self.window, puller.outstanding + puller.queue.qsize())
        threshold = max(1, min(self.max_batch, self.window // 4))
        if room >= threshold or (room > 0 and puller.outstanding == 0):
            await puller.request(room)

    async def next_frame(self) -> bytes:
        """The next ConnectResponse to send, serialized: a batch of deliveries (urgent first) or a heartbeat.

        When the session must end because its consumer went away or a delivery went missing, and
        another session of the agency (on any replica) has opened since, that is the cause: the
        newer session deleted this one's consumers. Then the room is told SESSION_SUPERSEDED (not to come
        back), not UNAVAILABLE (come back: it would take the agency back from the newer session).
        """
        try:
            return await self._next_frame()
        except StoreUnavailable:
            await self._check_current()
            raise

    async def _next_frame(self) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._heartbeat
        while True:
            await self._presence()
            for state in self._lanes:
                await self._top_up(state)
            self._ready.clear()
            items = self._take()
            frame = self._frame(items) if items else None
            if frame is not None:
                return frame
            remaining = deadline - loop.time()
            try:
                # Not asyncio.wait_for: in Python 3.11 it returns the result, swallowing the cancellation,
                # when a delivery arrives as the session is being ended (the room half-closed), and the
                # session then sent heartbeats to a room that had left, until the room cancelled.
                async with asyncio.timeout(max(0.0, remaining)):
                    await self._ready.wait()
            except TimeoutError:
                await self._check_current()
                beat = hub_pb2.ConnectResponse(heartbeat=hub_pb2.Heartbeat(sent_at=timestamp(self._clock.now())))
                return beat.SerializeToString()

    async def _check_current(self) -> None:
        """End this session if another one of the agency (on any replica) opened since."""
        current = await handoff.current_session(self._js, self.agency_id)
        if current is not None and current != self.session_id:
            raise Refused(Reason.SESSION_SUPERSEDED, "a newer session of this agency replaced this one")

    def _take(self) -> list[tuple[_LaneState, Pulled | BaseException]]:
        """Up to max_batch queued items, the urgent lane's first (reconnect wake-ups dropped)."""
        items: list[tuple[_LaneState, Pulled | BaseException]] = []
        for state in self._lanes:
            queue = state.puller.queue
            while len(items) < self.max_batch and not queue.empty():
                item = queue.get_nowait()
                if not isinstance(item, Wake):
                    items.append((state, item))
        return items

    def _frame(self, items: Iterable[tuple[_LaneState, Pulled | BaseException]]) -> bytes | None:
        """The frame of the items to send; None if every one had expired (those are dropped and recorded)."""
        frame = store_pb2.RawConnectResponse()
        batch = frame.deliveries
        now_ns = time.time_ns()  # real time, for the latency metric against nats-server's store time
        clock_ns = int(self._clock.now().timestamp() * 1e9)
        for state, item in items:
            if isinstance(item, _Superseded):
                if item.reason is Reason.SESSION_SUPERSEDED:
                    raise Refused(item.reason, "a newer session of this agency replaced this one")
                raise Refused(item.reason, "the hub is stopping; reconnect")
            if isinstance(item, ConsumerGone):
                raise StoreUnavailable(f"the delivery consumer went away ({item}); reconnect")
            if isinstance(item, BaseException):
                raise item
            lost = state.follow(item)
            if lost:
                # A delivery was lost between the store and this hub (its NATS connection dropped, or
                # the consumer's leader moved): acknowledging the later ones would acknowledge it
                # too. End the session: the next one starts again from the ack floor.
                self._metrics.session_gaps.labels(self.agency_id).inc()
                log.warning("delivery_gap", agency=self.agency_id, lane=state.lane.value, count=lost)
                raise StoreUnavailable("a delivery was lost on its way from the store; reconnect")
            state.sent(item)
            expires = receipts.expires_ns(item.headers)
            if 0 < expires < clock_ns:
                state.acknowledge(item.stream_seq)  # dropped: recorded like an acknowledgement
                self._expired.append((Layout.delivery_sequence(state.lane, item.stream_seq), item))
                self._ack_event.set()
                continue
            stored_at = Timestamp(seconds=item.time_ns // 1_000_000_000, nanos=item.time_ns % 1_000_000_000)
            try:
                sequence = self._numbering.number(state.lane, item.stream_seq)
            except NumbersExhausted as exc:  # after 4,294,967,295 deliveries: the next session numbers afresh
                raise StoreUnavailable(f"{exc}; reconnect") from None
            batch.deliveries.add(
                sequence=sequence,
                envelope=item.data,
                stored_at=stored_at,
                attempt=item.delivered,
                lane=state.lane.proto,
            )
            if item.delivered == 1:
                self._metrics.publish_to_delivery.observe(max(0.0, (now_ns - item.time_ns) / 1e9))
            # The distribution id is the correlation id: envelope_accepted, delivery_sent, delivery_acknowledged.
            _trace("delivery_sent", item.distribution_id, self.agency_id, state.lane, attempt=item.delivered)
        backlog = sum(state.pending for state in self._lanes)
        batch.backlog = backlog
        self._metrics.deliveries.labels(self.agency_id).inc(len(batch.deliveries))
        self._metrics.backlog.labels(self.agency_id).set(backlog)
        return frame.SerializeToString() if batch.deliveries else None

    # -- inbound -------------------------------------------------------------------------

    def on_ack(self, sequences: Iterable[int]) -> None:
        """The room's client acknowledged these sequences (as this session numbered them).

        A repeated one is ignored, and so is one of an earlier session of the agency (its
        delivery comes again on this session). One the agency was never sent raises
        ACK_NOT_SENT naming it, and nothing of the message is acknowledged.
        """
        sent: list[Sent] = []
        earlier = 0
        for index, sequence in enumerate(sequences):
            found = self._numbering.resolve(sequence)
            if found is Unmapped.NEVER_SENT:
                path = f"ack.sequences[{index}]"
                raise OpsroomError(
                    Reason.ACK_NOT_SENT,
                    f"{path}: not a sequence this session sent; acknowledge only the deliveries received on it",
                    violations=[Violation(path, "range", "a Delivery.sequence received on this session")],
                )
            if isinstance(found, Sent):
                sent.append(found)
            earlier += found is Unmapped.EARLIER_SESSION
        if earlier:
            log.debug("acks_of_earlier_session", agency=self.agency_id, count=earlier)
        for delivery in sent:
            state = self._lanes[LANES.index(delivery.lane)]
            if state.acknowledge(delivery.stream_seq):
                self._to_record.append(Layout.delivery_sequence(delivery.lane, delivery.stream_seq))
                distribution_id = state.unacked[delivery.stream_seq].distribution_id
                _trace("delivery_acknowledged", distribution_id, self.agency_id, delivery.lane)
        if self._to_record:
            self._ack_event.set()

    async def record_acks_forever(self) -> None:
        """Record acknowledgements in batches, at most one record per ack_interval; runs for the life of the session.

        Acknowledgements are technical bookkeeping: gathering them for a few milliseconds costs
        the room nothing (its window is far larger) and spares the disk an fsync per delivery,
        which the deliveries themselves need more.
        """
        while True:
            await self._ack_event.wait()
            self._ack_event.clear()
            started = asyncio.get_running_loop().time()
            try:
                await self._record_acks()
            except OpsroomError as exc:
                log.warning("ack_record_failed", agency=self.agency_id, reason=exc.reason.name)
                await asyncio.sleep(1)
                self._ack_event.set()
            rest = self._ack_interval - (asyncio.get_running_loop().time() - started)
            if rest > 0:
                await asyncio.sleep(rest)

    async def _record_acks(self) -> None:
        """Store what the room acknowledged and what the hub dropped as expired (with the senders' notices)."""
        if not self._to_record and not self._expired:
            return
        seqs, self._to_record = self._to_record, []
        expired, self._expired = self._expired, []
        now = self._clock.now()
        layout = self._js.layout
        record = receipts.ack_message(
            layout, self.agency_id, seqs, now, self.session_id, expired=[sequence for sequence, _ in expired]
        )
        notices = [
            receipts.expiry_notice(
                layout, item.headers.get(SENDER_HEADER, ""), item.distribution_id, self.agency_id, now
            )
            for _, item in expired
            if item.headers.get(SENDER_HEADER)
        ]
        try:
            noticed = await self._store(record, notices)
        except BaseException:
            self._to_record = seqs + self._to_record
            self._expired = expired + self._expired
            raise
        # Only now, with the receipts stored, do these count as acknowledged.
        self._metrics.acks.labels(self.agency_id).inc(len(seqs))
        if expired:
            self._metrics.expired.labels(self.agency_id).inc(noticed)
            log.info("deliveries_expired", agency=self.agency_id, count=len(expired))
        by_lane: dict[Lane, set[int]] = {}
        for sequence in [*seqs, *(s for s, _ in expired)]:
            lane, seq = Layout.parse_sequence(sequence)
            by_lane.setdefault(lane, set()).add(seq)
        for state in self._lanes:
            highest = state.recorded(by_lane.get(state.lane, ()))
            if highest is not None:
                self._numbering.settled(state.lane, highest.stream_seq)
                await self._js.ack(highest.reply)
                self._ready.set()  # the window has room again: pull more

    async def _store(self, record: OutMsg, notices: list[OutMsg]) -> int:
        """Store the notices and the ack record; returns how many notices were new, raises the first failure.

        Each notice goes on its own: the expiry worker may have stored it already, and then it
        is not counted again.
        """
        pending = [await self._committer.enqueue([notice]) for notice in notices]
        pending.append(await self._committer.enqueue([record]))
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(isinstance(r, GroupResult) and r.outcome is Outcome.STORED for r in results[:-1])
