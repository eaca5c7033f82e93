"""A room offline while a backlog of thousands of events builds up across several incidents, then back while traffic goes on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults.conftest import RecordCounts
from tests.faults.load import Ledger, Load
from tests.faults.procs import Processes
from tests.faults.rig import CC, QUESTURA, ROOMS, Budget, Rig, assert_promises_kept, make_rig, start_nats

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


async def test_room_back_after_a_long_backlog(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts
) -> None:
    """The returning room gets the whole backlog, in order, before the live traffic sent after its return."""
    started = time.monotonic()
    nats = await start_nats(tmp_path, processes)
    rig = await make_rig(tmp_path, processes, [nats])
    rigs.append(rig)
    first = await rig.start_room(QUESTURA)
    await rig.start_room(CC)
    senders = rig.senders()
    ledger = Ledger()
    warm = Load(ledger, senders, ROOMS, incidents=4, events=20, rate=300)
    backlog = Load(ledger, senders, ROOMS, incidents=4, events=300, rate=1000)  # the same incidents go on
    live = Load(ledger, senders, ROOMS, incidents=4, events=50, rate=300)
    backlog_ids: set[str] = set()
    live_ids: set[str] = set()
    async with Budget(60) as budget:
        await warm.run()
        await rig.until_delivered(ledger)
        await asyncio.to_thread(first.stop)  # offline, cleanly: what it acknowledged is recorded

        before = set(ledger.events)
        await backlog.run()  # while the room is away
        backlog_ids = set(ledger.events) - before
        await rig.until_delivered(ledger, rooms=[CC])

        await rig.start_room(QUESTURA)
        before = set(ledger.events)
        await live.run()
        live_ids = set(ledger.events) - before
        await rig.until_delivered(ledger)
    counts = await rig.finish(
        f"room offline, backlog {len(backlog_ids)}", ledger, started, [warm, backlog, live], hurry=budget.expired
    )
    record_counts(counts)
    assert not budget.expired, f"not done within {budget.seconds} s: {counts}"
    assert_promises_kept(counts, rig, ledger)
    assert len(backlog_ids) >= 3000
    returned = [d.distribution_id for d in rig.room_logs()[QUESTURA][1].deliveries]
    assert set(returned) == backlog_ids | live_ids  # nothing it had acknowledged before going offline came again
    last_of_backlog = max(i for i, d in enumerate(returned) if d in backlog_ids)
    first_live = min(i for i, d in enumerate(returned) if d in live_ids)
    assert last_of_backlog < first_live  # the whole backlog first, then live traffic
