"""The fault tests' counting itself (pure): each harm it must catch is counted, and only that one."""

from __future__ import annotations

import pytest

from tests.faults.agreement import CC, CUR, QUESTURA, VIEWS
from tests.faults.counts import Counts, Store, StoredDelivery, count
from tests.faults.load import Ledger, Sent
from tests.faults.procs import Arrived, Delivered, RoomLog

pytestmark = pytest.mark.faults

INCIDENT = "urn:emergency:uid:incidentid:f-count-1:fault.test"
BOTH = frozenset({QUESTURA, CC})


def ledger_of(*ids: str) -> Ledger:
    """Events 1, 2, ... of one incident, each acknowledged with the Questura and the Carabinieri as recipients."""
    ledger = Ledger()
    for seq, dist in enumerate(ids, start=1):
        ledger.events[dist] = Sent(CUR, INCIDENT, seq, BOTH)
        ledger.acked[dist] = (QUESTURA, CC)
    return ledger


def store_of(*pairs: tuple[str, str]) -> Store:
    store = Store()
    for seq, (dist, agency) in enumerate(pairs, start=1):
        store.add(StoredDelivery(dist, agency, "urgent", seq, "fault-torino/contact-cards"))
    return store


def room(*deliveries: tuple[str, int], room_id: str = QUESTURA, view: str = "") -> RoomLog:
    """A room process that received and handed over (distribution id, seq) in this order."""
    log = RoomLog()
    for dist, seq in deliveries:
        log.arrivals.append(Arrived(dist, 1, seq))
        log.deliveries.append(Delivered(dist, INCIDENT, seq, 1, seq, view or VIEWS[room_id]))
    return log


def clean() -> tuple[Ledger, Store, dict[str, list[RoomLog]], set[tuple[str, str]]]:
    ledger = ledger_of("d1", "d2")
    store = store_of(("d1", QUESTURA), ("d1", CC), ("d2", QUESTURA), ("d2", CC))
    rooms = {QUESTURA: [room(("d1", 1), ("d2", 2))], CC: [room(("d1", 1), ("d2", 2), room_id=CC)]}
    logged = {("d1", QUESTURA), ("d1", CC), ("d2", QUESTURA), ("d2", CC)}
    return ledger, store, rooms, logged


def harms(counts: Counts) -> dict[str, int]:
    return {k: v for k, v in counts.harms().items() if v}


def test_a_clean_run_counts_no_harm() -> None:
    """Everything stored, delivered once, in order, logged: every harm count is 0."""
    ledger, store, rooms, logged = clean()
    counts = count("t", ledger, rooms, store, disclosures=logged)
    assert {} == harms(counts)
    assert (4, 4) == (counts.expected, counts.delivered)


def test_an_acknowledged_delivery_missing_from_the_store_is_counted() -> None:
    """A recipient of an acceptance without its stored delivery: acknowledged, not stored, with what the store held."""
    ledger, store, rooms, logged = clean()
    del store.deliveries[("d2", CC)]
    counts = count("t", ledger, rooms, store, disclosures=logged)
    assert {"acked_not_stored": 1} == harms(counts)
    assert ["d2 to it.cc.cp.to (stored for: it.ps.questura.to)"] == counts.examples["acked_not_stored"]


def test_a_stored_delivery_of_an_unanswered_publish_that_never_arrives_is_counted() -> None:
    """A publish that was never answered OK but left a delivery stored: it is owed to its room all the same."""
    ledger, store, rooms, logged = clean()
    ledger.events["d3"] = Sent(CUR, INCIDENT, 3, BOTH)
    ledger.failed["d3"] = "STORE_UNAVAILABLE"
    store.add(StoredDelivery("d3", QUESTURA, "urgent", 9, "fault-torino/contact-cards"))
    counts = count("t", ledger, rooms, store, disclosures=logged)
    assert {"failed": 1, "stored_not_delivered": 1} == harms(counts)


def test_lost_is_counted_against_the_acceptance_not_the_store() -> None:
    """A room missing an acknowledged delivery: lost (and, being stored, stored but not delivered)."""
    ledger, store, rooms, logged = clean()
    rooms[CC] = [room(("d1", 1), room_id=CC)]
    counts = count("t", ledger, rooms, store, disclosures=logged)
    assert {"lost": 1, "stored_not_delivered": 1} == harms(counts)


def test_a_delivery_without_a_disclosure_record_is_counted_and_no_log_counts_nothing() -> None:
    """Handed over with no disclosure record: delivered, not logged; without an audit log the count is "-"."""
    ledger, store, rooms, logged = clean()
    counts = count("t", ledger, rooms, store, disclosures=logged - {("d1", CC)})
    assert {"delivered_not_logged": 1} == harms(counts)
    assert "-" == count("t", ledger, rooms, store, disclosures=None).delivered_not_logged


def test_duplicates_order_and_views_are_counted_per_room_process() -> None:
    """Within a process: reorder, a second hand-over and a foreign view are harm; a new process handing again is not."""
    ledger, store, rooms, logged = clean()
    first = room(("d2", 2), ("d1", 1), ("d2", 2))  # out of order, then handed twice by one process
    second = room(("d1", 1), ("d2", 2))  # a new process hands both again: at least once, not harm
    rooms[QUESTURA] = [first, second]
    rooms[CC] = [room(("d1", 1), ("d2", 2), room_id=CC, view=VIEWS[QUESTURA])]
    counts = count("t", ledger, rooms, store, disclosures=logged)
    assert {"out_of_order": 1, "app_duplicates": 1, "wrong_view": 2} == harms(counts)
    assert 2 == counts.restart_duplicates
    assert 3 == counts.room_duplicates  # copies that arrived at the Questura beyond the first of each id


def test_a_message_stored_twice_is_counted() -> None:
    """Two messages for one (id, room): stored twice."""
    ledger, store, rooms, logged = clean()
    store.add(StoredDelivery("d1", CC, "urgent", 99, "fault-torino/contact-cards"))
    counts = count("t", ledger, rooms, store, disclosures=logged)
    assert {"stored_twice": 1} == harms(counts)
