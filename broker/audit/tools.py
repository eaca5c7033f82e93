"""The officer's operations on the audit log over NATS and on exports: read, verify, query, export, purge.

An export is a folder: entries.jsonl (one stored entry per line: stream sequence and the entry's
bytes in base64, exactly as stored), manifest.json (the signed ExportManifest: stream, range,
last position and SHA-256) and the public keys that verify it. `verify` on an export needs only
those files and a public key the officer trusts.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import json_format
from opsroom.audit.v1 import audit_pb2

from broker.audit import records as audit_records
from broker.audit.chain import entry_sha256, sign_manifest
from broker.audit.log import AuditLog
from broker.audit.verify import Head, Report, Stored
from broker.errors import ConfigError
from broker.store.jetstream import JetStream
from broker.times import timestamp

ENTRIES = "entries.jsonl"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Log:
    """The audit stream as read: its entries and the last sequence the stream reports."""

    stream: str
    items: list[Stored]
    last_seq: int


async def read_log(js: JetStream) -> Log:
    """Every entry of the audit stream, in order."""
    stream = js.audit_stream
    state = await js.stream_state(stream)
    first, last = int(state.get("first_seq", 1)) or 1, int(state.get("last_seq", 0))
    items = [Stored(m.seq, m.data) for m in await js.read_through(stream, first, last)]
    return Log(stream, items, last)


def read_witness(path: Path | None) -> Head | None:
    """The entry an earlier verification saw (None without a file, or before the first verification)."""
    if path is None or not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return Head(int(data["position"]), bytes.fromhex(data["sha256"]))


def write_witness(path: Path, stream: str, items: Sequence[Stored], report: Report) -> None:
    """Remember the last signed entry of a log that verified clean, for the next verification."""
    for item in reversed(items):
        entry = audit_pb2.AuditEntry.FromString(item.data)
        if entry.position == report.last_signed_position:
            head = {"stream": stream, "position": int(entry.position), "seq": item.seq,
                    "sha256": entry_sha256(item.data).hex()}  # fmt: skip
            path.write_text(json.dumps(head, indent=2) + "\n", encoding="utf-8")
            return


def officer(as_: str, at: datetime, detail: str, reason: str) -> audit_pb2.AuditRecord:
    """The consultation record of an officer's query or export."""
    if not as_ or not reason:
        raise ConfigError("say who is asking (--as) and why (--reason): the query is itself recorded")
    actor = audit_pb2.Actor(agency_id=audit_records.HUB, operator_id=as_, workstation_id=socket.gethostname())
    return audit_records.consultation(actor, at, detail, reason)


def export(
    log: Log, out: Path, key: Ed25519PrivateKey, keys: Mapping[str, Ed25519PublicKey], at: datetime
) -> audit_pb2.ExportManifest:
    """Write the log to the folder out, with a manifest signed by key and the public keys; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ENTRIES).open("w", encoding="ascii") as f:
        for item in log.items:
            f.write(json.dumps({"seq": item.seq, "data": base64.b64encode(item.data).decode()}) + "\n")
    last = audit_pb2.AuditEntry.FromString(log.items[-1].data) if log.items else audit_pb2.AuditEntry()
    manifest = audit_pb2.ExportManifest(
        stream=log.stream,
        first_seq=log.items[0].seq if log.items else 0,
        last_seq=log.items[-1].seq if log.items else 0,
        last_position=last.position,
        last_sha256=entry_sha256(log.items[-1].data) if log.items else b"",
        exported_at=timestamp(at),
    )
    manifest = sign_manifest(manifest, key)
    (out / MANIFEST).write_text(json_format.MessageToJson(manifest) + "\n", encoding="utf-8")
    for kid, public in keys.items():
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        (out / f"key-{kid}.pub.pem").write_bytes(pem)
    return manifest


def read_export(folder: Path) -> tuple[Log, audit_pb2.ExportManifest]:
    """An export's entries and manifest."""
    try:
        manifest = json_format.Parse((folder / MANIFEST).read_text(encoding="utf-8"), audit_pb2.ExportManifest())
        items = []
        with (folder / ENTRIES).open(encoding="ascii") as f:
            for line in f:
                if line.strip():
                    data = json.loads(line)
                    items.append(Stored(int(data["seq"]), base64.b64decode(data["data"])))
    except (OSError, ValueError, KeyError, json_format.ParseError) as exc:
        raise ConfigError(f"{folder}: not a readable audit export: {exc}") from exc
    return Log(manifest.stream, items, int(manifest.last_seq)), manifest


async def record_and_read(audit: AuditLog, js: JetStream, record: audit_pb2.AuditRecord) -> Log:
    """Record the officer's consultation in the log, then read the log (which then holds that record)."""
    await audit.append([record])
    return await read_log(js)
