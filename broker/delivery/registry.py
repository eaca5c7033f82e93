"""Owns the registry of this hub's delivery sessions: one per agency, across every replica.

A new session of an agency, on this replica or another, supersedes the old one: each replica
follows the session records in the store, and a local session that is no longer the agency's
last ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from opsroom.store.v1 import store_pb2

from broker.delivery.handoff import current_session
from broker.delivery.sessions import DeliverySession
from broker.errors import OpsroomError, Reason
from broker.ops.logging import get_logger
from broker.store.jetstream import JetStream

log = get_logger(__name__)

# Reads of the store, while it still names the local session, after a record of another one arrived.
_RECHECKS = 6
_RECHECK_PAUSE = 0.05  # seconds, times the attempt: at most about one second in all


class SessionRegistry:
    """The open sessions of this hub, one per agency: a new session, on this replica or another, supersedes the old."""

    def __init__(self) -> None:
        """No sessions."""
        self._by_agency: dict[str, DeliverySession] = {}
        self._unfollow: Callable[[], Awaitable[None]] | None = None
        self._checks: set[asyncio.Task[None]] = set()

    async def watch(self, js: JetStream) -> None:
        """Follow the session records of every replica: a local session that is no longer current ends.

        A record only says "look": the last stored record decides, so that records of two
        replicas arriving out of order never end the newer session.
        """

        async def on_record(subject: str, data: bytes) -> None:
            try:
                agency_id = js.layout.parse_session(subject)
            except ValueError:
                return
            local = self._by_agency.get(agency_id)
            if local is None or store_pb2.SessionRecord.FromString(data).session_id == local.session_id:
                return
            task = asyncio.get_running_loop().create_task(self._check(js, local))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

        self._unfollow = await js.follow(js.layout.sessions_filter, on_record)

    async def _check(self, js: JetStream, local: DeliverySession) -> None:
        """End local if the agency's last stored session record is another session's.

        The record that woke this check arrives on the subscription as the server takes it, which
        may be before it is stored and readable: while the store still says local is current, it
        is read again a few times, a little later each (bounded; an older record arriving late
        leaves local as it is, and the session's heartbeat check is the last resort).
        """
        for attempt in range(_RECHECKS):
            try:
                current = await current_session(js, local.agency_id)
            except OpsroomError:
                return  # the heartbeat's check will tell
            if current is not None and current != local.session_id:
                break
            await asyncio.sleep(_RECHECK_PAUSE * (attempt + 1))
        else:
            return
        if self._by_agency.get(local.agency_id) is local:
            log.info("session_superseded_elsewhere", agency=local.agency_id, session_id=local.session_id)
            local.supersede()

    async def unwatch(self) -> None:
        """Stop following session records."""
        if self._unfollow is not None:
            await self._unfollow()
            self._unfollow = None
        for task in list(self._checks):
            task.cancel()

    def register(self, session: DeliverySession) -> None:
        """Make session the agency's current one, ending the previous."""
        old = self._by_agency.get(session.agency_id)
        if old is not None:
            log.info("session_superseded", agency=session.agency_id, session_id=old.session_id)
            old.supersede()
        self._by_agency[session.agency_id] = session

    def unregister(self, session: DeliverySession) -> None:
        """Forget session if it is still the agency's current one."""
        if self._by_agency.get(session.agency_id) is session:
            del self._by_agency[session.agency_id]

    def connected(self) -> frozenset[str]:
        """Agencies with an open session."""
        return frozenset(self._by_agency)

    def end_all(self) -> None:
        """End every session because the hub is stopping."""
        for session in self._by_agency.values():
            session.supersede(Reason.SHUTTING_DOWN)
