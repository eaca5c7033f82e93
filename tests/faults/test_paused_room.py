"""SIGSTOP of a room's client process for longer than the consumer's ack wait, then SIGCONT, under sustained load."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.faults.conftest import RecordCounts
from tests.faults.load import Ledger, Load
from tests.faults.procs import Processes
from tests.faults.rig import CC, QUESTURA, ROOMS, Budget, Rig, assert_promises_kept, background, make_rig, start_nats

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

ACK_WAIT = timedelta(seconds=2)
PAUSE = 3.5 * ACK_WAIT.total_seconds()


async def test_room_paused_beyond_ack_wait(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts
) -> None:
    """JetStream redelivers what the frozen room held; the client drops the copies; the other room is not held up."""
    started = time.monotonic()
    nats = await start_nats(tmp_path, processes)
    rig = await make_rig(tmp_path, processes, [nats], ack_wait=ACK_WAIT)
    rigs.append(rig)
    paused = await rig.start_room(QUESTURA)
    other = await rig.start_room(CC)
    ledger = Ledger()
    load = Load(ledger, rig.senders(), ROOMS, incidents=4, events=250, rate=300)
    async with Budget(60) as budget, background(load.run()) as sending:
        await load.until_acked(load.total // 5)
        paused.pause()
        before = len(other.read().deliveries)
        await asyncio.sleep(PAUSE)
        during = len(other.read().deliveries) - before
        paused.resume()
        await sending
        await rig.until_delivered(ledger)
    counts = await rig.finish("room SIGSTOP > ack wait", ledger, started, [load], hurry=budget.expired)
    record_counts(counts)
    assert not budget.expired, f"not done within {budget.seconds} s: {counts}"
    assert_promises_kept(counts, rig, ledger)
    assert during > PAUSE * 100  # the other room kept receiving at the load's pace while this one was frozen
    assert counts.duplicates_dropped + counts.redelivered > 0  # the pause did make JetStream redeliver
