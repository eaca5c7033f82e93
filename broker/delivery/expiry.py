"""The expiry worker: a delivery that expires while its room is away is reported to its sender at its time.

A room's session drops the expired deliveries it pulls (broker.delivery.sessions). This worker covers the
rooms without a session: every hub replica runs it, and every CHECK_INTERVAL it

1. lists the delivery consumers of both lanes (one request per lane) for the ack floor and the
   count of deliveries each still holds (and creates those of registered rooms that never
   connected, which have none yet: a consumer delivers everything stored for it, whenever made;
   and deletes consumers that earlier sessions left behind, see handoff);
2. reads the last session record of each room whose consumers hold deliveries (one batched
   read) and leaves out the rooms that are online (their session drops what expires, in stream
   order, as it reaches it);
3. for a room away, reads the deliveries above the ack floor it has not read yet (nothing when
   the consumer's count did not change) and keeps, in memory, the stream sequence and expiry
   of each (Backlog);
4. for each one whose expiry passed, writes the sender's DELIVERY_EXPIRED notice, unless it is
   stored already.

A pass does a bounded amount of work (SCAN_PER_PASS reads, NOTICES_PER_PASS notices); a larger
backlog is taken up over the following passes.

Nothing is added to the publish path: the expiry travels in the delivery's header already. The
notice is the same message a session writes when it drops the delivery (receipts.expiry_notice:
its subject is written once, ever), so replicas that run the same check, a restarted replica
that checks again, and the room's session when it comes back all store it once, and the
sender hears of it once. The worker never acknowledges anything on a consumer (ack policy
*all* would acknowledge the undelivered deliveries before it too): the expired delivery stays
with the consumer until the room's next session drops it and records the drop. Receipts say
EXPIRED from the expiry on, whether or not that happened yet.

After a restart the worker starts from the ack floors again: what it kept in memory is only a
cache of what is stored.

The same listing gives the rooms' gauges, online or not: opsroom_waiting, opsroom_redelivered and
opsroom_oldest_unacked_seconds, the age of the first delivery above each consumer's ack floor (read
again only when the floor moved, at most OLDEST_READS_PER_PASS a pass; OldestUnacked).
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterable
from datetime import datetime

from opsroom.store.v1 import store_pb2

from broker.delivery import handoff
from broker.errors import OpsroomError
from broker.lanes import LANES, Lane
from broker.ops.logging import get_logger
from broker.ops.metrics import Metrics
from broker.publish.committer import Committer, GroupResult, Outcome
from broker.store import receipts
from broker.store.jetstream import JetStream
from broker.store.layout import SENDER_HEADER
from broker.store.model import ConsumerState, OutMsg

log = get_logger(__name__)

CHECK_INTERVAL = 1.0  # seconds between passes: an expired delivery of a room away is noticed within about this
# A pass's work is bounded so that it never holds the hub's event loop for long: reading a
# delivery costs the hub about 0.2 ms of CPU (mostly nats-py parsing its headers), a notice
# about 0.5 ms (the delivery read back, the notice looked up, then written). See bench/expiry.py.
SCAN_PER_PASS = 500  # deliveries read per pass, over every room away
SCAN_PER_ROOM = 250  # deliveries of one room and lane read per pass
NOTICES_PER_PASS = 250  # expired deliveries dealt with per pass; the others wait for the next
MAX_TRACKED = 100_000  # deliveries whose expiry a replica keeps in memory, over every room away (about 14 MB)
SESSIONS_PER_READ = 1000  # session records read at once (nats-server answers at most 1,024)
READS_IN_FLIGHT = 64  # expired deliveries read back at once (for their sender and id)
OLDEST_READS_PER_PASS = 200  # oldest unacknowledged deliveries read per pass (a floor that moved); the others next pass

Key = tuple[str, Lane]  # (agency, lane)


class OldestUnacked:
    """When each room's oldest unacknowledged delivery was stored, known per ack floor (pure).

    The oldest delivery a consumer still holds is the first one above its ack floor (ack policy
    all: everything at or below the floor is acknowledged). Its time is read once per floor.
    """

    def __init__(self) -> None:
        """Nothing known yet."""
        self._known: dict[Key, tuple[int, int]] = {}  # (ack floor, stored at, ns) of the first delivery above it

    def to_read(self, holding: Iterable[tuple[Key, int]], limit: int) -> list[tuple[Key, int]]:
        """Up to limit (key, ack floor) whose first delivery is not known at that floor, never read ones first."""
        stale = [(key, floor) for key, floor in holding if self._known.get(key, (-1, 0))[0] != floor]
        stale.sort(key=lambda item: item[0] in self._known)
        return stale[:limit]

    def learn(self, key: Key, floor: int, stored_ns: int | None) -> None:
        """The first delivery above floor was stored at stored_ns (None: none is stored, e.g. gone by max_age)."""
        if stored_ns is None:
            self._known.pop(key, None)
        else:
            self._known[key] = (floor, stored_ns)

    def age(self, key: Key, waiting: int, now_ns: int) -> float | None:
        """Seconds since the oldest delivery still held was stored: 0 when none is held, None when not known."""
        if waiting == 0:
            self._known.pop(key, None)
            return 0.0
        known = self._known.get(key)
        return None if known is None else max(0.0, (now_ns - known[1]) / 1e9)

    def keep_only(self, keys: set[Key]) -> None:
        """Forget the consumers not listed any more."""
        for key in set(self._known) - keys:
            del self._known[key]


class Backlog:
    """What the worker knows of one room's consumer on one lane: how far it read, and the expiries not yet due (pure).

    Stream sequences above the ack floor only; entries at or below a new floor are forgotten.
    """

    def __init__(self) -> None:
        """Nothing read yet."""
        self.cursor = 0  # the last stream sequence read (or the ack floor, if higher)
        self.ack_floor = 0
        self.waiting = -1  # the consumer's count when reading last reached the end; -1: read again
        self._due: list[tuple[int, int]] = []  # heap of (expires ns, stream sequence)

    def __len__(self) -> int:
        """Deliveries whose expiry is kept."""
        return len(self._due)

    def floor(self, ack_floor: int) -> None:
        """The consumer's ack floor now: nothing at or below it is waiting any more."""
        if ack_floor > self.ack_floor:
            self.ack_floor = ack_floor
            self.waiting = -1
            if self._due and self._due[0][1] <= ack_floor:
                self._due = [entry for entry in self._due if entry[1] > ack_floor]
                heapq.heapify(self._due)
        self.cursor = max(self.cursor, ack_floor)

    def needs_reading(self, waiting: int) -> bool:
        """Whether there may be deliveries not read yet, the consumer now holding waiting of them."""
        return waiting != self.waiting

    def read(self, seq: int, expires_ns: int) -> None:
        """A delivery read at seq, expiring at expires_ns (0: never); one at or before the cursor was read already."""
        if seq <= self.cursor:
            return
        self.cursor = seq
        if expires_ns > 0:
            heapq.heappush(self._due, (expires_ns, seq))

    def read_to_end(self, waiting: int) -> None:
        """Reading reached the last delivery stored while the consumer held waiting."""
        self.waiting = waiting

    def due(self, now_ns: int, limit: int) -> list[int]:
        """Up to limit stream sequences, in order of expiry, of deliveries expired at now_ns; forgotten from here on."""
        out: list[int] = []
        while self._due and self._due[0][0] < now_ns and len(out) < limit:
            _expires, seq = heapq.heappop(self._due)
            if seq > self.ack_floor:
                out.append(seq)
        return out


class Expirer:
    """The expiry worker of one hub replica (run() under the hub's supervisor)."""

    def __init__(
        self,
        js: JetStream,
        committer: Committer,
        metrics: Metrics,
        clock: Callable[[], datetime],
        *,
        agencies: Callable[[], Iterable[str]],
        presence_timeout: float,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        """A worker writing notices through committer, for the rooms agencies() names (those registered now).

        A room silent for presence_timeout seconds is away.
        """
        self._agencies = agencies
        self._js = js
        self._committer = committer
        self._metrics = metrics
        self._clock = clock
        self._presence_timeout = presence_timeout
        self._interval = interval
        self._rooms: dict[tuple[str, Lane], Backlog] = {}
        self._oldest = OldestUnacked()
        self._turn = 0  # where the rooms' turns start this pass
        self._full_logged = False

    async def run(self) -> None:
        """A pass every interval, until cancelled; store errors are logged and the next pass tries again."""
        while True:
            try:
                await self.check()
            except OpsroomError as exc:
                log.warning("expiry_check_failed", reason=exc.reason.name)
            await asyncio.sleep(self._interval)

    def tracked(self) -> int:
        """Deliveries whose expiry this worker keeps in memory."""
        return sum(len(backlog) for backlog in self._rooms.values())

    async def check(self) -> int:
        """One pass over the rooms away; returns how many notices it stored (not counting those stored before).

        A pass reads at most SCAN_PER_PASS deliveries (SCAN_PER_ROOM of one room and lane; the rooms
        take turns) and deals with at most NOTICES_PER_PASS expired ones: the rest wait for the next
        pass, so that a large backlog never holds the hub's event loop for long.
        """
        now = self._clock()
        now_ns = int(now.timestamp() * 1e9)
        away = await self._away(now)
        self._turn = (self._turn + 1) % max(1, len(away))
        reads = SCAN_PER_PASS
        expired: list[tuple[str, Lane, int]] = []
        for key, ack_floor, waiting in away[self._turn :] + away[: self._turn]:
            backlog = self._rooms.setdefault(key, Backlog())
            backlog.floor(ack_floor)
            if reads > 0 and backlog.needs_reading(waiting):
                reads -= await self._read(key, backlog, waiting, min(reads, SCAN_PER_ROOM))
            expired.extend((*key, seq) for seq in backlog.due(now_ns, NOTICES_PER_PASS - len(expired)))
        for key in set(self._rooms) - {key for key, _, _ in away}:  # online again, or nothing waiting
            del self._rooms[key]
        return await self._notify(expired, now) if expired else 0

    async def _away(self, now: datetime) -> list[tuple[tuple[str, Lane], int, int]]:
        """((agency, lane), ack floor, deliveries waiting) of each consumer of a room away that holds any.

        Registered rooms without a consumer (they never connected) get one, looked at from the next
        pass on. An agency with more than one consumer on a lane (a hand-over between sessions in
        progress, or one cut short) counts by the one holding its floor; the others, once old
        enough, are deleted (handoff.sweepable).
        """
        layout = self._js.layout
        holding: list[tuple[tuple[str, Lane], int, int]] = []
        listed: dict[Key, ConsumerState] = {}
        for lane in LANES:
            groups: dict[str, list[ConsumerState]] = {}
            for consumer in await self._js.consumers(self._js.stream_of(lane)):
                try:
                    agency, consumer_lane, _ = layout.parse_delivery(consumer.filter_subject)
                except ValueError:
                    continue  # not a room's delivery consumer (the escalation worker's, say)
                if consumer_lane is lane:
                    groups.setdefault(agency, []).append(consumer)
            for agency, consumer in (await self._kept(groups, lane, now)).items():
                listed[agency, lane] = consumer
                self._metrics.waiting.labels(agency, lane.value).set(consumer.waiting)
                self._metrics.redelivered.labels(agency, lane.value).set(consumer.redelivered)
                if consumer.waiting > 0:
                    holding.append(((agency, lane), consumer.ack_floor, consumer.waiting))
            await self._first_consumers(sorted(set(self._agencies()) - set(groups)), lane)
        await self._measure_oldest(listed, now)
        online = await self._online(sorted({agency for (agency, _), _, _ in holding}), now)
        return [entry for entry in holding if entry[0][0] not in online]

    async def _measure_oldest(self, listed: dict[Key, ConsumerState], now: datetime) -> None:
        """Set opsroom_oldest_unacked_seconds of each listed consumer, reading first deliveries whose floor moved."""
        oldest = self._oldest
        oldest.keep_only(set(listed))
        holding = [(key, c.ack_floor) for key, c in listed.items() if c.waiting > 0]
        wanted = oldest.to_read(holding, OLDEST_READS_PER_PASS)
        layout = self._js.layout
        for start in range(0, len(wanted), READS_IN_FLIGHT):
            chunk = wanted[start : start + READS_IN_FLIGHT]
            found = await asyncio.gather(
                *(
                    self._js.next_by_subject(
                        layout.deliveries_of_agency(agency, lane), floor + 1, stream=self._js.stream_of(lane)
                    )
                    for (agency, lane), floor in chunk
                )
            )
            for (key, floor), stored in zip(chunk, found, strict=True):
                oldest.learn(key, floor, stored.time_ns if stored is not None else None)
        now_ns = int(now.timestamp() * 1e9)
        for (agency, lane), consumer in listed.items():
            age = oldest.age((agency, lane), consumer.waiting, now_ns)
            if age is not None:
                self._metrics.oldest_unacked.labels(agency, lane.value).set(age)

    async def _first_consumers(self, agencies: list[str], lane: Lane) -> None:
        """Give a consumer to those of the agencies that never had a session (they had none to take over).

        An agency with a session record has consumers of its session: a listing that misses them
        (taken while a cluster node is away) must not make the worker create a first consumer,
        which would hold every delivery of the agency as waiting until it is swept.
        """
        if not agencies:
            return
        sessions = await self._current_sessions(agencies)
        for agency in agencies:
            if agency not in sessions:
                await self._js.ensure_consumer(agency, lane)

    async def _kept(
        self, groups: dict[str, list[ConsumerState]], lane: Lane, now: datetime
    ) -> dict[str, ConsumerState]:
        """Per agency, the consumer holding its floor on lane; the stale others of an agency are swept."""
        kept = {agency: consumers[0] for agency, consumers in groups.items() if len(consumers) == 1}
        several = sorted(agency for agency, consumers in groups.items() if len(consumers) > 1)
        current = await self._current_sessions(several)
        for agency in several:
            names = handoff.names_of(self._js.layout, agency, lane, current.get(agency))
            consumer = handoff.kept(groups[agency], names)
            if consumer is not None:
                kept[agency] = consumer
            for name in handoff.sweepable(groups[agency], names, now):
                log.info("session_consumer_swept", agency=agency, lane=lane.value)
                await self._js.delete_consumer(name, lane)
        return kept

    async def _current_sessions(self, agencies: list[str]) -> dict[str, str]:
        """The current session id of each of the agencies that has one (a read per 1,000 agencies)."""
        layout = self._js.layout
        current: dict[str, str] = {}
        for start in range(0, len(agencies), SESSIONS_PER_READ):
            chunk = agencies[start : start + SESSIONS_PER_READ]
            for stored in await self._js.last_of_each([layout.session_subject(a) for a in chunk]):
                record = store_pb2.SessionRecord.FromString(stored.data)
                current[layout.parse_session(stored.subject)] = record.session_id
        return current

    async def _online(self, agencies: list[str], now: datetime) -> set[str]:
        """Those of the agencies whose last session record says they are online (a read per 1,000 agencies)."""
        layout = self._js.layout
        online: set[str] = set()
        for start in range(0, len(agencies), SESSIONS_PER_READ):
            chunk = agencies[start : start + SESSIONS_PER_READ]
            for stored in await self._js.last_of_each([layout.session_subject(a) for a in chunk]):
                record = store_pb2.SessionRecord.FromString(stored.data)
                if receipts.presence(record, now, self._presence_timeout)[0]:
                    online.add(layout.parse_session(stored.subject))
        return online

    async def _read(self, key: tuple[str, Lane], backlog: Backlog, waiting: int, limit: int) -> int:
        """Read up to limit of the room's deliveries after the cursor (within the memory bound); returns how many."""
        limit = min(limit, MAX_TRACKED - self.tracked())
        if limit <= 0:
            if not self._full_logged:
                log.warning("expiry_tracking_full", count=MAX_TRACKED)
                self._full_logged = True
            return 0
        self._full_logged = False
        agency, lane = key
        stream = self._js.stream_of(lane)
        batch = await self._js.read_matching(
            stream, self._js.layout.deliveries_of_agency(agency, lane), backlog.cursor + 1, limit
        )
        for stored in batch:
            backlog.read(stored.seq, receipts.expires_ns(stored.headers))
        if len(batch) < limit:
            backlog.read_to_end(waiting)
        return len(batch)

    async def _notify(self, expired: list[tuple[str, Lane, int]], now: datetime) -> int:
        """Write the notices of these expired deliveries not stored yet; returns how many were new.

        Each delivery is read back (for its sender and id) and its notice looked up first: after
        a restart, or on a second replica, most were stored already, and a read costs nats-server
        no fsync where a refused write would (and a batch holding one would be written again
        message by message).
        """
        layout = self._js.layout
        notices: list[tuple[str, Lane, str, OutMsg]] = []
        for start in range(0, len(expired), READS_IN_FLIGHT):
            chunk = expired[start : start + READS_IN_FLIGHT]
            found = await asyncio.gather(
                *(
                    self._js.next_by_subject(layout.deliveries_of_agency(a, lane), seq, stream=self._js.stream_of(lane))
                    for a, lane, seq in chunk
                )
            )
            candidates = []
            for (agency, lane, seq), stored in zip(chunk, found, strict=True):
                sender = stored.headers.get(SENDER_HEADER, "") if stored is not None else ""
                if stored is None or stored.seq != seq or not sender:
                    continue  # gone meanwhile (the stream's max_age), or not a room's delivery
                dist = layout.parse_delivery(stored.subject)[2]
                candidates.append((agency, lane, dist, receipts.expiry_notice(layout, sender, dist, agency, now)))
            there = await asyncio.gather(*(self._js.last_by_subject(notice.subject) for *_, notice in candidates))
            notices.extend(c for c, stored in zip(candidates, there, strict=True) if stored is None)
        pending = [await self._committer.enqueue([notice]) for *_, notice in notices]
        results: list[GroupResult | BaseException] = await asyncio.gather(*pending, return_exceptions=True)
        new = 0
        for (agency, lane, dist, _), result in zip(notices, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, OpsroomError):
                    raise result
                log.warning("expiry_notice_failed", agency=agency, reason=result.reason.name)
                self._rooms.pop((agency, lane), None)  # read again from the ack floor next pass
            elif result.outcome is Outcome.STORED:
                new += 1
                self._metrics.expired.labels(agency).inc()
                log.info("delivery_expired", agency=agency, distribution_id=dist, lane=lane.value)
        return new
