"""kill -9 of the single nats-server under sustained load, restarted on the same ports and store folder; the hub reconnects."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.conftest import RecordCounts
from tests.faults.procs import Processes
from tests.faults.rig import Rig, kill_9_under_load

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


@pytest.mark.parametrize("stream", [pytest.param(False, id="Publish"), pytest.param(True, id="PublishStream")])
async def test_nats_kill_9_under_load(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts, stream: bool
) -> None:
    """Senders retry through the outage; every acknowledged event is delivered once, in order, without a long stall.

    Nothing is flushed at the kill beyond what sync_interval: always already wrote.
    """
    _rig, counts = await kill_9_under_load(
        tmp_path, processes, rigs, record_counts, stream=stream, name="nats-server", victim=lambda _rig, nats: nats
    )
    # Writes in flight at the kill fail as soon as the connection drops, not after the commit
    # timeout (10 s): acks resume about when the server is back (1 s down, then reconnect).
    assert counts.longest_wait < 6.0, counts
