"""The codecs' shared ground: hostile XML is refused without fetching anything, JSON is parsed strictly, bounds hold."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters import document, edxl
from adapters.document import DocumentError, DocumentTooLarge, Limits

EXAMPLES = Path(__file__).parent / "examples"


@pytest.fixture
def fetch_counter() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 that records every path asked of it: no parse may reach it."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = b'<!ENTITY secret "fetched">'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def hostile(url: str, local: Path) -> list[bytes]:
    return [
        f'<?xml version="1.0"?><!DOCTYPE x SYSTEM "{url}/dtd"><x>&secret;</x>'.encode(),
        f'<!DOCTYPE x [<!ENTITY % p SYSTEM "{url}/pe"> %p;]><x>&secret;</x>'.encode(),
        f'<!DOCTYPE x [<!ENTITY e SYSTEM "{url}/e">]><x>&e;</x>'.encode(),
        f'<!DOCTYPE x [<!ENTITY e SYSTEM "file://{local}">]><x>&e;</x>'.encode(),
        f'<!DOCTYPE x SYSTEM "{local}"><x>&secret;</x>'.encode(),
        (
            b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
            b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><x>&c;&c;&c;&c;</x>'
        ),
        f'<x xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="{url}/xi" parse="text"/></x>'.encode(),
        f'<?xml-stylesheet href="{url}/xsl"?><x/>'.encode(),
    ]


def test_hostile_xml_fetches_nothing_and_expands_nothing(fetch_counter: tuple[str, list[str]], tmp_path: Path) -> None:
    url, hits = fetch_counter
    local = tmp_path / "secret.dtd"
    local.write_text('<!ENTITY secret "read from disk">', encoding="utf-8")
    outcomes = []
    for data in hostile(url, local):
        try:
            root = document.parse_xml(data)
        except DocumentError as exc:
            outcomes.append(exc.reason)
            continue
        text = "".join(root.itertext())
        assert "fetched" not in text
        assert "read from disk" not in text
        assert "aaaa" not in text
        outcomes.append("parsed")
    assert hits == []
    # The DOCTYPE ones are refused; XInclude and the stylesheet PI are inert (never processed).
    assert outcomes[:6] == [o for o in outcomes[:6] if o != "parsed"]
    assert outcomes[6:] == ["parsed", "parsed"]


def test_xml_bounds_refuse_with_the_path() -> None:
    deep = b"<a>" + b"<b>" * 40 + b"</b>" * 40 + b"</a>"
    with pytest.raises(DocumentTooLarge) as exc:
        document.parse_xml(deep)
    assert exc.value.path.startswith("/a/b/b")
    with pytest.raises(DocumentTooLarge, match="elements"):
        document.parse_xml(b"<a>" + b"<b/>" * 50 + b"</a>", Limits(max_elements=10))
    with pytest.raises(DocumentTooLarge, match="bytes"):
        document.parse_xml(b"<a/>" + b" " * 100, Limits(max_bytes=50))
    with pytest.raises(DocumentError, match="not well-formed"):
        document.parse_xml(b"<a><b></a>")


def test_json_is_strict() -> None:
    assert document.load_json(b'{"a": [1, "[[[{"]}') == {"a": [1, "[[[{"]}
    for data, expected in [
        (b'{"a": 1, "a": 2}', "/a: appears twice"),
        (b"[NaN]", "NaN"),
        (b"[" * 40 + b"]" * 40, "nested deeper"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
    ]:
        with pytest.raises(DocumentError) as exc:
            document.load_json(data)
        assert expected in str(exc.value)


def test_distribution_ids_are_stable_and_distinct() -> None:
    one = document.distribution_id("cap-1.2", "a@example", "X1")
    assert one == document.distribution_id("cap-1.2", "a@example", "X1")
    assert one != document.distribution_id("cap-1.2", "b@example", "X1")
    assert one != document.distribution_id("emsi-1.0", "a@example", "X1")


def test_edxl_de_unwraps_one_document_and_refuses_several() -> None:
    root = document.parse_xml((EXAMPLES / "edxl-de" / "example-hubsante-EDXL-DE.xml").read_bytes())
    assert edxl.is_wrapper(root)
    inner = edxl.unwrap_xml(root)
    assert inner.tag == "{urn:emergency:cisu:3.0}message"
    assert inner.getparent() is None
    doc = document.load_json((EXAMPLES / "edxl-de" / "example-hubsante-EDXL-DE.json").read_bytes())
    with pytest.raises(DocumentError, match="carries 2 messages"):
        edxl.unwrap_json(doc)
    doc["content"] = doc["content"][:1]
    path, message = edxl.unwrap_json(doc)
    assert path == "/content/0/jsonContent/embeddedJsonContent/message"
    assert "technicalNoreq" in message
