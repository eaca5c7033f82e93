"""`opsroom audit`: keygen, verify, query, export and purge, for the data protection officer and the platform team.

Online commands read the hub config (--config) for NATS and the audit keys; offline ones work on
an export folder (--export) with only public keys. Queries and exports are themselves recorded
in the log (who asked, why, what) before they run; a query of an export is recorded by the
export it reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from opsroom.audit.v1 import audit_pb2

from broker.audit import chain, tools
from broker.audit import query as q
from broker.audit.log import AuditLog
from broker.audit.retention import Retention
from broker.audit.verify import Report, verify
from broker.config import HubConfig, load
from broker.errors import ConfigError
from broker.ops.metrics import Metrics
from broker.store.jetstream import JetStream


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `audit` and its subcommands to the `opsroom` parser."""
    p_audit = commands.add_parser("audit", help="verify, query, export or purge the audit log")
    audit = p_audit.add_subparsers(dest="audit_command", required=True)

    p_keygen = audit.add_parser("keygen", help="make an Ed25519 signing key (and its .pub.pem beside it)")
    p_keygen.add_argument("--out", type=Path, required=True)

    def source(p: argparse.ArgumentParser, *, offline: bool = True) -> None:
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--config", type=Path, help="hub config: read the log over NATS")
        if offline:
            group.add_argument("--export", type=Path, help="an export folder (offline)")

    def who(p: argparse.ArgumentParser) -> None:
        p.add_argument("--as", dest="as_", default="", help="who is asking (an operator id); recorded in the log")
        p.add_argument("--reason", default="", help="why (the justification); recorded in the log")

    p_verify = audit.add_parser("verify", help="check the chain and its signatures; exit 1 if anything is wrong")
    source(p_verify)
    p_verify.add_argument("--key", type=Path, action="append", default=[], help="trusted public key (repeat)")
    p_verify.add_argument("--witness", type=Path, help="file remembering the last verified entry (read, then updated)")

    p_query = audit.add_parser("query", help="records by incident, distribution, agency, agreement, action, dates")
    source(p_query)
    who(p_query)
    p_query.add_argument("--incident", default="")
    p_query.add_argument("--distribution", default="")
    p_query.add_argument("--agency", default="", help="as the actor (sent, consulted) or as the recipient")
    p_query.add_argument("--agreement", default="")
    p_query.add_argument("--action", default="", help=f"comma-separated: {', '.join(q.ACTIONS)}")
    p_query.add_argument("--since", default="", help="ISO 8601 date or time (inclusive)")
    p_query.add_argument("--until", default="", help="ISO 8601 date or time (exclusive)")
    p_query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p_query.add_argument("--out", type=Path, help="write here instead of stdout")

    p_export = audit.add_parser("export", help="copy the log to a folder, with a signed manifest")
    source(p_export, offline=False)
    who(p_export)
    p_export.add_argument("--out", type=Path, required=True)

    p_purge = audit.add_parser("purge", help="erase records past the retention period (the erasure is recorded)")
    source(p_purge, offline=False)
    p_purge.add_argument("--days", type=int, help="retention in days (default: the config's audit.retention_days)")


def run(args: argparse.Namespace) -> int:
    """Run an `opsroom audit` subcommand; returns the exit status."""
    if args.audit_command == "keygen":
        chain.generate_key(args.out)
        _out(f"private key: {args.out}\npublic key:  {chain.public_path(args.out)}")
        return 0
    if args.audit_command == "verify":
        return asyncio.run(_verify(args))
    if args.audit_command == "query":
        return asyncio.run(_query(args))
    if args.audit_command == "export":
        return asyncio.run(_export(args))
    return asyncio.run(_purge(args))


@dataclass
class _Online:
    cfg: HubConfig
    js: JetStream
    audit: AuditLog

    @property
    def keys(self) -> dict[str, Ed25519PublicKey]:
        return dict(self.audit.trusted)


@contextlib.asynccontextmanager
async def _online(config: Path, writer: str = "cli") -> AsyncIterator[_Online]:
    cfg = load(config)
    if cfg.audit is None:
        raise ConfigError(f"{config}: no [audit] section")
    key, trusted = chain.load_keys(cfg.audit.signing_key, cfg.audit.trusted_keys)
    js = await JetStream.connect(cfg.nats, name="opsroom-audit")
    try:
        audit = AuditLog(js, key, trusted, Metrics(), _utc_now, writer=f"{cfg.audit.writer}/{writer}")
        await audit.open()
        yield _Online(cfg, js, audit)
    finally:
        await js.close()


def _print_report(report: Report) -> None:
    _out(report.summary())
    for finding in report.findings:
        _out(f"  {finding}")


async def _verify(args: argparse.Namespace) -> int:
    keys = chain.load_public_keys(args.key)
    known = tools.read_witness(args.witness)
    if args.export is not None:
        log, manifest = tools.read_export(args.export)
        if not keys:
            raise ConfigError("offline verification needs the public key you trust: --key FILE")
        report = verify(log.stream, log.items, keys, manifest=manifest, known=known)
    else:
        async with _online(args.config) as online:
            log = await tools.read_log(online.js)
            report = verify(log.stream, log.items, keys or online.keys, last_seq=log.last_seq, known=known)
    _print_report(report)
    if report.ok and args.witness is not None:
        tools.write_witness(args.witness, log.stream, log.items, report)
    return 0 if report.ok else 1


def _when(text: str, name: str) -> datetime | None:
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"--{name}: not an ISO 8601 date or time: {text!r}") from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def question_of(args: argparse.Namespace) -> q.Question:
    """The Question of the query's arguments."""
    actions = set()
    for name in filter(None, (a.strip().lower() for a in args.action.split(","))):
        if name not in q.ACTIONS:
            raise ConfigError(f"--action: {name!r} is not one of {', '.join(q.ACTIONS)}")
        actions.add(q.ACTIONS[name])
    return q.Question(
        incident=args.incident,
        distribution=args.distribution,
        agency=args.agency,
        agreement=args.agreement,
        actions=frozenset(actions),
        since=_when(args.since, "since"),
        until=_when(args.until, "until"),
    )


def render(rows: Sequence[q.Row], question: q.Question, fmt: str) -> str:
    """Rows in the format asked for."""
    if fmt == "csv":
        return q.to_csv(rows)
    if fmt == "json":
        return q.to_json(rows, question)
    return q.to_table(rows)


async def _query(args: argparse.Namespace) -> int:
    question = question_of(args)
    if args.export is not None:
        log, _manifest = tools.read_export(args.export)
    else:
        record = tools.officer(args.as_, _utc_now(), f"audit query: {question.describe()}", args.reason)
        async with _online(args.config) as online:
            log = await tools.record_and_read(online.audit, online.js, record)
    rows = list(q.answer(log.items, question))
    text = render(rows, question, args.format)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
        _out(f"{len(rows)} records written to {args.out}")
    else:
        _out(text)
    return 0


async def _export(args: argparse.Namespace) -> int:
    record = tools.officer(args.as_, _utc_now(), f"audit export to {args.out.name}", args.reason)
    async with _online(args.config) as online:
        log = await tools.record_and_read(online.audit, online.js, record)
        manifest = tools.export(log, args.out, online.audit.key, online.keys, _utc_now())
    _out(f"exported {len(log.items)} entries (positions up to {manifest.last_position}) to {args.out}")
    return 0


async def _purge(args: argparse.Namespace) -> int:
    async with _online(args.config) as online:
        days = args.days
        if days is None:
            retention = online.cfg.audit.retention if online.cfg.audit is not None else None
            if retention is None:
                raise ConfigError(f"{args.config}: audit.retention_days is not set; give --days")
        elif days <= 0:
            raise ConfigError("--days: must be a positive number of days")
        else:
            retention = timedelta(days=days)
        purge = await Retention(online.js, online.audit, _utc_now, retention).purge()
    if purge.erasure is None:
        _out("nothing is older than the retention period")
    else:
        e: audit_pb2.Erasure = purge.erasure
        _out(f"purged {purge.removed} entries (positions {e.first_position}-{e.last_position}); "
             f"the log now starts at position {e.next_position}")  # fmt: skip
    return 0
