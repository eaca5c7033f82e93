"""The `opsroom` command: serve the hub, the embedded demo, development certificates, agreements, the audit log."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from broker.audit import command as audit_command
from broker.config import check_files, load, named_files
from broker.dev import sim
from broker.dev.certs import DevPki, make_dev_pki
from broker.dev.embedded import NatsServer
from broker.dev.testing import credentials, dev_config
from broker.edge.servicer import SERVICE
from broker.errors import ConfigError, OpsroomError, ServerUnreachable
from broker.hub import Hub
from broker.ops import logging as hub_logging
from broker.policy.loader import AgreementsInvalid, load_dir

log = hub_logging.get_logger(__name__)
_DEFAULT_AGREEMENTS = Path(__file__).resolve().parent.parent / "deploy" / "agreements"


def _print(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the demo's output is for a person at a terminal


async def _until_signal(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(config_path: Path) -> int:
    """Run the hub with a config file until SIGINT or SIGTERM, then drain and stop.

    Returns 1 if the hub stopped by itself because a background task failed (systemd restarts it).
    """
    cfg = load(config_path)
    check_files(cfg, str(config_path))  # before any connection or stream: one line naming what is missing
    hub = Hub(cfg)
    try:
        await hub.start()
    except BaseException:
        await hub.stop(grace=0)  # close what start() opened before it failed
        raise
    _print(f"opsroom hub listening on {cfg.listen} (port {hub.port}); metrics on {cfg.metrics_listen or 'off'}")
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hub.reload_agreements)
    signalled = asyncio.get_running_loop().create_task(_until_signal(asyncio.Event()), name="signals")
    stopped = asyncio.get_running_loop().create_task(hub.wait(), name="hub-stopped")
    try:
        await asyncio.wait([signalled, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (signalled, stopped):
            task.cancel()
        await asyncio.gather(signalled, stopped, return_exceptions=True)
    await hub.stop()
    if hub.failure is not None:
        print(f"opsroom: the hub stopped because its task {hub.failure.task} failed", file=sys.stderr)  # noqa: T201
        return 1
    return 0


def _prepare(data: Path, *, keep: bool) -> DevPki:
    data.mkdir(parents=True, exist_ok=True)
    if not keep:
        shutil.rmtree(data / "nats" / "jetstream", ignore_errors=True)
    return make_dev_pki(data / "pki", sim.TORINO_ROOMS)


async def demo(data: Path, *, listen: str, metrics_listen: str, once: bool, keep: bool, agreements: Path) -> int:
    """The embedded default: nats-server, the hub and four simulated Torino rooms playing a scenario."""
    pki = _prepare(data, keep=keep)
    nats = NatsServer(data / "nats")
    _print(f"starting nats-server ({nats.binary}) with JetStream in {data / 'nats'}, sync_interval: always")
    nats.start()
    try:
        cfg = dev_config(
            pki, nats, sim.TORINO_ROOMS, (), listen=listen, metrics_listen=metrics_listen, agreements=agreements
        )
        hub = Hub(cfg)
        await hub.start()
        metrics = f"http://127.0.0.1:{hub.metrics_port}/metrics" if hub.metrics_port else "off"
        _print(f"hub listening on 127.0.0.1:{hub.port} (mTLS, dev CA in {data / 'pki'}); metrics: {metrics}")
        _print(f"routing by the agreements in {agreements}")
        try:
            return await _play(f"127.0.0.1:{hub.port}", pki, once=once)
        finally:
            await hub.stop(grace=2)
    finally:
        nats.stop()
        _print("stopped nats-server")


async def rooms(target: str, pki_root: Path, *, once: bool, wait: float) -> int:
    """The four simulated Torino rooms and their scenario, against a hub running at target.

    Waits (up to wait seconds) for the hub's gRPC health to say SERVING first.
    """
    pki = DevPki.at(pki_root)
    for agency_id in sim.TORINO_ROOMS:
        pair = pki.agency(agency_id)
        for path in (pki.ca, pair.cert, pair.key):
            if not path.is_file():
                raise ConfigError(f"{path}: no such file (make the PKI with `opsroom dev-certs --config FILE`)")
    await _wait_serving(target, pki, next(iter(sim.TORINO_ROOMS)), wait)
    _print(f"the hub at {target} is serving; rooms connecting with the certificates in {pki_root}")
    return await _play(target, pki, once=once)


async def _wait_serving(target: str, pki: DevPki, agency_id: str, within: float) -> None:
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


async def _play(target: str, pki: DevPki, *, once: bool) -> int:
    from opsroom_client import HubClient  # noqa: PLC0415 - keeps `opsroom serve` free of client code

    rooms = {
        agency_id: sim.Room(
            agency_id,
            name,
            HubClient(target, credentials(pki, agency_id), server_name="localhost"),
            _print,
            accepts=frozenset(
                {"assistance_request"}
                if agency_id == sim.CC
                else {"handover_request"}
                if agency_id == sim.QUESTURA
                else ()
            ),
        )
        for agency_id, name in sim.TORINO_ROOMS.items()
    }
    async with asyncio.TaskGroup() as group:
        for room in rooms.values():
            group.create_task(room.run())
        try:
            receipts = await sim.run_scenario(rooms, _print)
            for name, receipt in receipts.items():
                for line in sim.describe_receipt(name, receipt):
                    _print(line)
            if once:
                _print("scenario complete")
            else:
                _print("scenario complete; the hub keeps running with the rooms connected. Ctrl-C stops all.")
                await _until_signal(asyncio.Event())
        finally:
            for room in rooms.values():  # ends each room's inbox, and so its task
                await room.client.close()
    return 0


def policy_check(folder: Path) -> int:
    """Validate an agreements folder; prints each problem with file and line."""
    try:
        agreements = load_dir(folder)
    except AgreementsInvalid as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)  # noqa: T201
        print(f"{len(exc.problems)} problem(s); nothing would be loaded", file=sys.stderr)  # noqa: T201
        return 1
    for agreement in agreements.agreements:
        until = agreement.valid_until.isoformat() if agreement.valid_until else "open-ended"
        _print(
            f"{agreement.source}: {agreement.id}: {len(agreement.parties)} parties, {len(agreement.rules)} rules, "
            f"in force {agreement.valid_from.isoformat()} to {until}"
        )
    _print(f"{len(agreements.agreements)} agreement(s) valid; version {agreements.digest[:12]}")
    return 0


def policy_explain(envelope_file: Path, folder: Path, sender: str | None, at: str | None) -> int:
    """Who would receive an envelope (protobuf JSON) under the agreements, what each sees, and why."""
    from google.protobuf import json_format  # noqa: PLC0415
    from opsroom.envelope.v1 import envelope_pb2  # noqa: PLC0415

    from broker.policy.engine import Policy  # noqa: PLC0415
    from broker.policy.places import event_comuni, place_index  # noqa: PLC0415
    from broker.policy.routing import RoutingContext  # noqa: PLC0415

    env = json_format.Parse(envelope_file.read_text(encoding="utf-8"), envelope_pb2.Envelope())
    when = datetime.fromisoformat(at) if at else datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    agreements = load_dir(folder)
    policy = Policy(agreements, place_index())
    who = sender or env.sender.agency_id
    decision, considered = policy.explain(env, RoutingContext(who, now=when))
    comuni = ", ".join(sorted(event_comuni(env, place_index()))) or "unknown"
    _print(f"envelope {env.distribution_id} from {who} at {when.isoformat()}; event in comuni: {comuni}")
    _print(f"agreements version {agreements.digest[:12]}; rules of the sender:")
    for c in considered:
        _print(f"  {'applies' if c.applies else 'no     '}  {c.rule}: {c.why}")
    if decision.refusals:
        _print("refused (the whole envelope would get PERMISSION_DENIED RECIPIENT_NOT_ALLOWED):")
        for r in decision.refusals:
            _print(f"  {r.agency_id} at envelope.{r.field}: {r.why}")
        return 3
    if not decision.routes:
        _print("no recipient: FAILED_PRECONDITION NO_RECIPIENTS")
        return 3
    _print("recipients:")
    for route in decision.routes:
        hidden = sorted(route.mask.hidden) if route.mask is not None else []
        _print(f"  {route.agency_id} by {route.rule}; hidden: {', '.join(hidden) if hidden else 'nothing'}")
    return 0


def dev_certs(out: Path | None, agencies: Sequence[str], config: Path | None) -> int:
    """Make (or complete) a development PKI, by default where the config's [tls] files are.

    With a config: a certificate for each of its agencies, and its audit signing key where
    audit.signing_key names it.
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
    if cfg is not None:
        for key, path, _folder in named_files(cfg):
            if key.startswith("tls.") and not path.is_file():
                _print(f"note: {config}: {key} names {path}, which is not in this PKI ({out})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `opsroom` command."""
    parser = argparse.ArgumentParser(prog="opsroom", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default) or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    p_serve = commands.add_parser("serve", help="run the hub with a config file")
    p_serve.add_argument("--config", type=Path, required=True)

    p_demo = commands.add_parser("demo", help="embedded nats-server, hub and four simulated Torino rooms")
    p_demo.add_argument("--data", type=Path, default=Path(".opsroom/demo"))
    p_demo.add_argument("--listen", default="127.0.0.1:7443")
    p_demo.add_argument("--metrics-listen", default="127.0.0.1:9464", help="'' to turn off")
    p_demo.add_argument("--once", action="store_true", help="exit after the scenario instead of waiting for Ctrl-C")
    p_demo.add_argument("--keep-data", action="store_true", help="keep the JetStream data of the previous run")

    p_demo.add_argument("--agreements", type=Path, default=_DEFAULT_AGREEMENTS, help="agreements folder")

    p_policy = commands.add_parser("policy", help="check agreement files, or explain a routing decision")
    policy = p_policy.add_subparsers(dest="policy_command", required=True)
    p_check = policy.add_parser("check", help="validate every agreement file of a folder")
    p_check.add_argument("folder", type=Path)
    p_explain = policy.add_parser("explain", help="who gets an envelope (protobuf JSON file) and which fields, and why")
    p_explain.add_argument("envelope", type=Path)
    p_explain.add_argument("--agreements", type=Path, default=_DEFAULT_AGREEMENTS)
    p_explain.add_argument("--sender", help="the sending agency (default: the envelope's sender)")
    p_explain.add_argument("--at", help="when, ISO 8601 (default: now)")

    p_certs = commands.add_parser("dev-certs", help="make a development CA, hub and agency certificates")
    p_certs.add_argument("--out", type=Path, help="folder (default: the folder of the config's tls.ca_file)")
    p_certs.add_argument("--agency", action="append", default=[], help="agency id; repeat for several")
    p_certs.add_argument(
        "--config", type=Path, help="also every agency of this hub config, and its audit signing key where it says"
    )

    p_sim = commands.add_parser("sim", help="the four simulated Torino rooms against a running hub (dev certificates)")
    p_sim.add_argument("--hub", default="localhost:7443", help="host:port of the hub (default localhost:7443)")
    p_sim.add_argument("--pki", type=Path, default=Path("deploy/pki"), help="dev-certs folder (default deploy/pki)")
    p_sim.add_argument("--once", action="store_true", help="exit after the scenario instead of waiting for Ctrl-C")
    p_sim.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the hub to serve (default 30)")

    audit_command.add_commands(commands)

    args = parser.parse_args(argv)
    level = logging.getLevelNamesMapping().get(args.log_level.upper(), logging.WARNING)
    hub_logging.configure(json=args.command == "serve", level=level)
    try:
        return _run(args)
    except (ConfigError, OpsroomError, AgreementsInvalid, ServerUnreachable) as exc:
        print(f"opsroom: {exc}", file=sys.stderr)  # noqa: T201
        return 2


def _run(args: argparse.Namespace) -> int:  # noqa: PLR0911 - one branch per command
    if args.command == "serve":
        return asyncio.run(serve(args.config))
    if args.command == "demo":
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(
                demo(
                    args.data,
                    listen=args.listen,
                    metrics_listen=args.metrics_listen,
                    once=args.once,
                    keep=args.keep_data,
                    agreements=args.agreements,
                )
            )
        return 130
    if args.command == "audit":
        return audit_command.run(args)
    if args.command == "sim":
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(rooms(args.hub, args.pki, once=args.once, wait=args.wait))
        return 130
    if args.command == "policy":
        if args.policy_command == "check":
            return policy_check(args.folder)
        return policy_explain(args.envelope, args.agreements, args.sender, args.at)
    return dev_certs(args.out, args.agency, args.config)


if __name__ == "__main__":
    sys.exit(main())
