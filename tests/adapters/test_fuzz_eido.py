"""EIDO decode under mutation: an Envelope or a DocumentError, never another exception, and always quick."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import eido
from adapters.document import Context, DocumentError, DocumentTooLarge

SAMPLE = (Path(__file__).parent / "examples" / "eido" / "sample-call-transfer-eido.json").read_bytes()
CTX = Context(agency_id="it.nue.cur.to")
FUZZ = settings(
    max_examples=int(os.environ.get("OPSROOM_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Liveness bound, not a performance target: a decode that takes longer is stuck on something.
LIVENESS_S = 2.0
eido.validator()  # the schema is derived and compiled once per process: not part of any decode's time


def decode_or_refuse(data: bytes) -> None:
    started = time.monotonic()
    try:
        env = eido.decode(data, CTX)
    except DocumentError:
        pass
    else:
        assert env.origin.format == eido.FORMAT
        with contextlib.suppress(DocumentError):  # whatever decoded also encodes, or is refused as not expressible
            eido.encode(env)
    assert time.monotonic() - started < LIVENESS_S


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*path, i))
    return out


DOC = json.loads(SAMPLE)
PATHS = [p for p in _paths(DOC) if p]
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=50),
    st.just("x" * 100_000),
    st.just("<presence"),
    st.just("2021-13-45T99:99:99Z"),
    st.just("0001-01-01T00:00:00-23:59"),
    st.just("\udcff"),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.just({"$ref": "x"}),
    st.just([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
)


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    node = doc
    for part in path[:-1]:
        node = node[part]
    return node


@FUZZ
@given(st.data())
def test_byte_mutations(data: st.DataObject) -> None:
    raw = bytearray(SAMPLE)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and raw:
            del raw[at]
        elif op == "truncate":
            del raw[at:]
    decode_or_refuse(bytes(raw))


@FUZZ
@given(st.data())
def test_structural_mutations(data: st.DataObject) -> None:
    doc = copy.deepcopy(DOC)
    for _ in range(data.draw(st.integers(1, 4))):
        path = data.draw(st.sampled_from(PATHS))
        try:
            parent = _parent(doc, path)
            key = path[-1]
            current = parent[key]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed it
        op = data.draw(st.sampled_from(["drop", "duplicate", "replace", "wrap"]))
        if op == "drop":
            del parent[key]
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(current))
        elif op == "duplicate" and isinstance(parent, dict):
            parent[f"{key}Copy"] = copy.deepcopy(current)
        elif op == "replace":
            parent[key] = data.draw(ODD_VALUES)
        else:
            parent[key] = [current]
    try:
        raw = json.dumps(doc).encode()
    except UnicodeEncodeError:
        raw = json.dumps(doc, ensure_ascii=True).encode()
    decode_or_refuse(raw)


@FUZZ
@given(st.sampled_from(["incidentComponent", "notesComponent", "vehicleComponent", "mediaComponent"]), st.data())
def test_added_components_with_odd_members(name: str, data: st.DataObject) -> None:
    doc = copy.deepcopy(DOC)
    member = {
        "$id": data.draw(st.text(max_size=20)),
        "lastUpdateTimeStamp": data.draw(st.sampled_from(["2021-04-30T14:40:00Z", "2021-02-30T25:00:00Z", "x"])),
        "updatedByAgencyReference": {"$ref": "a"},
        "incidentTypeCommonRegistryText": data.draw(st.sampled_from(["FIGHT", "NOPE", ""])),
        "incidentCommonPriorityNumber": data.draw(st.integers(-(2**70), 2**70)),
        "incidentStatusCommonRegistryText": data.draw(st.lists(st.sampled_from(["Active", "Closed", "?"]))),
        "notesActionComments": data.draw(st.text(max_size=30)),
        "vehicleRelationshipType": data.draw(st.lists(st.text(max_size=8), max_size=2)),
        "vehicleRelationshipTimeStamp": "2021-04-30T14:40:00Z",
        "uri": data.draw(st.text(max_size=20)),
        "contentType": "video/mp4",
    }
    doc[name] = member if name == "incidentComponent" else [member]
    decode_or_refuse(json.dumps(doc).encode())


def test_a_megabyte_document_is_decoded_within_the_bounds_or_refused() -> None:
    doc = copy.deepcopy(DOC)
    note = {
        "lastUpdateTimeStamp": "2021-04-30T14:40:00Z",
        "updatedByAgencyReference": {"$ref": "state.pa.us"},
        "notesActionComments": "n" * 1000,
    }
    doc["notesComponent"] = [{"$id": f"note-{i}", **note} for i in range(1000)]
    data = json.dumps(doc).encode()
    assert len(data) > 1_000_000
    started = time.monotonic()
    env = eido.decode(data, CTX)
    assert time.monotonic() - started < 10 * LIVENESS_S  # liveness bound for a 1 MB document
    assert len(env.incident.notes) == 1000
    with pytest.raises(DocumentTooLarge):
        eido.decode(data + b" " * (CTX.limits.max_bytes - len(data) + 1), CTX)


def test_a_huge_pidf_polygon_is_bounded() -> None:
    doc = copy.deepcopy(DOC)
    points = " ".join("45.0 7.0" for _ in range(60_000))
    doc["locationComponent"][0]["locationByValue"] = (
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:gp="urn:ietf:params:xml:ns:pidf:geopriv10" '
        'xmlns:gml="http://www.opengis.net/gml"><tuple id="t"><status><gp:geopriv><gp:location-info>'
        f"<gml:Polygon><gml:exterior><gml:LinearRing><gml:posList>{points}</gml:posList></gml:LinearRing>"
        "</gml:exterior></gml:Polygon></gp:location-info></gp:geopriv></status></tuple></presence>"
    )
    started = time.monotonic()
    decode_or_refuse(json.dumps(doc).encode())
    assert time.monotonic() - started < LIVENESS_S
