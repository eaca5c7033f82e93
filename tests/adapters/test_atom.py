"""The Atom feed of alerts: entries carry their CAP inline, pages link to older ones, conditional GET answers 304."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from lxml import etree

from adapters import atom, cap, document
from adapters.connect.cap import AlertStore
from adapters.document import Context
from tests.adapters.test_cap import PLATE_READER

A = f"{{{atom.ATOM}}}"
T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def entry(seq: int, minutes: int = 0) -> atom.Entry:
    return atom.Entry(
        seq, f"00000000-0000-4000-8000-{seq:012d}", T0 + timedelta(minutes=minutes), f"alert {seq}", PLATE_READER
    )


def test_entries_carry_the_cap_document_which_decodes_from_the_entry() -> None:
    page = atom.Page([entry(2, 1), entry(1)], more=False)
    feed = document.parse_xml(atom.render(page, feed_id="urn:f", title="t", base_url="http://x/feed", before=None))
    entries = feed.findall(A + "entry")
    assert [e.findtext(A + "id") for e in entries] == [
        f"urn:uuid:{entry(2).distribution_id}",
        f"urn:uuid:{entry(1).distribution_id}",
    ]
    assert feed.findtext(A + "updated") == "2026-12-07T10:01:00Z"
    assert feed.find(f"{A}link[@rel='next']") is None
    one = etree.tostring(entries[0])
    env = cap.decode(one, Context(agency_id="it.ps.questura.to"))
    assert env.alert.vehicles[0].plate
    assert env.origin.identifier == "PLT-2026-000123"


def test_pages_link_to_older_entries() -> None:
    page = atom.Page([entry(9), entry(8)], more=True)
    feed = document.parse_xml(atom.render(page, feed_id="urn:f", title="t", base_url="http://x/feed", before=10))
    assert feed.find(f"{A}link[@rel='self']").get("href") == "http://x/feed?before=10"
    assert feed.find(f"{A}link[@rel='next']").get("href") == "http://x/feed?before=8"


def test_conditional_get() -> None:
    page = atom.Page([entry(2, 1), entry(1)], more=False)
    tag = atom.etag(page, None)
    assert atom.not_modified(page, None, tag, None)
    assert atom.not_modified(page, None, f'"other", {tag}', None)
    assert not atom.not_modified(page, None, '"other"', None)
    assert not atom.not_modified(atom.Page([entry(3, 2), *page.entries], more=False), None, tag, None)
    assert tag != atom.etag(page, 5)
    modified = atom.last_modified(page)
    assert modified == "Mon, 07 Dec 2026 10:01:00 GMT"
    assert atom.not_modified(page, None, None, modified)
    assert not atom.not_modified(page, None, None, "Mon, 07 Dec 2026 10:00:59 GMT")
    assert not atom.not_modified(page, None, None, "not a date")
    assert not atom.not_modified(atom.Page([], more=False), None, None, modified)


def test_the_store_keeps_each_alert_once_newest_first_by_page(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    try:
        for n in range(1, 6):
            assert store.add(entry(n).distribution_id, T0 + timedelta(minutes=n), f"alert {n}", PLATE_READER)
        assert not store.add(entry(3).distribution_id, T0, "again", b"<x/>")
        first = store.page(None, limit=2)
        assert [e.seq for e in first.entries] == [5, 4]
        assert first.more
        last = store.page(2, limit=2)
        assert [e.seq for e in last.entries] == [1]
        assert not last.more
        assert store.get(entry(3).distribution_id) == PLATE_READER
        assert store.get("nope") is None
    finally:
        store.close()
