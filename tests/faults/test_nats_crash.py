"""kill -9 of the single nats-server under sustained load, restarted on the same ports and store folder; the hub reconnects."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.faults.load import MODES, Mode
from tests.faults.procs import Processes
from tests.faults.rig import RecordCounts, Rig, kill_9_under_load

pytestmark = [pytest.mark.faults, pytest.mark.soak, pytest.mark.timeout(600)]

# Far longer than the outage: a write in flight at the kill that waited for this instead of
# failing at once would leave the senders without an acknowledgement for at least this long.
COMMIT_TIMEOUT = timedelta(seconds=60)


@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_nats_kill_9_under_load(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts, mode: Mode
) -> None:
    """Senders retry through the outage; every acknowledged event is stored, delivered once, in order, and logged.

    Nothing is flushed at the kill beyond what sync_interval: always already wrote. Writes in
    flight at the kill fail as soon as the connection drops, not after the commit timeout: the
    longest time without an acknowledgement stays well below it.
    """
    outcome = await kill_9_under_load(
        tmp_path,
        processes,
        rigs,
        record_counts,
        mode=mode,
        name="nats-server",
        victim=lambda _rig, nats: nats,
        commit_timeout=COMMIT_TIMEOUT,
    )
    assert outcome.counts.longest_wait < COMMIT_TIMEOUT.total_seconds() / 2, outcome.counts
