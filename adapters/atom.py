"""The Atom feed of CAP alerts a recipient may see (pure): entries, paging, conditional GET.

A CAP connector keeps the alerts delivered to its agency and serves them as an Atom feed (RFC
4287), newest first, the CAP document inline in each entry's content (type application/cap+xml,
which adapters.edxl unwraps). Pages follow RFC 5005 (rel="next" to older entries); a client
polling with If-None-Match or If-Modified-Since gets 304 when nothing changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from lxml import etree

from adapters import document

ATOM = "http://www.w3.org/2005/Atom"
CAP_MEDIA_TYPE = "application/cap+xml"


@dataclass(frozen=True)
class Entry:
    """One stored alert: its position in the store, id, when it arrived, title and CAP document."""

    seq: int
    distribution_id: str
    updated: datetime
    title: str
    cap: bytes


@dataclass(frozen=True)
class Page:
    """One page of the feed: its entries (newest first) and whether older ones remain."""

    entries: Sequence[Entry]
    more: bool


def render(page: Page, *, feed_id: str, title: str, base_url: str, before: int | None) -> bytes:
    """The Atom document of a page; base_url is the feed's own URL without query."""
    a = f"{{{ATOM}}}"
    feed = etree.Element(a + "feed", nsmap={None: ATOM})
    etree.SubElement(feed, a + "id").text = feed_id
    etree.SubElement(feed, a + "title").text = title
    newest = page.entries[0].updated if page.entries else datetime(1970, 1, 1, tzinfo=UTC)
    etree.SubElement(feed, a + "updated").text = _iso(newest)
    self_href = base_url if before is None else f"{base_url}?before={before}"
    etree.SubElement(feed, a + "link", rel="self", href=self_href)
    if page.more and page.entries:
        etree.SubElement(feed, a + "link", rel="next", href=f"{base_url}?before={page.entries[-1].seq}")
    for item in page.entries:
        entry = etree.SubElement(feed, a + "entry")
        etree.SubElement(entry, a + "id").text = f"urn:uuid:{item.distribution_id}"
        etree.SubElement(entry, a + "title").text = item.title
        etree.SubElement(entry, a + "updated").text = _iso(item.updated)
        author = etree.SubElement(entry, a + "author")
        etree.SubElement(author, a + "name").text = "opsroom"
        content = etree.SubElement(entry, a + "content", type=CAP_MEDIA_TYPE)
        content.append(document.parse_xml(item.cap))
    return bytes(etree.tostring(feed, xml_declaration=True, encoding="UTF-8"))


def etag(page: Page, before: int | None) -> str:
    """A strong validator of a page: changes when its entries or its place in the feed change."""
    digest = hashlib.sha256(f"{before}|{page.more}|".encode())
    for item in page.entries:
        digest.update(f"{item.seq}:{item.distribution_id};".encode())
    return f'"{digest.hexdigest()[:32]}"'


def last_modified(page: Page) -> str | None:
    """The page's Last-Modified header (its newest entry), or None for an empty page."""
    return format_datetime(page.entries[0].updated.astimezone(UTC), usegmt=True) if page.entries else None


def not_modified(page: Page, before: int | None, if_none_match: str | None, if_modified_since: str | None) -> bool:
    """Whether a conditional GET is answered 304 (If-None-Match wins over If-Modified-Since, RFC 9110)."""
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or etag(page, before) in tags
    if if_modified_since is None or not page.entries:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return page.entries[0].updated.replace(microsecond=0) <= since


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
