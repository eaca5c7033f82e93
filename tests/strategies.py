"""The hypothesis strategies the tests share: identifiers, protobuf values and wire bytes, plans.

Strategies tied to one test's fixtures (the agreements of the policy property tests, the audit
records of the chain tests) stay beside those tests.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st
from opsroom.envelope.v1 import envelope_pb2

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

# -- requests of the hub's gRPC API (tests/integration/test_api_fuzz.py) ------------------------------------------


def scalar_paths(msg: Message, prefix: str = "") -> Iterator[tuple[str, FieldDescriptor]]:
    """Every scalar field path under msg ("incident.locations[0].comune_istat"), set or not, with its descriptor.

    Descends only into set messages and existing list items, so every path resolves.
    """
    for fd in msg.DESCRIPTOR.fields:
        path = f"{prefix}{fd.name}"
        value = getattr(msg, fd.name)
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.is_repeated:
                for i, item in enumerate(value):
                    yield from scalar_paths(item, f"{path}[{i}].")
            elif msg.HasField(fd.name):
                yield from scalar_paths(value, f"{path}.")
        elif fd.is_repeated:
            for i in range(len(value)):
                yield f"{path}[{i}]", fd
        else:
            yield path, fd


def _walk(msg: Message, path: str) -> tuple[Message, str, int | None]:
    """The message holding path's last part, that part's name, and its list index (None if not a list item)."""
    *parents, leaf = path.split(".")
    for part in parents:
        name, _, index = part.partition("[")
        msg = getattr(msg, name)[int(index[:-1])] if index else getattr(msg, name)
    name, _, index = leaf.partition("[")
    return msg, name, int(index[:-1]) if index else None


def put_value(msg: Message, path: str, value: object) -> bool:
    """Set the scalar at path to value; False (msg unchanged) if the field's type cannot hold it."""
    holder, name, index = _walk(msg, path)
    try:
        if index is None:
            setattr(holder, name, value)
        else:
            getattr(holder, name)[index] = value
    except (TypeError, ValueError):
        return False
    return True


# Strings the hub must refuse or carry without harm: the field strategies' text, plus sizes near the limits.
huge_texts = st.sampled_from([1_000, 64 * 1024, 300 * 1024]).map(lambda n: "z" * n)
_BUILDERS = f.every_valid_envelope


@st.composite
def fuzzed_envelopes(draw: st.DrawFn, sender: str = f.CUR) -> envelope_pb2.Envelope:
    """A valid envelope of any payload (from sender) with one to six random edits.

    Edits: a scalar set to any value of its type (unknown enum numbers, out-of-range numbers, any
    text), a huge text, a field cleared, a repeated field grown to hundreds of items.
    """
    envs = _BUILDERS()
    env = envs[draw(st.integers(0, len(envs) - 1))]
    env.sender.agency_id = sender
    for _ in range(draw(st.integers(1, 6))):
        how = draw(st.integers(0, 9))
        if how == 0:
            set_fields = [fd.name for fd, _ in env.ListFields()]
            env.ClearField(draw(st.sampled_from(set_fields)))
        elif how == 1:
            for _copy in range(draw(st.integers(100, 2000))):
                env.recipients.append(draw(st.sampled_from([f.QUESTURA, f.PL, "x"])))
        else:
            leaves = list(scalar_paths(env))
            if not leaves:
                continue
            path, fd = draw(st.sampled_from(leaves))
            values = FIELD_VALUES[fd.type]
            if fd.type == FieldDescriptor.TYPE_STRING:
                values = values | huge_texts
            put_value(env, path, draw(values))
    return env


def nested_groups(depth: int, field_number: int = 99) -> bytes:
    """depth start-group tags of an unknown field, then as many end-group tags: nesting a parser must bound."""
    return _varint(field_number << 3 | 3) * depth + _varint(field_number << 3 | 4) * depth


def nested_messages(depth: int, field_number: int = 1) -> bytes:
    """A length-delimited field holding itself depth times (a sub-message chain as deep as depth)."""
    out = b""
    for _ in range(depth):
        out = _record((field_number, 2, out))
    return out


deep_bytes = st.builds(nested_groups, st.integers(50, 5000)) | st.builds(nested_messages, st.integers(50, 400))

# Byte sequences that are not UTF-8: lone continuation bytes, overlongs, surrogates, truncations, out of range.
_BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80", b"\xfe\xfe"]
_MARK = "\u2603"  # a placeholder whose UTF-8 (3 bytes) is replaced by invalid bytes of the same length


@st.composite
def invalid_utf8(draw: st.DrawFn, message: Message) -> tuple[bytes, str]:
    """message serialized with one set string field made invalid UTF-8 (same length, so the wire stays sound); the path.

    The Python protobuf library refuses to serialize such a string, so the bytes are patched after.
    """
    msg = type(message)()
    msg.CopyFrom(message)
    strings = [(p, fd) for p, fd in scalar_paths(msg) if fd.type == FieldDescriptor.TYPE_STRING]
    path, _fd = draw(st.sampled_from(strings))
    length = draw(st.integers(1, 8))
    put_value(msg, path, _MARK * length)
    data = msg.SerializeToString()
    marked = (_MARK * length).encode()
    assert data.count(marked) == 1
    bad = b"".join(draw(st.lists(st.sampled_from(_BAD_UTF8), min_size=1, max_size=3 * length)))
    bad = (bad * len(marked))[: len(marked)]
    if draw(st.booleans()):  # keep some valid text around the bad bytes
        bad = b"a" + bad[1:]
    if _is_utf8(bad):  # pieces can join into valid UTF-8 ("\xe2\x82" + "\x80" is the euro sign)
        bad = b"\xff" * len(marked)
    return data.replace(marked, bad), path


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
