"""Owns the hand-over of an agency's deliveries from one delivery session to the next.

Each session pulls from consumers of its own (one per lane, named after it), never from one
shared with an earlier session: a pull request of an earlier session still waiting at
nats-server, or an acknowledgement of it still on its way, reaches only the earlier session's
consumer. (With one consumer reset for each new session, such a request took deliveries meant
for the new session, and such an acknowledgement, counted in the numbering from before the
reset, left the new session's acknowledgements ignored: the room stalled until the deliveries'
ack wait ran out.)

A session takes over in this order:
1. read the agency's last session record: it names the previous session, whose consumers hold
   the ack floor (where the room acknowledged everything before);
2. create the new session's consumers starting right after those floors;
3. store the new session record, expecting the last one read (a session that opened meanwhile
   makes this fail: start again), with the session number (epoch) one more than that one's;
4. delete the previous session's consumers: its pull requests end ("consumer deleted"), its late
   acknowledgements reach nothing, and it ends.
An acknowledgement the previous session had not yet made when its floor was read costs a
delivery handed again (at least once), never one skipped.
Consumers left by a session that stopped between steps 2 and 4 are deleted by `sweep` once
they are old enough never to be part of a hand-over in progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from opsroom.store.v1 import store_pb2

from broker.errors import StoreUnavailable
from broker.lanes import LANES, Lane
from broker.ops.logging import get_logger
from broker.store.jetstream import JetStream
from broker.store.layout import Layout
from broker.store.model import ConsumerState, DuplicateInBatch, OutMsg, StoredMsg

log = get_logger(__name__)

ATTEMPTS = 8  # of a take-over that other sessions opening at the same moment keep beating
RETRY_PAUSE = 0.05  # seconds, times the attempt
# A consumer that is not the current session's is deleted once it is this old: a hand-over
# takes seconds, so none in progress still needs it.
SWEEP_AFTER = timedelta(minutes=10)
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"


@dataclass(frozen=True, slots=True)
class TakeOver:
    """A session's take-over: its record's stream sequence, the deliveries waiting, its session number (epoch)."""

    record_seq: int
    backlog: int
    epoch: int


async def _last_record(js: JetStream, agency_id: str) -> tuple[StoredMsg | None, str | None]:
    """The agency's last session record as stored, and the session it names (None, None if there is none)."""
    stored = await js.last_by_subject(js.layout.session_subject(agency_id))
    return stored, store_pb2.SessionRecord.FromString(stored.data).session_id if stored is not None else None


def next_epoch(last: StoredMsg | None) -> int:
    """The session number after the one of the agency's last session record (1 if none, or one from before epochs)."""
    return (store_pb2.SessionRecord.FromString(last.data).epoch if last is not None else 0) + 1


def with_epoch(record: OutMsg, epoch: int) -> OutMsg:
    """The session record with its session number set."""
    message = store_pb2.SessionRecord.FromString(record.payload)
    message.epoch = epoch
    return OutMsg(record.subject, message.SerializeToString(), record.headers)


async def current_session(js: JetStream, agency_id: str) -> str | None:
    """The id of the agency's current delivery session on any replica (the last session record), if any."""
    return (await _last_record(js, agency_id))[1]


async def floor_of(js: JetStream, agency_id: str, lane: Lane, session_id: str | None) -> int:
    """Where the agency's room acknowledged everything on lane, as the consumer of session_id holds it.

    A session record from before sessions had consumers of their own names none: then the
    agency's first consumer holds it. No consumer at all: 0 (everything is handed again).
    """
    for name in names_of(js.layout, agency_id, lane, session_id):
        floor = await js.consumer_floor(name, lane)
        if floor is not None:
            return floor
    if session_id:
        log.warning("session_consumer_missing", agency=agency_id, lane=lane.value)
    return 0


async def agency_floor(js: JetStream, agency_id: str, lane: Lane) -> int:
    """Where the agency's room acknowledged everything on lane (its current session's consumer)."""
    return await floor_of(js, agency_id, lane, await current_session(js, agency_id))


async def take_over(js: JetStream, agency_id: str, session_id: str, record: OutMsg) -> TakeOver:
    """Make session_id the agency's delivery session: consumers from the previous one's floors, its record stored.

    Raises StoreUnavailable when other sessions of the agency kept opening at the same moment
    (the room is told to come back).
    """
    layout = js.layout
    for attempt in range(ATTEMPTS):
        if attempt:
            await asyncio.sleep(RETRY_PAUSE * attempt)
        last, previous = await _last_record(js, agency_id)
        backlog = 0
        for lane in LANES:
            floor = await floor_of(js, agency_id, lane, previous)
            if attempt:  # created by the attempt before, maybe from another floor
                await js.delete_consumer(layout.consumer_name(agency_id, lane, session_id), lane)
            backlog += await js.create_session_consumer(agency_id, lane, session_id, floor + 1)
        headers = {**record.headers, EXPECTED_LAST_SUBJECT_SEQUENCE: str(last.seq if last is not None else 0)}
        epoch = next_epoch(last)
        mine = with_epoch(record, epoch)
        [result] = await js.publish_each([OutMsg(mine.subject, mine.payload, headers)])
        if isinstance(result, DuplicateInBatch):
            continue  # another session's record came in between: read again
        if isinstance(result, BaseException):
            await _delete_quietly(js, agency_id, session_id)
            raise result
        # The previous session's consumers; or, for the agency's first session, its first consumer
        # (any first consumer left beside a session's is swept by the expiry worker: see sweepable).
        await _delete_quietly(js, agency_id, previous if previous is not None else "")
        return TakeOver(result, backlog, epoch)
    await _delete_quietly(js, agency_id, session_id)
    raise StoreUnavailable("other sessions of this agency kept opening at the same moment; reconnect")


async def _delete_quietly(js: JetStream, agency_id: str, session_id: str | None) -> None:
    """Delete a session's consumers (the agency's first ones for ""); a failure is logged, the sweep retries."""
    if session_id is None:
        return
    for lane in LANES:
        try:
            await js.delete_consumer(js.layout.consumer_name(agency_id, lane, session_id), lane)
        except StoreUnavailable:
            log.warning("session_consumer_not_deleted", agency=agency_id, lane=lane.value)


def kept(consumers: Sequence[ConsumerState], names: Sequence[str]) -> ConsumerState | None:
    """Of one agency's consumers on one lane, the one holding its floor: the first found of names (see `names_of`)."""
    by_name = {consumer.name: consumer for consumer in consumers}
    return next((by_name[name] for name in names if name in by_name), None)


def names_of(layout: Layout, agency_id: str, lane: Lane, session_id: str | None) -> tuple[str, ...]:
    """The consumers that may hold the agency's floor on lane, in the order `floor_of` looks (session's, first)."""
    first = layout.consumer_name(agency_id, lane)
    return (layout.consumer_name(agency_id, lane, session_id), first) if session_id else (first,)


def sweepable(consumers: Sequence[ConsumerState], names: Sequence[str], now: datetime) -> list[str]:
    """Of one agency's consumers on one lane, those to delete (names: see `names_of`, the agency's first one last).

    Once the agency's floor is held by a session's consumer, its first consumer is never read
    again: it goes at once (the expiry worker may have made it while the first session took
    over). Any other consumer but the one kept goes once it is SWEEP_AFTER old.
    """
    keep = kept(consumers, names)
    first = names[-1]
    by_session = keep is not None and keep.name != first
    return [
        consumer.name
        for consumer in consumers
        if consumer is not keep
        and (
            (by_session and consumer.name == first)
            or (consumer.created is not None and now - consumer.created >= SWEEP_AFTER)
        )
    ]
