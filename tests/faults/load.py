"""Sustained load for fault tests and its bookkeeping: what senders published and what the hub accepted, for whom.

Each sender agency reports several incidents (tests/faults/agreement.py says which rooms each
reaches); each event carries its incident id and a per-incident counter (Incident.id and
Incident.local_reference), and the personal data the rooms' views differ on. The events of one
incident are published one after the other (the next once the previous is acknowledged: the
order the hub promises to keep even across retries), the incidents of all senders concurrently,
paced to a total rate. Three ways to publish (Mode): unary Publish calls; one PublishStream per
sender in small batches (below the hub's atomic threshold: pipelined single writes); and one
PublishStream per sender in large batches (many incidents publishing at once: atomic batches).

The ledger keeps, for every publish answered OK, the recipients its acceptance names: that is
what each room is owed, whatever the test expected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, HubError, RetryPolicy, StreamPublisher, new_envelope

from broker.ids import agency_token
from tests import factories
from tests.faults.agreement import PLATE_ROOMS, PLATE_SENDERS, case_of

Publish = Callable[[envelope_pb2.Envelope], Awaitable[hub_pb2.Acceptance]]

# Long enough to ride out a restart of the hub or of nats-server on a busy machine: a minute and more of retries.
RIDE_OUT = RetryPolicy(attempts=80, first_delay=0.1, max_delay=1.0, timeout=10.0)
# Liveness: a wait fails after this long without any progress. Not a speed target: the
# machine may be loaded (the soak burns every core), so it is generous.
STALL = 60.0
# Every wait ends by this, progress or not.
WAIT_CAP = 1800.0


class Stalled(AssertionError):
    """A liveness wait saw no progress for its stall time; the message says what it waited for and how far it got."""


async def until(
    what: str,
    done: Callable[[], bool],
    progress: Callable[[], object],
    *,
    stall: float = STALL,
    poll: float = 0.25,
) -> None:
    """Wait until done(); raise Stalled naming what and the last progress if progress() stays the same for stall seconds."""
    start = last_change = time.monotonic()
    seen = progress()
    while not done():
        now = time.monotonic()
        current = progress()
        if current != seen:
            seen, last_change = current, now
        elif now - last_change > stall:
            raise Stalled(f"waited for {what}; no progress for {stall:.0f} s (at: {current})")
        if now - start > WAIT_CAP:
            raise Stalled(f"waited for {what} for {WAIT_CAP:.0f} s (at: {current})")
        await asyncio.sleep(poll)


@dataclass(frozen=True)
class Mode:
    """How the senders publish: unary calls, or one PublishStream each with batches of at most max_batch.

    incidents per sender publish concurrently; with burst, every incident's next event is
    published at the same moment (a sender's stream then carries them in one request).
    """

    name: str
    stream: bool
    max_batch: int = 100
    incidents: int = 4
    burst: bool = False

    def __str__(self) -> str:
        """The mode as a test id: its name without spaces."""
        return self.name.replace(" ", "-")


PUBLISH = Mode("Publish", stream=False)
# Four envelopes of two or three deliveries: below the atomic threshold (64 messages), single writes.
STREAM_SMALL = Mode("PublishStream small", stream=True, max_batch=4)
# Thirty incidents per sender published at once: requests of ~30 envelopes, ~75 messages per sender.
STREAM_LARGE = Mode("PublishStream large", stream=True, max_batch=100, incidents=30, burst=True)
MODES = (PUBLISH, STREAM_SMALL, STREAM_LARGE)


def incident_id(sender: str, number: int, tag: str = "f") -> str:
    """The id of a sender's number-th incident."""
    return f"urn:emergency:uid:incidentid:{tag}-{agency_token(sender)}-{number}:fault.test"


def event(sender: str, number: int, incident: str, seq: int) -> envelope_pb2.Envelope:
    """The seq-th event (1, 2, ...) of the sender's number-th incident: a report first, then updates.

    It names the recipients its case names and carries every category of (synthetic) personal
    data, so that each room's copy differs by its role's view.
    """
    case = case_of(sender, number)
    body = factories.incident(incident)
    body.local_reference = str(seq)
    body.type.eido_code = case.eido_code
    body.type.ClearField("emsi_category")
    body.locations[0].comune_istat = case.comune
    body.locations[0].ClearField("point")  # the comune says where
    body.notes[0].text = f"evento {seq}"
    env = new_envelope(
        sender,
        kind=common_pb2.KIND_REPORT if seq == 1 else common_pb2.KIND_UPDATE,
        recipients=case.named,
        operator_id="OP-FAULT-1",
        incident_ids=[incident],
        incident=body,
    )
    env.sender.workstation_id = "PDL-FAULT"
    return env


def plates_id(sender: str, tag: str = "f") -> str:
    """The id of a sender's chain of plate reads (the rooms check their order as an incident's)."""
    return f"urn:opsroom:fault:plates:{tag}-{agency_token(sender)}"


def plate_read(sender: str, chain: str, seq: int) -> envelope_pb2.Envelope:
    """The seq-th plate read of a sender (bulk lane), naming the Questura and the Carabinieri; chain and seq as CAP parameters."""
    body = factories.plate_read()
    body.infos[0].parameters.extend(
        [alert_pb2.NamedValue(name="fault-chain", value=chain), alert_pb2.NamedValue(name="fault-seq", value=str(seq))]
    )
    return new_envelope(
        sender, kind=common_pb2.KIND_REPORT, recipients=PLATE_ROOMS, operator_id="OP-FAULT-1", alert=body
    )


@dataclass(frozen=True)
class Sent:
    """One published event, and the rooms the agreement should route it to."""

    sender: str
    incident: str  # or chain of plate reads
    seq: int
    rooms: frozenset[str]
    bulk: bool = False  # a plate read, on the bulk lane


@dataclass
class Ledger:
    """Every event submitted; for those the hub accepted, the recipients its acceptance named; the refused ones."""

    events: dict[str, Sent] = field(default_factory=dict)
    acked: dict[str, tuple[str, ...]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def next_seq(self, incident: str) -> int:
        """The next counter of an incident (continues across loads)."""
        self.counters[incident] = self.counters.get(incident, 0) + 1
        return self.counters[incident]

    def acked_to(self, room: str) -> set[str]:
        """Distribution ids acknowledged to their senders whose acceptance names room."""
        return {d for d, recipients in self.acked.items() if room in recipients}

    def misrouted(self) -> dict[str, tuple[str, ...]]:
        """Accepted events whose acceptance names other rooms than the agreement routes them to."""
        return {d: r for d, r in self.acked.items() if frozenset(r) != self.events[d].rooms}


class Load:
    """Senders publishing the events of their incidents at a total rate, for a bounded count.

    A fault test holds the load while it hurts the system (hold), so that the fault always
    lands in the middle of it, and releases it after (release): each incident then goes on for
    a tail of events more, so that publishing is seen to work again after the fault.
    """

    def __init__(
        self,
        ledger: Ledger,
        senders: Mapping[str, HubClient],
        mode: Mode = PUBLISH,
        *,
        events: int = 1200,
        rate: float = 300.0,
        tag: str = "f",
    ) -> None:
        """At least about events in all (a whole number per incident), rate in events per second over all senders."""
        self.ledger = ledger
        self.senders = dict(senders)
        self.mode = mode
        self.incidents = mode.incidents
        chains = len(self.senders) * self.incidents
        self.events = max(1, events // chains)  # per incident, at least
        self.plate_senders = [s for s in PLATE_SENDERS if s in self.senders]
        # Plate reads (bulk lane): a tenth as many as incident events, over the same time.
        self.plate_events = max(self.events, chains * self.events // 10 // max(1, len(self.plate_senders)))
        self.rate = rate
        self.tag = tag
        self.planned = chains * self.events + len(self.plate_senders) * self.plate_events
        self.published = 0
        self.acked = 0
        self.failed = 0
        self.finished = False
        self.longest_wait = 0.0  # longest time without any acknowledgement while this load ran
        self._last_ack = 0.0
        self._holding = False
        self._done: dict[str, int] = {}  # events each incident published so far
        self._tail_until: dict[str, int] = {}

    @property
    def answered(self) -> int:
        """Publishes answered so far, OK or not."""
        return self.acked + self.failed

    def hold(self) -> None:
        """Keep publishing (past the planned count if need be) until release()."""
        self._holding = True

    def release(self, tail: int = 0) -> None:
        """Stop holding; each incident publishes at least tail more events (default a tenth of its planned count)."""
        self._holding = False
        tail = tail or max(2, self.events // 10)
        self._tail_until = {incident: done + tail for incident, done in self._done.items()}

    async def run(self) -> None:
        """Publish everything; returns when every event is acknowledged or failed."""
        self._last_ack = time.monotonic()
        publishers: dict[str, Publish] = {s: c.publish for s, c in self.senders.items()}
        streams: list[StreamPublisher] = []
        if self.mode.stream:
            streams = [
                c.stream_publisher(max_batch=self.mode.max_batch, max_requests_in_flight=16)
                for c in self.senders.values()
            ]
            publishers = {s: p.publish for s, p in zip(self.senders, streams, strict=True)}
        chains = [(s, i) for s in self.senders for i in range(1, self.incidents + 1)]
        interval = len(chains) / self.rate
        plate_interval = interval * self.events / self.plate_events
        try:
            async with asyncio.TaskGroup() as group:
                for offset, (sender, number) in enumerate(chains):
                    spread = 0.0 if self.mode.burst else offset * interval / len(chains)
                    start = time.monotonic() + spread
                    group.create_task(self._chain(publishers[sender], sender, number, start, interval, self.events))
                for sender in self.plate_senders:
                    group.create_task(
                        self._chain(publishers[sender], sender, 0, time.monotonic(), plate_interval, self.plate_events)
                    )
        finally:
            self.finished = True
            # A load cut short counts the wait since its last acknowledgement too.
            self.longest_wait = max(self.longest_wait, time.monotonic() - self._last_ack)
            for publisher in streams:
                await close_publisher(publisher)

    def _more(self, incident: str, k: int, count: int) -> bool:
        return k < count or self._holding or k < self._tail_until.get(incident, 0)

    async def _chain(  # noqa: PLR0917 - one chain's whole description
        self, publish: Publish, sender: str, number: int, start: float, interval: float, count: int
    ) -> None:
        """Publish the events of the sender's number-th incident (0: its plate reads), count at least, one after the other."""
        plates = number == 0
        incident = plates_id(sender, self.tag) if plates else incident_id(sender, number, self.tag)
        rooms = frozenset(PLATE_ROOMS) if plates else case_of(sender, number).rooms
        for k in range(count * 1000):  # bounded: a hold that never ends stops here
            if not self._more(incident, k, count):
                break
            await asyncio.sleep(max(0.0, start + k * interval - time.monotonic()))
            seq = self.ledger.next_seq(incident)
            env = plate_read(sender, incident, seq) if plates else event(sender, number, incident, seq)
            self.ledger.events[env.distribution_id] = Sent(sender, incident, seq, rooms, bulk=plates)
            self.published += 1
            self._done[incident] = k + 1
            try:
                acceptance = await publish(env)
            except HubError as exc:
                self.ledger.failed[env.distribution_id] = exc.reason or exc.code.name
                self.failed += 1
            else:
                self.ledger.acked[env.distribution_id] = tuple(acceptance.recipients)
                self.acked += 1
                now = time.monotonic()
                self.longest_wait = max(self.longest_wait, now - self._last_ack)
                self._last_ack = now

    async def until_acked(self, count: int) -> None:
        """Wait until count events of this load are acknowledged (or the load ended); Stalled without progress."""
        await until(
            f"{count} publishes ({self.mode.name}) to be acknowledged",
            lambda: self.acked >= count or self.finished,
            lambda: (self.acked, self.failed),
        )

    async def until_answered(self, sending: asyncio.Task[None]) -> None:
        """Wait until the load's task ended (every publish answered); Stalled without progress."""
        await until(
            f"all publishes ({self.mode.name}) to be answered",
            sending.done,
            lambda: (self.acked, self.failed),
        )
        await sending  # its exception, if any


async def close_publisher(publisher: StreamPublisher, timeout: float = 30.0) -> None:
    """Close a stream publisher; if it does not finish in time, stop its task (nothing may outlive the test)."""
    try:
        await asyncio.wait_for(publisher.close(), timeout=timeout)
    except TimeoutError:
        task = publisher._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
