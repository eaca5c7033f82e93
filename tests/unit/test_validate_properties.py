"""Validation property tests: random values, random bytes and corrupted envelopes give well-formed violations, never an exception."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from opsroom.envelope.v1 import envelope_pb2

from broker.validate.checker import validate_envelope
from tests import factories as f
from tests.strategies import FIELD_VALUES, protobuf_wire
from tests.unit.validate_cases import (
    BASES,
    KNOWN_RULES,
    PATH_RE,
    clear,
    context,
    put,
    resolve,
)

# -- property tests -----------------------------------------------------------------------------------------------


def _leaves(msg: Message, prefix: str = "") -> Iterator[tuple[str, FieldDescriptor]]:
    """Every scalar field path under msg (set or not), descending only into set messages and existing items."""
    for fd in msg.DESCRIPTOR.fields:
        path = f"{prefix}{fd.name}"
        value = getattr(msg, fd.name)
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.is_repeated:
                for i, item in enumerate(value):
                    yield from _leaves(item, f"{path}[{i}].")
            elif msg.HasField(fd.name):
                yield from _leaves(value, f"{path}.")
        elif fd.is_repeated:
            for i in range(len(value)):
                yield f"{path}[{i}]", fd
        else:
            yield path, fd


def _clearable(msg: Message, prefix: str = "") -> Iterator[str]:
    """Every set field path under msg (messages, repeated fields and list items)."""
    for fd, value in msg.ListFields():
        path = f"{prefix}{fd.name}"
        yield path
        if fd.is_repeated:
            for i, item in enumerate(value):
                yield f"{path}[{i}]"
                if fd.type == FieldDescriptor.TYPE_MESSAGE:
                    yield from _clearable(item, f"{path}[{i}].")
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            yield from _clearable(value, f"{path}.")


LEAVES = {name: list(_leaves(build())) for name, build in BASES.items()}
CLEARABLE = {name: list(_clearable(build())) for name, build in BASES.items()}


def test_every_leaf_type_has_a_strategy() -> None:
    """The property test can assign a value to every scalar field of every base."""
    types = {fd.type for leaves in LEAVES.values() for _path, fd in leaves}
    assert types <= set(FIELD_VALUES)


def _check_violations(env: envelope_pb2.Envelope, now: datetime = f.NOW) -> None:
    for violation in validate_envelope(env, context(), now):
        assert violation.field
        assert PATH_RE.fullmatch(violation.field), violation.field
        assert violation.rule in KNOWN_RULES, violation.rule
        assert violation.description
        resolve(env, violation.field)


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> envelope_pb2.Envelope:
    """A valid base envelope with one to five random scalar assignments or clears."""
    base = draw(st.sampled_from(sorted(BASES)))
    env = BASES[base]()
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.integers(0, 4)) == 0:
            path = draw(st.sampled_from(CLEARABLE[base]))
            try:
                resolve(env, path)
            except (AssertionError, IndexError):  # an earlier clear removed it
                continue
            clear(path)(env)
        else:
            path, fd = draw(st.sampled_from(LEAVES[base]))
            try:
                resolve(env, path)
            except (AssertionError, IndexError):
                continue
            put(path, draw(FIELD_VALUES[fd.type]))(env)
    return env


@settings(max_examples=200, deadline=None)
@given(env=mutated_envelopes())
def test_random_mutations_never_raise(env: envelope_pb2.Envelope) -> None:
    """Random field values give only well-formed violations with real paths and known rules."""
    _check_violations(env)


def parse(data: bytes) -> envelope_pb2.Envelope | None:
    """The envelope the bytes encode, or None when they do not parse."""
    env = envelope_pb2.Envelope()
    try:
        env.ParseFromString(data)
    except DecodeError:
        return None
    return env


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.binary(max_size=400) | protobuf_wire)
def test_random_bytes_never_raise(data: bytes) -> None:
    """Any bytes that parse as an Envelope validate without raising."""
    env = parse(data)
    assume(env is not None)
    assert env is not None
    _check_violations(env)


SERIALIZED = [BASES[name]().SerializeToString(deterministic=True) for name in sorted(BASES)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    index=st.integers(0, len(SERIALIZED) - 1),
    edits=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_envelopes_never_raise(index: int, edits: list[tuple[int, int]]) -> None:
    """A valid envelope with a few bytes overwritten either fails to parse or validates without raising."""
    data = bytearray(SERIALIZED[index])
    for position, byte in edits:
        data[position % len(data)] = byte
    env = parse(bytes(data))
    assume(env is not None)
    assert env is not None
    _check_violations(env)
