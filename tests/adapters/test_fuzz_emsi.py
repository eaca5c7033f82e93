"""The EMSI codec under mutated documents: decode returns an envelope or raises DocumentError, never anything else, and fast."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from opsroom.envelope.v1 import envelope_pb2

from adapters import emsi
from adapters.document import Context, DocumentError, DocumentTooLarge, Limits

EXAMPLES = Path(__file__).parent / "examples"
CTX = Context(agency_id="it.pl.001272")
# A liveness bound, not a benchmark: a decode that takes longer is looping or blowing up.
LIVENESS_SECONDS = 2.0
FUZZ = settings(
    max_examples=int(os.environ.get("OPSROOM_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _seeds() -> list[bytes]:
    raw = [p.read_bytes() for p in sorted((EXAMPLES / "emsi").glob("example-*"))]
    as_xml = [emsi.encode(emsi.decode(data, CTX), syntax="xml") for data in raw if data.lstrip()[:1] == b"{"]
    return raw + as_xml


SEEDS = _seeds()
JSON_SEEDS = [s for s in SEEDS if s.lstrip()[:1] == b"{"]
XML_SEEDS = [s for s in SEEDS if s.lstrip()[:1] == b"<"]


def decode_bounded(data: bytes, ctx: Context = CTX) -> envelope_pb2.Envelope | None:
    """Decode; an envelope or None for a DocumentError. Any other exception fails the test."""
    started = time.monotonic()
    try:
        env: envelope_pb2.Envelope | None = emsi.decode(data, ctx)
    except DocumentError:
        env = None
    elapsed = time.monotonic() - started
    assert elapsed < LIVENESS_SECONDS, f"decode took {elapsed:.2f} s (liveness bound {LIVENESS_SECONDS} s)"
    if env is not None:
        syntax: emsi.Syntax = "xml" if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<" else "json"
        try:
            again = emsi.decode(emsi.encode(env, syntax=syntax), ctx)
        except DocumentError:
            return env  # a decoded document the codec cannot write back is refused precisely
        assert {f.path: f.value for f in again.origin.unmapped} == {f.path: f.value for f in env.origin.unmapped}
        again.origin.ClearField("unmapped")
        plain = envelope_pb2.Envelope()
        plain.CopyFrom(env)
        plain.origin.ClearField("unmapped")
        assert again == plain
    return env


@FUZZ
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_byte_mutations(seed: bytes, data: st.DataObject) -> None:
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[pos : pos + data.draw(st.integers(1, 32))]
        else:
            del buf[pos:]
    decode_bounded(bytes(buf))


WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.just("x" * 200_000),
    st.just([]),
    st.just({}),
    st.just([[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]),
    st.sampled_from(["ACTUAL", "COM", "2024-01-09T16:00:00+01:00", "#REPONSE_DEMANDE_CONCOURS#REFUS#", "SECRET"]),
)


def _json_slots(node: Any, trail: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [trail]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _json_slots(value, (*trail, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _json_slots(value, (*trail, i))
    return out


@FUZZ
@given(seed=st.sampled_from(JSON_SEEDS), data=st.data())
def test_json_structure_mutations(seed: bytes, data: st.DataObject) -> None:
    doc = json.loads(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        slots = [s for s in _json_slots(doc) if s]
        if not slots:
            break
        slot = data.draw(st.sampled_from(slots))
        parent = doc
        for step in slot[:-1]:
            parent = parent[step]
        last = slot[-1]
        op = data.draw(st.sampled_from(["drop", "duplicate", "replace", "rename"]))
        if op == "drop":
            del parent[last]
        elif op == "duplicate":
            if isinstance(parent, list):
                parent.insert(last, json.loads(json.dumps(parent[last])))
            else:
                parent[f"{last}_COPY"] = parent[last]
        elif op == "replace":
            parent[last] = json.loads(json.dumps(data.draw(WRONG_VALUES)))  # a fresh copy each run
        elif isinstance(parent, dict):
            parent[data.draw(st.sampled_from(["ID", "LINK", "MISSION", "RESOURCE", "emsi", "CONTEXT", "X"]))] = (
                parent.pop(last)
            )
    decode_bounded(json.dumps(doc, ensure_ascii=False).encode())


@FUZZ
@given(seed=st.sampled_from(XML_SEEDS), data=st.data())
def test_xml_structure_mutations(seed: bytes, data: st.DataObject) -> None:
    root = etree.fromstring(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        elements = list(root.iter())[1:]
        if not elements:
            break
        element = data.draw(st.sampled_from(elements))
        parent = element.getparent()
        assert parent is not None
        op = data.draw(st.sampled_from(["drop", "duplicate", "text", "huge", "nest", "move"]))
        if op == "drop":
            parent.remove(element)
        elif op == "duplicate":
            parent.insert(parent.index(element), etree.fromstring(etree.tostring(element)))
        elif op == "text":
            element.text = data.draw(st.text(max_size=30).filter(lambda t: all(c.isprintable() for c in t)))
        elif op == "huge":
            element.text = "9" * 300_000
        elif op == "nest":
            inner = element
            for _ in range(data.draw(st.integers(1, 40))):
                inner = etree.SubElement(inner, element.tag)
        else:
            parent.remove(element)
            root.append(element)
    decode_bounded(etree.tostring(root))


def _big(coords: int, syntax: emsi.Syntax) -> bytes:
    """The complete example with a polygon of this many vertices and a long free text."""
    if syntax == "json":
        doc = json.loads((EXAMPLES / "emsi" / "example-EMSI-Complet-DC-RDC-OPG-message.json").read_bytes())
        position = doc["emsi"]["EVENT"]["EGEO"][0]["POSITION"]
        position["TYPE"] = "POLYGON"
        position["COORD"] = [{"LAT": 45.0 + i * 1e-6, "LONG": 7.0 + i * 1e-6, "HEIGHT": 239} for i in range(coords)]
        doc["emsi"]["EVENT"]["FREETEXT"] = "descrizione " * 20_000
        return json.dumps(doc).encode()
    root = etree.fromstring((EXAMPLES / "emsi" / "example-EMSI-Complet-DC-RDC-OPG-message.xml").read_bytes())
    ns = {"e": emsi.NAMESPACE}
    first = root.find("e:EVENT/e:EGEO/e:POSITION/e:COORD", ns)
    assert first is not None
    for i in range(coords):
        coord = etree.Element(f"{{{emsi.NAMESPACE}}}COORD")
        for name, value in (("LAT", 45.0 + i * 1e-6), ("LONG", 7.0 + i * 1e-6), ("HEIGHT", 239)):
            etree.SubElement(coord, f"{{{emsi.NAMESPACE}}}{name}").text = str(value)
        first.addnext(coord)
    event = root.find("e:EVENT", ns)
    assert event is not None
    etree.SubElement(event, f"{{{emsi.NAMESPACE}}}FREETEXT").text = "descrizione " * 20_000
    return bytes(etree.tostring(root))


@pytest.mark.parametrize("syntax", ["json", "xml"])
def test_a_megabyte_polygon_is_refused_as_too_large_at_once(syntax: emsi.Syntax) -> None:
    data = _big(16_000, syntax)
    assert len(data) > 1_000_000
    started = time.monotonic()
    with pytest.raises(DocumentTooLarge) as err:
        emsi.decode(data, CTX)
    assert time.monotonic() - started < LIVENESS_SECONDS
    assert str(emsi.MAX_NODES) in err.value.reason
    small = Context(agency_id="it.pl.001272", limits=Limits(max_bytes=512 * 1024))
    with pytest.raises(DocumentTooLarge, match="bytes"):
        emsi.decode(data, small)


@pytest.mark.parametrize("syntax", ["json", "xml"])
def test_a_polygon_within_the_bound_is_decoded_within_the_liveness_bound(syntax: emsi.Syntax) -> None:
    data = _big(2_000, syntax)
    env = decode_bounded(data)
    assert env is not None
    assert len(env.origin.unmapped) > 3 * 2_000  # every further vertex is kept for the way back
    few = Context(agency_id="it.pl.001272", limits=Limits(max_elements=1_000))
    with pytest.raises(DocumentTooLarge):
        emsi.decode(data, few)


@pytest.mark.parametrize("syntax", ["json", "xml"])
def test_a_megabyte_of_free_text_is_decoded(syntax: emsi.Syntax) -> None:
    data = _big(0, syntax).replace(b"descrizione " * 20_000, b"descrizione " * 85_000)
    assert len(data) > 1_000_000
    env = decode_bounded(data)
    assert env is not None
    assert "descrizione descrizione" in {f.path: f.value for f in env.origin.unmapped}["EVENT/FREETEXT"]


def test_deep_nesting_is_refused_as_too_large() -> None:
    deep = b'{"emsi": ' + b'{"CONTEXT": ' * 100 + b"{}" + b"}" * 100 + b"}"
    with pytest.raises(DocumentTooLarge):
        emsi.decode(deep, CTX)
    xml = b'<emsi xmlns="urn:emergency:eda:1.9:emsi">' + b"<EVENT>" * 100 + b"</EVENT>" * 100 + b"</emsi>"
    with pytest.raises(DocumentTooLarge):
        emsi.decode(xml, CTX)
