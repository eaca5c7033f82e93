"""Owns the development commands of `opsroom`: demo (embedded nats-server, hub and rooms), sim, dev-certs.

broker/cli.py loads this module only when one of them is run, so `opsroom serve` never imports
the development helpers.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from broker.config import HubConfig, load, named_files
from broker.dev import sim
from broker.dev.certs import NATS_HUB_USER, DevPki, make_dev_pki, nats_authorization, write_crl
from broker.dev.embedded import NatsServer
from broker.dev.testing import dev_config
from broker.edge.servicer import SERVICE
from broker.errors import ConfigError, ServerUnreachable
from broker.hub import Hub
from broker.ops.console import say as _print


def write_config(path: Path, cfg: HubConfig, pki: DevPki, nats: NatsServer, port: int) -> Path:
    """A hub.toml for a development hub on port with this PKI and nats-server.

    The demo writes it beside the hub it runs (for `opsroom status` and `opsroom audit`); the
    load drill starts a hub process from it.
    """
    agencies = "".join(f'[[agencies]]\nid = "{a.id}"\nname = "{a.name}"\n' for a in cfg.agencies)
    path.write_text(
        f"""# Written by opsroom for a development hub (the files are its development PKI and nats-server).
[hub]
listen = "127.0.0.1:{port}"
[tls]
ca_file = "{pki.ca.resolve()}"
cert_file = "{pki.hub.cert.resolve()}"
key_file = "{pki.hub.key.resolve()}"
[nats]
servers = ["{nats.url}"]
monitor_urls = ["{nats.monitor_url}"]
user = "{NATS_HUB_USER}"
password_file = "{pki.nats_password.resolve()}"
[audit]
signing_key = "{pki.audit_key.resolve()}"
[agreements]
folder = "{cfg.agreements.folder.resolve() if cfg.agreements is not None else ""}"
{agencies}""",
        encoding="utf-8",
    )
    return path


def _prepare(data: Path, *, keep: bool) -> DevPki:
    data.mkdir(parents=True, exist_ok=True)
    if not keep:
        shutil.rmtree(data / "nats" / "jetstream", ignore_errors=True)
    return make_dev_pki(data / "pki", sim.TORINO_ROOMS)


async def demo(
    data: Path,
    *,
    listen: str,
    metrics_listen: str,
    once: bool,
    keep: bool,
    agreements: Path,
    play: Callable[..., Awaitable[int]],
) -> int:
    """The embedded default: nats-server, the hub and four simulated Torino rooms playing a scenario."""
    pki = _prepare(data, keep=keep)
    # nats-server takes the hub's user only (the dev PKI's password), limited to the hub's subjects and streams.
    nats = NatsServer(data / "nats", extra_config=nats_authorization(pki.nats_password.read_text().strip()))
    _print(f"starting nats-server ({nats.binary}) with JetStream in {data / 'nats'}, sync_interval: always")
    nats.start()
    try:
        cfg = dev_config(
            pki, nats, sim.TORINO_ROOMS, (), listen=listen, metrics_listen=metrics_listen, agreements=agreements
        )
        cfg = replace(cfg, nats=replace(cfg.nats, user=NATS_HUB_USER, password_file=pki.nats_password))
        hub = Hub(replace(cfg, reflection=True))  # a development hub: grpcurl may list and describe it
        await hub.start()
        status_config = write_config(data / "hub.toml", cfg, pki, nats, hub.port)
        metrics = f"http://127.0.0.1:{hub.metrics_port}/metrics" if hub.metrics_port else "off"
        _print(f"hub listening on 127.0.0.1:{hub.port} (mTLS, dev CA in {data / 'pki'}); metrics: {metrics}")
        _print(f"routing by the agreements in {agreements}")
        _print(f"its config: {status_config} (opsroom status --config {status_config})")
        try:
            return await play(f"127.0.0.1:{hub.port}", pki, once=once)
        finally:
            await hub.stop(grace=2)
    finally:
        nats.stop()
        _print("stopped nats-server")


async def rooms(target: str, pki_root: Path, *, once: bool, wait: float, play: Callable[..., Awaitable[int]]) -> int:
    """The four simulated Torino rooms and their scenario, against a hub running at target.

    Waits (up to wait seconds) for the hub's gRPC health to say SERVING first.
    """
    pki = DevPki.at(pki_root)
    for agency_id in sim.TORINO_ROOMS:
        pair = pki.agency(agency_id)
        for path in (pki.ca, pair.cert, pair.key):
            if not path.is_file():
                raise ConfigError(f"{path}: no such file (make the PKI with `opsroom dev-certs --config FILE`)")
    await wait_serving(target, pki, next(iter(sim.TORINO_ROOMS)), wait)
    _print(f"the hub at {target} is serving; rooms connecting with the certificates in {pki_root}")
    return await play(target, pki, once=once)


async def wait_serving(target: str, pki: DevPki, agency_id: str, within: float) -> None:
    """Until the hub at target says SERVING to a gRPC health check (mTLS as agency_id); else ServerUnreachable."""
    pair = pki.agency(agency_id)
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    options = [("grpc.ssl_target_name_override", "localhost")]  # the dev hub certificate's name
    async with grpc.aio.secure_channel(target, creds, options=options) as channel:
        health_check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while True:
            try:
                reply = await health_check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass  # not listening yet, or still starting
            if loop.time() >= deadline:
                raise ServerUnreachable(f"no hub serving at {target} within {within:g} s: is `opsroom serve` running?")
            await asyncio.sleep(0.5)


def dev_certs(
    out: Path | None,
    agencies: Sequence[str],
    config: Path | None,
    *,
    revoke: Sequence[str] = (),
    reinstate: Sequence[str] = (),
) -> int:
    """Make (or complete) a development PKI, by default where the config's [tls] files are.

    With a config: a certificate for each of its agencies, and its audit signing key where
    audit.signing_key names it. With revoke or reinstate: the CA's revocation list crl.pem,
    with those agencies' certificates added or taken off (a running hub whose tls.crl_file
    names it reads it again within tls.reload_seconds).
    """
    cfg = load(config) if config is not None else None
    if out is None:
        if cfg is None:
            raise ConfigError("dev-certs: give --out FOLDER, or --config FILE to write where that config looks")
        out = cfg.tls.ca_file.parent
    wanted = [*agencies, *(a.id for a in cfg.agencies)] if cfg is not None else list(agencies)
    audit_key = cfg.audit.signing_key if cfg is not None and cfg.audit is not None else None
    pki = make_dev_pki(out, wanted, audit_key=audit_key)
    _print(f"CA: {pki.ca}\nhub: {pki.hub.cert}")
    for agency_id in wanted:
        _print(f"{agency_id}: {pki.agency(agency_id).cert}")
    _print(f"audit signing key: {pki.audit_key}")
    _print(f"hub's NATS password: {pki.nats_password} (user {NATS_HUB_USER}; nats-server: {pki.nats_auth})")
    if revoke or reinstate:
        for agency_id in [*revoke, *reinstate]:
            if not pki.agency(agency_id).cert.is_file():
                raise ConfigError(f"dev-certs: no certificate for {agency_id} in {out}")
        crl = write_crl(out, revoke, reinstate)
        added, removed = ", ".join(revoke) or "none", ", ".join(reinstate) or "none"
        _print(f"revocation list: {crl} (revoked: {added}; reinstated: {removed})")
    if cfg is not None:
        for key, path, _folder in named_files(cfg):
            if key.startswith("tls.") and not path.is_file():
                _print(f"note: {config}: {key} names {path}, which is not in this PKI ({out})")
    return 0
