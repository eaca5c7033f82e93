"""The policy engine: who may receive an envelope, under which agreement and rule, and what each sees (pure).

Deny by default. A recipient is routed only if a rule of an agreement in force allows it: the
sender and the recipient are parties the rule names; the kind, payload, incident type or alert
category, priority, schedule and place of the event fit the rule; the envelope's purpose is one
the agreement's legal basis covers; and drills stay drills (EXERCISE and TEST traffic only
between drill participants, ACTUAL traffic never to a drill-only room). Explicit recipients
that no rule allows refuse the whole envelope; rules with `select: territory` add the parties
competent for the event's place. Each recipient sees the envelope through its role's view in
that agreement. The decision names the agreement and rule of every recipient.

Rules are indexed by sender and by place (comune, province, region), so the cost of a decision
depends on the rules that concern the sender and the place, not on how many agreements exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker import names
from broker.policy.model import PRIORITY_RANK, Agreement, AgreementSet, Rule
from broker.policy.places import PlaceIndex, event_keys
from broker.policy.redact import FULL, Mask, mask_for
from broker.policy.routing import REPLY_RULE, Decision, Refusal, Route, RoutingContext, reply_targets

ROME = ZoneInfo("Europe/Rome")
NO_PERSONAL_DATA = mask_for((), ())
DRILL_STATUSES = frozenset({common_pb2.STATUS_EXERCISE, common_pb2.STATUS_TEST})
# CAP urgency as a priority rank (1 = most urgent), for min_priority on alerts.
_URGENCY_RANK = {
    alert_pb2.URGENCY_IMMEDIATE: 1,
    alert_pb2.URGENCY_EXPECTED: 2,
    alert_pb2.URGENCY_FUTURE: 3,
    alert_pb2.URGENCY_PAST: 4,
    alert_pb2.URGENCY_UNKNOWN: 4,
}
_CATEGORY_NAMES = {v.number: v.name.removeprefix("CATEGORY_") for v in alert_pb2.Category.DESCRIPTOR.values}


@dataclass(frozen=True, slots=True)
class Facts:
    """What the rules look at, taken once from the envelope."""

    kind: str
    payload: str
    status: int
    purpose: str
    agreement_id: str
    incident_type: str  # "" when the payload carries none
    alert_categories: frozenset[str]
    rank: int  # 0 when the payload carries no priority
    keys: frozenset[str]  # territory keys of the event's place; empty when unknown
    local: datetime
    day: date


def facts_of(env: envelope_pb2.Envelope, places: PlaceIndex, now: datetime) -> Facts:
    """The facts of an envelope at a moment."""
    payload = env.WhichOneof("payload") or ""
    incident_type, rank = "", 0
    categories: frozenset[str] = frozenset()
    if payload == "incident":
        incident_type, rank = env.incident.type.eido_code, env.incident.priority
    elif payload == "handover_request":
        incident_type, rank = env.handover_request.incident.type.eido_code, env.handover_request.incident.priority
    elif payload == "assistance_request":
        rank = env.assistance_request.priority
    elif payload == "alert" and env.alert.infos:
        categories = frozenset(_CATEGORY_NAMES.get(c, "") for info in env.alert.infos for c in info.categories)
        rank = min(_URGENCY_RANK.get(info.urgency, 4) for info in env.alert.infos)
    local = now.astimezone(ROME)
    return Facts(
        kind=names.kind(env),
        payload=payload,
        status=env.status,
        purpose=names.purpose(env),
        agreement_id=env.legal_basis.agreement_id,
        incident_type=incident_type,
        alert_categories=categories,
        rank=rank,
        keys=event_keys(env, places),
        local=local,
        day=local.date(),
    )


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A rule with what the engine needs at hand."""

    agreement: Agreement
    rule: Rule
    name: str  # "<agreement>/<rule>"
    keys: frozenset[str]  # the rule's territory, or the agreement's
    max_rank: int  # 0: no priority condition

    def mismatch(self, facts: Facts) -> str:
        """Why the rule does not apply to the event ("" when it does)."""
        return self._agreement_mismatch(facts) or self._rule_mismatch(facts)

    def _agreement_mismatch(self, facts: Facts) -> str:
        agreement = self.agreement
        if not agreement.in_force(facts.day):
            return "the agreement is not in force on that day"
        if facts.agreement_id and facts.agreement_id != agreement.id:
            return "the envelope names another agreement"
        if facts.purpose not in agreement.purposes:
            return f"purpose {facts.purpose or 'none'} is not among the agreement's purposes"
        return ""

    def _rule_mismatch(self, facts: Facts) -> str:
        rule = self.rule
        failure = ""
        if facts.kind not in rule.kinds:
            failure = f"kind {facts.kind} is not among the rule's kinds"
        elif rule.payloads and facts.payload not in rule.payloads:
            failure = f"payload {facts.payload} is not among the rule's payloads"
        elif rule.incident_types and facts.incident_type and facts.incident_type not in rule.incident_types:
            failure = f"incident type {facts.incident_type} is not among the rule's types"
        elif (
            rule.alert_categories and facts.payload == "alert" and not (rule.alert_categories & facts.alert_categories)
        ):
            failure = "no alert category of the rule"
        elif self.max_rank and facts.rank and facts.rank > self.max_rank:
            failure = f"priority below {rule.min_priority}"
        elif rule.schedule is not None and not rule.schedule.active(facts.local):
            failure = "outside the rule's schedule"
        elif facts.keys and not (self.keys & facts.keys):
            failure = "the event's place is outside the rule's territory"
        return failure


@dataclass(frozen=True, slots=True)
class Considered:
    """For explain: a rule of the sender and why it did or did not apply."""

    rule: str
    applies: bool
    why: str


class Policy:
    """One loaded agreement set, compiled; route() and explain() are pure."""

    def __init__(
        self, agreements: AgreementSet, places: PlaceIndex, *, drill_only: frozenset[str] = frozenset()
    ) -> None:
        """Compile and index the agreements."""
        self.agreements = agreements
        self._places = places
        self._drill_only = drill_only
        self._by_sender: dict[str, list[_Compiled]] = {}
        self._by_sender_key: dict[tuple[str, str], list[_Compiled]] = {}
        self._coverage: dict[tuple[str, str], frozenset[str]] = {}
        self._masks: dict[tuple[str, str], Mask] = {}
        self._drills: dict[str, frozenset[str]] = {}
        self._pairs: dict[frozenset[str], list[Agreement]] = {}
        for agreement in agreements.agreements:
            self._compile(agreement)
        self._agencies = agreements.agencies

    def _compile(self, agreement: Agreement) -> None:
        area = agreement.territory.keys()
        self._drills[agreement.id] = frozenset(p.agency for p in agreement.parties if p.drills)
        for party in agreement.parties:
            self._coverage[(agreement.id, party.agency)] = party.covers.keys() or area
            view = agreement.view_of(party.agency)
            self._masks[(agreement.id, party.agency)] = mask_for(view.personal_data, view.hide)
            for other in agreement.parties:
                if other.agency != party.agency:
                    self._pairs.setdefault(frozenset({party.agency, other.agency}), []).append(agreement)
        for rule in agreement.rules:
            compiled = _Compiled(
                agreement,
                rule,
                f"{agreement.id}/{rule.id}",
                rule.territory.keys() or area,
                PRIORITY_RANK.get(rule.min_priority, 0),
            )
            for sender in rule.senders:
                self._by_sender.setdefault(sender, []).append(compiled)
                for key in compiled.keys:
                    self._by_sender_key.setdefault((sender, key), []).append(compiled)

    @property
    def agencies(self) -> frozenset[str]:
        """Every party of every agreement."""
        return self._agencies

    def _candidates(self, sender: str, facts: Facts) -> list[_Compiled]:
        if not facts.keys:
            return self._by_sender.get(sender, [])
        seen: dict[str, _Compiled] = {}
        for key in facts.keys:
            for compiled in self._by_sender_key.get((sender, key), ()):
                seen.setdefault(compiled.name, compiled)
        return sorted(seen.values(), key=lambda c: c.name)

    def _drill_ok(self, agreement_id: str, sender: str, recipient: str, status: int) -> bool:
        if status in DRILL_STATUSES:
            drills = self._drills[agreement_id]
            return sender in drills and recipient in drills
        return recipient not in self._drill_only

    def mask(self, agreement_id: str, agency: str) -> Mask:
        """What a party may not see under an agreement."""
        return self._masks.get((agreement_id, agency), FULL)

    def route(self, env: envelope_pb2.Envelope, ctx: RoutingContext) -> Decision:
        """The decision for env: every recipient with its rule and mask, or the refused explicit recipients."""
        sender = ctx.sender_agency_id
        facts = facts_of(env, self._places, ctx.now)
        allowed, selected = self._allowed(sender, facts)
        replies = reply_targets(env, ctx)
        routes: list[Route] = []
        refusals: list[Refusal] = []
        named: set[str] = set()
        for i, recipient in enumerate(env.recipients):
            named.add(recipient)
            allowing = allowed.get(recipient)
            if allowing is not None:
                routes.append(self._route(recipient, allowing))
            elif recipient in replies and self._reply_ok(sender, recipient, facts.status):
                routes.append(Route(recipient, REPLY_RULE, self._reply_mask(sender, recipient)))
            else:
                refusals.append(Refusal(recipient, f"recipients[{i}]", "no agreement in force allows it"))
        if refusals:
            return Decision((), tuple(refusals))
        for recipient in sorted(selected.keys() - named):
            chosen = selected[recipient]
            routes.append(self._route(recipient, chosen))
        return Decision(tuple(routes))

    def _route(self, recipient: str, compiled: _Compiled) -> Route:
        rule = compiled.rule
        return Route(
            recipient,
            compiled.name,
            self.mask(compiled.agreement.id, recipient),
            escalate_after=rule.escalate_after,
            escalate_to=rule.escalate_to,
            expire_after=rule.expire_after,
        )

    def _allowed(self, sender: str, facts: Facts) -> tuple[dict[str, _Compiled], dict[str, _Compiled]]:
        """Recipients some applying rule allows, and those its territory rules select; first rule wins."""
        allowed: dict[str, _Compiled] = {}
        selected: dict[str, _Compiled] = {}
        for compiled in self._candidates(sender, facts):
            if compiled.mismatch(facts):
                continue
            aid = compiled.agreement.id
            by_place = compiled.rule.select == "territory" and bool(facts.keys)
            for recipient in compiled.rule.recipients:
                if recipient == sender or not self._drill_ok(aid, sender, recipient, facts.status):
                    continue
                allowed.setdefault(recipient, compiled)
                if by_place and self._coverage[(aid, recipient)] & facts.keys:
                    selected.setdefault(recipient, compiled)
        return allowed, selected

    def _reply_ok(self, sender: str, recipient: str, status: int) -> bool:
        """Drills stay drills for replies too: under some agreement both sign, for drill traffic."""
        if status not in DRILL_STATUSES:
            return recipient not in self._drill_only
        return any(
            self._drill_ok(agreement.id, sender, recipient, status)
            for agreement in self._pairs.get(frozenset({sender, recipient}), ())
        )

    def _reply_mask(self, sender: str, recipient: str) -> Mask:
        """The recipient's view under the first agreement both sign; no personal data if none."""
        for agreement in self._pairs.get(frozenset({sender, recipient}), ()):
            return self.mask(agreement.id, recipient)
        return NO_PERSONAL_DATA

    def explain(self, env: envelope_pb2.Envelope, ctx: RoutingContext) -> tuple[Decision, list[Considered]]:
        """The decision, and every rule of the sender's agreements with why it did or did not apply."""
        facts = facts_of(env, self._places, ctx.now)
        considered = []
        for compiled in sorted(self._by_sender.get(ctx.sender_agency_id, []), key=lambda c: c.name):
            why = compiled.mismatch(facts)
            considered.append(Considered(compiled.name, not why, why or "applies"))
        return self.route(env, ctx), considered


def hidden_fields(routes: Iterable[Route]) -> dict[str, list[str]]:
    """Per recipient, the field paths it does not see."""
    return {r.agency_id: sorted(r.mask.hidden) if r.mask is not None else [] for r in routes}
