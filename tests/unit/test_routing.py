"""AllowListRouter: explicit recipients checked against allow rules and the reply rule (pure)."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker.policy.routing import (
    REPLY_KINDS,
    REPLY_RULE,
    AllowListRouter,
    AllowRule,
    Decision,
    Referenced,
    Refusal,
    Route,
    RoutingContext,
)
from tests import factories as f

TORINO = frozenset({f.CUR, f.PL, f.CC, f.QUESTURA})
RULES = (
    AllowRule("torino", TORINO, TORINO),
    AllowRule("milano-to-cur", frozenset({f.PL_MILANO}), frozenset({f.CUR})),
    AllowRule("cur-to-milano", frozenset({f.CUR}), frozenset({f.PL_MILANO})),
)
REQUEST_ID = "0b7e4a53-35a7-4c55-9d0c-4f0f6a9c2b11"


def router() -> AllowListRouter:
    return AllowListRouter(RULES)


def test_allowed_recipients_are_routed_with_their_rule() -> None:
    """Every explicit recipient an allow rule permits is routed, with that rule's name."""
    env = f.envelope(f.CUR, (f.QUESTURA, f.PL, f.PL_MILANO))
    decision = router().route(env, RoutingContext(f.CUR))
    expected = Decision(
        (Route(f.QUESTURA, "torino"), Route(f.PL, "torino"), Route(f.PL_MILANO, "cur-to-milano")),
        (),
    )
    assert expected == decision


def test_refused_recipient_names_agency_and_field() -> None:
    """A recipient no rule allows is refused, naming the agency and its index in recipients."""
    env = f.envelope(f.PL_MILANO, (f.CUR, f.PL, f.QUESTURA))
    decision = router().route(env, RoutingContext(f.PL_MILANO))
    assert (Route(f.CUR, "milano-to-cur"),) == decision.routes
    assert [(f.PL, "recipients[1]"), (f.QUESTURA, "recipients[2]")] == [
        (r.agency_id, r.field) for r in decision.refusals
    ]
    assert all(r.why for r in decision.refusals)


def test_unknown_sender_is_refused_everything() -> None:
    """A sender named by no rule has every recipient refused."""
    env = f.envelope(f.ROGUE, (f.CUR, f.PL))
    decision = router().route(env, RoutingContext(f.ROGUE))
    assert () == decision.routes
    assert (
        Refusal(f.CUR, "recipients[0]", "no allow rule for this sender"),
        Refusal(f.PL, "recipients[1]", "no allow rule for this sender"),
    ) == decision.refusals


def test_sender_never_routes_to_itself_even_if_a_rule_lists_it() -> None:
    """A rule whose recipients include the sender does not let the sender address itself."""
    env = f.envelope(f.CUR, (f.CUR, f.PL))
    decision = router().route(env, RoutingContext(f.CUR))
    assert (f.PL,) == decision.recipients
    assert (Refusal(f.CUR, "recipients[0]", "no allow rule for this sender"),) == decision.refusals


def test_sender_alone_in_its_own_rule_is_refused() -> None:
    """A rule that lists only the sender on both sides allows nothing."""
    only = AllowListRouter([AllowRule("self", frozenset({f.PL}), frozenset({f.PL}))])
    decision = only.route(f.envelope(f.PL, (f.PL,)), RoutingContext(f.PL))
    assert () == decision.routes
    assert ("recipients[0]",) == tuple(r.field for r in decision.refusals)


def test_first_rule_naming_a_pair_wins() -> None:
    """When two rules allow the same pair, the route names the first one given."""
    rules = [
        AllowRule("first", frozenset({f.CUR}), frozenset({f.PL})),
        AllowRule("second", frozenset({f.CUR}), frozenset({f.PL, f.CC})),
    ]
    decision = AllowListRouter(rules).route(f.envelope(f.CUR, (f.PL, f.CC)), RoutingContext(f.CUR))
    assert (Route(f.PL, "first"), Route(f.CC, "second")) == decision.routes


def test_rules_are_directional() -> None:
    """A rule from A to B does not let B address A."""
    decision = router().route(f.envelope(f.CUR, (f.PL_MILANO,)), RoutingContext(f.CUR))
    assert (f.PL_MILANO,) == decision.recipients
    one_way = AllowListRouter([AllowRule("a-to-b", frozenset({f.CUR}), frozenset({f.PL}))])
    back = one_way.route(f.envelope(f.PL, (f.CUR,)), RoutingContext(f.PL))
    assert () == back.recipients
    assert (f.CUR,) == tuple(r.agency_id for r in back.refusals)


def test_decision_recipients_keep_envelope_order() -> None:
    """Decision.recipients lists the routed agencies in the order of the envelope, not of the rules."""
    order = (f.QUESTURA, f.CC, f.PL_MILANO, f.PL)
    decision = router().route(f.envelope(f.CUR, order), RoutingContext(f.CUR))
    assert order == decision.recipients
    reverse = tuple(reversed(order))
    assert reverse == router().route(f.envelope(f.CUR, reverse), RoutingContext(f.CUR)).recipients


def reply(
    sender: str, recipients: tuple[str, ...], kind: int, refs: tuple[str, ...] = (REQUEST_ID,)
) -> envelope_pb2.Envelope:
    return f.envelope(sender, recipients, kind=kind, references=tuple((d, f.CUR) for d in refs))


def test_reply_rule_lets_a_recipient_answer_the_sender() -> None:
    """A RESPONSE, ACK or ERROR goes back to the sender of a message the replier received."""
    # Milano's PL may not address the Questura, but received the Questura's message.
    known = {REQUEST_ID: Referenced(f.QUESTURA, frozenset({f.PL_MILANO, f.CUR}), "assistance_request")}
    for kind in (common_pb2.KIND_RESPONSE, common_pb2.KIND_ACK, common_pb2.KIND_ERROR):
        env = reply(f.PL_MILANO, (f.QUESTURA,), kind)
        decision = router().route(env, RoutingContext(f.PL_MILANO, known))
        assert Decision((Route(f.QUESTURA, REPLY_RULE),)) == decision, kind


def test_reply_rule_needs_the_replier_among_the_recipients() -> None:
    """The reply rule does not apply when the replying agency did not receive the referenced message."""
    known = {REQUEST_ID: Referenced(f.QUESTURA, frozenset({f.CUR}), "assistance_request")}
    env = reply(f.PL_MILANO, (f.QUESTURA,), common_pb2.KIND_RESPONSE)
    decision = router().route(env, RoutingContext(f.PL_MILANO, known))
    assert () == decision.routes
    assert (Refusal(f.QUESTURA, "recipients[0]", "no allow rule for this sender"),) == decision.refusals


def test_reply_rule_needs_a_known_reference() -> None:
    """A reply to a distribution id the hub does not know is not allowed by the reply rule."""
    known = {str(uuid.uuid4()): Referenced(f.QUESTURA, frozenset({f.PL_MILANO}))}
    env = reply(f.PL_MILANO, (f.QUESTURA,), common_pb2.KIND_ACK)
    decision = router().route(env, RoutingContext(f.PL_MILANO, known))
    assert (f.QUESTURA,) == tuple(r.agency_id for r in decision.refusals)


def test_reply_rule_only_reaches_the_referenced_sender() -> None:
    """The reply rule opens the way to the referenced message's sender only, not to its other recipients."""
    known = {REQUEST_ID: Referenced(f.QUESTURA, frozenset({f.PL_MILANO, f.PL}))}
    env = reply(f.PL_MILANO, (f.QUESTURA, f.PL), common_pb2.KIND_RESPONSE)
    decision = router().route(env, RoutingContext(f.PL_MILANO, known))
    assert (Route(f.QUESTURA, REPLY_RULE),) == decision.routes
    assert (Refusal(f.PL, "recipients[1]", "no allow rule for this sender"),) == decision.refusals


def test_reply_rule_over_several_references() -> None:
    """Each reference whose message the replier received adds its sender as a reply target."""
    other = str(uuid.uuid4())
    known = {
        REQUEST_ID: Referenced(f.QUESTURA, frozenset({f.PL_MILANO})),
        other: Referenced(f.CC, frozenset({f.PL_MILANO})),
    }
    env = reply(f.PL_MILANO, (f.CC, f.QUESTURA), common_pb2.KIND_ACK, (REQUEST_ID, other))
    decision = router().route(env, RoutingContext(f.PL_MILANO, known))
    assert (Route(f.CC, REPLY_RULE), Route(f.QUESTURA, REPLY_RULE)) == decision.routes


def test_allow_rule_is_preferred_over_reply_rule() -> None:
    """A reply to an agency an allow rule already permits names the allow rule."""
    known = {REQUEST_ID: Referenced(f.QUESTURA, frozenset({f.PL}))}
    env = reply(f.PL, (f.QUESTURA,), common_pb2.KIND_RESPONSE)
    decision = router().route(env, RoutingContext(f.PL, known))
    assert (Route(f.QUESTURA, "torino"),) == decision.routes


def test_report_cannot_use_reply_rule() -> None:
    """A REPORT (or any kind that is not a reply) is not allowed by the reply rule."""
    known = {REQUEST_ID: Referenced(f.QUESTURA, frozenset({f.PL_MILANO}))}
    for kind in (common_pb2.KIND_REPORT, common_pb2.KIND_UPDATE, common_pb2.KIND_REQUEST, common_pb2.KIND_CANCEL):
        env = reply(f.PL_MILANO, (f.QUESTURA,), kind)
        decision = router().route(env, RoutingContext(f.PL_MILANO, known))
        assert () == decision.routes, kind
        assert (f.QUESTURA,) == tuple(r.agency_id for r in decision.refusals), kind


# -- property ------------------------------------------------------------------------------

POOL = ("it.a.1", "it.a.2", "it.b.1", "it.b.2", "it.c.x-1", "it.d.e.f")
KINDS = sorted(common_pb2.Kind.values())
agency = st.sampled_from(POOL)
agencies = st.frozensets(agency, max_size=len(POOL))


@st.composite
def referenced_messages(draw: st.DrawFn) -> dict[str, Referenced]:
    """Acceptance records as the hub stores them: the sender is never among its own recipients."""
    out: dict[str, Referenced] = {}
    for i in range(draw(st.integers(0, 3))):
        sender = draw(agency)
        recipients = draw(agencies) - {sender}
        out[f"00000000-0000-4000-8000-00000000000{i}"] = Referenced(sender, recipients)
    return out


@settings(max_examples=300, deadline=None)
@given(
    rule_sides=st.lists(st.tuples(agencies, agencies), max_size=5),
    sender=agency,
    recipients=st.lists(agency, max_size=8),
    kind=st.sampled_from(KINDS),
    known=referenced_messages(),
    ref_picks=st.lists(st.integers(0, 4), max_size=4),
)
def test_every_recipient_is_routed_by_a_rule_or_refused(
    *,
    rule_sides: list[tuple[frozenset[str], frozenset[str]]],
    sender: str,
    recipients: list[str],
    kind: int,
    known: dict[str, Referenced],
    ref_picks: list[int],
) -> None:
    """Routed recipients are justified by a rule or the reply rule; each recipient is routed xor refused."""
    rules = [AllowRule(f"rule-{i}", s, r) for i, (s, r) in enumerate(rule_sides)]
    by_name = {rule.name: rule for rule in rules}
    refs = tuple(f"00000000-0000-4000-8000-00000000000{i}" for i in ref_picks)
    env = f.envelope(sender, tuple(recipients), kind=kind, references=tuple((d, f.CUR) for d in refs))
    decision = AllowListRouter(rules).route(env, RoutingContext(sender, known))

    def by_allow(recipient: str) -> bool:
        return recipient != sender and any(sender in r.senders and recipient in r.recipients for r in rules)

    reply_targets = {
        known[d].sender_agency_id for d in refs if kind in REPLY_KINDS and d in known and sender in known[d].recipients
    }

    refused_at = {int(r.field.removeprefix("recipients[").removesuffix("]")): r for r in decision.refusals}
    assert len(refused_at) == len(decision.refusals)
    assert len(recipients) == len(decision.routes) + len(decision.refusals)
    for i, refusal in refused_at.items():
        assert recipients[i] == refusal.agency_id
        assert f"recipients[{i}]" == refusal.field
        assert not by_allow(refusal.agency_id)
        assert refusal.agency_id not in reply_targets
    routed_in_order = tuple(r for i, r in enumerate(recipients) if i not in refused_at)
    assert routed_in_order == decision.recipients
    for route in decision.routes:
        assert sender != route.agency_id
        if route.rule == REPLY_RULE:
            assert not by_allow(route.agency_id)
            assert route.agency_id in reply_targets
        else:
            rule = by_name[route.rule]
            assert sender in rule.senders
            assert route.agency_id in rule.recipients
