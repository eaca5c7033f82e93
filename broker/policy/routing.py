"""Who receives an envelope, and what each may see: the Router seam and the allow-list router (pure).

The agreements engine (broker.policy.engine) is the router of a hub with agreements; the
allow-list router of the hub config serves trials and tests: explicit recipients each allowed
by an allow rule, every recipient seeing the whole envelope. Both let a RESPONSE, ACK or ERROR
go back to the sender of a message the responder received.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker.policy.redact import Mask

REPLY_KINDS = frozenset({common_pb2.KIND_RESPONSE, common_pb2.KIND_ACK, common_pb2.KIND_ERROR})
REPLY_RULE = "reply-to-sender"


@dataclass(frozen=True, slots=True)
class Route:
    """One recipient, the rule that allowed it ("<agreement>/<rule>"), and what it may not see."""

    agency_id: str
    rule: str
    mask: Mask | None = None  # None: the whole envelope
    # For a request: seconds the recipients have to answer before escalate_to gets it (0: never).
    escalate_after: int = 0
    escalate_to: str = ""
    # Seconds after acceptance this delivery expires, unless the envelope says (0: the hub's default).
    expire_after: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """One recipient refused, where it sat in the envelope, and why."""

    agency_id: str
    field: str
    why: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The routing decision for one envelope: every recipient with its rule, or the refusals."""

    routes: tuple[Route, ...]
    refusals: tuple[Refusal, ...] = ()

    @property
    def recipients(self) -> tuple[str, ...]:
        """The recipient agency ids, in envelope order."""
        return tuple(r.agency_id for r in self.routes)


@dataclass(frozen=True, slots=True)
class Referenced:
    """What the hub knows of a referenced message: its sender, recipients and payload field name."""

    sender_agency_id: str
    recipients: frozenset[str]
    payload: str = ""


@dataclass(frozen=True)
class RoutingContext:
    """Facts the router needs beyond the envelope, gathered by the I/O layer before routing."""

    sender_agency_id: str
    referenced: Mapping[str, Referenced] = field(default_factory=dict)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


class Router(Protocol):
    """Decides the recipients of an envelope; must be pure and fast (it runs on every publish)."""

    @property
    def agencies(self) -> frozenset[str]:
        """Every agency the router may route to or from."""
        ...

    def route(self, env: envelope_pb2.Envelope, ctx: RoutingContext) -> Decision:
        """The decision for env, sent by ctx.sender_agency_id."""
        ...


@dataclass(frozen=True, slots=True)
class AllowRule:
    """Senders in `senders` may address agencies in `recipients`."""

    name: str
    senders: frozenset[str]
    recipients: frozenset[str]


class AllowListRouter:
    """Explicit recipients, each allowed by an allow rule or by the reply rule; everything else refused."""

    def __init__(self, rules: Iterable[AllowRule]) -> None:
        """Index the rules by sender."""
        self._by_sender: dict[str, dict[str, str]] = {}
        rules = tuple(rules)
        self._agencies = frozenset(a for r in rules for a in r.senders | r.recipients)
        for rule in rules:
            for sender in rule.senders:
                allowed = self._by_sender.setdefault(sender, {})
                for recipient in rule.recipients:
                    if recipient != sender:
                        allowed.setdefault(recipient, rule.name)

    @property
    def agencies(self) -> frozenset[str]:
        """Agencies named in the allow rules."""
        return self._agencies

    def route(self, env: envelope_pb2.Envelope, ctx: RoutingContext) -> Decision:
        """Route each explicit recipient; refuse those no rule allows."""
        allowed = self._by_sender.get(ctx.sender_agency_id, {})
        reply_to = reply_targets(env, ctx)
        routes: list[Route] = []
        refusals: list[Refusal] = []
        for i, recipient in enumerate(env.recipients):
            rule = allowed.get(recipient)
            if rule is None and recipient in reply_to:
                rule = REPLY_RULE
            if rule is None:
                refusals.append(Refusal(recipient, f"recipients[{i}]", "no allow rule for this sender"))
            else:
                routes.append(Route(recipient, rule))
        return Decision(tuple(routes), tuple(refusals))


def reply_targets(env: envelope_pb2.Envelope, ctx: RoutingContext) -> frozenset[str]:
    """Senders of referenced messages that the replying agency received."""
    if env.kind not in REPLY_KINDS:
        return frozenset()
    targets = set()
    for ref in env.references:
        known = ctx.referenced.get(ref.distribution_id)
        if known is not None and ctx.sender_agency_id in known.recipients:
            targets.add(known.sender_agency_id)
    return frozenset(targets)
