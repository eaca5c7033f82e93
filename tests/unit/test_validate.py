"""broker.validate.checker.validate_envelope, case by case: every valid envelope passes, each mutation breaks exactly its rule."""

from __future__ import annotations

from datetime import timedelta

import pytest
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker.validate import codelists
from broker.validate.checker import Limits, ValidationContext, validate_envelope
from tests import factories as f
from tests.unit.validate_cases import (
    BASES,
    KNOWN_RULES,
    MUTATIONS,
    PATH_RE,
    Mutation,
    Pairs,
    at_now,
    context,
    pairs,
    resolve,
)


def _valid_ids(env: envelope_pb2.Envelope) -> str:
    return f"{common_pb2.Kind.Name(env.kind)}-{env.WhichOneof('payload')}"


@pytest.mark.parametrize("env", f.every_valid_envelope(), ids=_valid_ids)
def test_every_valid_envelope_passes(env: envelope_pb2.Envelope) -> None:
    """Each factory envelope, stamped at the fixed clock, breaks no rule."""
    expected: Pairs = []
    actual = pairs(at_now(env))
    assert expected == actual


@pytest.mark.parametrize("base", sorted(BASES))
def test_mutation_bases_are_valid(base: str) -> None:
    """The starting points of the mutation table break no rule."""
    expected: Pairs = []
    actual = pairs(BASES[base]())
    assert expected == actual


@pytest.mark.parametrize(("base", "mutate", "expected", "limits"), MUTATIONS)
def test_single_mutation(base: str, mutate: Mutation, expected: Pairs, limits: Limits | None) -> None:
    """One broken field gives exactly the expected (field, rule) pairs."""
    env = BASES[base]()
    mutate(env)
    actual = pairs(env, limits)
    assert expected == actual


@pytest.mark.parametrize(("base", "mutate", "expected", "limits"), MUTATIONS)
def test_mutation_paths_resolve(base: str, mutate: Mutation, expected: Pairs, limits: Limits | None) -> None:
    """Every path of the mutation table names a real field of the mutated envelope."""
    env = BASES[base]()
    mutate(env)
    for path, _rule in expected:
        assert PATH_RE.fullmatch(path), path
        resolve(env, path)


def test_mutation_table_covers_every_rule() -> None:
    """The mutation table exercises every rule id the validator knows."""
    covered = {rule for param in MUTATIONS for _path, rule in param.values[2]}
    assert covered == KNOWN_RULES


def test_description_names_the_rule() -> None:
    """A violation carries a non-empty human description."""
    env = BASES["incident"]()
    env.incident.locations[0].comune_istat = "999999"
    violations = validate_envelope(env, context(), f.NOW)
    expected = [("incident.locations[0].comune_istat", "code_list")]
    actual = [(v.field, v.rule) for v in violations]
    assert expected == actual
    assert violations[0].description


def test_several_violations_in_field_order() -> None:
    """Four broken fields are all reported, in the envelope's field order."""
    env = BASES["incident"]()
    env.incident.vehicles[0].plate = "qq123qq"
    env.incident.locations[0].comune_istat = "999999"
    env.sent_at.CopyFrom(f.ts(f.NOW + timedelta(minutes=10)))
    env.distribution_id = env.distribution_id.upper()
    env.legal_basis.purpose = common_pb2.PURPOSE_UNSPECIFIED
    expected = [
        ("distribution_id", "format"),
        ("sent_at", "future"),
        ("legal_basis.purpose", "required"),
        ("incident.locations[0].comune_istat", "code_list"),
        ("incident.vehicles[0].plate", "format"),
    ]
    actual = pairs(env)
    assert expected == actual


def test_several_violations_in_one_message() -> None:
    """Every broken field of one location is reported, in the Location field order."""
    env = BASES["incident"]()
    loc = env.incident.locations[0]
    loc.type = "Nowhere"
    loc.point.latitude = 95.0
    loc.point.longitude = 200.0
    loc.uncertainty_m = -3.0
    loc.confidence_percent = 150
    loc.address.postal_code = "x"
    loc.comune_istat = "000000"
    loc.source = 42
    p = "incident.locations[0]"
    expected = [
        (f"{p}.type", "code_list"),
        (f"{p}.point.latitude", "range"),
        (f"{p}.point.longitude", "range"),
        (f"{p}.uncertainty_m", "range"),
        (f"{p}.confidence_percent", "range"),
        (f"{p}.address.postal_code", "format"),
        (f"{p}.comune_istat", "code_list"),
        (f"{p}.source", "enum"),
    ]
    actual = pairs(env)
    assert expected == actual


def test_clock_is_the_argument() -> None:
    """sent_at is judged against the `now` passed in, not the real clock."""
    env = BASES["incident"]()
    later = f.NOW + timedelta(days=8)
    expected = [("sent_at", "too_old")]
    actual = [(v.field, v.rule) for v in validate_envelope(env, context(), later)]
    assert expected == actual
    earlier = f.NOW - timedelta(minutes=10)
    expected = [("sent_at", "future")]
    actual = [(v.field, v.rule) for v in validate_envelope(env, context(), earlier)]
    assert expected == actual


def test_registry_callback_decides() -> None:
    """A recipient is 'registered' exactly when the context's callback says so."""
    env = BASES["incident"]()
    ctx = ValidationContext(codelists.load(), lambda agency_id: agency_id == f.PL)
    expected = [("recipients[0]", "registered")]
    actual = [(v.field, v.rule) for v in validate_envelope(env, ctx, f.NOW)]
    assert expected == actual


def test_validation_does_not_modify_the_envelope() -> None:
    """The validator is pure: the envelope's bytes are the same before and after."""
    env = BASES["alert"]()
    env.alert.infos[0].areas[0].comuni_istat[0] = "999999"
    before = env.SerializeToString(deterministic=True)
    validate_envelope(env, context(), f.NOW)
    assert before == env.SerializeToString(deterministic=True)
