"""kill -9 of the hub process under sustained load, restarted with the same config on the same port."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.load import MODES, Mode
from tests.faults.procs import Processes
from tests.faults.rig import RecordCounts, Rig, kill_9_under_load

pytestmark = [pytest.mark.faults, pytest.mark.soak, pytest.mark.timeout(600)]


@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_hub_kill_9_under_load(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts, mode: Mode
) -> None:
    """Senders retry the same envelopes through the outage (an envelope cut half way is completed); rooms reconnect.

    Every acknowledged event is stored for every recipient of its acceptance, delivered once, in
    order, and logged.
    """
    outcome = await kill_9_under_load(
        tmp_path, processes, rigs, record_counts, mode=mode, name="hub", victim=lambda rig, _nats: rig.hub
    )
    assert all(log.sessions >= 2 for logs in outcome.rig.room_logs().values() for log in logs)  # every room reconnected
