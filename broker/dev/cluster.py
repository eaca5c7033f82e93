"""A 3-node nats-server cluster on loopback ports for tests, benchmarks and fault injection.

Each node is a broker.dev.embedded.NatsServer (127.0.0.1 only, sync_interval: always, its own store
folder under root) with a cluster block routing to every node. start() returns once the
JetStream meta group has a leader that every node agrees on and every node is healthy; kill(i)
crashes one node (SIGKILL by PID), restart(i) brings it back on the same ports and folder and
waits until it has caught up. Nodes are numbered from 0.

    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    try:
        ...  # connect to cluster.urls; streams with num_replicas 3
    finally:
        cluster.stop()
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from broker.dev.embedded import NatsServer, find_nats_server, free_port
from broker.ops.logging import get_logger

log = get_logger(__name__)

CLUSTER_TEMPLATE = """
# Written by opsroom for a loopback test cluster; see deploy/nats/cluster/ for production configs.
cluster {{
  name: {cluster_name}
  listen: 127.0.0.1:{cluster_port}
  # Every node lists every node (itself included, which nats-server skips): any one of them
  # coming back finds the others.
  routes: [
{routes}
  ]
}}
"""


def _distinct_ports(count: int) -> list[int]:
    """As many different free loopback ports as asked (free_port alone may return the same port twice)."""
    ports: list[int] = []
    for _ in range(count * 20):
        port = free_port()
        if port not in ports:
            ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"could not find {count} distinct free ports on 127.0.0.1")


def _get_json(url: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body of a monitoring endpoint (errors too: /healthz explains a 503)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our loopback http URL
            status = int(response.status)
            body = response.read()
    except urllib.error.HTTPError as exc:
        status = exc.code
        body = exc.read()
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    return status, data if isinstance(data, dict) else {}


class NatsCluster:
    """A JetStream cluster of `size` nats-server processes on 127.0.0.1 (nodes numbered from 0)."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        name: str = "opsroom-test",
        binary: Path | None = None,
    ) -> None:
        """Choose the ports and write nothing yet; start() writes one config per node under root."""
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.root = root
        self.size = size
        self.name = name
        ports = _distinct_ports(3 * size)
        client_ports, cluster_ports, monitor_ports = ports[:size], ports[size : 2 * size], ports[2 * size :]
        routes = "\n".join(f"    nats-route://127.0.0.1:{port}" for port in cluster_ports)
        server = binary if binary is not None else find_nats_server()
        self.nodes: list[NatsServer] = [
            NatsServer(
                root / f"nats-{i + 1}",
                name=f"{name}-{i + 1}",
                port=client_ports[i],
                monitor_port=monitor_ports[i],
                binary=server,
                extra_config=CLUSTER_TEMPLATE.format(cluster_name=name, cluster_port=cluster_ports[i], routes=routes),
            )
            for i in range(size)
        ]
        self.cluster_ports = tuple(cluster_ports)

    @property
    def urls(self) -> tuple[str, ...]:
        """Client URLs of every node, for NatsConfig.servers."""
        return tuple(node.url for node in self.nodes)

    @property
    def monitor_urls(self) -> tuple[str, ...]:
        """Monitoring URLs of every node, for NatsConfig.monitor_urls."""
        return tuple(node.monitor_url for node in self.nodes)

    @property
    def pids(self) -> tuple[int | None, ...]:
        """PID of each node's nats-server, None for a node that is not running."""
        return tuple(node.pid if self.running(i) else None for i, node in enumerate(self.nodes))

    @property
    def server_names(self) -> tuple[str, ...]:
        """server_name of each node (as /jsz and stream cluster info name them)."""
        return tuple(node.name for node in self.nodes)

    def running(self, i: int) -> bool:
        """Whether node i's process is alive."""
        proc = self.nodes[i].proc
        return proc is not None and proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start every node; return when the cluster has a JetStream meta leader and every node is healthy.

        timeout bounds the whole start. On failure every node started is stopped again.
        """
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                # Each returns as soon as its JetStream is enabled; the meta group forms afterwards.
                node.start(timeout=max(deadline - time.monotonic(), 0.1))
            self.wait_healthy(timeout=max(deadline - time.monotonic(), 0.1))
        except BaseException:
            self.stop()
            raise
        log.info("nats_cluster_started", size=self.size, pids=list(self.pids))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node by PID: SIGTERM, then SIGKILL if one does not exit within timeout."""
        for node in self.nodes:
            node.stop(timeout=timeout)

    def kill(self, i: int) -> None:
        """SIGKILL node i by its PID, as a crash would: nothing is flushed."""
        self.nodes[i].kill()
        log.info("nats_node_killed", node=i)

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start node i again (stopping it first if it runs) on its ports and folder; wait until caught up.

        timeout bounds the wait (the stop before it has its own). Caught up: the node is healthy
        (/healthz: meta group current, every stream and consumer replica it holds current), and
        every stream leader reports its replica current.
        """
        deadline = time.monotonic() + timeout
        if self.running(i):
            self.nodes[i].stop()
        self.nodes[i].start(timeout=max(deadline - time.monotonic(), 0.1))
        self.wait_healthy(timeout=max(deadline - time.monotonic(), 0.1))
        log.info("nats_node_restarted", node=i, pid=self.nodes[i].pid)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait (at most timeout seconds) until every running node is healthy and agrees on one meta leader."""
        deadline = time.monotonic() + timeout
        problem = "not checked yet"
        while time.monotonic() < deadline:
            for i, node in enumerate(self.nodes):
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(
                        f"nats-server node {i} exited with {node.proc.returncode}; see {node.data_dir}/nats-server.log"
                    )
            found = self._problem()
            if found is None:
                return
            problem = found
            time.sleep(0.1)
        raise TimeoutError(f"nats cluster not healthy within {timeout} s: {problem}")

    def _problem(self) -> str | None:
        """What keeps the running nodes from being a healthy cluster now, or None."""
        running = [i for i in range(self.size) if self.running(i)]
        if not running:
            return "no node is running"
        leaders: set[str] = set()
        try:
            for i in running:
                problem, leader = self._node_problem(i)
                if problem is not None:
                    return problem
                leaders.add(leader)
            if len(leaders) != 1:
                return f"nodes disagree on the meta leader: {sorted(leaders)}"
            return self._stream_problem(running)
        except (urllib.error.URLError, OSError, ValueError, RuntimeError) as exc:
            return f"monitoring unreachable: {exc}"

    def _node_problem(self, i: int) -> tuple[str | None, str]:
        """(what is wrong with node i or None, the meta leader it follows)."""
        status, health = _get_json(f"{self.nodes[i].monitor_url}/healthz")
        if status != 200:
            return f"node {i}: {health.get('error', status)}", ""
        meta = self.jsz(i).get("meta_cluster", {})
        if not meta.get("leader"):
            return f"node {i}: no meta leader", ""
        if int(meta.get("cluster_size", 0)) != self.size:
            return f"node {i}: meta group of {meta.get('cluster_size')} nodes", ""
        return None, str(meta["leader"])

    def _stream_problem(self, running: list[int]) -> str | None:
        """A stream without a running leader, or a replica on a running node its leader does not report current."""
        names = {self.nodes[i].name for i in running}
        seen: set[str] = set()
        led: set[str] = set()
        for i in running:
            for stream in self.streams(i):
                name = str(stream.get("name"))
                seen.add(name)
                cluster = stream.get("cluster", {})
                if cluster.get("leader") != self.nodes[i].name:
                    continue  # each stream is judged by its leader
                led.add(name)
                for replica in cluster.get("replicas", []) or []:
                    if replica.get("name") in names and not replica.get("current"):
                        return f"stream {name}: replica on {replica.get('name')} not current"
        leaderless = sorted(seen - led)
        return f"stream {leaderless[0]}: no leader on a running node" if leaderless else None

    def jsz(self, i: int, query: str = "") -> dict[str, Any]:
        """Node i's /jsz (JetStream state), with an optional query such as "accounts=true&streams=true"."""
        status, data = _get_json(f"{self.nodes[i].monitor_url}/jsz" + (f"?{query}" if query else ""))
        if status != 200:
            raise RuntimeError(f"node {i}: /jsz answered {status}")
        return data

    def streams(self, i: int) -> list[dict[str, Any]]:
        """The streams node i holds a replica of, as /jsz details them (name, state, cluster)."""
        data = self.jsz(i, "accounts=true&streams=true")
        out: list[dict[str, Any]] = []
        for account in data.get("account_details", []) or []:
            out.extend(account.get("stream_detail", []) or [])
        return out

    def meta_leader(self) -> int:
        """Index of the node leading the JetStream meta group (as the first running node sees it)."""
        for i in range(self.size):
            if self.running(i):
                return self._index(str(self.jsz(i).get("meta_cluster", {}).get("leader", "")))
        raise RuntimeError("no node is running")

    def stream_leader(self, stream: str) -> int:
        """Index of the node leading stream (as the running nodes holding it see it)."""
        for i in range(self.size):
            if not self.running(i):
                continue
            for detail in self.streams(i):
                if detail.get("name") == stream and detail.get("cluster", {}).get("leader"):
                    return self._index(str(detail["cluster"]["leader"]))
        raise LookupError(f"no running node knows a leader of stream {stream}")

    def _index(self, server_name: str) -> int:
        try:
            return self.server_names.index(server_name)
        except ValueError:
            raise LookupError(f"{server_name!r} is not a node of this cluster") from None
