"""How the audit writer packs drafts into entries: order kept, message ids alone, sizes bounded (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opsroom.audit.v1 import audit_pb2

from broker.audit.log import Draft, pack


def draft(name: str, size: int = 10, msg_id: str = "") -> Draft:
    """A draft of one record whose encoding is about size bytes."""
    return Draft.of([audit_pb2.AuditRecord(detail=name.ljust(max(1, size - 4), "."))], msg_id)


def names(entry: Draft) -> list[str]:
    return [r.detail.rstrip(".") for r in audit_pb2.AuditEntry.FromString(entry.records).records]


def test_drafts_without_ids_share_one_entry_in_order() -> None:
    entries, members = pack([draft("a"), draft("b"), draft("c")], 1000)
    assert [["a", "b", "c"]] == [names(e) for e in entries]
    assert [[0, 1, 2]] == members
    assert [""] == [e.msg_id for e in entries]


def test_a_draft_with_a_message_id_is_an_entry_alone() -> None:
    entries, members = pack([draft("a"), draft("esc", msg_id="esc:1"), draft("b"), draft("c")], 1000)
    assert [["a"], ["esc"], ["b", "c"]] == [names(e) for e in entries]
    assert [[0], [1], [2, 3]] == members
    assert ["", "esc:1", ""] == [e.msg_id for e in entries]


def test_an_entry_closes_before_it_would_pass_the_size() -> None:
    drafts = [draft(str(i), 100) for i in range(5)]
    entries, members = pack(drafts, 250)
    assert [[0, 1], [2, 3], [4]] == members
    assert all(len(e.records) <= 250 for e in entries)


def test_a_draft_larger_than_the_size_is_an_entry_alone() -> None:
    entries, members = pack([draft("a"), draft("big", 500), draft("b")], 100)
    assert [[0], [1], [2]] == members
    assert ["big"] == names(entries[1])


def test_nothing_to_pack() -> None:
    assert ([], []) == pack([], 100)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(5, 300), st.booleans()), max_size=30),
    limit=st.integers(50, 1000),
)
def test_every_record_once_in_order_within_the_limit(sizes: list[tuple[int, bool]], limit: int) -> None:
    drafts = [draft(f"r{i}", size, f"id{i}" if has_id else "") for i, (size, has_id) in enumerate(sizes)]
    entries, members = pack(drafts, limit)
    assert [f"r{i}" for i in range(len(drafts))] == [n for e in entries for n in names(e)]
    assert list(range(len(drafts))) == [i for m in members for i in m]
    for entry, member in zip(entries, members, strict=True):
        assert len(member) == 1 or len(entry.records) <= limit
        assert len(member) == 1 or not any(drafts[i].msg_id for i in member)
        assert entry.msg_id == (drafts[member[0]].msg_id if len(member) == 1 else "")
