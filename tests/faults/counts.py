"""The counts of one fault test, from the senders' ledger, what the store holds, the audit log, and what each room wrote (pure).

Three counts come from the store and must be 0 after every fault test:

- acknowledged, not stored: a recipient named in the acceptance of a publish answered OK whose
  delivery the stream does not hold;
- stored, not delivered: a delivery the stream holds for a room (of any publish, answered or
  not) that the room never handed to its application;
- delivered, not logged: a delivery a room handed to its application with no disclosure record
  in the audit log.

Duplicates are counted apart, before and after the client library drops copies by id: copies
that arrived at a room, deliveries handed twice by one room process (must be 0), and deliveries
handed again by a room process started after another one was killed (at least once: expected).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.faults.agreement import ALERT_VIEWS, VIEWS
from tests.faults.load import Ledger
from tests.faults.procs import RoomLog

Pair = tuple[str, str]  # (distribution id, agency)


@dataclass(frozen=True)
class StoredDelivery:
    """One delivery message the store holds."""

    distribution_id: str
    agency: str
    lane: str
    seq: int
    rule: str


@dataclass
class Store:
    """Every delivery message of the rooms in both lane streams, by (distribution id, agency)."""

    deliveries: dict[Pair, list[StoredDelivery]] = field(default_factory=dict)

    def add(self, delivery: StoredDelivery) -> None:
        """Note one stored message."""
        self.deliveries.setdefault((delivery.distribution_id, delivery.agency), []).append(delivery)

    def recipients_of(self, distribution_id: str) -> list[str]:
        """The agencies the store holds a delivery of an envelope for."""
        return sorted(a for d, a in self.deliveries if d == distribution_id)


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
    lost: int = 0
    acked_not_stored: int = 0
    stored_not_delivered: int = 0
    # "-": the hub ran without the audit log.
    delivered_not_logged: int | str = "-"
    stored_twice: int = 0
    wrong_view: int = 0
    out_of_order: int = 0
    room_duplicates: int = 0
    app_duplicates: int = 0
    restart_duplicates: int = 0
    redelivered: int = 0
    unacked_at_hub: int = 0
    longest_wait: float = 0.0
    seconds: float = 0.0
    nodeid: str = ""
    # A few examples of each nonzero harm (ids and agencies only), for the failure message and the soak's report.
    examples: dict[str, list[str]] = field(default_factory=dict)

    COLUMNS = (
        ("test", "test"),
        ("outcome", "outcome"),
        ("sent", "sent"),
        ("acked", "acked to senders"),
        ("failed", "failed"),
        ("expected", "deliveries due"),
        ("delivered", "delivered"),
        ("lost", "lost"),
        ("acked_not_stored", "acked, not stored"),
        ("stored_not_delivered", "stored, not delivered"),
        ("delivered_not_logged", "delivered, not logged"),
        ("stored_twice", "stored twice"),
        ("wrong_view", "wrong view"),
        ("out_of_order", "out of order"),
        ("room_duplicates", "dups at rooms"),
        ("app_duplicates", "dups to app"),
        ("restart_duplicates", "dups after room restart"),
        ("redelivered", "redelivered"),
        ("unacked_at_hub", "unacked at hub"),
        ("longest_wait", "longest s without acks"),
        ("seconds", "seconds"),
    )
    LEGEND = (
        "acked to senders: publishes answered OK; deliveries due: their acceptances' recipients; delivered: "
        "(room, id) handed to a room's application; lost: due, never delivered. From the store (read back "
        "from nats-server after the test): acked, not stored: a recipient of an acknowledged publish whose "
        "delivery the stream lacks; stored, not delivered: a room's stored delivery its application never got; "
        "delivered, not logged: handed over with no disclosure record in the audit log ('-': no audit log); "
        "stored twice: more than one message for one (id, room). wrong view: a copy holding other personal data "
        "than the room's role may see. dups at rooms: copies that arrived at a room's client beyond the first "
        "(before the client drops them by id); dups to app: handed twice by one room process; dups after room "
        "restart: handed again by a room process started after one was stopped; redelivered: copies that "
        "arrived with attempt > 1; unacked at hub: deliveries pending on the rooms' current consumers after they closed."
    )

    # The counts that must be 0 after every fault test (dups after room restart are at-least-once, not harm).
    HARMS = (
        "failed",
        "lost",
        "acked_not_stored",
        "stored_not_delivered",
        "delivered_not_logged",
        "stored_twice",
        "wrong_view",
        "out_of_order",
        "app_duplicates",
        "unacked_at_hub",
    )

    def cells(self) -> list[str]:
        """The row's values as text, in COLUMNS order."""
        return [f"{v:.1f}" if isinstance(v, float) else str(v) for v in (getattr(self, k) for k, _ in self.COLUMNS)]

    def harms(self) -> dict[str, int]:
        """Every harm count by name ("-" counts as 0)."""
        return {name: v if isinstance(v := getattr(self, name), int) else 0 for name in self.HARMS}

    def as_json(self) -> dict[str, Any]:
        """The row as a JSON object (the soak reads these)."""
        return dataclasses.asdict(self)

    def example(self, harm: str, items: Iterable[str], limit: int = 5) -> None:
        """Keep up to limit examples of a harm."""
        kept = sorted(items)[:limit]
        if kept:
            self.examples[harm] = kept


def count(
    test: str,
    ledger: Ledger,
    rooms: Mapping[str, Sequence[RoomLog]],
    store: Store,
    *,
    disclosures: set[Pair] | None,
    unacked_at_hub: int = 0,
) -> Counts:
    """The counts of a test: the ledger, the store, the disclosures (None: no audit log), each room's process logs in start order."""
    c = Counts(test, sent=len(ledger.events), acked=len(ledger.acked), failed=len(ledger.failed))
    c.unacked_at_hub = unacked_at_hub
    handed: set[Pair] = set()
    for room, logs in rooms.items():
        _count_room(c, ledger, room, logs, handed)
    _count_store(c, ledger, rooms, store, handed)
    if disclosures is not None:
        unlogged = handed - disclosures
        c.delivered_not_logged = len(unlogged)
        c.example("delivered_not_logged", (f"{d} to {a}" for d, a in unlogged))
    return c


def _count_room(c: Counts, ledger: Ledger, room: str, logs: Sequence[RoomLog], handed: set[Pair]) -> None:
    """A room's deliveries over all its processes: delivered, lost, order per process, duplicates, views."""
    due = ledger.acked_to(room)
    seen: set[str] = set()
    arrived: Counter[str] = Counter()
    wrong: list[str] = []
    unordered: list[str] = []
    for log in logs:
        for a in log.arrivals:
            arrived[a.distribution_id] += 1
            c.redelivered += a.attempt > 1
        this_process: set[str] = set()
        last: defaultdict[str, int] = defaultdict(int)
        for d in log.deliveries:
            if d.distribution_id in this_process:
                c.app_duplicates += 1
                continue
            this_process.add(d.distribution_id)
            views = ALERT_VIEWS if d.view.startswith("A:") else VIEWS
            if d.view != views.get(room, d.view):
                wrong.append(f"{d.distribution_id} to {room}: {d.view}")
            if d.seq < last[d.incident]:
                unordered.append(f"{d.incident} #{d.seq} after #{last[d.incident]} at {room}")
            last[d.incident] = max(last[d.incident], d.seq)
            if d.distribution_id in seen:
                c.restart_duplicates += 1
            seen.add(d.distribution_id)
    c.room_duplicates += sum(arrived.values()) - len(arrived)
    c.wrong_view += len(wrong)
    c.out_of_order += len(unordered)
    c.example(f"wrong_view {room}", wrong)
    c.example(f"out_of_order {room}", unordered)
    c.expected += len(due)
    c.delivered += len(seen)
    missing = due - seen
    c.lost += len(missing)
    c.example(f"lost {room}", missing)
    handed.update((d, room) for d in seen)


def _count_store(c: Counts, ledger: Ledger, rooms: Iterable[str], store: Store, handed: set[Pair]) -> None:
    """The counts from the store: acknowledged but not stored, stored but not delivered, stored twice."""
    owed = {(d, a) for d, recipients in ledger.acked.items() for a in recipients}
    not_stored = owed - store.deliveries.keys()
    c.acked_not_stored = len(not_stored)
    c.example(
        "acked_not_stored",
        (f"{d} to {a} (stored for: {', '.join(store.recipients_of(d)) or 'none'})" for d, a in not_stored),
    )
    wanted = set(rooms)
    undelivered = {pair for pair in store.deliveries if pair[1] in wanted} - handed
    c.stored_not_delivered = len(undelivered)
    c.example(
        "stored_not_delivered",
        (f"{d} to {a} ({'acked' if d in ledger.acked else 'not acked'})" for d, a in undelivered),
    )
    twice = {pair: len(msgs) for pair, msgs in store.deliveries.items() if len(msgs) > 1}
    c.stored_twice = len(twice)
    c.example("stored_twice", (f"{d} to {a}: {n} messages" for (d, a), n in twice.items()))
