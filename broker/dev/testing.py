"""Helpers to run a real hub on loopback for the demo, the tests and the benchmark: dev PKI, config, nats-server, hub.

async with local_hub(tmp_path, agencies, allow) as env:
    client = env.client("it.pl.001272")

cluster_hub does the same over a 3-node nats-server cluster (streams with 3 replicas).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from opsroom_client import Credentials, HubClient, RetryPolicy

from broker.config import Agency, AgreementsConfig, AuditConfig, HubConfig, NatsConfig, TlsConfig
from broker.dev.certs import NATS_HUB_USER, DevPki, make_dev_pki, nats_authorization
from broker.dev.cluster import NatsCluster
from broker.dev.embedded import NatsServer
from broker.hub import Hub
from broker.policy.routing import AllowRule
from broker.times import Clock


def dev_config(
    pki: DevPki,
    nats: NatsServer,
    agencies: Mapping[str, str],
    allow: Iterable[AllowRule],
    *,
    listen: str = "127.0.0.1:0",
    metrics_listen: str = "",
    agreements: Path | None = None,
    drill_only: Iterable[str] = (),
    receives: Mapping[str, str] | None = None,
) -> HubConfig:
    """A hub config for a local nats-server and a dev PKI; with agreements, routing by the agreement files.

    The audit log is on, signed with the dev PKI's audit key.
    """
    return HubConfig(
        listen=listen,
        metrics_listen=metrics_listen,
        tls=TlsConfig(pki.ca, pki.hub.cert, pki.hub.key),
        nats=NatsConfig(servers=(nats.url,), monitor_urls=(nats.monitor_url,)),
        agencies=tuple(
            Agency(agency_id, name, agency_id in set(drill_only), (receives or {}).get(agency_id, "grpc"))
            for agency_id, name in agencies.items()
        ),
        allow=() if agreements is not None else tuple(allow),
        agreements=AgreementsConfig(agreements, timedelta(seconds=0.2)) if agreements is not None else None,
        audit=AuditConfig(pki.audit_key),
    )


def credentials(pki: DevPki, agency_id: str) -> Credentials:
    """The dev credentials of an agency."""
    pair = pki.agency(agency_id)
    return Credentials.from_files(pki.ca, pair.cert, pair.key)


@dataclass(kw_only=True)
class _RunningHub:
    """A running hub, with the PKI to make clients."""

    pki: DevPki
    hub: Hub

    @property
    def target(self) -> str:
        """The hub's gRPC address."""
        return f"127.0.0.1:{self.hub.port}"

    def client(self, agency_id: str, retry: RetryPolicy | None = None) -> HubClient:
        """A client authenticated as agency_id."""
        return HubClient(self.target, credentials(self.pki, agency_id), server_name="localhost", retry=retry)


@dataclass(kw_only=True)
class LocalHub(_RunningHub):
    """A running nats-server and hub, with the PKI to make clients."""

    nats: NatsServer


@contextlib.asynccontextmanager
async def _started(cfg: HubConfig, clock: Clock | None = None) -> AsyncIterator[Hub]:
    """A hub started with cfg (and clock, if given), stopped (with a short grace) on exit."""
    hub = Hub(cfg, clock=clock)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop(grace=2)


@contextlib.asynccontextmanager
async def local_hub(
    root: Path,
    agencies: Mapping[str, str],
    allow: Iterable[AllowRule],
    *,
    extra_certs: Iterable[str] = (),
    metrics_listen: str = "",
    nats_config: NatsConfig | None = None,
    agreements: Path | None = None,
    drill_only: Iterable[str] = (),
    clock: Clock | None = None,
    receives: Mapping[str, str] | None = None,
    nats_auth: bool = False,
    nats_users: str = "",
    **overrides: Any,
) -> AsyncIterator[LocalHub]:
    """Start nats-server and a hub under root; stop both (by PID for the server) on exit.

    overrides replace HubConfig fields (e.g. heartbeat=timedelta(seconds=1)); clock replaces the
    system's (a broker.times.ManualClock in tests). With nats_auth, nats-server requires the
    hub's user and password (the dev PKI's), limited to the hub's subjects and streams;
    nats_users adds more users to its account (config text).
    """
    pki = make_dev_pki(root / "pki", [*agencies, *extra_certs])
    auth = nats_authorization(pki.nats_password.read_text().strip(), extra_users=nats_users) if nats_auth else ""
    nats = NatsServer(root / "nats", extra_config=auth)
    nats.start()
    try:
        cfg = dev_config(
            pki,
            nats,
            agencies,
            allow,
            metrics_listen=metrics_listen,
            agreements=agreements,
            drill_only=drill_only,
            receives=receives,
        )
        if nats_config is not None:
            cfg = replace(cfg, nats=replace(nats_config, servers=cfg.nats.servers, monitor_urls=cfg.nats.monitor_urls))
        if nats_auth:
            cfg = replace(cfg, nats=replace(cfg.nats, user=NATS_HUB_USER, password_file=pki.nats_password))
        cfg = replace(cfg, **overrides)
        async with _started(cfg, clock) as hub:
            yield LocalHub(pki=pki, nats=nats, hub=hub)
    finally:
        nats.stop()


@dataclass(kw_only=True)
class ClusterHub(_RunningHub):
    """A running nats-server cluster and a hub whose streams have one replica per node, with the PKI to make clients."""

    cluster: NatsCluster


@contextlib.asynccontextmanager
async def cluster_hub(
    root: Path,
    agencies: Mapping[str, str],
    allow: Iterable[AllowRule],
    *,
    size: int = 3,
    extra_certs: Iterable[str] = (),
    metrics_listen: str = "",
    nats_config: NatsConfig | None = None,
    agreements: Path | None = None,
    drill_only: Iterable[str] = (),
    **overrides: Any,
) -> AsyncIterator[ClusterHub]:
    """Like local_hub, over a NatsCluster of size nodes under root/nats (replicas = size); stops all by PID on exit.

    The hub is given every node's client and monitoring URL; nats_config's other fields are kept.
    """
    pki = make_dev_pki(root / "pki", [*agencies, *extra_certs])
    cluster = NatsCluster(root / "nats", size)
    cluster.start()
    try:
        cfg = dev_config(
            pki,
            cluster.nodes[0],
            agencies,
            allow,
            metrics_listen=metrics_listen,
            agreements=agreements,
            drill_only=drill_only,
        )
        base = nats_config if nats_config is not None else cfg.nats
        nats = replace(base, servers=cluster.urls, monitor_urls=cluster.monitor_urls, replicas=size)
        cfg = replace(cfg, nats=nats, **overrides)
        async with _started(cfg) as hub:
            yield ClusterHub(pki=pki, cluster=cluster, hub=hub)
    finally:
        cluster.stop()
