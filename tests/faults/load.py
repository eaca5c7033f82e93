"""Sustained load for fault tests and its bookkeeping: what senders published and got acknowledged, and the counts per test.

Each sender agency publishes the events of several incidents, over one PublishStream (the
client's StreamPublisher) or as unary Publish calls; each event carries its incident id and a per-incident counter
(Incident.id and Incident.local_reference). The events of one incident are published one after
the other (the next once the previous is acknowledged: the order the hub promises to keep even
across retries), the incidents of all senders concurrently, paced to a total rate.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom.incident.v1 import incident_pb2

from broker.client import HubClient, HubError, RetryPolicy, StreamPublisher, new_envelope, timestamp
from broker.ids import agency_token
from tests.faults.procs import RoomLog

Publish = Callable[[envelope_pb2.Envelope], Awaitable[hub_pb2.Acceptance]]

# Long enough to ride out a restart of the hub or of nats-server: about a minute of retries.
RIDE_OUT = RetryPolicy(attempts=80, first_delay=0.1, max_delay=1.0, timeout=10.0)


def incident_id(sender: str, number: int, tag: str = "f") -> str:
    """The id of a sender's number-th incident."""
    return f"urn:emergency:uid:incidentid:{tag}-{agency_token(sender)}-{number}:fault.test"


def event(sender: str, recipients: Iterable[str], incident: str, seq: int) -> envelope_pb2.Envelope:
    """The seq-th event (1, 2, ...) of an incident: a report first, then updates."""
    return new_envelope(
        sender,
        kind=common_pb2.KIND_REPORT if seq == 1 else common_pb2.KIND_UPDATE,
        recipients=recipients,
        operator_id="OP-FAULT-1",
        incident_ids=[incident],
        incident=incident_pb2.Incident(
            id=incident,
            local_reference=str(seq),
            type=incident_pb2.IncidentType(eido_code="FIGHT"),
            status=incident_pb2.INCIDENT_STATUS_ACTIVE,
            priority=common_pb2.PRIORITY_HIGH,
            locations=[common_pb2.Location(type="CurrentIncident", comune_istat="001272")],
            notes=[incident_pb2.Note(created_at=timestamp(), author_operator_id="OP-FAULT-1", text=f"evento {seq}")],
        ),
    )


@dataclass(frozen=True)
class Sent:
    """One published event."""

    sender: str
    incident: str
    seq: int
    recipients: tuple[str, ...]


@dataclass
class Ledger:
    """Every event submitted, and which ones the hub acknowledged to their sender."""

    events: dict[str, Sent] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)

    def next_seq(self, incident: str) -> int:
        """The next counter of an incident (continues across loads)."""
        self.counters[incident] += 1
        return self.counters[incident]

    def acked_to(self, room: str) -> set[str]:
        """Distribution ids acknowledged to their senders with room among the recipients."""
        return {d for d in self.acked if room in self.events[d].recipients}


class Load:
    """Senders publishing the events of their incidents at a total rate, for a bounded count."""

    def __init__(
        self,
        ledger: Ledger,
        senders: Mapping[str, HubClient],
        recipients: Iterable[str],
        *,
        incidents: int = 4,
        events: int = 100,
        rate: float = 300.0,
        tag: str = "f",
        stream: bool = True,
    ) -> None:
        """events per incident, incidents per sender; rate in events per second over all senders.

        With stream, each sender publishes through one PublishStream (StreamPublisher); without,
        each event is a unary Publish (HubClient.publish), retried by the client on its own.
        """
        self.ledger = ledger
        self.senders = dict(senders)
        self.recipients = tuple(recipients)
        self.incidents = incidents
        self.events = events
        self.rate = rate
        self.tag = tag
        self.stream = stream
        self.acked = 0
        self.longest_wait = 0.0  # longest time without any acknowledgement while this load ran
        self._last_ack = 0.0
        self.failed = 0
        self.total = len(self.senders) * incidents * events
        self._progress = asyncio.Event()

    async def run(self) -> None:
        """Publish everything; returns when every event is acknowledged or failed."""
        self._last_ack = time.monotonic()
        publishers: dict[str, Publish] = {s: c.publish for s, c in self.senders.items()}
        streams: list[StreamPublisher] = []
        if self.stream:
            streams = [c.stream_publisher(max_batch=100, max_requests_in_flight=16) for c in self.senders.values()]
            publishers = {s: p.publish for s, p in zip(self.senders, streams, strict=True)}
        chains = [(s, incident_id(s, i, self.tag)) for s in self.senders for i in range(1, self.incidents + 1)]
        interval = len(chains) / self.rate
        try:
            async with asyncio.TaskGroup() as group:
                for offset, (sender, incident) in enumerate(chains):
                    start = time.monotonic() + offset * interval / len(chains)
                    group.create_task(self._chain(publishers[sender], sender, incident, start, interval))
        finally:
            # A load cut short (the test ran out of time) counts the wait since its last acknowledgement too.
            self.longest_wait = max(self.longest_wait, time.monotonic() - self._last_ack)
            for publisher in streams:
                await close_publisher(publisher)

    async def _chain(self, publish: Publish, sender: str, incident: str, start: float, interval: float) -> None:
        for k in range(self.events):
            await asyncio.sleep(max(0.0, start + k * interval - time.monotonic()))
            seq = self.ledger.next_seq(incident)
            env = event(sender, self.recipients, incident, seq)
            self.ledger.events[env.distribution_id] = Sent(sender, incident, seq, self.recipients)
            try:
                await publish(env)
            except HubError as exc:
                self.ledger.failed[env.distribution_id] = exc.reason or exc.code.name
                self.failed += 1
            else:
                self.ledger.acked.add(env.distribution_id)
                self.acked += 1
                now = time.monotonic()
                self.longest_wait = max(self.longest_wait, now - self._last_ack)
                self._last_ack = now
            self._progress.set()

    async def until_acked(self, count: int) -> None:
        """Wait until count events of this load are acknowledged (or every event is answered)."""
        while self.acked < count and self.acked + self.failed < self.total:
            self._progress.clear()
            await self._progress.wait()


async def close_publisher(publisher: StreamPublisher, timeout: float = 10.0) -> None:
    """Close a stream publisher; if it does not finish in time, stop its task (nothing may outlive the test)."""
    try:
        await asyncio.wait_for(publisher.close(), timeout=timeout)
    except TimeoutError:
        task = publisher._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@dataclass
class Counts:
    """The counts of one fault test, one row of the summary table."""

    test: str
    outcome: str = ""
    sent: int = 0
    acked: int = 0
    failed: int = 0
    expected: int = 0
    delivered: int = 0
    room_acked: int = 0
    unacked_at_hub: int = 0
    lost: int = 0
    duplicates_dropped: int = 0
    redelivered: int = 0
    app_duplicates: int = 0
    out_of_order: int = 0
    not_acked_delivered: int = 0
    # Deliveries a room got whose disclosure the audit log does not hold ("-": the hub ran without audit).
    unrecorded: int | str = "-"
    longest_wait: float = 0.0
    seconds: float = 0.0
    nodeid: str = ""

    COLUMNS = (
        ("test", "test"),
        ("outcome", "outcome"),
        ("sent", "sent"),
        ("acked", "acked to senders"),
        ("failed", "failed"),
        ("expected", "deliveries due"),
        ("delivered", "delivered (unique)"),
        ("room_acked", "acked by rooms"),
        ("unacked_at_hub", "unacked at hub"),
        ("lost", "lost"),
        ("duplicates_dropped", "dups dropped by client"),
        ("redelivered", "redelivered (attempt>1)"),
        ("app_duplicates", "dups seen by app"),
        ("out_of_order", "out of order"),
        ("not_acked_delivered", "delivered, not acked"),
        ("unrecorded", "delivered, no disclosure record"),
        ("longest_wait", "longest s without acks"),
        ("seconds", "seconds"),
    )

    def cells(self) -> list[str]:
        """The row's values as text, in COLUMNS order."""
        return [f"{v:.1f}" if isinstance(v, float) else str(v) for v in (getattr(self, k) for k, _ in self.COLUMNS)]


def count(test: str, ledger: Ledger, rooms: Mapping[str, Iterable[RoomLog]], unacked_at_hub: int = 0) -> Counts:
    """The counts of a test from the ledger and what each room's processes wrote (several logs if restarted)."""
    c = Counts(test, sent=len(ledger.events), acked=len(ledger.acked), failed=len(ledger.failed))
    c.unacked_at_hub = unacked_at_hub
    for room, logs in rooms.items():
        due = ledger.acked_to(room)
        c.expected += len(due)
        seen: set[str] = set()
        last: defaultdict[str, int] = defaultdict(int)
        for log in logs:
            c.duplicates_dropped += log.duplicates_dropped
            for d in log.deliveries:
                c.room_acked += 1  # the room's client acknowledges each delivery as soon as it has written it
                if d.attempt > 1:
                    c.redelivered += 1
                if d.distribution_id in seen:
                    c.app_duplicates += 1
                    continue
                seen.add(d.distribution_id)
                if d.seq < last[d.incident]:
                    c.out_of_order += 1
                last[d.incident] = max(last[d.incident], d.seq)
        c.delivered += len(seen)
        c.lost += len(due - seen)
        c.not_acked_delivered += len(seen - due)
    return c
