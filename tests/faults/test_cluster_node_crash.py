"""kill -9 of one node of a 3-node nats-server cluster under sustained load, restarted, then of the next once it is back, for each node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broker.dev.cluster import NatsCluster
from tests.faults.load import PUBLISH, STREAM_LARGE, Load, Mode
from tests.faults.procs import Processes
from tests.faults.rig import RecordCounts, Rig, make_rig, under_load

pytestmark = [pytest.mark.faults, pytest.mark.soak, pytest.mark.timeout(600)]

STREAM = "OPSROOM"
# Liveness: a restarted node must have caught up with the cluster within this (generous: the machine may be loaded).
CATCH_UP = 60.0


async def crash_and_restart(cluster: NatsCluster, node: int, down: float = 1.0) -> bool:
    """SIGKILL node, keep it down a moment, start it again on its ports and folder; whether it caught up within CATCH_UP."""
    cluster.kill(node)
    await asyncio.sleep(down)
    try:
        await asyncio.to_thread(cluster.restart, node, CATCH_UP)
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize(
    ("audit", "mode"),
    [
        pytest.param(True, PUBLISH, id="audit-Publish"),
        pytest.param(True, STREAM_LARGE, id=f"audit-{STREAM_LARGE}"),
        pytest.param(False, PUBLISH, id="no-audit-Publish"),
    ],
)
async def test_cluster_nodes_killed_one_after_the_other(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts, *, audit: bool, mode: Mode
) -> None:
    """Streams with three replicas: each node in turn (the stream leader first) killed and restarted once the previous one is back.

    Every acknowledged event is stored (read back through the stream leader if a replica lags),
    delivered once, in order, and logged (with the audit log).
    """
    cluster = NatsCluster(tmp_path / "nats", 3, name="fault-cluster")
    processes.keep(cluster.stop)
    await asyncio.to_thread(cluster.start)
    rig = await make_rig(tmp_path, processes, cluster.nodes, replicas=3, audit=audit)
    rigs.append(rig)
    back: list[bool] = []

    async def each_node_in_turn(rig: Rig, load: Load) -> None:
        leader = await asyncio.to_thread(cluster.stream_leader, STREAM)  # the worst node to lose first
        for node in [leader, *(n for n in range(cluster.size) if n != leader)]:
            back.append(await crash_and_restart(cluster, node))
            if not back[-1]:
                break  # a 3-node cluster survives one lost node at a time, not a second one

    name = "nats cluster: 3 nodes kill -9 in turn" + ("" if audit else ", no audit")
    await under_load(rig, record_counts, name=name, mode=mode, fault=each_node_in_turn)
    assert back == [True, True, True], f"a restarted node did not catch up within {CATCH_UP:.0f} s"
