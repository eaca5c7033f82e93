"""Fuzzing the contact card decoder: mutated cards decode to an Envelope or raise DocumentError, never anything else.

Each decode must also finish within LIVENESS_S (a liveness bound, not a performance target).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from opsroom.envelope.v1 import envelope_pb2

from adapters import nue112
from adapters.document import Context, DocumentError, DocumentTooLarge
from tests.adapters.test_nue112 import leaves

EXAMPLE = (Path(__file__).parent / "examples" / "nue112" / "example-synthetic-contactcard.xml").read_bytes()
CTX = Context(agency_id="it.nue.cur.mi")
DIRECTORY = {"QUESTURA-MI": "it.ps.questura-mi", "CC-MI": "it.cc.mi"}
LIVENESS_S = 2.0
FUZZ = settings(
    max_examples=int(os.environ.get("OPSROOM_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ELEMENT_COUNT = len(list(etree.fromstring(EXAMPLE).iter(etree.Element)))


def decode_or_refuse(data: bytes) -> envelope_pb2.Envelope | DocumentError:
    """Decode within the liveness bound; a DocumentError is returned, anything else propagates."""
    start = time.monotonic()
    try:
        result: envelope_pb2.Envelope | DocumentError = nue112.decode(data, CTX, companies=DIRECTORY)
    except DocumentError as exc:
        result = exc
    elapsed = time.monotonic() - start
    assert elapsed < LIVENESS_S, f"decode took {elapsed:.2f} s (liveness bound {LIVENESS_S} s)"
    return result


def encodes_if_decoded(result: envelope_pb2.Envelope | DocumentError) -> None:
    """A card that decodes encodes again to a card the XSD accepts (encode validates) or a DocumentError."""
    if isinstance(result, envelope_pb2.Envelope):
        with contextlib.suppress(DocumentError):
            nue112.encode(result)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(EXAMPLE) - 1),
            st.sampled_from(["flip", "insert", "delete"]),
            st.binary(min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_byte_mutations(edits: list[tuple[int, str, bytes]]) -> None:
    data = bytearray(EXAMPLE)
    for position, how, payload in edits:
        at = min(position, len(data) - 1)
        if how == "flip":
            data[at] ^= payload[0] or 1
        elif how == "insert":
            data[at:at] = payload
        else:
            del data[at : at + len(payload)]
    encodes_if_decoded(decode_or_refuse(bytes(data)))


@FUZZ
@given(st.integers(0, len(EXAMPLE)))
def test_truncation(length: int) -> None:
    result = decode_or_refuse(EXAMPLE[:length])
    if length < len(EXAMPLE.rstrip()):
        assert isinstance(result, DocumentError)


TEXTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", " ", "-1", "0", "4294967296", "99999", "TRUE", "NaN", "1e5", "-91", "180.0000001", "+39", "9999-12-31T23:59:59-14:00",
         "0001-01-01T00:00:00+14:00", "2025-02-30T10:00:00Z", "QUESTURA-MI", "ZZ", "\u00e8\u00e9", "&amp;"]
    ),
    st.integers(0, 200_000).map(lambda n: "x" * n),
)  # fmt: skip


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, ELEMENT_COUNT - 1),
            st.sampled_from(["drop", "duplicate", "text", "rename", "nest", "move"]),
            TEXTS,
            st.integers(0, ELEMENT_COUNT - 1),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_structural_mutations(edits: list[tuple[int, str, str, int]]) -> None:
    root = etree.fromstring(EXAMPLE)
    for index, how, text, other in edits:
        elements = list(root.iter(etree.Element))
        target = elements[index % len(elements)]
        parent = target.getparent()
        if how == "drop" and parent is not None:
            parent.remove(target)
        elif how == "duplicate" and parent is not None:
            target.addnext(copy.deepcopy(target))
        elif how == "text":
            try:
                target.text = text
            except ValueError:  # characters XML cannot carry: lxml refuses to build them
                continue
        elif how == "rename":
            names = [*sorted(nue112._CHILDREN), "Note", "Value", "Code", "Latitude"]
            target.tag = f"{{{nue112.NS}}}{names[other % len(names)]}"
        elif how == "nest":
            node = target
            for _ in range(other % 40):
                node = etree.SubElement(node, f"{{{nue112.NS}}}Notes")
        elif how == "move":
            destination = elements[other % len(elements)]
            if target is not root and destination is not target and target not in destination.iterancestors():
                destination.append(target)
    data = etree.tostring(root)
    result = decode_or_refuse(data)
    if isinstance(result, envelope_pb2.Envelope):
        # a card that decodes is written back element for element
        assert leaves(nue112.encode(result, companies=DIRECTORY)) == leaves(data)


@FUZZ
@given(st.sampled_from(["Latitude", "Longitude"]), st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_any_coordinate(which: str, value: float) -> None:
    root = etree.fromstring(EXAMPLE)
    element = root.find(f".//{{{nue112.NS}}}{which}")
    assert element is not None
    element.text = format(value, "f")
    result = decode_or_refuse(etree.tostring(root))
    bound = 90 if which == "Latitude" else 180
    assert isinstance(result, envelope_pb2.Envelope) == (abs(value) <= bound)


def test_card_with_many_notes_decodes_in_bounds() -> None:
    notes = nue112.MAX_ELEMENTS - ELEMENT_COUNT
    body = "".join(f"<Note>nota {i}</Note>" for i in range(notes))
    data = EXAMPLE.replace(b"<Note>Chiamante agitato, richiamato una volta</Note>", body.encode())
    result = decode_or_refuse(data)
    assert isinstance(result, envelope_pb2.Envelope)
    assert len(result.incident.notes) == notes
    assert len(etree.fromstring(nue112.encode(result))) == len(etree.fromstring(data))


@pytest.mark.parametrize("notes", [45_000, 250_000])
def test_megabyte_card_of_elements_is_refused_as_too_large(notes: int) -> None:
    """About 1 MB and 6 MB of notes: refused, within the liveness bound, as too large."""
    body = "".join(f"<Note>nota {i}</Note>" for i in range(notes))
    data = EXAMPLE.replace(b"<Note>Chiamante agitato, richiamato una volta</Note>", body.encode())
    assert len(data) > 1_000_000
    result = decode_or_refuse(data)
    assert isinstance(result, DocumentTooLarge)


def test_megabyte_of_text_decodes_in_bounds() -> None:
    text = "lite " * 180_000  # 900 kB, under the 1 MiB text bound
    data = EXAMPLE.replace(b"Persone che litigano in strada, una ferita", text.encode())
    result = decode_or_refuse(data)
    assert isinstance(result, envelope_pb2.Envelope)
    assert result.incident.description == text


def test_huge_text_is_refused_as_too_large() -> None:
    data = EXAMPLE.replace(b"davanti al bar", b"x" * (CTX.limits.max_text + 1))
    with pytest.raises(DocumentTooLarge):
        nue112.decode(data, CTX)


def test_deep_nesting_is_refused() -> None:
    depth = CTX.limits.max_depth + 5
    data = EXAMPLE.replace(b"<Notes>", b"<Notes>" + b"<Note>" * depth + b"</Note>" * depth)
    with pytest.raises(DocumentTooLarge):
        nue112.decode(data, CTX)
