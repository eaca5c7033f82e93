"""broker.publish.plan and the redaction it records: a plan decodes to itself, and its paths remake each recipient's copy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.policy.redact import CATEGORIES, FULL, compile_mask, mask_for, redact, redact_reporting
from broker.publish.plan import PLAN_HEADER, Plan, PlanError, Planned, plan_of
from tests.strategies import plans
from tests.unit.test_policy_redact import ENVELOPES


@given(plans)
def test_a_plan_decodes_to_itself(plan: Plan) -> None:
    """Every field survives the header, masks shared between recipients included."""
    assert plan == Plan.decode(plan.encode())


def test_the_header_lists_each_mask_once() -> None:
    """Recipients with the same view share one mask entry: the header grows by recipient, not by mask size."""
    hidden = ("incident.call.caller", "incident.persons")
    plan = Plan(tuple(Planned(f"it.pl.00{i}", "a/b", 1, hidden) for i in range(5)))
    assert 1 == plan.encode().count("incident.call.caller")


def test_missing_names_the_intended_recipients_not_stored() -> None:
    """In plan order; recipients stored beyond the plan (an escalation's alternate room) change nothing."""
    plan = Plan((Planned("a", "r", 1), Planned("b", "r", 1), Planned("c", "r", 1)))
    assert ("b",) == tuple(p.agency_id for p in plan.missing({"a", "c", "z"}))
    assert ("a", "b", "c") == plan.agencies


@pytest.mark.parametrize("text", ["", "{", "[]", '{"v": 2, "to": [], "m": []}', '{"v": 1, "to": [["a"]], "m": []}'])
def test_a_header_that_is_not_a_plan_of_this_version_is_refused(text: str) -> None:
    """Damaged or foreign headers raise PlanError, never something else."""
    with pytest.raises(PlanError):
        Plan.decode(text)


def test_plan_of_finds_the_header_among_deliveries() -> None:
    plan = Plan((Planned("a", "r", 1),))
    assert plan_of([{}, {PLAN_HEADER: plan.encode()}]) == plan
    assert plan_of([{}, {}]) is None


@pytest.mark.parametrize("payload", list(ENVELOPES))
@given(granted=st.sets(st.sampled_from(sorted(CATEGORIES))))
def test_the_paths_a_redaction_reports_remake_the_same_copy(payload: str, granted: set[str]) -> None:
    """redact_reporting's paths, compiled alone, make of the envelope exactly the copy the whole mask made."""
    env = ENVELOPES[payload]
    mask = mask_for(granted, ())
    copy, removed = redact_reporting(env, mask)
    assert redact(env, mask) == copy
    assert set(removed) <= mask.hidden
    assert copy == redact(env, compile_mask(removed))
    assert (env == copy) == (not removed)


def test_a_full_view_reports_nothing() -> None:
    env = ENVELOPES["incident"]
    assert (env, ()) == redact_reporting(env, FULL)
