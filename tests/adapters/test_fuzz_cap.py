"""The CAP 1.2 codec under mutated documents: decode gives an Envelope or a DocumentError, never another exception.

Mutations start from the four appendix examples and the Italian plate-reader alert: byte flips,
insertions and truncation; dropped, duplicated and re-texted elements; huge text; deep nesting.
Every decode must finish within the liveness bound; what decodes must encode back to a valid
CAP document or be refused with a DocumentError.
"""

from __future__ import annotations

import copy
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from opsroom.envelope.v1 import envelope_pb2

from adapters import cap, document
from adapters.document import Context, DocumentError, DocumentTooLarge, Limits
from tests.adapters.test_cap import APPENDIX, PLATE_READER

LIVENESS_S = 2.0  # liveness bound: a decode never takes longer than this
SEEDS = [path.read_bytes() for path in APPENDIX] + [PLATE_READER]
CTX = Context(agency_id="it.pl.001272", limits=Limits(max_bytes=2 * 1024 * 1024))
FUZZ = settings(
    max_examples=int(os.environ.get("OPSROOM_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TEXTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "Draft",
            "Ack",
            "Error",
            "Private",
            "2003-06-17T14:57:00-07:00",
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+14:00",
            "2003-01-01T24:00:00-00:00",
            "1,2 3,4 5,6 1,2",
            "1e999,2 3,4 5,6 1e999,2",
            "91,181 0",
            "ISTAT",
            "VEHICLE_1_PLATE",
            "VEHICLE_2_VIN",
            "VEHICLE_X",
            "RESOURCE_1_SHA256",
            "RESOURCE_9_SHA256",
            "a,b,c d,e",
            '"unbalanced',
            "-1",
            "18446744073709551616",
            "\u202e\u0000",
        ]
    ),
)


def decode_within_bound(data: bytes) -> envelope_pb2.Envelope | None:
    start = time.monotonic()
    try:
        env = cap.decode(data, CTX)
    except DocumentError:
        env = None
    assert time.monotonic() - start < LIVENESS_S, "liveness bound"
    if env is not None:
        try:
            encoded = cap.encode(env)
        except DocumentError:
            pass
        else:
            assert cap.decode(encoded, CTX).kind == env.kind
    return env


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)
        ),
        max_size=6,
    ),
    cut=st.none() | st.integers(0, 10_000),
)
def test_byte_mutations_decode_or_refuse(seed: bytes, edits: list[tuple[str, int, bytes]], cut: int | None) -> None:
    data = bytearray(seed)
    for op, where, chunk in edits:
        at = where % (len(data) + 1)
        if op == "flip" and at < len(data):
            data[at] ^= chunk[0] or 1
        elif op == "insert":
            data[at:at] = chunk
        else:
            del data[at : at + len(chunk)]
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    decode_within_bound(bytes(data))


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["drop", "duplicate", "text", "huge", "nest", "move"]), st.integers(0, 10_000), TEXTS
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_structural_mutations_decode_or_refuse(seed: bytes, edits: list[tuple[str, int, str]]) -> None:
    root = document.parse_xml(seed)
    for op, which, raw in edits:
        text = "".join(c for c in raw if c.isprintable())
        elements = list(root.iter())
        element = elements[which % len(elements)]
        parent = element.getparent()
        if op == "drop" and parent is not None:
            parent.remove(element)
        elif op == "duplicate" and parent is not None:
            element.addnext(copy.deepcopy(element))
        elif op == "text":
            element.text = text if len(element) == 0 else element.text
        elif op == "huge" and len(element) == 0:
            element.text = (text or "x") * (200_000 // max(len(text), 1))
        elif op == "nest":
            node = element
            for _ in range(40):
                node = etree.SubElement(node, element.tag)
        elif op == "move" and parent is not None:
            parent.remove(element)
            root.append(element)
    decode_within_bound(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def test_deep_nesting_is_refused_as_too_large() -> None:
    root = document.parse_xml(SEEDS[0])
    node = root
    for _ in range(100):
        node = etree.SubElement(node, "{urn:oasis:names:tc:emergency:cap:1.2}info")
    start = time.monotonic()
    with pytest.raises(DocumentTooLarge, match="nested deeper"):
        cap.decode(etree.tostring(root), CTX)
    assert time.monotonic() - start < LIVENESS_S, "liveness bound"


def test_huge_text_is_decoded_or_refused_within_the_bound() -> None:
    big = SEEDS[0].replace(b"<event>", b"<event>" + b"x" * 1_500_000, 1)
    start = time.monotonic()
    with pytest.raises(DocumentTooLarge) as caught:
        cap.decode(big, CTX)
    assert caught.value.path == "/alert/info/event"
    assert time.monotonic() - start < LIVENESS_S, "liveness bound"
