"""The hypothesis strategies the tests share: identifiers, protobuf values and wire bytes, plans.

Strategies tied to one test's fixtures (the agreements of the policy property tests, the audit
records of the chain tests) stay beside those tests.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from hypothesis import strategies as st

from broker import ids
from broker.publish.plan import Plan, Planned, Timer
from tests import factories as f

# -- identifiers ---------------------------------------------------------------------------------

# Any agency id the hub's format admits.
agency_ids = st.from_regex(ids.AGENCY_ID_RE, fullmatch=True).filter(lambda a: len(a) <= ids.AGENCY_ID_MAX)
# Built piece by piece from a tiny alphabet, so that pairs often differ only in a dot or a hyphen.
_part = st.text("ab1", min_size=1, max_size=2)
_segment = st.lists(_part, min_size=1, max_size=2).map("-".join)
close_agency_ids = st.builds(
    lambda country, segments: ".".join([country, *segments]),
    st.sampled_from(["it", "fr"]),
    st.lists(_segment, min_size=1, max_size=4),
)

# -- protobuf field values, by field type, with the edge cases the validator must survive -------

TS_MIN = -62135596800  # 0001-01-01T00:00:00Z, the smallest valid Timestamp
TS_MAX = 253402300799  # 9999-12-31T23:59:59Z, the largest
REF_ID = "0b8e4d3a-1c2f-4e5a-9b7c-6d5e4f3a2b1c"
text_values = st.text(st.characters(exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", " ", "\x07", "999999", "IT.PL", "it.pl.001272", f.INCIDENT_ID, REF_ID, "x" * 4001, "https://", "🚓"]
)
int32_values = st.integers(-(2**31), 2**31 - 1) | st.integers(-2, 15)
FIELD_VALUES = {
    FieldDescriptor.TYPE_STRING: text_values,
    FieldDescriptor.TYPE_ENUM: int32_values,
    FieldDescriptor.TYPE_INT32: int32_values,
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1) | st.integers(0, 120),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1) | st.integers(0, 10**9),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1) | st.integers(TS_MIN - 2, TS_MAX + 2),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _record(item: tuple[int, int, bytes | int]) -> bytes:
    """One protobuf wire record: tag, then the value in its wire type's encoding."""
    number, wire_type, value = item
    tag = _varint(number << 3 | wire_type)
    if isinstance(value, int):
        return tag + _varint(value)
    if wire_type == 2:
        return tag + _varint(len(value)) + value
    return tag + value


# Bytes in protobuf wire format (random field numbers, wire types and values, nested messages), which parse
# far more often than uniform random bytes and so reach a decoder's deeper checks.
protobuf_wire: st.SearchStrategy[bytes] = st.deferred(lambda: st.lists(_records, max_size=6).map(b"".join))
_records = st.one_of(
    st.tuples(st.integers(1, 30), st.just(0), st.integers(0, 2**64 - 1)),
    st.tuples(st.integers(1, 30), st.just(1), st.binary(min_size=8, max_size=8)),
    st.tuples(st.integers(1, 30), st.just(5), st.binary(min_size=4, max_size=4)),
    st.tuples(st.integers(1, 30), st.just(2), st.binary(max_size=20) | text_values.map(str.encode) | protobuf_wire),
).map(_record)

# -- plans (broker.publish.plan) -----------------------------------------------------------------

plan_agencies = st.from_regex(r"it\.[a-z]{2}\.[a-z0-9.]{1,12}", fullmatch=True)
plan_rules = st.from_regex(r"[a-z-]{1,12}/[a-z-]{1,12}", fullmatch=True)
_paths = st.lists(st.sampled_from(["incident.call.caller", "incident.persons", "incident.locations[type=Caller]"]))
_planned = st.builds(
    Planned,
    plan_agencies,
    plan_rules,
    st.integers(min_value=0, max_value=2**63 - 1),
    _paths.map(lambda p: tuple(sorted(set(p)))),
)
_timers = st.none() | st.builds(Timer, st.integers(min_value=0, max_value=2**63 - 1), plan_agencies, plan_rules)
plans = st.builds(Plan, st.lists(_planned, min_size=1, max_size=12).map(tuple), _timers, st.booleans())
