"""Owns drill scenarios as data: reading a scenario file, checking it, and building its envelopes (pure).

A scenario (deploy/scenarios/*.yaml, checked against deploy/scenarios/scenario.schema.json) names
its rooms, a timeline of steps (one envelope each, its payload in the protobuf JSON mapping) and
what each step must lead to. `load` refuses a file that does not match the schema, or whose steps
name a room or an earlier step that does not exist, with one ScenarioError naming the file and
the path of the value. `envelope_of` builds a step's envelope; times written "now", "now+6m" or
"now-30s" in a payload become the clock's time then.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from google.protobuf import json_format
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker.times import parse_rfc3339, timestamp

SCHEMA_NAME = "scenario.schema.json"
_TIME = re.compile(r"^now(?:([+-])(\d+)([smh]))?$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours"}


class ScenarioError(ValueError):
    """A scenario file that cannot be run: says the file, the path of the value and what is wrong."""


@dataclass(frozen=True)
class Room:
    """A simulated room: its agency, its name, what it is, and how its operator answers requests."""

    agency: str
    name: str
    kind: str = ""
    # Per request payload: the outcome its operator answers, or outcomes by weight (drawn from the seed).
    answers: Mapping[str, str | Mapping[str, float]] = field(default_factory=dict)
    ack_delay_ms: int = 0  # its client acknowledges each delivery this long after receiving it
    offline: tuple[str, str] | None = None  # (step it leaves before, step it is back before; "" for the end)


@dataclass(frozen=True)
class Expect:
    """What a step must lead to (see the schema's descriptions)."""

    refused: tuple[str, str] | None = None  # (gRPC code name, catalogue reason)
    delivered_to: tuple[str, ...] = ()
    not_delivered_to: tuple[str, ...] = ()
    within_ms: int | None = None
    withheld: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    visible: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    answered: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One envelope of the timeline, as the file says it."""

    id: str
    say: str
    sender: str
    kind: str
    to: tuple[str, ...]
    incident_ids: tuple[str, ...]
    references: tuple[str, ...]
    operator_id: str
    payload: Mapping[str, Any]
    expect: Expect
    pause_ms: int = 0  # between the previous step and this one


@dataclass(frozen=True)
class Scenario:
    """A checked scenario file."""

    id: str
    title: str
    description: str
    path: Path
    agreements: Path | None
    status: str
    at: datetime | None  # when the drill is set (None: now)
    rooms: tuple[Room, ...]
    steps: tuple[Step, ...]
    seed: int = 1  # of the draws (answers by weight)

    def room(self, agency: str) -> Room | None:
        """The room of an agency, if the scenario has one."""
        return next((r for r in self.rooms if r.agency == agency), None)


@cache
def schema(folder: Path) -> dict[str, Any]:
    """The scenario JSON Schema in folder."""
    loaded: dict[str, Any] = json.loads((folder / SCHEMA_NAME).read_text(encoding="utf-8"))
    return loaded


def default_schema_folder() -> Path:
    """deploy/scenarios of the source tree, or the copy shipped in the package."""
    here = Path(__file__).resolve().parents[2] / "deploy" / "scenarios"
    if (here / SCHEMA_NAME).is_file():
        return here
    return Path(__file__).resolve().parents[1] / "data" / "deploy" / "scenarios"


def _where(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(the file)"


def load(path: Path, schema_folder: Path | None = None) -> Scenario:
    """Read and check a scenario file; raises ScenarioError naming the file and the value's path."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not YAML: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("at"), datetime):  # YAML reads an unquoted time itself
        data["at"] = data["at"].isoformat()
    validator = jsonschema.Draft202012Validator(schema(schema_folder or default_schema_folder()))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise ScenarioError(f"{path}: {_where(first)}: {first.message}")
    return _build(path, data)


def _build(path: Path, data: dict[str, Any]) -> Scenario:
    rooms = tuple(
        Room(
            r["agency"],
            r["name"],
            r.get("kind", ""),
            dict(r.get("answers", {})),
            r.get("ack_delay_ms", 0),
            (r["offline"]["from"], r["offline"].get("until", "")) if "offline" in r else None,
        )
        for r in data["rooms"]
    )
    agencies = {r.agency for r in rooms}
    if len(agencies) != len(rooms):
        raise ScenarioError(f"{path}: rooms: an agency has two rooms")
    steps: list[Step] = []
    for i, raw in enumerate(data["steps"]):
        where = f"{path}: steps[{i}]"
        if raw["from"] not in agencies:
            raise ScenarioError(f"{where}.from: {raw['from']} is not one of the scenario's rooms")
        earlier = {s.id for s in steps}
        if raw["id"] in earlier:
            raise ScenarioError(f"{where}.id: {raw['id']} is the id of an earlier step")
        for ref in raw.get("references", []):
            if ref not in earlier:
                raise ScenarioError(f"{where}.references: {ref} is not an earlier step")
        expect = _expect(where, raw.get("expect", {}), agencies)
        steps.append(
            Step(
                id=raw["id"],
                say=raw.get("say", ""),
                sender=raw["from"],
                kind=raw["kind"],
                to=tuple(raw.get("to", [])),
                incident_ids=tuple(raw.get("incident_ids", [])),
                references=tuple(raw.get("references", [])),
                operator_id=raw.get("operator_id", ""),
                payload=raw["payload"],
                expect=expect,
                pause_ms=raw.get("pause_ms", 0),
            )
        )
    _check_windows(path, rooms, [s.id for s in steps])
    agreements = (path.parent / data["agreements"]).resolve() if "agreements" in data else None
    at = _when(data["at"]) if "at" in data else None
    if "at" in data and at is None:
        raise ScenarioError(f"{path}: at: {data['at']!r} is not an RFC 3339 time with its offset")
    return Scenario(
        id=data["id"],
        title=data["title"],
        description=data.get("description", ""),
        path=path,
        agreements=agreements,
        status=data.get("status", "EXERCISE"),
        at=at,
        seed=data.get("seed", 1),
        rooms=rooms,
        steps=tuple(steps),
    )


def _when(text: str) -> datetime | None:
    """An RFC 3339 time with its offset (None without one: a drill's time must say its zone)."""
    try:
        naive = datetime.fromisoformat(text).tzinfo is None
    except ValueError:
        return None
    return None if naive else parse_rfc3339(text)


def _check_windows(path: Path, rooms: tuple[Room, ...], order: list[str]) -> None:
    """Each room's offline window names steps of the scenario, the end after the start."""
    for i, room in enumerate(rooms):
        if room.offline is None:
            continue
        leave, back = room.offline
        if leave not in order or (back and back not in order):
            raise ScenarioError(f"{path}: rooms[{i}].offline: names a step the scenario does not have")
        if back and order.index(back) <= order.index(leave):
            raise ScenarioError(f"{path}: rooms[{i}].offline: until must be a step after from")


def _expect(where: str, raw: Mapping[str, Any], agencies: set[str]) -> Expect:
    """The step's expectations; every agency they observe must be a room of the scenario."""
    observed = [
        *raw.get("delivered_to", []),
        *raw.get("not_delivered_to", []),
        *raw.get("withheld", {}),
        *raw.get("visible", {}),
        *raw.get("answered", {}),
    ]
    for agency in observed:
        if agency not in agencies:
            raise ScenarioError(f"{where}.expect: {agency} is not one of the scenario's rooms (nothing observes it)")
    refused = raw.get("refused")
    return Expect(
        refused=(refused["code"], refused["reason"]) if refused else None,
        delivered_to=tuple(raw.get("delivered_to", [])),
        not_delivered_to=tuple(raw.get("not_delivered_to", [])),
        within_ms=raw.get("within_ms"),
        withheld={a: tuple(p) for a, p in raw.get("withheld", {}).items()},
        visible={a: tuple(p) for a, p in raw.get("visible", {}).items()},
        answered=dict(raw.get("answered", {})),
    )


def _times(value: Any, now: datetime) -> Any:
    """Value with every string "now", "now+6m", "now-30s" replaced by that time (RFC 3339)."""
    if isinstance(value, dict):
        return {k: _times(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [_times(v, now) for v in value]
    if isinstance(value, str) and (match := _TIME.match(value)):
        sign, amount, unit = match.groups()
        at = now
        if amount:
            delta = timedelta(**{_UNITS[unit]: int(amount)})
            at = now + delta if sign == "+" else now - delta
        return timestamp(at).ToJsonString()
    return value


def envelope_of(step: Step, status: str, now: datetime, sent: Mapping[str, tuple[str, str]]) -> envelope_pb2.Envelope:
    """The step's envelope, sent now; sent maps earlier step ids to (distribution id, sender) for references.

    Raises ScenarioError when the payload does not fit the contract (field path in the message).
    """
    env = envelope_pb2.Envelope(
        distribution_id=str(uuid.uuid4()),
        sender=common_pb2.Sender(agency_id=step.sender, operator_id=step.operator_id),
        sent_at=timestamp(now),
        status=common_pb2.Status.Value(f"STATUS_{status}"),
        kind=common_pb2.Kind.Value(f"KIND_{step.kind}"),
        recipients=list(step.to),
        confidentiality=common_pb2.CONFIDENTIALITY_RESTRICTED,
        incident_ids=list(step.incident_ids),
        references=[
            common_pb2.Reference(distribution_id=d, sender_agency_id=a)
            for d, a in map(sent.__getitem__, step.references)
        ],
        legal_basis=common_pb2.LegalBasis(law="d.l. 14/2017 art. 2", purpose=common_pb2.PURPOSE_PUBLIC_SECURITY),
    )
    try:
        json_format.ParseDict(_times(dict(step.payload), now), env)
    except json_format.ParseError as exc:
        raise ScenarioError(f"step {step.id}: payload: {exc}") from exc
    return env
