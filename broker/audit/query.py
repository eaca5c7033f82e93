"""The data protection officer's questions over audit entries, and their answers as rows (pure).

Who received incident X and which fields; everything agency Y consulted or disclosed between two
dates; every event sent under agreement Z. A row is one record, flattened, with where it stands
in the log (position, stream sequence) so that any answer can be checked against the chain.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from opsroom.audit.v1 import audit_pb2

from broker.audit.verify import Stored

ACTIONS: dict[str, int] = {name.removeprefix("ACTION_").lower(): int(v) for name, v in audit_pb2.Action.items() if v}
COLUMNS = (
    "position",
    "seq",
    "at",
    "action",
    "agency",
    "operator",
    "workstation",
    "recipient",
    "format",
    "distribution_id",
    "incident_ids",
    "kind",
    "status",
    "agreement",
    "rule",
    "law",
    "purpose",
    "fields",
    "withheld",
    "linked",
    "data_sha256",
    "detail",
)
# Columns of the table format (the others are in CSV and JSON).
TABLE_COLUMNS = ("position", "at", "action", "agency", "recipient", "distribution_id", "incident_ids", "rule", "fields")


@dataclass(frozen=True)
class Question:
    """Which records to answer with; every criterion given must hold (empty ones are ignored)."""

    incident: str = ""
    distribution: str = ""
    agency: str = ""  # as the actor (it collected, disclosed, consulted) or as the recipient
    agreement: str = ""
    actions: frozenset[int] = frozenset()
    since: datetime | None = None
    until: datetime | None = None

    def describe(self) -> str:
        """The question in one line, for the record of the query itself (ids only)."""
        parts = [f"{k}={v}" for k, v in asdict(self).items() if v and k not in ("actions", "since", "until")]
        if self.actions:
            names = {value: name for name, value in ACTIONS.items()}
            parts.append("actions=" + ",".join(sorted(names[a] for a in self.actions)))
        if self.since is not None:
            parts.append(f"since={self.since.isoformat()}")
        if self.until is not None:
            parts.append(f"until={self.until.isoformat()}")
        return " ".join(parts) or "everything"


@dataclass(frozen=True)
class Row:
    """One record as the officer reads it."""

    position: int
    seq: int
    at: str
    action: str
    agency: str
    operator: str
    workstation: str
    recipient: str
    distribution_id: str
    format: str = ""
    incident_ids: list[str] = field(default_factory=list)
    kind: str = ""
    status: str = ""
    agreement: str = ""
    rule: str = ""
    law: str = ""
    purpose: str = ""
    fields: list[str] = field(default_factory=list)
    withheld: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)
    data_sha256: str = ""
    detail: str = ""


def matches(record: audit_pb2.AuditRecord, q: Question) -> bool:
    """Whether a record answers the question."""
    at = record.at.ToDatetime(UTC) if q.since is not None or q.until is not None else None
    checks = (
        not q.incident or q.incident in record.incident_ids,
        not q.distribution or q.distribution in (record.distribution_id, *record.linked),
        not q.agency or q.agency in (record.actor.agency_id, record.recipient),
        not q.agreement or q.agreement == record.why.agreement_id,
        not q.actions or record.action in q.actions,
        q.since is None or (at is not None and at >= q.since),
        q.until is None or (at is not None and at < q.until),
    )
    return all(checks)


def row_of(record: audit_pb2.AuditRecord, position: int, seq: int) -> Row:
    """A record flattened."""
    return Row(
        position=position,
        seq=seq,
        at=record.at.ToDatetime(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        action=audit_pb2.Action.Name(record.action).removeprefix("ACTION_").lower(),
        agency=record.actor.agency_id,
        operator=record.actor.operator_id,
        workstation=record.actor.workstation_id,
        recipient=record.recipient,
        distribution_id=record.distribution_id,
        format=record.format,
        incident_ids=list(record.incident_ids),
        kind=record.kind,
        status=record.status,
        agreement=record.why.agreement_id,
        rule=record.why.rule,
        law=record.why.law,
        purpose=record.why.purpose,
        fields=list(record.fields),
        withheld=list(record.withheld),
        linked=list(record.linked),
        data_sha256=record.data_sha256.hex(),
        detail=record.detail,
    )


def answer(items: Iterable[Stored], q: Question) -> Iterator[Row]:
    """The rows of the records that answer q, in log order (unreadable entries are skipped: verify finds them)."""
    for item in items:
        entry = audit_pb2.AuditEntry()
        try:
            entry.ParseFromString(item.data)
        except DecodeError:
            continue  # a damaged entry is verify's to report
        for record in entry.records:
            if matches(record, q):
                yield row_of(record, int(entry.position), item.seq)


def _cell(value: object) -> str:
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return str(value)


def to_csv(rows: Sequence[Row]) -> str:
    """Rows as CSV with a header line; lists are joined with ';'."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        data = asdict(row)
        writer.writerow([_cell(data[c]) for c in COLUMNS])
    return out.getvalue()


def to_json(rows: Sequence[Row], question: Question) -> str:
    """Rows as one JSON document with the question asked."""
    return json.dumps({"question": question.describe(), "count": len(rows), "records": [asdict(r) for r in rows]},
                      indent=2, ensure_ascii=False) + "\n"  # fmt: skip


def to_table(rows: Sequence[Row], width: int = 60) -> str:
    """Rows as an aligned text table of the main columns (cells cut at width characters)."""
    cells = [[_cell(asdict(r)[c])[:width] for c in TABLE_COLUMNS] for r in rows]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(TABLE_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    lines.append(f"({len(rows)} records)")
    return "\n".join(lines) + "\n"
