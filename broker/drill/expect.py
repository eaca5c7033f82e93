"""Owns the verdict of a drill: what each step was expected to lead to, against what the rooms saw (pure).

The runner (broker/drill/run.py) records, with one monotonic clock, each publish (accepted, or
refused with its gRPC code and catalogue reason) and each envelope each room received; `judge`
turns a scenario and those observations into one Check per expectation, passed or failed, and
when failed, why, in words an operator reads in the drill report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker.audit.records import present_fields
from broker.drill.scenario import Scenario, Step


@dataclass(frozen=True)
class Published:
    """A step's publish: when (seconds, monotonic), its distribution id, and its refusal if refused."""

    step: str
    distribution_id: str
    at: float
    refused: tuple[str, str] | None = None  # (gRPC code name, catalogue reason)
    message: str = ""


@dataclass(frozen=True)
class Received:
    """An envelope a room's client received (before any deduplication), and when."""

    agency: str
    envelope: envelope_pb2.Envelope
    at: float
    lane: str = ""  # "urgent" or "bulk", as the delivery said


@dataclass
class Observations:
    """Everything the drill saw, in the order it saw it."""

    published: dict[str, Published] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def copies(self, agency: str, distribution_id: str) -> list[Received]:
        """What agency received of the envelope distribution_id (several if it came again)."""
        return [r for r in self.received if r.agency == agency and r.envelope.distribution_id == distribution_id]

    def responses(self, sender: str, distribution_id: str, responder: str) -> list[envelope_pb2.Envelope]:
        """The responses sender received from responder to its envelope distribution_id."""
        return [
            r.envelope
            for r in self.received
            if r.agency == sender
            and r.envelope.kind == common_pb2.KIND_RESPONSE
            and r.envelope.sender.agency_id == responder
            and any(ref.distribution_id == distribution_id for ref in r.envelope.references)
        ]


@dataclass(frozen=True)
class Check:
    """One expectation of one step, and its verdict."""

    step: str
    what: str
    passed: bool
    why: str = ""


def _has(paths: list[str], wanted: str) -> bool:
    """Whether a copy holds wanted: the field itself or anything inside it."""
    return any(p == wanted or p.startswith(f"{wanted}.") for p in paths)


def _check(step: Step, what: str, why: str = "") -> Check:
    """A check that passed when there is no why, else failed for that reason."""
    return Check(step.id, what, passed=not why, why=why)


def judge(scenario: Scenario, seen: Observations) -> list[Check]:
    """One Check per expectation of every step, in the scenario's order."""
    checks: list[Check] = []
    for step in scenario.steps:
        checks.extend(_judge_step(step, seen))
    return checks


def _judge_step(step: Step, seen: Observations) -> list[Check]:
    published = seen.published.get(step.id)
    if published is None:
        return [_check(step, "published", "the step was never published (an earlier step stopped the drill)")]
    refusal = " ".join(published.refused) if published.refused else ""
    if step.expect.refused is not None:
        wanted = " ".join(step.expect.refused)
        why = "it was accepted" if not refusal else ("" if refusal == wanted else f"{refusal}: {published.message}")
        return [_check(step, f"refused {wanted}", why)]
    if refusal:
        return [_check(step, "accepted", f"refused {refusal}: {published.message}")]
    return [
        _check(step, "accepted"),
        *_deliveries(step, seen, published),
        *_views(step, seen, published.distribution_id),
        *(_answered(step, seen, published.distribution_id, a, o) for a, o in step.expect.answered.items()),
    ]


def _deliveries(step: Step, seen: Observations, published: Published) -> list[Check]:
    """delivered_to (within within_ms) and not_delivered_to."""
    out = []
    within = step.expect.within_ms
    for agency in step.expect.delivered_to:
        copies = seen.copies(agency, published.distribution_id)
        what = f"delivered to {agency}" + (f" within {within} ms" if within else "")
        late = (copies[0].at - published.at) * 1000 if copies else 0.0
        why = f"{agency} never received it" if not copies else ""
        if copies and within is not None and late > within:
            why = f"received after {late:.0f} ms"
        out.append(_check(step, what, why))
    for agency in step.expect.not_delivered_to:
        got = bool(seen.copies(agency, published.distribution_id))
        out.append(_check(step, f"not delivered to {agency}", f"{agency} received it" if got else ""))
    return out


def _views(step: Step, seen: Observations, dist: str) -> list[Check]:
    """Withheld and visible: the fields each recipient's copy lacks or holds."""
    out = []
    for agency, paths, hidden in [
        *((a, p, True) for a, p in step.expect.withheld.items()),
        *((a, p, False) for a, p in step.expect.visible.items()),
    ]:
        copies = seen.copies(agency, dist)
        for path in paths:
            what = f"{path} {'withheld from' if hidden else 'visible to'} {agency}"
            holding = [_has(present_fields(c.envelope), path) for c in copies]
            if not copies:
                why = f"{agency} never received it"
            elif hidden:
                why = f"{agency}'s copy holds {path}" if any(holding) else ""
            else:
                why = "" if all(holding) else f"{agency}'s copy lacks {path}"
            out.append(_check(step, what, why))
    return out


def _answered(step: Step, seen: Observations, dist: str, agency: str, outcome: str) -> Check:
    """Whether the step's sender received agency's response to it, with outcome."""
    what = f"{agency} answered {outcome}"
    responses = seen.responses(step.sender, dist, agency)
    if not responses:
        return _check(step, what, f"{step.sender} received no response from {agency}")
    payload = responses[0].WhichOneof("payload") or ""
    got = common_pb2.Outcome.Name(getattr(responses[0], payload).outcome) if payload.endswith("_response") else "?"
    got = got.removeprefix("OUTCOME_")
    return _check(step, what, "" if got == outcome else f"answered {got}")
