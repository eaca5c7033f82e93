"""SIGSTOP of a room's client process for longer than the consumer's ack wait, then SIGCONT, under sustained load."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from tests.faults.agreement import CC, GDF, QUESTURA
from tests.faults.load import STREAM_SMALL, Load
from tests.faults.procs import Processes
from tests.faults.rig import RecordCounts, Rig, make_rig, start_nats, under_load

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

ACK_WAIT = timedelta(seconds=2)
PAUSE = 3.5 * ACK_WAIT.total_seconds()


async def test_room_paused_beyond_ack_wait(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts
) -> None:
    """JetStream redelivers what the frozen room held; the client drops the copies; the other rooms are not held up."""
    nats = await start_nats(tmp_path, processes)
    rig = await make_rig(tmp_path, processes, [nats], ack_wait=ACK_WAIT)
    rigs.append(rig)
    during: dict[str, int] = {}

    async def pause(rig: Rig, load: Load) -> None:
        await load.until_acked(load.planned // 5)
        paused = rig.rooms[QUESTURA][0]
        others = {room: rig.rooms[room][0] for room in (CC, GDF)}
        paused.pause()
        try:
            before = {room: len(p.read().deliveries) for room, p in others.items()}
            await asyncio.sleep(PAUSE)
            during.update({room: len(p.read().deliveries) - before[room] for room, p in others.items()})
        finally:
            paused.resume()

    outcome = await under_load(
        rig, record_counts, name="room SIGSTOP > ack wait", mode=STREAM_SMALL, fault=pause, events=3000
    )
    assert all(n > 0 for n in during.values()), during  # the other rooms kept receiving while this one was frozen
    assert outcome.counts.room_duplicates + outcome.counts.redelivered > 0  # the pause did make JetStream redeliver
