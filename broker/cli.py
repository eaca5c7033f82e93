"""The `opsroom` command: serve the hub, run the embedded demo, make development certificates."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from broker import logging as hub_logging
from broker import sim
from broker.certs import DevPki, make_dev_pki
from broker.config import load
from broker.embedded import NatsServer
from broker.errors import ConfigError, OpsroomError
from broker.hub import Hub
from broker.testing import credentials, dev_config

log = hub_logging.get_logger(__name__)


def _print(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the demo's output is for a person at a terminal


async def _until_signal(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(config_path: Path) -> int:
    """Run the hub with a config file until SIGINT or SIGTERM, then drain and stop."""
    cfg = load(config_path)
    hub = Hub(cfg)
    await hub.start()
    _print(f"opsroom hub listening on {cfg.listen} (port {hub.port}); metrics on {cfg.metrics_listen or 'off'}")
    await _until_signal(asyncio.Event())
    await hub.stop()
    return 0


def _prepare(data: Path, *, keep: bool) -> DevPki:
    data.mkdir(parents=True, exist_ok=True)
    if not keep:
        shutil.rmtree(data / "nats" / "jetstream", ignore_errors=True)
    return make_dev_pki(data / "pki", sim.TORINO_ROOMS)


async def demo(data: Path, *, listen: str, metrics_listen: str, once: bool, keep: bool) -> int:
    """The embedded default: nats-server, the hub and four simulated Torino rooms playing a scenario."""
    pki = _prepare(data, keep=keep)
    nats = NatsServer(data / "nats")
    _print(f"starting nats-server ({nats.binary}) with JetStream in {data / 'nats'}, sync_interval: always")
    nats.start()
    try:
        cfg = dev_config(pki, nats, sim.TORINO_ROOMS, sim.TORINO_ALLOW, listen=listen, metrics_listen=metrics_listen)
        hub = Hub(cfg)
        await hub.start()
        metrics = f"http://127.0.0.1:{hub.metrics_port}/metrics" if hub.metrics_port else "off"
        _print(f"hub listening on 127.0.0.1:{hub.port} (mTLS, dev CA in {data / 'pki'}); metrics: {metrics}")
        try:
            return await _play(hub, pki, once=once)
        finally:
            await hub.stop(grace=2)
    finally:
        nats.stop()
        _print("stopped nats-server")


async def _play(hub: Hub, pki: DevPki, *, once: bool) -> int:
    from broker.client import HubClient  # noqa: PLC0415 - keeps `opsroom serve` free of client code

    target = f"127.0.0.1:{hub.port}"
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


def dev_certs(out: Path, agencies: Sequence[str], config: Path | None) -> int:
    """Make (or complete) a development PKI."""
    wanted = list(agencies)
    if config is not None:
        wanted += [a.id for a in load(config).agencies]
    pki = make_dev_pki(out, wanted)
    _print(f"CA: {pki.ca}\nhub: {pki.hub.cert}")
    for agency_id in wanted:
        _print(f"{agency_id}: {pki.agency(agency_id).cert}")
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

    p_certs = commands.add_parser("dev-certs", help="make a development CA, hub and agency certificates")
    p_certs.add_argument("--out", type=Path, required=True)
    p_certs.add_argument("--agency", action="append", default=[], help="agency id; repeat for several")
    p_certs.add_argument("--config", type=Path, help="also every agency of this hub config")

    args = parser.parse_args(argv)
    level = logging.getLevelNamesMapping().get(args.log_level.upper(), logging.WARNING)
    hub_logging.configure(json=args.command == "serve", level=level)
    try:
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
                    )
                )
            return 130
        return dev_certs(args.out, args.agency, args.config)
    except (ConfigError, OpsroomError) as exc:
        print(f"opsroom: {exc}", file=sys.stderr)  # noqa: T201
        return 2


if __name__ == "__main__":
    sys.exit(main())
