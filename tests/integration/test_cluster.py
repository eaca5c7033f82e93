"""The hub over a 3-node nats-server cluster: streams with 3 replicas, and one node lost and brought back.

The hub runs unchanged, given the three servers and replicas = 3 (broker.dev.testing.cluster_hub).
What NATS reports is read through its own API and monitoring endpoints, not through the hub.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from opsroom.audit.v1 import audit_pb2
from opsroom_client import HubClient, RetryPolicy

from broker.audit import tools
from broker.audit.verify import verify
from broker.dev.cluster import NatsCluster
from broker.dev.testing import ClusterHub, cluster_hub
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW, nothing_more, take

pytestmark = pytest.mark.integration

STREAM = "OPSROOM"
AUDIT = "OPSROOM_AUDIT"
# Long enough to ride out a stream leader election (a few seconds) with the same distribution ids.
PATIENT = RetryPolicy(attempts=80, first_delay=0.1, max_delay=0.5, timeout=15)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ClusterHub]:
    """Three nats-server nodes on loopback ports and a hub using all three with replicas = 3."""
    async with cluster_hub(tmp_path, AGENCIES, ALLOW) as running:
        yield running


async def js_api(cluster: NatsCluster, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JetStream API request through a connection of the test's own (any node will do)."""
    nc = await nats.connect(servers=list(cluster.urls), connect_timeout=2, max_reconnect_attempts=5)
    try:
        msg = await nc.request(f"$JS.API.{subject}", json.dumps(body or {}).encode(), timeout=5)
    finally:
        await nc.close()
    reply: dict[str, Any] = json.loads(msg.data)
    assert "error" not in reply, reply
    return reply


def assert_replicated(info: dict[str, Any], cluster: NatsCluster, *, current: int = 2) -> None:
    """A stream (or consumer) info: a leader on a node of the cluster and two other replicas, `current` of them current."""
    placement = info["cluster"]
    assert placement["name"] == cluster.name
    assert placement["leader"] in cluster.server_names
    peers = placement["replicas"]
    assert 2 == len(peers), placement
    assert {placement["leader"], *(p["name"] for p in peers)} == set(cluster.server_names)
    assert current == sum(1 for p in peers if p.get("current")), placement


async def same_on_every_node(
    cluster: NatsCluster, streams: tuple[str, ...] = (STREAM, AUDIT), wait: float = 15
) -> None:
    """Wait (bounded) until every running node holds the same last sequence of each stream; fail otherwise."""
    deadline = time.monotonic() + wait
    seen: dict[str, set[tuple[int, int]]] = {}
    while time.monotonic() < deadline:
        seen = {s: set() for s in streams}
        for i in range(cluster.size):
            if cluster.running(i):
                for detail in cluster.streams(i):
                    if detail["name"] in seen:
                        seen[detail["name"]].add((i, int(detail["state"]["last_seq"])))
        running = sum(1 for i in range(cluster.size) if cluster.running(i))
        if all(len(nodes) == running and len({seq for _, seq in nodes}) == 1 for nodes in seen.values()):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the nodes do not hold the same streams: {seen}")


async def audit_report(env: ClusterHub) -> tuple[Counter[str], bool]:
    """Collection records per distribution id in the audit log, and whether the chain verifies."""
    log = await tools.read_log(env.hub.js)
    assert env.hub.audit is not None
    report = verify(log.stream, log.items, env.hub.audit.trusted, last_seq=log.last_seq)
    records = [r for item in log.items for r in audit_pb2.AuditEntry.FromString(item.data).records]
    collections = Counter(r.distribution_id for r in records if r.action == audit_pb2.ACTION_COLLECTION)
    return collections, report.ok


async def assert_accounted_for(env: ClusterHub, sent: list[str]) -> None:
    """After a node was lost: each envelope sent stored once, recorded at least once, the chain intact.

    A write whose records were stored and whose deliveries were not is retried and recorded
    again (docs/audit.md, "Retries and the audit log"): more than once is allowed, never less,
    never for an envelope that was not sent.
    """
    assert Counter(dict.fromkeys(sent, 1)) == await stored_deliveries(env.cluster)
    collections, chain_ok = await audit_report(env)
    assert set(sent) == set(collections)
    assert all(count >= 1 for count in collections.values())
    assert chain_ok


async def stored_deliveries(cluster: NatsCluster) -> Counter[str]:
    """How many delivery messages the stream holds per distribution id (the last token of the subject)."""
    info = await js_api(cluster, f"STREAM.INFO.{STREAM}", {"subjects_filter": "opsroom.dlv.>"})
    subjects: dict[str, int] = info["state"].get("subjects") or {}
    out: Counter[str] = Counter()
    for subject, count in subjects.items():
        out[subject.rsplit(".", 1)[-1]] += count
    return out


async def send_and_receive(sender: HubClient, room: HubClient, count: int, *, timeout: float = 30) -> list[str]:
    """Publish count envelopes to the Questura one after the other; return their ids once the room has them all, in order."""
    sent = []
    for _ in range(count):
        envelope = f.envelope(f.CUR, (f.QUESTURA,))
        acceptance = await sender.publish(envelope)
        assert envelope.distribution_id == acceptance.distribution_id
        sent.append(envelope.distribution_id)
    received = [d.envelope.distribution_id for d in await take(room.inbox(), count, timeout=timeout)]
    assert sent == received
    return sent


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_cluster_nodes_are_killed_restarted_and_stopped_by_pid(tmp_path: Path) -> None:
    """NatsCluster alone: three processes, one meta leader; kill(i) ends that PID, restart(i) keeps its ports, stop() all."""
    cluster = NatsCluster(tmp_path / "nats")
    await asyncio.to_thread(cluster.start)
    try:
        pids = cluster.pids
        assert 3 == len({pid for pid in pids if pid is not None})
        assert cluster.meta_leader() in range(3)
        urls, monitors = cluster.urls, cluster.monitor_urls
        cluster.kill(1)
        assert cluster.pids[1] is None
        assert pids[1] is not None
        assert not alive(pids[1])
        await asyncio.to_thread(cluster.restart, 1)
        assert cluster.pids[1] not in (None, pids[1])
        assert (urls, monitors) == (cluster.urls, cluster.monitor_urls)
        assert [pids[0], pids[2]] == [cluster.pids[0], cluster.pids[2]]
        running = cluster.pids
    finally:
        cluster.stop()
    assert (None, None, None) == cluster.pids
    assert not any(alive(pid) for pid in running if pid is not None)


async def test_streams_and_consumers_have_three_replicas(env: ClusterHub) -> None:
    """Deliveries and the audit log are each stored on all three nodes; rooms get everything, in order."""
    sender = env.client(f.CUR, retry=PATIENT)
    questura, pl = env.client(f.QUESTURA, retry=PATIENT), env.client(f.PL, retry=PATIENT)
    try:
        sent = [f.envelope(f.CUR, (f.QUESTURA, f.PL)) for _ in range(30)]
        await sender.publish_many(sent, batch_size=10)
        for room in (questura, pl):
            deliveries = await take(room.inbox(), len(sent))
            assert [e.distribution_id for e in sent] == [d.envelope.distribution_id for d in deliveries]
            await nothing_more(room.inbox(), wait=0.5)

        await asyncio.to_thread(env.cluster.wait_healthy, 10)  # every replica current
        for stream in (STREAM, AUDIT):
            info = await js_api(env.cluster, f"STREAM.INFO.{stream}")
            assert 3 == info["config"]["num_replicas"]
            assert "file" == info["config"]["storage"]
            assert_replicated(info, env.cluster)
        consumers = (await js_api(env.cluster, f"CONSUMER.LIST.{STREAM}"))["consumers"]
        assert consumers  # the two rooms' consumers, replicated like their stream
        for consumer in consumers:
            assert_replicated(consumer, env.cluster)
        await same_on_every_node(env.cluster)

        assert Counter({e.distribution_id: 2 for e in sent}) == await stored_deliveries(env.cluster)
        collections, chain_ok = await audit_report(env)
        assert Counter({e.distribution_id: 1 for e in sent}) == collections
        assert chain_ok
    finally:
        for client in (sender, questura, pl):
            await client.close()


async def test_a_follower_node_lost_and_restarted(env: ClusterHub) -> None:
    """Kill a node leading neither stream: publishing and delivery go on; restarted, it catches up."""
    cluster = env.cluster
    sender, room = env.client(f.CUR, retry=PATIENT), env.client(f.QUESTURA, retry=PATIENT)
    try:
        before = await send_and_receive(sender, room, 5)
        leaders = {cluster.stream_leader(STREAM), cluster.stream_leader(AUDIT)}
        victim = next(i for i in range(cluster.size) if i not in leaders)
        cluster.kill(victim)
        assert cluster.pids[victim] is None

        during = await send_and_receive(sender, room, 20)
        info = await js_api(cluster, f"STREAM.INFO.{STREAM}")
        assert 3 == info["config"]["num_replicas"]
        assert cluster.server_names[victim] in {p["name"] for p in info["cluster"]["replicas"]}

        await asyncio.to_thread(cluster.restart, victim)
        await same_on_every_node(cluster)
        for stream in (STREAM, AUDIT):
            assert_replicated(await js_api(cluster, f"STREAM.INFO.{stream}"), cluster)
        after = await send_and_receive(sender, room, 5)
        await nothing_more(room.inbox(), wait=0.5)

        await assert_accounted_for(env, [*before, *during, *after])
    finally:
        await sender.close()
        await room.close()


async def test_the_stream_leader_lost_and_restarted(env: ClusterHub) -> None:
    """Kill the node leading the delivery stream while a room publishes: every event arrives once, in order."""
    cluster = env.cluster
    sender, room = env.client(f.CUR, retry=PATIENT), env.client(f.QUESTURA, retry=PATIENT)
    try:
        before = await send_and_receive(sender, room, 5)
        victim = cluster.stream_leader(STREAM)
        sent: list[str] = []
        some_accepted = asyncio.Event()

        async def publish(count: int) -> None:
            for _ in range(count):
                envelope = f.envelope(f.CUR, (f.QUESTURA,))
                acceptance = await sender.publish(envelope)
                assert envelope.distribution_id == acceptance.distribution_id
                sent.append(envelope.distribution_id)
                if len(sent) == 5:
                    some_accepted.set()

        publishing = asyncio.create_task(publish(30))
        await asyncio.wait_for(some_accepted.wait(), timeout=15)
        cluster.kill(victim)  # with writes in flight
        received = [d.envelope.distribution_id for d in await take(room.inbox(), 30, timeout=45)]
        await asyncio.wait_for(publishing, timeout=15)
        assert sent == received  # within the waits' liveness bounds above
        assert victim != cluster.stream_leader(STREAM)

        await asyncio.to_thread(cluster.restart, victim)
        await same_on_every_node(cluster)
        after = await send_and_receive(sender, room, 5)
        await nothing_more(room.inbox(), wait=0.5)

        await assert_accounted_for(env, [*before, *sent, *after])
    finally:
        await sender.close()
        await room.close()
