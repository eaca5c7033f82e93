"""Drill scenarios as data and the drill's verdict, without a hub: the file's checks, envelopes, and each expectation."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.incident.v1 import incident_pb2
from opsroom.request.v1 import request_pb2

from broker.drill.expect import Check, Observations, Published, Received, judge
from broker.drill.load import load_rooms, percentile, write_agreement
from broker.drill.run import _SimRoom
from broker.drill.scenario import Room, ScenarioError, envelope_of, load
from broker.policy.loader import load_dir
from broker.times import SystemClock
from broker.validate import codelists
from broker.validate.checker import validate_envelope
from broker.validate.fields import ValidationContext

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "deploy" / "scenarios").glob("*.yaml"))
TORINO = ROOT / "deploy" / "scenarios" / "torino-demo.yaml"
NOW = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)


def torino() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(TORINO.read_text(encoding="utf-8"))
    return data


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_shipped_scenario_loads_and_builds_envelopes_the_hub_validates(path: Path) -> None:
    """Each step's envelope, as the drill sends it, passes the hub's own validation (field paths otherwise)."""
    scenario = load(path)
    assert scenario.agreements is not None
    assert scenario.agreements.is_dir()
    rooms = {r.agency for r in scenario.rooms}
    ctx = ValidationContext(codelists.load(), lambda agency: agency in rooms)
    sent: dict[str, tuple[str, str]] = {}
    for step in scenario.steps:
        env = envelope_of(step, scenario.status, NOW, sent)
        assert [] == validate_envelope(env, ctx, NOW), step.id
        assert common_pb2.STATUS_EXERCISE == env.status
        sent[step.id] = (env.distribution_id, step.sender)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda d: d["steps"][0].pop("from"), "steps[0]: 'from' is a required property"),
        (lambda d: d["steps"][1].update(kind="SHOUT"), "steps[1].kind: 'SHOUT' is not one of"),
        (lambda d: d["rooms"][0].update(colour="red"), "rooms[0]: Additional properties are not allowed"),
        (lambda d: d["steps"][0].update({"from": "it.pl.999999"}), "steps[0].from: it.pl.999999 is not one of"),
        (lambda d: d["steps"][0].update(references=["closure"]), "steps[0].references: closure is not an earlier step"),
        (lambda d: d["steps"][1].update(id="contact-card"), "steps[1].id: contact-card is the id of an earlier step"),
        (
            lambda d: d["steps"][0]["expect"].update(delivered_to=["it.gdf.cp.to"]),
            "steps[0].expect: it.gdf.cp.to is not one of the scenario's rooms",
        ),
        (lambda d: d["steps"][0]["payload"].update(alert={}), "steps[0].payload: {"),
        (lambda d: d["rooms"][2].update(offline={"from": "nowhere"}), "rooms[2].offline: names a step the scenario"),
        (
            lambda d: d["rooms"][2].update(offline={"from": "closure", "until": "backup"}),
            "rooms[2].offline: until must be a step after from",
        ),
        (lambda d: d["rooms"][2].update(ack_delay_ms=-1), "rooms[2].ack_delay_ms: -1 is less than the minimum of 0"),
        (lambda d: d.update(at="next tuesday"), "at: 'next tuesday' is not an RFC 3339 time"),
        (
            lambda d: d.update(at="2026-07-11T23:40:00"),
            "at: '2026-07-11T23:40:00' is not an RFC 3339 time with its offset",
        ),
    ],
)
def test_a_scenario_that_cannot_run_is_refused_naming_the_value(tmp_path: Path, change: Any, says: str) -> None:
    data = copy.deepcopy(torino())
    data["agreements"] = str(ROOT / "deploy" / "agreements")
    change(data)
    path = write(tmp_path, data)
    with pytest.raises(ScenarioError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert says in str(caught.value)


def test_a_payload_outside_the_contract_is_refused_with_the_step_and_the_field(tmp_path: Path) -> None:
    data = torino()
    data["steps"][0]["payload"] = {"incident": {"priority": "PRIORITY_URGENTISSIMA"}}
    scenario = load(write(tmp_path, data))
    with pytest.raises(ScenarioError, match=r"step contact-card: payload: .*PRIORITY_URGENTISSIMA"):
        envelope_of(scenario.steps[0], scenario.status, NOW, {})


def test_times_relative_to_now_and_references_to_earlier_steps() -> None:
    scenario = load(TORINO)
    first = envelope_of(scenario.steps[0], "EXERCISE", NOW, {})
    assert datetime(2026, 12, 7, 20, 58, tzinfo=UTC) == first.incident.occurred_at.ToDatetime(UTC)  # now-2m
    assert datetime(2026, 12, 7, 20, 57, tzinfo=UTC) == first.incident.call.started_at.ToDatetime(UTC)  # now-3m
    assert NOW == first.sent_at.ToDatetime(UTC)
    second = envelope_of(scenario.steps[1], "ACTUAL", NOW, {"contact-card": ("d-1", "it.nue.cur.to")})
    assert [("d-1", "it.nue.cur.to")] == [(r.distribution_id, r.sender_agency_id) for r in second.references]
    assert common_pb2.STATUS_ACTUAL == second.status
    assert incident_pb2.INCIDENT_STATUS_RESOURCES_ENROUTE == second.incident.status  # the anchor, one field changed
    assert "CUR-TO-2026-001234" == second.incident.local_reference


# -- the verdict ---------------------------------------------------------------------------------


def _seen_as_planned() -> tuple[Any, Observations]:
    """The Torino scenario and observations of a drill in which everything went as expected."""
    scenario = load(TORINO)
    seen = Observations()
    sent: dict[str, tuple[str, str]] = {}
    for number, step in enumerate(scenario.steps):
        env = envelope_of(step, scenario.status, NOW, sent)
        at = float(number * 10)
        if step.expect.refused is not None:
            seen.published[step.id] = Published(step.id, env.distribution_id, at, step.expect.refused, "no rule")
            continue
        seen.published[step.id] = Published(step.id, env.distribution_id, at)
        sent[step.id] = (env.distribution_id, step.sender)
        for agency in step.expect.delivered_to:
            delivered = envelope_pb2.Envelope()
            delivered.CopyFrom(env)
            for path in step.expect.withheld.get(agency, ()):
                parent, _, name = path.rpartition(".")
                target: Any = delivered
                for part in parent.split("."):
                    target = getattr(target, part)
                target.ClearField(name)
            seen.received.append(Received(agency, delivered, at + 0.05))
        for agency, outcome in step.expect.answered.items():
            response = envelope_pb2.Envelope(
                distribution_id=f"r-{step.id}",
                kind=common_pb2.KIND_RESPONSE,
                sender=common_pb2.Sender(agency_id=agency),
                references=[common_pb2.Reference(distribution_id=env.distribution_id, sender_agency_id=step.sender)],
            )
            field = "assistance_response" if "assistance_request" in step.payload else "handover_response"
            outcome_value = common_pb2.Outcome.Value(f"OUTCOME_{outcome}")
            if field == "assistance_response":
                response.assistance_response.CopyFrom(request_pb2.AssistanceResponse(outcome=outcome_value))
            else:
                response.handover_response.CopyFrom(request_pb2.HandoverResponse(outcome=outcome_value))
            seen.received.append(Received(step.sender, response, at + 0.1))
    return scenario, seen


def failed(checks: list[Check]) -> list[tuple[str, str, str]]:
    return [(c.step, c.what, c.why) for c in checks if not c.passed]


def test_a_drill_that_went_as_planned_passes_every_expectation() -> None:
    scenario, seen = _seen_as_planned()
    checks = judge(scenario, seen)
    assert len(checks) == 27
    assert [] == failed(checks)


def test_a_missing_delivery_fails_naming_the_room() -> None:
    scenario, seen = _seen_as_planned()
    dist = seen.published["plate-hit"].distribution_id
    seen.received = [r for r in seen.received if not (r.agency == "it.cc.cp.to" and r.envelope.distribution_id == dist)]
    assert [("plate-hit", "delivered to it.cc.cp.to within 5000 ms", "it.cc.cp.to never received it")] == failed(
        judge(scenario, seen)
    )


def test_a_late_delivery_fails_saying_how_late() -> None:
    scenario, seen = _seen_as_planned()
    dist = seen.published["dispatched"].distribution_id
    seen.received = [
        Received(r.agency, r.envelope, r.at + 6.0) if r.envelope.distribution_id == dist else r for r in seen.received
    ]
    assert [
        ("dispatched", "delivered to it.nue.cur.to within 5000 ms", "received after 6050 ms"),
        ("dispatched", "delivered to it.pl.001272 within 5000 ms", "received after 6050 ms"),
    ] == failed(judge(scenario, seen))


def test_a_delivery_that_should_not_happen_and_a_field_that_should_be_withheld_fail() -> None:
    scenario, seen = _seen_as_planned()
    published = seen.published["contact-card"]
    whole = next(r for r in seen.received if r.envelope.distribution_id == published.distribution_id)
    full = envelope_of(scenario.steps[0], scenario.status, NOW, {})
    full.distribution_id = published.distribution_id
    seen.received.append(Received("it.cc.cp.to", whole.envelope, published.at + 0.05))
    seen.received = [
        Received(r.agency, full, r.at)
        if r.agency == "it.pl.001272" and r.envelope.distribution_id == published.distribution_id
        else r
        for r in seen.received
    ]
    assert [
        ("contact-card", "not delivered to it.cc.cp.to", "it.cc.cp.to received it"),
        (
            "contact-card",
            "incident.call.network_location withheld from it.pl.001272",
            "it.pl.001272's copy holds incident.call.network_location",
        ),
    ] == failed(judge(scenario, seen))


def test_refusals_and_answers_are_judged_by_code_reason_and_outcome() -> None:
    scenario, seen = _seen_as_planned()
    refused = seen.published["cur-alert-refused"]
    seen.published["cur-alert-refused"] = Published(refused.step, refused.distribution_id, refused.at)  # accepted
    seen.published["backup"] = Published(
        "backup", "d-backup", 20.0, ("PERMISSION_DENIED", "RECIPIENT_NOT_ALLOWED"), "no rule"
    )
    seen.received = [
        Received(r.agency, _outcome(r.envelope, common_pb2.OUTCOME_REJECTED), r.at)
        if r.envelope.kind == common_pb2.KIND_RESPONSE and r.envelope.HasField("handover_response")
        else r
        for r in seen.received
    ]
    assert [
        ("backup", "accepted", "refused PERMISSION_DENIED RECIPIENT_NOT_ALLOWED: no rule"),
        ("cur-alert-refused", "refused PERMISSION_DENIED RECIPIENT_NOT_ALLOWED", "it was accepted"),
        ("handover", "it.ps.questura.to answered ACCEPTED", "answered REJECTED"),
    ] == failed(judge(scenario, seen))


def test_a_step_never_published_fails() -> None:
    scenario, seen = _seen_as_planned()
    del seen.published["closure"]
    assert [("closure", "published", "the step was never published (an earlier step stopped the drill)")] == failed(
        judge(scenario, seen)
    )


def _outcome(env: envelope_pb2.Envelope, outcome: int) -> envelope_pb2.Envelope:
    changed = envelope_pb2.Envelope()
    changed.CopyFrom(env)
    changed.handover_response.outcome = outcome  # type: ignore[assignment]
    return changed


def test_room_behaviour_and_time_are_read() -> None:
    scenario = load(ROOT / "deploy" / "scenarios" / "torino-room-offline.yaml")
    cc = scenario.room("it.cc.cp.to")
    assert cc is not None
    assert (3000, ("backup", "closure")) == (cc.ack_delay_ms, cc.offline)
    assert [0, 0, 0, 3000] == [s.pause_ms for s in scenario.steps]
    lodi = load(ROOT / "deploy" / "scenarios" / "lodi-night-venue.yaml")
    assert lodi.at is not None
    assert "2026-07-11T21:40:00+00:00" == lodi.at.astimezone(UTC).isoformat()


# -- the load mode's pure parts ------------------------------------------------------------------


def test_load_rooms_are_polizia_locale_rooms_of_the_province_s_comuni_in_code_order() -> None:
    rooms = load_rooms(3)
    assert ["it.pl.001001", "it.pl.001002", "it.pl.001003"] == list(rooms)
    assert all(name.startswith("Polizia Locale di ") for name in rooms.values())
    assert 312 == len(load_rooms(312))
    with pytest.raises(ValueError, match="312 comuni"):
        load_rooms(313)


def test_the_load_agreement_is_one_the_hub_accepts(tmp_path: Path) -> None:
    rooms = load_rooms(5)
    write_agreement(tmp_path / "agreements", rooms)
    [agreement] = load_dir(tmp_path / "agreements").agreements
    assert {*rooms, "it.ps.questura.to", "it.cc.cp.to"} == {p.agency for p in agreement.parties}
    assert all(p.drills for p in agreement.parties)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 0.5, 0.0), ([5.0], 0.99, 5.0), ([float(i) for i in range(1, 101)], 0.5, 50.0),
     ([float(i) for i in range(1, 101)], 0.99, 99.0), ([float(i) for i in range(1, 1001)], 0.999, 999.0)],
)  # fmt: skip
def test_percentiles_by_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert expected == percentile(values, q)


def test_answers_by_weight_are_drawn_from_the_seed_and_fixed_ones_are_given() -> None:
    def room(answers: dict[str, Any], seed: int = 1) -> _SimRoom:
        return _SimRoom(Room("it.cc.cp.to", "CC", answers=answers), Observations(), asyncio.Event(), status=2,
                        clock=SystemClock(), seed=seed)  # fmt: skip

    assert ["REJECTED"] * 5 == [room({})._draw("REJECTED") for _ in range(5)]
    only = room({})
    assert {"ACCEPTED"} == {only._draw({"ACCEPTED": 1, "REJECTED": 0}) for _ in range(50)}
    mixed = [room({})._draw({"ACCEPTED": 1, "REJECTED": 1}) for _ in range(1)]
    again = [room({})._draw({"ACCEPTED": 1, "REJECTED": 1}) for _ in range(1)]
    assert mixed == again  # the same seed, the same first draw
    many = room({})
    drawn = [many._draw({"ACCEPTED": 3, "REJECTED": 1}) for _ in range(400)]
    assert 0.6 < drawn.count("ACCEPTED") / len(drawn) < 0.9  # 3 to 1, loosely


def test_answers_by_weight_in_a_file_are_checked(tmp_path: Path) -> None:
    data = torino()
    data["rooms"][2]["answers"] = {"assistance_request": {"ACCEPTED": 3, "REJECTED": 1}}
    data["seed"] = 7
    scenario = load(write(tmp_path, data))
    assert 7 == scenario.seed
    assert {"ACCEPTED": 3, "REJECTED": 1} == scenario.rooms[2].answers["assistance_request"]
    data["rooms"][2]["answers"] = {"assistance_request": {"MAYBE": 1}}
    with pytest.raises(ScenarioError, match=r"rooms\[2\]\.answers\.assistance_request"):
        load(write(tmp_path, data))
