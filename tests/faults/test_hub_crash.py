"""kill -9 of the hub process under sustained load, restarted with the same config on the same port."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults.conftest import RecordCounts
from tests.faults.load import Ledger, Load
from tests.faults.procs import Processes
from tests.faults.rig import ROOMS, Budget, Rig, assert_promises_kept, background, make_rig, start_nats

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


@pytest.mark.parametrize("stream", [pytest.param(False, id="Publish"), pytest.param(True, id="PublishStream")])
async def test_hub_kill_9_under_load(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts, stream: bool
) -> None:
    """Senders retry the same envelopes through the outage; rooms reconnect; nothing acknowledged is lost or doubled."""
    started = time.monotonic()
    nats = await start_nats(tmp_path, processes)
    rig = await make_rig(tmp_path, processes, [nats])
    rigs.append(rig)
    for room in ROOMS:
        await rig.start_room(room)
    ledger = Ledger()
    load = Load(ledger, rig.senders(), ROOMS, incidents=4, events=200, rate=300, stream=stream)
    async with Budget(60) as budget, background(load.run()) as sending:
        await load.until_acked(load.total // 3)
        killed_at = load.acked
        rig.hub.kill()
        await asyncio.sleep(1.0)  # down for a while: the senders' retries hit a closed port
        await asyncio.to_thread(rig.hub.start)
        await sending
        await rig.until_delivered(ledger)
    counts = await rig.finish(
        f"hub kill -9 ({'PublishStream' if stream else 'Publish'})", ledger, started, [load], hurry=budget.expired
    )
    record_counts(counts)
    assert not budget.expired, f"not done within {budget.seconds} s: {counts}"
    assert_promises_kept(counts, rig, ledger)
    assert 0 < killed_at < load.total  # the kill hit the load in the middle
    assert all(log.sessions >= 2 for logs in rig.room_logs().values() for log in logs)  # every room reconnected
