"""kill -9 of one node of a 3-node nats-server cluster under sustained load, restarted, then of the next once it is back, for each node."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from broker.cluster import NatsCluster
from tests.faults.conftest import RecordCounts
from tests.faults.load import Ledger, Load
from tests.faults.procs import Processes
from tests.faults.rig import ROOMS, Budget, Rig, assert_promises_kept, background, make_rig

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

STREAM = "OPSROOM"


async def crash_and_restart(cluster: NatsCluster, node: int, down: float = 1.0) -> bool:
    """SIGKILL node, keep it down a moment, start it again on its ports and folder; whether it caught up within 12 s."""
    cluster.kill(node)
    await asyncio.sleep(down)
    try:
        await asyncio.to_thread(cluster.restart, node, 12.0)
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize(
    "audit",
    [
        pytest.param(True, id="audit"),
        pytest.param(False, id="no-audit"),
    ],
)
async def test_cluster_nodes_killed_one_after_the_other(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts, audit: bool
) -> None:
    """Streams with three replicas: each node in turn (the stream leader first) killed and restarted once the previous one is back.

    Senders use unary Publish: StreamPublisher resends a refused envelope without delay and would
    spend its retries within a leader election (test_stream_publisher_retry.py).
    """
    started = time.monotonic()
    cluster = NatsCluster(tmp_path / "nats", 3, name="fault-cluster")
    processes.keep(cluster.stop)
    await asyncio.to_thread(cluster.start)
    rig = await make_rig(tmp_path, processes, cluster.nodes, replicas=3, audit=audit)
    rigs.append(rig)
    for room in ROOMS:
        await rig.start_room(room)
    ledger = Ledger()
    load = Load(ledger, rig.senders(), ROOMS, incidents=4, events=600, rate=300, stream=False)
    back: list[bool] = []
    during_load: list[bool] = []
    async with Budget(45) as budget, background(load.run()) as sending:
        await load.until_acked(load.total // 8)
        leader = await asyncio.to_thread(cluster.stream_leader, STREAM)  # the worst node to lose first
        for node in [leader, *(n for n in range(cluster.size) if n != leader)]:
            during_load.append(not sending.done())
            back.append(await crash_and_restart(cluster, node))
            if not back[-1]:
                break  # a 3-node cluster survives one lost node at a time, not a second one
        await sending
        await rig.until_delivered(ledger)
    name = "nats cluster: 3 nodes kill -9 in turn" + ("" if audit else ", no audit")
    counts = await rig.finish(name, ledger, started, [load], hurry=budget.expired)
    record_counts(counts)
    assert back == [True, True, True], "a restarted node did not catch up within 12 s"
    assert not budget.expired, f"not done within {budget.seconds} s: {counts}"
    assert_promises_kept(counts, rig, ledger)
    assert during_load == [True, True, True]  # every kill hit the load while it ran
