"""kill -9 of the hub process under sustained load, restarted with the same config on the same port."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.conftest import RecordCounts
from tests.faults.procs import Processes
from tests.faults.rig import Rig, kill_9_under_load

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


@pytest.mark.parametrize("stream", [pytest.param(False, id="Publish"), pytest.param(True, id="PublishStream")])
async def test_hub_kill_9_under_load(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts, stream: bool
) -> None:
    """Senders retry the same envelopes through the outage; rooms reconnect; nothing acknowledged is lost or doubled."""
    rig, _counts = await kill_9_under_load(
        tmp_path, processes, rigs, record_counts, stream=stream, name="hub", victim=lambda rig, _nats: rig.hub
    )
    assert all(log.sessions >= 2 for logs in rig.room_logs().values() for log in logs)  # every room reconnected
