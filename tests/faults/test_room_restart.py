"""Room processes stopped mid-stream under sustained load and replaced by new ones: kill -9, SIGTERM, and kill -9 with a pause.

A new process of the room must get everything the room is owed that the old one did not
hand to its application, in order per incident. A new process may be handed again what the
old one had not acknowledged yet, or whose acknowledgement was still on its way when it
stopped (at least once): those are counted apart (dups after room restart), not as harm.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.faults.agreement import CC, GDF, QUESTURA
from tests.faults.load import MODES, Load, Mode, until
from tests.faults.procs import Processes
from tests.faults.rig import RecordCounts, Rig, make_rig, start_nats, under_load

pytestmark = [pytest.mark.faults, pytest.mark.soak, pytest.mark.timeout(600)]


@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_rooms_stopped_mid_stream_and_replaced(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts, mode: Mode
) -> None:
    """Questura kill -9 and restarted at once, Carabinieri SIGTERM and restarted, GdF kill -9 and back two seconds later.

    Nothing owed or stored is lost, nothing is handed twice by one process, order per incident
    holds in each process, and each replaced room's processes both received deliveries.
    """
    nats = await start_nats(tmp_path, processes)
    rig = await make_rig(tmp_path, processes, [nats])
    rigs.append(rig)

    async def receiving(room: str) -> None:
        process = rig.rooms[room][-1]
        await until(f"{room}'s process to receive", lambda: bool(process.read().deliveries), lambda: 0)

    async def replace_rooms(rig: Rig, load: Load) -> None:
        await load.until_acked(load.planned // 4)
        await receiving(QUESTURA)
        rig.rooms[QUESTURA][-1].kill()
        await rig.start_room(QUESTURA)
        await load.until_acked(load.planned // 2)
        await receiving(CC)
        await asyncio.to_thread(rig.rooms[CC][-1].stop)
        await rig.start_room(CC)
        await load.until_acked(load.planned * 3 // 4)
        await receiving(GDF)
        rig.rooms[GDF][-1].kill()
        await asyncio.sleep(2.0)  # deliveries pile up for the room meanwhile
        await rig.start_room(GDF)

    outcome = await under_load(rig, record_counts, name="rooms stopped mid-stream", mode=mode, fault=replace_rooms)
    logs = outcome.rig.room_logs()
    for room in (QUESTURA, CC, GDF):
        assert 2 == len(logs[room])
        assert logs[room][0].deliveries, f"{room}'s first process got nothing before it was stopped"
        assert logs[room][1].deliveries, f"{room}'s second process got nothing"
