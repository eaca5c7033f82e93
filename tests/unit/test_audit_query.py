"""The data protection officer's questions over audit entries: matching, answers, CSV/JSON/table output."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from opsroom.audit.v1 import audit_pb2

from broker.audit.chain import GENESIS
from broker.audit.query import COLUMNS, TABLE_COLUMNS, Question, Row, answer, matches, row_of, to_csv, to_json, to_table
from broker.audit.verify import Stored
from tests import factories as f

T = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
INC_A = "urn:emergency:uid:incidentid:a:nue.to.it"
INC_B = "urn:emergency:uid:incidentid:b:nue.to.it"


def ts(at: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(at)
    return out


def rec(
    action: int,
    *,
    at: datetime = T,
    agency: str = f.CUR,
    recipient: str = "",
    distribution: str = "",
    incidents: tuple[str, ...] = (),
    agreement: str = "",
    rule: str = "",
    fields: tuple[str, ...] = (),
    withheld: tuple[str, ...] = (),
    linked: tuple[str, ...] = (),
    detail: str = "",
) -> audit_pb2.AuditRecord:
    return audit_pb2.AuditRecord(
        action=action,  # type: ignore[arg-type]
        at=ts(at),
        actor=audit_pb2.Actor(agency_id=agency, operator_id="OP-1", workstation_id="PDL-1"),
        why=audit_pb2.Justification(law="l. 1/2000", purpose="PUBLIC_SECURITY", agreement_id=agreement, rule=rule),
        distribution_id=distribution,
        incident_ids=list(incidents),
        data_sha256=b"\xab" * 32,
        recipient=recipient,
        fields=list(fields),
        withheld=list(withheld),
        kind="REPORT",
        status="ACTUAL",
        linked=list(linked),
        detail=detail,
    )


COLLECT = rec(audit_pb2.ACTION_COLLECTION, distribution="d-1", incidents=(INC_A,))
TO_PS = rec(
    audit_pb2.ACTION_DISCLOSURE,
    recipient=f.QUESTURA,
    distribution="d-1",
    incidents=(INC_A,),
    agreement="agr-ps",
    rule="agr-ps/incidents",
    fields=("incident.id", "incident.call.caller.name"),
)
TO_PL = rec(
    audit_pb2.ACTION_DISCLOSURE,
    at=T + timedelta(seconds=1),
    recipient=f.PL,
    distribution="d-1",
    incidents=(INC_A,),
    agreement="agr-pl",
    rule="agr-pl/municipal",
    fields=("incident.id",),
    withheld=("incident.call.caller.name", "incident.vehicles.plate"),
)
UPDATE = rec(
    audit_pb2.ACTION_ALTERATION,
    at=T + timedelta(minutes=5),
    distribution="d-2",
    incidents=(INC_A, INC_B),
    linked=("d-1",),
)
PS_READS = rec(audit_pb2.ACTION_CONSULTATION, at=T + timedelta(hours=1), agency=f.QUESTURA, detail="backlog 2")


def entry(position: int, *records: audit_pb2.AuditRecord) -> bytes:
    return audit_pb2.AuditEntry(position=position, prev_sha256=GENESIS, records=records).SerializeToString(
        deterministic=True
    )


ITEMS = [
    Stored(10, entry(1, COLLECT, TO_PS, TO_PL)),
    Stored(11, b"\xff\xff garbage"),
    Stored(12, entry(2, UPDATE)),
    Stored(13, entry(3, PS_READS)),
]


def positions(q: Question) -> list[tuple[int, int, str]]:
    return [(r.position, r.seq, r.action) for r in answer(ITEMS, q)]


# -- matching -----------------------------------------------------------------------------------------------------


def test_empty_question_matches_everything_readable() -> None:
    """Every record of every readable entry, in log order; the unreadable message is skipped."""
    assert positions(Question()) == [
        (1, 10, "collection"),
        (1, 10, "disclosure"),
        (1, 10, "disclosure"),
        (2, 12, "alteration"),
        (3, 13, "consultation"),
    ]


def test_by_incident() -> None:
    assert positions(Question(incident=INC_B)) == [(2, 12, "alteration")]
    assert len(positions(Question(incident=INC_A))) == 4
    assert positions(Question(incident="urn:none")) == []


def test_by_distribution_directly_or_via_linked() -> None:
    """d-1 is the collection and disclosures' own id, and the update's linked one."""
    assert positions(Question(distribution="d-1")) == [
        (1, 10, "collection"),
        (1, 10, "disclosure"),
        (1, 10, "disclosure"),
        (2, 12, "alteration"),
    ]
    assert positions(Question(distribution="d-2")) == [(2, 12, "alteration")]
    assert matches(UPDATE, Question(distribution="d-1"))
    assert not matches(COLLECT, Question(distribution="d-2"))


def test_by_agency_as_actor_or_recipient() -> None:
    """QUESTURA received d-1 (recipient) and read its backlog (actor); PL only received."""
    assert positions(Question(agency=f.QUESTURA)) == [(1, 10, "disclosure"), (3, 13, "consultation")]
    assert [r.recipient for r in answer(ITEMS, Question(agency=f.PL))] == [f.PL]
    assert len(positions(Question(agency=f.CUR))) == 4  # the sender acted in all of entry 1 and 2


def test_by_agreement() -> None:
    assert [r.recipient for r in answer(ITEMS, Question(agreement="agr-pl"))] == [f.PL]
    assert [r.rule for r in answer(ITEMS, Question(agreement="agr-ps"))] == ["agr-ps/incidents"]
    assert not matches(TO_PS, Question(agreement="agr"))  # exact, not a prefix


def test_by_actions() -> None:
    q = Question(actions=frozenset({audit_pb2.ACTION_COLLECTION, audit_pb2.ACTION_CONSULTATION}))
    assert positions(q) == [(1, 10, "collection"), (3, 13, "consultation")]
    assert positions(Question(actions=frozenset({audit_pb2.ACTION_ERASURE}))) == []


def test_since_is_inclusive() -> None:
    assert matches(TO_PL, Question(since=T + timedelta(seconds=1)))
    assert not matches(TO_PS, Question(since=T + timedelta(microseconds=1)))
    assert matches(TO_PS, Question(since=T))


def test_until_is_exclusive() -> None:
    assert not matches(TO_PS, Question(until=T))
    assert matches(TO_PS, Question(until=T + timedelta(microseconds=1)))
    assert not matches(TO_PL, Question(until=T + timedelta(seconds=1)))


def test_since_until_window() -> None:
    """[T+1s, T+1h): PL's disclosure and the update; not the consultation at exactly T+1h."""
    q = Question(since=T + timedelta(seconds=1), until=T + timedelta(hours=1))
    assert positions(q) == [(1, 10, "disclosure"), (2, 12, "alteration")]


def test_criteria_combine_with_and() -> None:
    """Agency QUESTURA and action disclosure and incident A: one record."""
    q = Question(agency=f.QUESTURA, actions=frozenset({audit_pb2.ACTION_DISCLOSURE}), incident=INC_A)
    assert [(r.recipient, r.rule) for r in answer(ITEMS, q)] == [(f.QUESTURA, "agr-ps/incidents")]
    assert positions(Question(agency=f.PL, incident=INC_B)) == []


def test_describe() -> None:
    q = Question(
        incident=INC_A,
        agency=f.PL,
        actions=frozenset({audit_pb2.ACTION_DISCLOSURE, audit_pb2.ACTION_COLLECTION}),
        since=T,
        until=T + timedelta(days=1),
    )
    assert q.describe() == (
        f"incident={INC_A} agency={f.PL} actions=collection,disclosure "
        "since=2026-11-23T12:00:00+00:00 until=2026-11-24T12:00:00+00:00"
    )
    assert Question().describe() == "everything"


def test_row_of_flattens_a_record() -> None:
    row = row_of(TO_PL, 7, 70)
    assert row == Row(
        position=7,
        seq=70,
        at="2026-11-23T12:00:01.000Z",
        action="disclosure",
        agency=f.CUR,
        operator="OP-1",
        workstation="PDL-1",
        recipient=f.PL,
        distribution_id="d-1",
        incident_ids=[INC_A],
        kind="REPORT",
        status="ACTUAL",
        agreement="agr-pl",
        rule="agr-pl/municipal",
        law="l. 1/2000",
        purpose="PUBLIC_SECURITY",
        fields=["incident.id"],
        withheld=["incident.call.caller.name", "incident.vehicles.plate"],
        linked=[],
        data_sha256="ab" * 32,
        detail="",
    )


# -- output -------------------------------------------------------------------------------------------------------


def test_to_csv_has_header_and_rows_with_joined_lists() -> None:
    rows = list(answer(ITEMS, Question(distribution="d-1")))
    text = to_csv(rows)
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == list(COLUMNS)
    assert len(parsed) == 1 + 4
    pl = dict(zip(COLUMNS, parsed[3], strict=True))
    assert pl["recipient"] == f.PL
    assert pl["withheld"] == "incident.call.caller.name;incident.vehicles.plate"
    assert pl["position"] == "1"
    assert pl["seq"] == "10"
    update = dict(zip(COLUMNS, parsed[4], strict=True))
    assert update["incident_ids"] == f"{INC_A};{INC_B}"
    assert update["linked"] == "d-1"
    assert update["fields"] == ""


def test_to_csv_of_nothing_is_the_header() -> None:
    assert to_csv([]) == ",".join(COLUMNS) + "\n"


def test_to_json_parses_with_count_and_question() -> None:
    q = Question(agency=f.QUESTURA)
    rows = list(answer(ITEMS, q))
    doc = json.loads(to_json(rows, q))
    assert doc["count"] == 2
    assert doc["question"] == f"agency={f.QUESTURA}"
    assert [r["action"] for r in doc["records"]] == ["disclosure", "consultation"]
    assert doc["records"][0]["fields"] == ["incident.id", "incident.call.caller.name"]
    assert doc["records"][1]["seq"] == 13


def test_to_table_ends_with_the_count() -> None:
    rows = list(answer(ITEMS, Question()))
    lines = to_table(rows).splitlines()
    assert lines[-1] == "(5 records)"
    assert lines[0].split() == list(TABLE_COLUMNS)
    assert len(lines) == 1 + 5 + 1
    assert "incident.call.caller.name" in lines[2]
    assert to_table([]).splitlines() == ["  ".join(TABLE_COLUMNS), "(0 records)"]


def test_to_table_cuts_cells_at_width() -> None:
    row = row_of(rec(audit_pb2.ACTION_DISCLOSURE, recipient="r" * 100), 1, 1)
    table = to_table([row], width=10)
    assert "r" * 10 in table
    assert "r" * 11 not in table
