"""The `opsroom` command: the hub, the demo, dev certificates, agreements, the audit log, convert, adapters."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from broker.audit import command as audit_command
from broker.config import check_files, load
from broker.delivery import status_reader
from broker.errors import ConfigError, OpsroomError, ServerUnreachable
from broker.hub import Hub
from broker.ops import logging as hub_logging
from broker.ops import status as ops_status
from broker.ops.console import say as _print
from broker.ops.console import until_signal as _until_signal
from broker.policy.loader import AgreementsInvalid, load_dir
from broker.policy.revocation import RevocationInvalid
from broker.store.jetstream import JetStream

log = hub_logging.get_logger(__name__)
# The shipped deploy/ files (in a checkout, broker/data/deploy links to deploy/; in a wheel they
# are package data): `opsroom init` copies them; their agreements are the demo's and explain's default.
SHIPPED = Path(str(resources.files("broker").joinpath("data", "deploy")))
_DEFAULT_AGREEMENTS = SHIPPED / "agreements"
_INIT_FILES = ("hub.toml", "hub-cluster.toml", "agreements", "nats", "scenarios", "systemd")


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
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hub.reload)
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


async def status(config: Path, *, as_json: bool) -> int:
    """`opsroom status`: read the store and nats-server's monitoring, print one screen (or JSON); 0."""
    cfg = load(config)
    js = await JetStream.connect(cfg.nats, name="opsroom-status")
    try:
        snap = await status_reader.snapshot(js, cfg, datetime.now(UTC))
    finally:
        await js.close()
    if as_json:
        _print(json.dumps(ops_status.to_json(snap), indent=2))
    else:
        sys.stdout.write(ops_status.render(snap))
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


def init(folder: Path, *, force: bool) -> int:
    """Copy the shipped config, agreements, nats-server configs, drill scenarios and systemd units into folder."""
    existing = [name for name in _INIT_FILES if (folder / name).exists()]
    if existing and not force:
        raise ConfigError(f"{folder}: {', '.join(existing)} already there (--force overwrites)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in _INIT_FILES:
        source = SHIPPED / name
        if source.is_dir():
            shutil.copytree(source, folder / name, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, folder / name)
    _print(f"wrote {', '.join(_INIT_FILES)} to {folder}; next:")
    _print(f"  opsroom dev-certs --config {folder / 'hub.toml'}   (development certificates, audit key, NATS account)")
    _print(f"  nats-server -c {folder / 'nats' / 'local.conf'}   (stores in .opsroom/nats; admits the hub's user only)")
    _print(f"  opsroom serve --config {folder / 'hub.toml'}")
    return 0


def _revocation_arguments(p_certs: argparse.ArgumentParser) -> None:
    """dev-certs --revoke and --reinstate: the development CA's revocation list."""
    p_certs.add_argument(
        "--revoke", action="append", default=[], metavar="AGENCY",
        help="add the agency's certificate to the CA's revocation list crl.pem (tls.crl_file); repeat for several",
    )  # fmt: skip
    p_certs.add_argument(
        "--reinstate", action="append", default=[], metavar="AGENCY",
        help="take the agency's certificate off crl.pem again",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `opsroom` command."""
    parser = argparse.ArgumentParser(prog="opsroom", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default) or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    p_serve = commands.add_parser("serve", help="run the hub with a config file")
    p_serve.add_argument("--config", type=Path, required=True)

    p_init = commands.add_parser("init", help="copy the shipped config, agreements and nats-server configs to a folder")
    p_init.add_argument("folder", type=Path)
    p_init.add_argument("--force", action="store_true", help="overwrite files already there")

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
    _revocation_arguments(p_certs)

    p_sim = commands.add_parser("sim", help="the four simulated Torino rooms against a running hub (dev certificates)")
    p_sim.add_argument("--hub", default="localhost:7443", help="host:port of the hub (default localhost:7443)")
    p_sim.add_argument("--pki", type=Path, default=Path("deploy/pki"), help="dev-certs folder (default deploy/pki)")
    p_sim.add_argument("--once", action="store_true", help="exit after the scenario instead of waiting for Ctrl-C")
    p_sim.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the hub to serve (default 30)")

    p_status = commands.add_parser(
        "status", help="the hub at a glance: NATS, streams, each room online and what waits for it"
    )
    p_status.add_argument("--config", type=Path, required=True, help="the hub's config (for NATS and the agencies)")
    p_status.add_argument("--json", action="store_true", help="as JSON instead of a screen of text")

    _tool_commands(commands)

    args = parser.parse_args(argv)
    level = logging.getLevelNamesMapping().get(args.log_level.upper(), logging.WARNING)
    hub_logging.configure(json=args.command == "serve", level=level)
    try:
        return _run(args)
    except (ConfigError, OpsroomError, AgreementsInvalid, RevocationInvalid, ServerUnreachable) as exc:
        print(f"opsroom: {exc}", file=sys.stderr)  # noqa: T201
        return 2


def _tool_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The audit log's commands, `simulate` (drills), `convert` and `adapter` (adapters/)."""
    audit_command.add_commands(commands)
    from broker.drill import command as drill_command  # noqa: PLC0415 - the serving hub never loads the drill tool

    drill_command.add_command(commands)
    from adapters import convert  # noqa: PLC0415 - the hub never imports the adapters; its command line does

    convert.add_command(commands)
    p_adapter = commands.add_parser(
        "adapter", help="run a connector: cap (HTTP, Atom), nue112 (SOAP), eido (STA-024 WebSocket), emsi (HTTP)"
    )
    p_adapter.add_argument("format", choices=["cap", "eido", "emsi", "nue112"], help="the standard it speaks")
    p_adapter.add_argument("options", nargs=argparse.REMAINDER, help="the connector's options (--help for them)")


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return asyncio.run(serve(args.config))
    if args.command in {"demo", "sim", "dev-certs"}:
        return _run_dev(args)
    if args.command in {"audit", "convert", "adapter", "status", "simulate"}:
        return _run_tool(args)
    if args.command == "init":
        return init(args.folder, force=args.force)
    if args.command == "policy":
        if args.policy_command == "check":
            return policy_check(args.folder)
        return policy_explain(args.envelope, args.agreements, args.sender, args.at)
    raise AssertionError(args.command)


def _run_tool(args: argparse.Namespace) -> int:
    """The audit log's commands, `status`, `convert` and `adapter` (adapters/: standard documents, connectors)."""
    if args.command == "audit":
        return audit_command.run(args)
    if args.command == "status":
        return asyncio.run(status(args.config, as_json=args.json))
    if args.command == "simulate":
        from broker.drill import command as drill_command  # noqa: PLC0415 - the serving hub never loads the drill tool

        return drill_command.run(args)
    if args.command == "adapter":
        from adapters.connect import cap, eido, emsi, nue112  # noqa: PLC0415 - the hub never imports them; its CLI does

        run = {"cap": cap.main, "eido": eido.main, "emsi": emsi.main, "nue112": nue112.main}[args.format]
        return run(args.options)
    from adapters import convert  # noqa: PLC0415 - the hub never imports the adapters; its command line does

    return convert.run(args)


def _run_dev(args: argparse.Namespace) -> int:
    """The development commands: their code (broker.dev) is loaded only for them, never by `serve`."""
    from broker.dev import commands  # noqa: PLC0415 - development helpers stay out of the serving path
    from broker.drill.demo import play_demo  # noqa: PLC0415 - the demo is a drill: its rooms play a scenario file

    if args.command == "demo":
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(
                commands.demo(
                    args.data,
                    listen=args.listen,
                    metrics_listen=args.metrics_listen,
                    once=args.once,
                    keep=args.keep_data,
                    agreements=args.agreements,
                    play=play_demo,
                )
            )
        return 130
    if args.command == "sim":
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(commands.rooms(args.hub, args.pki, once=args.once, wait=args.wait, play=play_demo))
        return 130
    return commands.dev_certs(args.out, args.agency, args.config, revoke=args.revoke, reinstate=args.reinstate)


if __name__ == "__main__":
    sys.exit(main())
