"""What an accepted envelope was meant to reach: the plan its first delivery carries (pure).

The deliveries of one envelope are several JetStream messages. If the hub or nats-server dies
between their writes, the store holds some and not the others, and the sender, who got no
answer, sends the envelope again. The plan lets the hub finish the job from what is stored,
without routing the envelope again against today's agreements: every recipient with the rule
that allowed it, when its delivery expires and what its copy leaves out, plus the escalation
timer and whether a response record follows. It travels as one header (`Opsroom-Plan`, compact
JSON) of the envelope's first delivery, which is written, with the claim on the distribution id,
before any of the others: a stored delivery therefore always has its plan stored too.

A copy's redaction is recorded as the mask paths that removed something from this envelope
(broker.policy.redact.redact_reporting): applied to the same envelope they make the same copy,
and they are a handful of paths where the whole mask may hold dozens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PLAN_HEADER = "Opsroom-Plan"
VERSION = 1


class PlanError(ValueError):
    """A plan header that does not decode (written by another version, or damaged)."""


@dataclass(frozen=True, slots=True)
class Planned:
    """One intended recipient: its agency, the rule that allowed it, its expiry, what its copy leaves out."""

    agency_id: str
    rule: str
    expires_ns: int
    hidden: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Timer:
    """The escalation timer written with a request: when an answer is due, the alternate room, the rule."""

    due_ns: int
    to_agency_id: str
    rule: str


@dataclass(frozen=True, slots=True)
class Plan:
    """Every message one accepted envelope is written as, in the order they are written."""

    recipients: tuple[Planned, ...]
    timer: Timer | None = None
    response: bool = False  # a RESPONSE: the record of the answer follows its deliveries

    @property
    def agencies(self) -> tuple[str, ...]:
        """The intended recipients, in the order of the acceptance."""
        return tuple(p.agency_id for p in self.recipients)

    def missing(self, stored: Iterable[str]) -> tuple[Planned, ...]:
        """The intended recipients whose delivery is not among the stored agencies."""
        have = frozenset(stored)
        return tuple(p for p in self.recipients if p.agency_id not in have)

    def encode(self) -> str:
        """The header value: compact JSON, masks listed once and referred to by index."""
        masks: list[tuple[str, ...]] = []
        index: dict[tuple[str, ...], int] = {}
        rows = []
        for p in self.recipients:
            at = index.get(p.hidden)
            if at is None:
                at = index[p.hidden] = len(masks)
                masks.append(p.hidden)
            rows.append([p.agency_id, p.rule, p.expires_ns, at])
        body: dict[str, object] = {"v": VERSION, "to": rows, "m": [list(m) for m in masks]}
        if self.timer is not None:
            body["t"] = [self.timer.due_ns, self.timer.to_agency_id, self.timer.rule]
        if self.response:
            body["r"] = 1
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Plan:
        """The plan of a header value; raises PlanError if it is not one this version writes."""
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise PlanError("not a plan: not JSON") from exc
        if not isinstance(body, dict) or body.get("v") != VERSION:
            raise PlanError(f"not a plan of version {VERSION}")
        try:
            masks = [tuple(str(path) for path in m) for m in body["m"]]
            recipients = tuple(
                Planned(str(agency), str(rule), int(expires), masks[int(mask)])
                for agency, rule, expires, mask in body["to"]
            )
            timer = None
            if "t" in body:
                due, to, rule = body["t"]
                timer = Timer(int(due), str(to), str(rule))
            return cls(recipients, timer, bool(body.get("r", 0)))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise PlanError(f"not a plan: {type(exc).__name__}") from exc


def plan_of(headers: Sequence[dict[str, str]]) -> Plan | None:
    """The plan among these delivery headers (the first delivery's), if one carries it."""
    for h in headers:
        text = h.get(PLAN_HEADER)
        if text:
            return Plan.decode(text)
    return None
