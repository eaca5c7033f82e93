"""Verification of the audit chain: what was altered, removed, reordered, inserted, truncated or forged (pure).

It finds altered, removed, reordered, inserted and unsigned entries, a truncated tail and forged
signatures, and names each by position and stream sequence.

Input: the entries as stored, in stream order (sequence, bytes), the trusted public keys, and
what is known of the end of the log: the stream's last sequence (online) or a signed export
manifest (offline). The chain is anchored at its first entry (position 1, linked to 32 zero
bytes) or, after a retention purge, at a signed entry whose signature vouches for everything
before it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError
from opsroom.audit.v1 import audit_pb2

from broker.audit.chain import GENESIS, entry_sha256, manifest_problem, seal_problem


class Kind(enum.Enum):
    """What is wrong."""

    UNREADABLE = "unreadable"
    UNANCHORED = "unanchored"
    ALTERED = "altered"
    REMOVED = "removed"
    REORDERED = "reordered"
    INSERTED = "inserted"
    FORGED_CHECKPOINT = "forged-checkpoint"
    UNSIGNED_TAIL = "unsigned-tail"
    TRUNCATED = "truncated"
    TAMPER_REPORTED = "tamper-reported"


@dataclass(frozen=True)
class Stored:
    """One stored audit message."""

    seq: int
    data: bytes


@dataclass(frozen=True)
class Finding:
    """One problem, where it is, and a sentence saying it."""

    kind: Kind
    position: int | None
    seq: int | None
    message: str

    def __str__(self) -> str:
        """Kind at position/seq: message."""
        where = []
        if self.position is not None:
            where.append(f"position {self.position}")
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        return f"{self.kind.value} ({', '.join(where) or 'log'}): {self.message}"


@dataclass
class Report:
    """The verdict."""

    entries: int = 0
    records: int = 0
    first_position: int = 0
    last_position: int = 0
    signed: int = 0
    last_signed_position: int = 0
    anchored_by_checkpoint: bool = False
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.findings

    def summary(self) -> str:
        """One paragraph."""
        head = (
            f"{self.entries} entries ({self.records} records), positions {self.first_position}-{self.last_position}, "
            f"{self.signed} signed, last signed at position {self.last_signed_position}"
        )
        if self.anchored_by_checkpoint:
            head += "; earlier entries purged, anchored by a signed entry"
        if self.ok:
            return head + ": the chain verifies."
        return head + f": {len(self.findings)} problem(s)."


@dataclass(frozen=True)
class Head:
    """An entry as a verifier saw it: its position and SHA-256."""

    position: int
    sha256: bytes


@dataclass(frozen=True)
class _Entry:
    seq: int
    data: bytes
    entry: audit_pb2.AuditEntry
    sha: bytes

    @property
    def position(self) -> int:
        return int(self.entry.position)


def _parse(items: Sequence[Stored], report: Report) -> list[_Entry]:
    out = []
    for item in items:
        entry = audit_pb2.AuditEntry()
        try:
            entry.ParseFromString(item.data)
        except DecodeError:
            report.findings.append(Finding(Kind.UNREADABLE, None, item.seq, "not an audit entry (cannot be parsed)"))
            continue
        out.append(_Entry(item.seq, item.data, entry, entry_sha256(item.data)))
    return out


class _Walker:
    """Follows the chain in stream order and records findings."""

    def __init__(self, stream: str, keys: Mapping[str, Ed25519PublicKey], report: Report) -> None:
        self.stream = stream
        self.keys = keys
        self.report = report

    def find(self, kind: Kind, at: _Entry | None, message: str) -> None:
        self.report.findings.append(Finding(kind, at.position if at else None, at.seq if at else None, message))

    def seal_ok(self, e: _Entry) -> bool:
        """Check the entry's signature if it has one; True when it has a valid one."""
        if not e.entry.HasField("checkpoint"):
            return False
        problem = seal_problem(self.stream, e.entry, self.keys)
        if problem:
            self.find(Kind.FORGED_CHECKPOINT, e, f"the signature of entry {e.position} is not valid: {problem}")
            return False
        self.report.signed += 1
        self.report.last_signed_position = e.position
        return True

    def anchor(self, first: _Entry) -> None:
        if first.position == 1 and first.entry.prev_sha256 == GENESIS:
            return
        if first.entry.HasField("checkpoint") and not seal_problem(self.stream, first.entry, self.keys):
            self.report.anchored_by_checkpoint = True
            return
        self.find(
            Kind.UNANCHORED,
            first,
            f"the log starts at position {first.position}, and no valid signature vouches for what came before: "
            f"entries 1 to {first.position - 1} were removed without a retention purge",
        )

    def walk(self, entries: list[_Entry]) -> _Entry:
        prev = entries[0]
        self.seal_ok(prev)
        i = 1
        while i < len(entries):
            e = entries[i]
            nxt = entries[i + 1] if i + 1 < len(entries) else None
            expected = prev.position + 1
            if e.position == expected:
                if e.entry.prev_sha256 != prev.sha:
                    if nxt is not None and nxt.position == e.position and nxt.entry.prev_sha256 == prev.sha:
                        self.find(Kind.INSERTED, e, f"entry {e.position} at seq {e.seq} is not part of the chain "
                                  f"(the genuine entry {e.position} follows at seq {nxt.seq})")  # fmt: skip
                        i += 1
                        continue
                    self.find(Kind.ALTERED, prev, f"entry {prev.position} (seq {prev.seq}) was altered: entry "
                              f"{e.position} links to different content")  # fmt: skip
                prev = e
            elif (
                e.position > expected
                and nxt is not None
                and nxt.position == expected
                and nxt.entry.prev_sha256 == prev.sha
                and e.entry.prev_sha256 != nxt.sha
            ):
                self.find(Kind.INSERTED, e, f"entry at seq {e.seq} claims position {e.position}, which is not where "
                          f"it stands (the chain goes on from {prev.position} at seq {nxt.seq})")  # fmt: skip
                i += 1
                continue
            elif e.position == expected + 1 and nxt is not None and nxt.position == expected:
                self.find(Kind.REORDERED, e, f"entries {expected} and {e.position} are in each other's place "
                          f"(seqs {nxt.seq} and {e.seq})")  # fmt: skip
                if nxt.entry.prev_sha256 != prev.sha or e.entry.prev_sha256 != nxt.sha:
                    self.find(Kind.ALTERED, nxt, f"entries {expected}-{e.position} do not link once put back in order")
                self.seal_ok(nxt)
                self.report_tampers(nxt)
                prev = e
                i += 1
            elif e.position > expected:
                gap = f"{expected}" if e.position == expected + 1 else f"{expected} to {e.position - 1}"
                self.find(Kind.REMOVED, e, f"entries {gap} are missing (between seqs {prev.seq} and {e.seq})")
                prev = e
            elif e.position == prev.position and nxt is not None and nxt.entry.prev_sha256 == e.sha:
                self.find(Kind.INSERTED, prev, f"entry at seq {prev.seq} claims position {prev.position} but the "
                          f"chain continues from the entry at seq {e.seq}")  # fmt: skip
                prev = e
            else:
                self.find(Kind.INSERTED, e, f"entry at seq {e.seq} claims position {e.position}, which is not "
                          f"where it stands (after position {prev.position})")  # fmt: skip
                i += 1
                continue
            self.seal_ok(e)
            self.report_tampers(e)
            i += 1
        return prev

    def report_tampers(self, e: _Entry) -> None:
        for record in e.entry.records:
            if record.action == audit_pb2.ACTION_TAMPER_DETECTED:
                self.find(Kind.TAMPER_REPORTED, e, f"the hub reported entries it did not write: {record.detail}")


def verify(
    stream: str,
    items: Sequence[Stored],
    keys: Mapping[str, Ed25519PublicKey],
    *,
    last_seq: int | None = None,
    manifest: audit_pb2.ExportManifest | None = None,
    known: Head | None = None,
    segment: bool = False,
) -> Report:
    """Verify the chain; last_seq (online) or manifest (offline) says where the log should end.

    known is an entry seen in an earlier verification (a witness kept by the verifier): the
    log must still hold it, unchanged, unless a retention purge removed it since. A segment
    (items starting at an entry the caller already trusts) is checked from its first entry on.
    """
    report = Report()
    entries = _parse(items, report)
    if not entries:
        if last_seq:
            report.findings.append(
                Finding(Kind.TRUNCATED, None, None, f"the stream went up to seq {last_seq}; no entry is left")
            )
        return report
    walker = _Walker(stream, keys, report)
    if not segment:
        walker.anchor(entries[0])
    walker.report_tampers(entries[0])
    last = walker.walk(entries)
    report.entries = len(entries)
    report.records = sum(len(e.entry.records) for e in entries)
    report.first_position = entries[0].position
    report.last_position = last.position
    if report.anchored_by_checkpoint and not segment:
        _check_erasure(walker, entries)
    if last_seq is not None and last_seq > entries[-1].seq:
        walker.find(
            Kind.TRUNCATED,
            last,
            f"the stream went up to seq {last_seq}: entries after position {last.position} "
            f"(seq {entries[-1].seq}) are gone",
        )
    if manifest is not None:
        _check_manifest(walker, manifest, last, keys)
    if known is not None:
        _check_known(walker, entries, known)
    if report.last_signed_position < last.position:
        walker.find(
            Kind.UNSIGNED_TAIL,
            last,
            f"entries {report.last_signed_position + 1} to {last.position} carry no valid signature: appended by "
            "someone without a trusted key, or a write still in progress (verify again)",
        )
    return report


def _check_known(walker: _Walker, entries: list[_Entry], known: Head) -> None:
    if known.position < entries[0].position and walker.report.anchored_by_checkpoint:
        return  # purged since, under retention
    if known.position > walker.report.last_position:
        walker.find(
            Kind.TRUNCATED,
            entries[-1],
            f"an earlier verification saw entry {known.position}; the log now ends at position "
            f"{walker.report.last_position}: its tail was cut",
        )
        return
    found = [e for e in entries if e.position == known.position]
    if not any(e.sha == known.sha256 for e in found):
        where = found[0] if found else None
        walker.find(Kind.ALTERED, where, f"entry {known.position} is not the one an earlier verification saw")


def _check_erasure(walker: _Walker, entries: list[_Entry]) -> None:
    """A log that starts after position 1 must say, in an erasure record, that a retention purge removed the rest."""
    first = entries[0]
    for e in entries:
        for record in e.entry.records:
            if record.action == audit_pb2.ACTION_ERASURE and record.erased.next_position == first.position:
                return
    walker.find(
        Kind.UNANCHORED,
        first,
        f"the log starts at position {first.position}, but no erasure record says that entries 1 to "
        f"{first.position - 1} were purged under the retention period: they were removed",
    )


def _check_manifest(
    walker: _Walker, manifest: audit_pb2.ExportManifest, last: _Entry, keys: Mapping[str, Ed25519PublicKey]
) -> None:
    problem = manifest_problem(manifest, keys)
    if problem:
        walker.find(Kind.FORGED_CHECKPOINT, None, f"the export manifest is not valid: {problem}")
        return
    if manifest.last_position > last.position:
        walker.find(
            Kind.TRUNCATED,
            last,
            f"the export was made up to position {manifest.last_position}; it ends at {last.position}",
        )
    elif manifest.last_position != last.position or manifest.last_sha256 != last.sha:
        walker.find(Kind.ALTERED, last, "the export's last entry is not the one its manifest signed")
