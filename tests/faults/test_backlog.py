"""A room offline while a backlog of thousands of events builds up across several incidents, then back while traffic goes on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults.agreement import CC, GDF, QUESTURA
from tests.faults.load import PUBLISH, Ledger, Load
from tests.faults.procs import Processes
from tests.faults.rig import RecordCounts, Rig, assert_promises_kept, make_rig, start_nats

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]


async def test_room_back_after_a_long_backlog(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts
) -> None:
    """The returning room gets the whole backlog, in order, before the live traffic sent after its return."""
    started = time.monotonic()
    nats = await start_nats(tmp_path, processes)
    rig = await make_rig(tmp_path, processes, [nats])
    rigs.append(rig)
    await rig.start_rooms()
    first = rig.rooms[QUESTURA][0]
    senders = rig.senders()
    ledger = Ledger()
    warm = Load(ledger, senders, PUBLISH, events=240, rate=300)
    backlog = Load(ledger, senders, PUBLISH, events=3600, rate=1000)  # the same incidents go on
    live = Load(ledger, senders, PUBLISH, events=600, rate=300)
    backlog_ids: set[str] = set()
    live_ids: set[str] = set()
    failure: Exception | None = None
    try:
        await warm.run()
        await rig.settle(ledger)
        await asyncio.to_thread(first.stop)  # offline, cleanly: what it acknowledged is recorded

        before = set(ledger.events)
        await backlog.run()  # while the room is away
        backlog_ids = set(ledger.events) - before
        await rig.until_delivered(
            lambda: {(d, r) for d, rooms in ledger.acked.items() for r in rooms if r in (CC, GDF)},
            "the rooms still online to get the backlog",
        )

        await rig.start_room(QUESTURA)
        before = set(ledger.events)
        await live.run()
        live_ids = set(ledger.events) - before
        await rig.settle(ledger)
    except Exception as exc:  # counted first, raised below
        failure = exc
    counts = await rig.finish(f"room offline, backlog {len(backlog_ids)}", ledger, started, [warm, backlog, live])
    record_counts(counts)
    if failure is not None:
        raise AssertionError(f"{failure}; counts so far: {counts.harms()}") from failure
    assert_promises_kept(counts, rig, ledger)
    assert len(backlog_ids) >= 3000
    returned = [d.distribution_id for d in rig.room_logs()[QUESTURA][1].deliveries]
    assert set(returned) == backlog_ids | live_ids  # nothing it had acknowledged before going offline came again
    # Within the urgent lane (order across lanes is not promised: plate reads may trail live incidents).
    urgent = [d for d in returned if not ledger.events[d].bulk]
    last_of_backlog = max(i for i, d in enumerate(urgent) if d in backlog_ids)
    first_live = min(i for i, d in enumerate(urgent) if d in live_ids)
    assert last_of_backlog < first_live  # the whole backlog first, then live traffic
