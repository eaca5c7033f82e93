"""The policy engine: recipients allowed or selected by agreement rules, refusals, drills, replies, and masks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker.policy.engine import Considered, Policy, hidden_fields
from broker.policy.loader import load_dir, parse
from broker.policy.model import AgreementSet
from broker.policy.places import place_index
from broker.policy.redact import CATEGORIES, PERSONAL_DATA, mask_for, present_hidden, redact
from broker.policy.routing import REPLY_RULE, Decision, Referenced, Refusal, RoutingContext
from tests import factories as f

ROME = ZoneInfo("Europe/Rome")
FIXED = datetime(2026, 3, 10, 12, 0, tzinfo=ROME)  # a Tuesday in March
AGREEMENTS = Path(__file__).resolve().parents[2] / "deploy" / "agreements"

PL_LO, PL_CASAL, QUESTURA_LO, CC_LO, PREF_LO = (
    "it.pl.098031",
    "it.pl.098010",
    "it.ps.questura.lo",
    "it.cc.cp.lo",
    "it.pref.lo",
)
LODI, CASAL, TORINO = "098031", "098010", "001272"
REF = "0b7e4a53-35a7-4c55-9d0c-4f0f6a9c2b11"
ALL_PERSONAL = frozenset(p for paths in PERSONAL_DATA.values() for p in paths)

PARTIES = """\
parties:
  - {agency: it.pl.098031, role: polizia_locale, covers: {comuni: ["098031"]}, drills: true}
  - {agency: it.pl.098010, role: polizia_locale, covers: {comuni: ["098010"]}}
  - {agency: it.ps.questura.lo, role: questura, drills: true}
  - {agency: it.cc.cp.lo, role: carabinieri}
  - {agency: it.pref.lo, role: prefettura}
roles:
  questura: {personal_data: [caller, network_location, persons, vehicles, free_text, media, staff]}
  carabinieri: {personal_data: [persons], hide: [incident.agencies]}
  prefettura: {hide: [incident.locations.point]}
"""
QUESTURA_HIDES: frozenset[str] = frozenset()
CC_HIDES = mask_for({"persons"}, {"incident.agencies"}).hidden
PL_HIDES = ALL_PERSONAL  # polizia_locale has no roles entry: no personal data

TO_STATE = "  - {id: to-state, from: [polizia_locale], to: [questura, carabinieri], kinds: [REPORT, UPDATE], payloads: [incident, closure]}"
URGENT = (
    "  - {id: urgent, from: [questura], to: [polizia_locale], kinds: [REPORT], min_priority: HIGH, select: territory}"
)


def agreement(
    *rules: str,
    aid: str = "lodi-test",
    purposes: str = "[PUBLIC_SECURITY, TRAINING]",
    valid: str = "valid_from: 2026-01-01\nvalid_until: 2026-12-31",
    territory: str = '{provinces: ["098"]}',
    parties: str = PARTIES,
) -> str:
    """The YAML text of an agreement among the Lodi rooms with these rules."""
    return (
        f"id: {aid}\ntitle: Prova\n{valid}\n"
        f'legal_basis: {{law: "d.l. 14/2017 art. 2", purposes: {purposes}}}\n'
        f"territory: {territory}\n{parties}rules:\n" + "\n".join(rules) + "\n"
    )


def policy(*texts: str, drill_only: frozenset[str] = frozenset()) -> Policy:
    """A Policy over these agreement texts."""
    agreements = tuple(parse(text, f"a{i}.yaml") for i, text in enumerate(texts))
    return Policy(AgreementSet(agreements), place_index(), drill_only=drill_only)


def envelope(
    sender: str = PL_LO,
    recipients: tuple[str, ...] = (QUESTURA_LO,),
    *,
    comune: str = LODI,
    kind: int = common_pb2.KIND_REPORT,
    status: int = common_pb2.STATUS_ACTUAL,
    purpose: int = common_pb2.PURPOSE_PUBLIC_SECURITY,
    agreement_id: str = "",
    eido: str = "FIGHT",
    priority: int = common_pb2.PRIORITY_HIGH,
    references: tuple[tuple[str, str], ...] = (),
    **payload: object,
) -> envelope_pb2.Envelope:
    """A factories envelope (an incident report by default) whose event is in that comune."""
    if not payload:
        incident = f.incident()
        incident.type.eido_code = eido
        incident.priority = priority  # type: ignore[assignment]
        del incident.locations[:]
        incident.locations.add(type="CurrentIncident", comune_istat=comune)
        payload = {"incident": incident}
    env = f.envelope(sender, recipients, kind=kind, status=status, references=references, **payload)
    del env.target_areas[:]
    env.target_areas.add(comune_istat=comune)
    env.legal_basis.purpose = purpose  # type: ignore[assignment]
    env.legal_basis.agreement_id = agreement_id
    return env


def alert(*categories: int, urgency: int = alert_pb2.URGENCY_IMMEDIATE) -> alert_pb2.Alert:
    """A factories alert in Lodi with these categories and urgency."""
    out = f.alert()
    info = out.infos[0]
    del info.categories[:]
    info.categories.extend(categories)
    info.urgency = urgency  # type: ignore[assignment]
    area = info.areas[0]
    del area.comuni_istat[:]
    del area.circles[:]
    area.comuni_istat.append(LODI)
    return out


def ctx(sender: str = PL_LO, now: datetime = FIXED, **referenced: Referenced) -> RoutingContext:
    """A routing context at a fixed moment."""
    return RoutingContext(sender, referenced=dict(referenced), now=now)


def routed(decision: Decision) -> list[tuple[str, str]]:
    """(recipient, rule) of every route."""
    return [(r.agency_id, r.rule) for r in decision.routes]


def hides(decision: Decision) -> dict[str, frozenset[str]]:
    """The hidden paths of every route."""
    return {r.agency_id: r.mask.hidden for r in decision.routes if r.mask is not None}


# -- explicit recipients ------------------------------------------------------------------------------------------


def test_explicit_recipients_allowed_with_rule_and_mask() -> None:
    """Allowed explicit recipients are routed with "<agreement>/<rule>" and their role's mask."""
    decision = policy(agreement(TO_STATE)).route(envelope(PL_LO, (QUESTURA_LO, CC_LO)), ctx())
    assert [(QUESTURA_LO, "lodi-test/to-state"), (CC_LO, "lodi-test/to-state")] == routed(decision)
    assert {QUESTURA_LO: QUESTURA_HIDES, CC_LO: CC_HIDES} == hides(decision)
    assert () == decision.refusals
    assert {QUESTURA_LO: [], CC_LO: sorted(CC_HIDES)} == hidden_fields(decision.routes)


def test_explicit_recipient_not_allowed_refuses_the_envelope() -> None:
    """A recipient no rule allows refuses the whole envelope, naming the agency and its index."""
    decision = policy(agreement(TO_STATE)).route(envelope(PL_LO, (QUESTURA_LO, PREF_LO, f.ROGUE)), ctx())
    assert () == decision.routes
    assert [(PREF_LO, "recipients[1]"), (f.ROGUE, "recipients[2]")] == [
        (r.agency_id, r.field) for r in decision.refusals
    ]
    assert all(isinstance(r, Refusal) and r.why for r in decision.refusals)


def test_sender_cannot_address_itself() -> None:
    """A rule's sender that is also among its recipients cannot send to itself."""
    rule = "  - {id: all, from: [questura, polizia_locale], to: [questura, polizia_locale], kinds: [REPORT]}"
    decision = policy(agreement(rule)).route(envelope(PL_LO, (PL_LO, QUESTURA_LO)), ctx())
    assert [PL_LO] == [r.agency_id for r in decision.refusals]


def test_unknown_sender_gets_nothing() -> None:
    """A sender that is no party of any agreement is refused every recipient."""
    decision = policy(agreement(TO_STATE)).route(envelope(f.ROGUE, (QUESTURA_LO,)), ctx(f.ROGUE))
    assert ((), [QUESTURA_LO]) == (decision.routes, [r.agency_id for r in decision.refusals])


def test_rule_direction_matters() -> None:
    """A rule from the local police to the State rooms does not allow the way back."""
    decision = policy(agreement(TO_STATE)).route(envelope(QUESTURA_LO, (PL_LO,)), ctx(QUESTURA_LO))
    assert [PL_LO] == [r.agency_id for r in decision.refusals]


def test_no_agreements_routes_nothing() -> None:
    """With no agreement at all, every recipient is refused."""
    empty = Policy(AgreementSet(()), place_index())
    decision = empty.route(envelope(PL_LO, (QUESTURA_LO,)), ctx())
    assert ((), [QUESTURA_LO]) == (decision.routes, [r.agency_id for r in decision.refusals])
    assert frozenset() == empty.agencies


def test_agencies_are_every_party() -> None:
    """The policy's agencies are the parties of its agreements."""
    assert frozenset({PL_LO, PL_CASAL, QUESTURA_LO, CC_LO, PREF_LO}) == policy(agreement(TO_STATE)).agencies


# -- selection by territory ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("comune", "selected"), [(LODI, PL_LO), (CASAL, PL_CASAL)])
def test_territory_selects_the_party_covering_the_place(comune: str, selected: str) -> None:
    """A territory rule adds the party covering the event's comune, and not the one covering another."""
    decision = policy(agreement(URGENT)).route(envelope(QUESTURA_LO, (), comune=comune), ctx(QUESTURA_LO))
    assert [(selected, "lodi-test/urgent")] == routed(decision)
    assert {selected: PL_HIDES} == hides(decision)


def test_territory_selection_from_coordinates() -> None:
    """An event given only by coordinates selects the room of the comune there."""
    env = envelope(QUESTURA_LO, ())
    del env.target_areas[:]
    del env.incident.locations[:]
    env.incident.locations.add(type="CurrentIncident", point=common_pb2.GeoPoint(latitude=45.3097, longitude=9.5037))
    assert [PL_LO] == list(policy(agreement(URGENT)).route(env, ctx(QUESTURA_LO)).recipients)


def test_territory_selection_outside_the_territory() -> None:
    """An event outside the agreement's territory selects nobody and allows nobody."""
    decision = policy(agreement(URGENT)).route(envelope(QUESTURA_LO, (PL_LO,), comune=TORINO), ctx(QUESTURA_LO))
    assert ((), [PL_LO]) == (decision.routes, [r.agency_id for r in decision.refusals])


def test_explicit_and_selected_recipients() -> None:
    """Named recipients come first; selected ones follow, without repeating a named one."""
    decision = policy(agreement(URGENT)).route(envelope(QUESTURA_LO, (PL_CASAL, PL_LO)), ctx(QUESTURA_LO))
    assert [(PL_CASAL, "lodi-test/urgent"), (PL_LO, "lodi-test/urgent")] == routed(decision)


def test_party_without_covers_covers_the_agreement_territory() -> None:
    """A party without covers is competent for the whole territory of the agreement."""
    rule = "  - {id: sel, from: [polizia_locale], to: [questura, carabinieri], kinds: [REPORT], select: territory}"
    decision = policy(agreement(rule)).route(envelope(PL_CASAL, (), comune=CASAL), ctx(PL_CASAL))
    assert [(CC_LO, "lodi-test/sel"), (QUESTURA_LO, "lodi-test/sel")] == routed(decision)


def test_explicit_rule_selects_nobody() -> None:
    """A rule without select: territory adds no recipient."""
    assert () == policy(agreement(TO_STATE)).route(envelope(PL_LO, ()), ctx()).routes


def test_rule_territory_narrows_the_agreement() -> None:
    """A rule's own territory limits where it applies."""
    rule = '  - {id: casal, from: [polizia_locale], to: [questura], kinds: [REPORT], territory: {comuni: ["098010"]}}'
    pol = policy(agreement(rule))
    assert [QUESTURA_LO] == list(pol.route(envelope(PL_LO, (QUESTURA_LO,), comune=CASAL), ctx()).recipients)
    assert () == pol.route(envelope(PL_LO, (QUESTURA_LO,), comune=LODI), ctx()).routes


def test_territory_by_region() -> None:
    """A territory given as a region holds the comuni of that region."""
    rule = '  - {id: lomb, from: [polizia_locale], to: [questura], kinds: [REPORT], territory: {regions: ["03"]}}'
    pol = policy(agreement(rule, territory='{regions: ["03"]}'))
    assert [QUESTURA_LO] == list(pol.route(envelope(PL_LO, (QUESTURA_LO,), comune="015146"), ctx()).recipients)
    assert () == pol.route(envelope(PL_LO, (QUESTURA_LO,), comune=TORINO), ctx()).routes


# -- conditions of a rule -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("priority", "allowed"),
    [
        (common_pb2.PRIORITY_IMMEDIATE, True),
        (common_pb2.PRIORITY_HIGH, True),
        (common_pb2.PRIORITY_NORMAL, False),
        (common_pb2.PRIORITY_LOW, False),
    ],
)
def test_min_priority(priority: int, allowed: bool) -> None:
    """min_priority HIGH lets IMMEDIATE and HIGH incidents through, not NORMAL or LOW."""
    env = envelope(QUESTURA_LO, (PL_LO,), priority=priority)
    assert allowed == bool(policy(agreement(URGENT)).route(env, ctx(QUESTURA_LO)).routes)


@pytest.mark.parametrize(
    ("urgency", "allowed"),
    [(alert_pb2.URGENCY_IMMEDIATE, True), (alert_pb2.URGENCY_EXPECTED, True), (alert_pb2.URGENCY_FUTURE, False)],
)
def test_min_priority_of_alerts_by_urgency(urgency: int, allowed: bool) -> None:
    """For alerts, min_priority compares the CAP urgency."""
    env = envelope(QUESTURA_LO, (PL_LO,), alert=alert(alert_pb2.CATEGORY_SECURITY, urgency=urgency))
    assert allowed == bool(policy(agreement(URGENT)).route(env, ctx(QUESTURA_LO)).routes)


def test_min_priority_lets_payloads_without_priority_through() -> None:
    """A closure carries no priority: a min_priority rule does not stop it."""
    rule = "  - {id: closures, from: [questura], to: [polizia_locale], kinds: [UPDATE], min_priority: IMMEDIATE}"
    env = envelope(QUESTURA_LO, (PL_LO,), kind=common_pb2.KIND_UPDATE, closure=f.closure())
    assert [(PL_LO, "lodi-test/closures")] == routed(policy(agreement(rule)).route(env, ctx(QUESTURA_LO)))


@pytest.mark.parametrize(("eido", "allowed"), [("FIGHT", True), ("NOISE", True), ("ROBBERY", False)])
def test_incident_types(eido: str, allowed: bool) -> None:
    """incident_types lets only those EIDO types through."""
    rule = "  - {id: night, from: [polizia_locale], to: [questura], kinds: [REPORT, UPDATE], incident_types: [FIGHT, NOISE]}"
    env = envelope(PL_LO, (QUESTURA_LO,), eido=eido)
    assert allowed == bool(policy(agreement(rule)).route(env, ctx()).routes)


def test_incident_types_filter_handover_requests() -> None:
    """The type of the incident handed over counts too."""
    rule = "  - {id: ho, from: [polizia_locale], to: [questura], kinds: [REQUEST], incident_types: [ROBBERY]}"
    request = f.handover_request()
    request.incident.locations[0].comune_istat = LODI
    env = envelope(PL_LO, (QUESTURA_LO,), kind=common_pb2.KIND_REQUEST, handover_request=request)
    assert () == policy(agreement(rule)).route(env, ctx()).routes
    request.incident.type.eido_code = "ROBBERY"
    env = envelope(PL_LO, (QUESTURA_LO,), kind=common_pb2.KIND_REQUEST, handover_request=request)
    assert [QUESTURA_LO] == list(policy(agreement(rule)).route(env, ctx()).recipients)


def test_incident_types_let_payloads_without_type_through() -> None:
    """A closure carries no incident type: an incident_types rule does not stop it."""
    rule = "  - {id: night, from: [polizia_locale], to: [questura], kinds: [UPDATE], incident_types: [NOISE]}"
    env = envelope(PL_LO, (QUESTURA_LO,), kind=common_pb2.KIND_UPDATE, closure=f.closure())
    assert [QUESTURA_LO] == list(policy(agreement(rule)).route(env, ctx()).recipients)


@pytest.mark.parametrize(
    ("categories", "allowed"),
    [
        ((alert_pb2.CATEGORY_SECURITY,), True),
        ((alert_pb2.CATEGORY_FIRE, alert_pb2.CATEGORY_TRANSPORT), True),
        ((alert_pb2.CATEGORY_FIRE,), False),
        ((), False),
    ],
)
def test_alert_categories(categories: tuple[int, ...], allowed: bool) -> None:
    """alert_categories lets through alerts with at least one of those CAP categories."""
    rule = "  - {id: cams, from: [polizia_locale], to: [questura], kinds: [REPORT], alert_categories: [SECURITY, TRANSPORT]}"
    env = envelope(PL_LO, (QUESTURA_LO,), alert=alert(*categories))
    assert allowed == bool(policy(agreement(rule)).route(env, ctx()).routes)


def test_alert_categories_let_other_payloads_through() -> None:
    """An incident carries no alert category: an alert_categories rule does not stop it."""
    rule = "  - {id: cams, from: [polizia_locale], to: [questura], kinds: [REPORT], alert_categories: [SECURITY]}"
    assert [QUESTURA_LO] == list(policy(agreement(rule)).route(envelope(PL_LO, (QUESTURA_LO,)), ctx()).recipients)


def test_kinds() -> None:
    """A kind the rule does not list is refused."""
    pol = policy(agreement(TO_STATE))
    assert () == pol.route(envelope(kind=common_pb2.KIND_CANCEL), ctx()).routes
    assert [QUESTURA_LO] == list(pol.route(envelope(kind=common_pb2.KIND_UPDATE), ctx()).recipients)


def test_payloads() -> None:
    """A payload the rule does not list is refused; a listed one passes."""
    pol = policy(agreement(TO_STATE))
    assert () == pol.route(envelope(alert=alert(alert_pb2.CATEGORY_SECURITY)), ctx()).routes
    closure = envelope(kind=common_pb2.KIND_UPDATE, closure=f.closure())
    assert [QUESTURA_LO] == list(pol.route(closure, ctx()).recipients)


def test_no_payloads_means_any_payload() -> None:
    """A rule without payloads admits every payload of its kinds."""
    rule = "  - {id: any, from: [polizia_locale], to: [questura], kinds: [REPORT]}"
    env = envelope(alert=alert(alert_pb2.CATEGORY_SECURITY))
    assert [QUESTURA_LO] == list(policy(agreement(rule)).route(env, ctx()).recipients)


NIGHT = (
    "  - {id: night, from: [polizia_locale], to: [questura], kinds: [REPORT],"
    ' schedule: {months: [6, 7, 8, 9], weekdays: [fri, sat], from: "21:00", to: "05:00"}}'
)


@pytest.mark.parametrize(
    ("when", "allowed"),
    [
        (datetime(2026, 7, 3, 23, 0, tzinfo=ROME), True),  # Friday 23:00
        (datetime(2026, 7, 4, 2, 0, tzinfo=ROME), True),  # Saturday 02:00: still Friday night
        (datetime(2026, 7, 4, 23, 0, tzinfo=ROME), True),  # Saturday 23:00
        (datetime(2026, 7, 5, 4, 59, tzinfo=ROME), True),  # Sunday 04:59: still Saturday night
        (datetime(2026, 7, 5, 5, 0, tzinfo=ROME), False),  # Sunday 05:00: the window has closed
        (datetime(2026, 7, 5, 23, 0, tzinfo=ROME), False),  # Sunday 23:00
        (datetime(2026, 7, 2, 23, 0, tzinfo=ROME), False),  # Thursday 23:00
        (datetime(2026, 7, 3, 2, 0, tzinfo=ROME), False),  # Friday 02:00 is Thursday night
        (datetime(2026, 7, 3, 20, 59, tzinfo=ROME), False),  # Friday before 21:00
        (datetime(2026, 10, 2, 23, 0, tzinfo=ROME), False),  # a Friday in October
        (datetime(2026, 7, 3, 21, 30, tzinfo=UTC), True),  # 23:30 in Rome (CEST)
        (datetime(2026, 7, 3, 18, 30, tzinfo=UTC), False),  # 20:30 in Rome
    ],
)
def test_schedule(when: datetime, allowed: bool) -> None:
    """A fri-sat 21:00-05:00 window in June-September, in Europe/Rome time; the small hours belong to the evening."""
    assert allowed == bool(policy(agreement(NIGHT)).route(envelope(), ctx(now=when)).routes)


def test_schedule_month_belongs_to_the_starting_evening() -> None:
    """The small hours of 1 August belong to the night of Friday 31 July, a July night."""
    rule = NIGHT.replace("months: [6, 7, 8, 9], weekdays: [fri, sat]", "months: [7], weekdays: [fri]")
    pol = policy(agreement(rule))
    assert pol.route(envelope(), ctx(now=datetime(2026, 8, 1, 2, 0, tzinfo=ROME))).routes
    assert () == pol.route(envelope(), ctx(now=datetime(2026, 8, 7, 23, 0, tzinfo=ROME))).routes


def test_schedule_months_only() -> None:
    """A schedule of months alone applies all day in those months."""
    rule = "  - {id: summer, from: [polizia_locale], to: [questura], kinds: [REPORT], schedule: {months: [7, 8]}}"
    pol = policy(agreement(rule))
    assert pol.route(envelope(), ctx(now=datetime(2026, 8, 31, 12, 0, tzinfo=ROME))).routes
    assert () == pol.route(envelope(), ctx(now=datetime(2026, 9, 1, 12, 0, tzinfo=ROME))).routes


@pytest.mark.parametrize(
    ("when", "allowed"),
    [
        (datetime(2025, 12, 31, 23, 30, tzinfo=ROME), False),  # the day before valid_from
        (datetime(2025, 12, 31, 23, 30, tzinfo=UTC), True),  # already 1 January in Rome
        (datetime(2026, 12, 31, 23, 30, tzinfo=ROME), True),  # the last day, valid_until included
        (datetime(2026, 12, 31, 23, 30, tzinfo=UTC), False),  # already 1 January 2027 in Rome
        (datetime(2027, 6, 1, 12, 0, tzinfo=ROME), False),
    ],
)
def test_validity_dates(when: datetime, allowed: bool) -> None:
    """An agreement applies from valid_from to valid_until included, by the day in Rome."""
    assert allowed == bool(policy(agreement(TO_STATE)).route(envelope(), ctx(now=when)).routes)


def test_open_ended_agreement() -> None:
    """Without valid_until an agreement stays in force."""
    pol = policy(agreement(TO_STATE, valid="valid_from: 2026-01-01"))
    assert pol.route(envelope(), ctx(now=datetime(2040, 1, 1, tzinfo=ROME))).routes


@pytest.mark.parametrize(
    ("purpose", "allowed"),
    [
        (common_pb2.PURPOSE_PUBLIC_SECURITY, True),
        (common_pb2.PURPOSE_TRAINING, True),
        (common_pb2.PURPOSE_INVESTIGATION, False),
        (common_pb2.PURPOSE_STATISTICS, False),
        (common_pb2.PURPOSE_UNSPECIFIED, False),
    ],
)
def test_purpose_must_be_in_legal_basis(purpose: int, allowed: bool) -> None:
    """The envelope's purpose must be one of the agreement's purposes."""
    assert allowed == bool(policy(agreement(TO_STATE)).route(envelope(purpose=purpose), ctx()).routes)


def test_envelope_naming_another_agreement() -> None:
    """An envelope that names an agreement travels only under that agreement."""
    pol = policy(agreement(TO_STATE))
    assert () == pol.route(envelope(agreement_id="patto-milano"), ctx()).routes
    assert [QUESTURA_LO] == list(pol.route(envelope(agreement_id="lodi-test"), ctx()).recipients)


def test_named_agreement_chooses_the_rule_and_mask() -> None:
    """With two agreements allowing a recipient, the one the envelope names gives the rule and the mask."""
    other_parties = PARTIES.replace("carabinieri: {personal_data: [persons]", "carabinieri: {personal_data: [vehicles]")
    pol = policy(agreement(TO_STATE), agreement(TO_STATE, aid="lodi-bis", parties=other_parties))
    decision = pol.route(envelope(PL_LO, (CC_LO,), agreement_id="lodi-bis"), ctx())
    assert [(CC_LO, "lodi-bis/to-state")] == routed(decision)
    assert {CC_LO: mask_for({"vehicles"}, {"incident.agencies"}).hidden} == hides(decision)


# -- drills -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [common_pb2.STATUS_EXERCISE, common_pb2.STATUS_TEST])
def test_drill_traffic_only_between_drill_participants(status: int) -> None:
    """EXERCISE and TEST traffic goes only from a drill participant to drill participants."""
    pol = policy(agreement(TO_STATE))
    assert [QUESTURA_LO] == list(pol.route(envelope(PL_LO, (QUESTURA_LO,), status=status), ctx()).recipients)
    refused = pol.route(envelope(PL_LO, (QUESTURA_LO, CC_LO), status=status), ctx())
    assert ((), [CC_LO]) == (refused.routes, [r.agency_id for r in refused.refusals])
    from_outsider = pol.route(envelope(PL_CASAL, (QUESTURA_LO,), status=status), ctx(PL_CASAL))
    assert [QUESTURA_LO] == [r.agency_id for r in from_outsider.refusals]


def test_drill_selection_only_selects_drill_participants() -> None:
    """A territory rule selects only drill participants for drill traffic."""
    rule = "  - {id: sel, from: [polizia_locale], to: [questura, carabinieri], kinds: [REPORT], select: territory}"
    pol = policy(agreement(rule))
    assert [QUESTURA_LO] == list(pol.route(envelope(PL_LO, (), status=common_pb2.STATUS_EXERCISE), ctx()).recipients)
    assert [CC_LO, QUESTURA_LO] == list(pol.route(envelope(PL_LO, ()), ctx()).recipients)


def test_drills_are_per_agreement() -> None:
    """Taking part in drills under one agreement does not make a room a drill participant under another."""
    no_drills = PARTIES.replace(", drills: true", "")
    pol = policy(agreement(TO_STATE, parties=no_drills))
    assert () == pol.route(envelope(status=common_pb2.STATUS_EXERCISE), ctx()).routes


def test_actual_never_to_a_drill_only_room() -> None:
    """ACTUAL traffic never reaches a drill-only room, named or selected; drill traffic does."""
    rule = "  - {id: sel, from: [polizia_locale], to: [questura, carabinieri], kinds: [REPORT], select: territory}"
    pol = policy(agreement(rule), drill_only=frozenset({QUESTURA_LO}))
    assert [QUESTURA_LO] == [r.agency_id for r in pol.route(envelope(PL_LO, (QUESTURA_LO,)), ctx()).refusals]
    assert [CC_LO] == list(pol.route(envelope(PL_LO, ()), ctx()).recipients)
    exercise = envelope(PL_LO, (QUESTURA_LO,), status=common_pb2.STATUS_EXERCISE)
    assert [QUESTURA_LO] == list(pol.route(exercise, ctx()).recipients)


# -- replies ------------------------------------------------------------------------------------------------------


def ack(sender: str, to: str, *, status: int = common_pb2.STATUS_ACTUAL) -> envelope_pb2.Envelope:
    """An acknowledgement from sender to `to`, referencing message REF."""
    return envelope(
        sender,
        (to,),
        kind=common_pb2.KIND_ACK,
        status=status,
        references=((REF, to),),
        acknowledgement=f.acknowledgement(),
    )


def test_reply_goes_back_to_the_sender_with_its_mask() -> None:
    """An ACK to the sender of a message the replier received is routed by the reply rule, with the sender's mask."""
    pol = policy(agreement(TO_STATE))
    received = Referenced(PL_LO, frozenset({QUESTURA_LO, CC_LO}), "incident")
    decision = pol.route(ack(QUESTURA_LO, PL_LO), ctx(QUESTURA_LO, **{REF: received}))
    assert [(PL_LO, REPLY_RULE)] == routed(decision)
    assert {PL_LO: PL_HIDES} == hides(decision)
    assert "" == redact(ack(QUESTURA_LO, PL_LO), decision.routes[0].mask).acknowledgement.description


def test_reply_mask_is_the_recipients_role() -> None:
    """A reply to the questura carries the questura's view (everything)."""
    pol = policy(agreement(TO_STATE))
    received = Referenced(QUESTURA_LO, frozenset({PL_LO}), "incident")
    decision = pol.route(ack(PL_LO, QUESTURA_LO), ctx(PL_LO, **{REF: received}))
    # the to-state rule allows PL -> questura for REPORT/UPDATE only; the ACK goes by the reply rule
    assert [(QUESTURA_LO, REPLY_RULE)] == routed(decision)
    assert {QUESTURA_LO: QUESTURA_HIDES} == hides(decision)


def test_no_reply_to_a_message_not_received() -> None:
    """The reply rule needs the replier among the referenced message's recipients."""
    pol = policy(agreement(TO_STATE))
    received = Referenced(PL_LO, frozenset({CC_LO}), "incident")
    decision = pol.route(ack(QUESTURA_LO, PL_LO), ctx(QUESTURA_LO, **{REF: received}))
    assert [PL_LO] == [r.agency_id for r in decision.refusals]
    unknown = pol.route(ack(QUESTURA_LO, PL_LO), ctx(QUESTURA_LO))
    assert [PL_LO] == [r.agency_id for r in unknown.refusals]


def test_no_reply_rule_for_reports() -> None:
    """A REPORT referencing a message is no reply: it needs a rule."""
    pol = policy(agreement(TO_STATE))
    received = Referenced(PL_LO, frozenset({QUESTURA_LO}), "incident")
    env = envelope(QUESTURA_LO, (PL_LO,), references=((REF, PL_LO),))
    assert [PL_LO] == [r.agency_id for r in pol.route(env, ctx(QUESTURA_LO, **{REF: received})).refusals]


def test_actual_reply_never_to_a_drill_only_room() -> None:
    """ACTUAL never reaches a drill-only room, not even as a reply."""
    pol = policy(agreement(TO_STATE), drill_only=frozenset({PL_LO}))
    received = Referenced(PL_LO, frozenset({QUESTURA_LO}), "incident")
    decision = pol.route(ack(QUESTURA_LO, PL_LO), ctx(QUESTURA_LO, **{REF: received}))
    assert () == decision.routes


def test_exercise_reply_only_to_drill_participants() -> None:
    """EXERCISE traffic goes only to drill participants, replies included."""
    pol = policy(agreement(TO_STATE))
    received = Referenced(CC_LO, frozenset({QUESTURA_LO}), "incident")  # the carabinieri take no part in drills
    decision = pol.route(
        ack(QUESTURA_LO, CC_LO, status=common_pb2.STATUS_EXERCISE), ctx(QUESTURA_LO, **{REF: received})
    )
    assert () == decision.routes


def test_reply_without_shared_agreement_hides_personal_data() -> None:
    """A reply to a room with which the replier shares no agreement shows it no personal data."""
    torino = (
        "id: torino-test\ntitle: Prova\nvalid_from: 2026-01-01\n"
        'legal_basis: {law: "d.l. 14/2017", purposes: [PUBLIC_SECURITY]}\n'
        'territory: {provinces: ["001"]}\n'
        "parties:\n  - {agency: it.pl.001272, role: polizia_locale}\n  - {agency: it.ps.questura.to, role: questura}\n"
        "rules:\n  - {id: r, from: [questura], to: [polizia_locale], kinds: [REPORT]}\n"
    )
    pol = policy(agreement(TO_STATE), torino)
    received = Referenced(f.PL, frozenset({QUESTURA_LO}), "incident")
    decision = pol.route(ack(QUESTURA_LO, f.PL), ctx(QUESTURA_LO, **{REF: received}))
    assert [(f.PL, REPLY_RULE)] == routed(decision)
    out = redact(ack(QUESTURA_LO, f.PL), decision.routes[0].mask)
    assert "" == out.acknowledgement.description


# -- explain ------------------------------------------------------------------------------------------------------


def test_explain_lists_every_rule_of_the_sender() -> None:
    """explain gives the decision and, for every rule naming the sender, whether it applies and why not."""
    rules = (
        TO_STATE,
        URGENT,
        "  - {id: b-night, from: [polizia_locale], to: [questura], kinds: [REPORT], incident_types: [NOISE]}",
        "  - {id: c-pref, from: [polizia_locale], to: [prefettura], kinds: [UPDATE]}",
    )
    pol = policy(agreement(*rules))
    env = envelope(PL_LO, (QUESTURA_LO,))
    decision, considered = pol.explain(env, ctx())
    assert [
        Considered("lodi-test/b-night", False, "incident type FIGHT is not among the rule's types"),
        Considered("lodi-test/c-pref", False, "kind REPORT is not among the rule's kinds"),
        Considered("lodi-test/to-state", True, "applies"),
    ] == considered
    assert pol.route(env, ctx()) == decision


def test_explain_says_why_the_agreement_does_not_apply() -> None:
    """explain names agreement-level reasons: dates, purpose, another agreement, place, schedule."""
    pol = policy(agreement(TO_STATE, NIGHT.replace("id: night", "id: night-b")))
    cases = {
        "the agreement is not in force on that day": (envelope(), datetime(2030, 1, 1, tzinfo=ROME)),
        "the envelope names another agreement": (envelope(agreement_id="x"), FIXED),
        "purpose INVESTIGATION is not among the agreement's purposes": (
            envelope(purpose=common_pb2.PURPOSE_INVESTIGATION),
            FIXED,
        ),
        "the event's place is outside the rule's territory": (
            envelope(comune=TORINO),
            datetime(2026, 7, 3, 23, 0, tzinfo=ROME),  # inside the night schedule
        ),
    }
    for why, (env, when) in cases.items():
        _, considered = pol.explain(env, ctx(now=when))
        assert [why] == sorted({c.why for c in considered}), why
    _, considered = pol.explain(envelope(), ctx())
    assert [("lodi-test/night-b", "outside the rule's schedule"), ("lodi-test/to-state", "applies")] == [
        (c.rule, c.why) for c in considered
    ]


def test_explain_of_unknown_sender_is_empty() -> None:
    """A sender with no rule has nothing to explain."""
    decision, considered = policy(agreement(TO_STATE)).explain(envelope(f.ROGUE), ctx(f.ROGUE))
    assert [] == considered
    assert () == decision.routes


# -- the shipped agreements ---------------------------------------------------------------------------------------


def shipped() -> Policy:
    """The policy of deploy/agreements."""
    return Policy(load_dir(AGREEMENTS), place_index())


def test_lodi_summer_night_fight_selects_the_carabinieri() -> None:
    """A FIGHT in Lodi on a summer Saturday night, sent to the Questura, also reaches the Carabinieri."""
    env = envelope(PL_LO, (QUESTURA_LO,), eido="FIGHT", priority=common_pb2.PRIORITY_NORMAL)
    decision = shipped().route(env, ctx(now=datetime(2026, 7, 4, 23, 30, tzinfo=ROME)))
    assert [
        (QUESTURA_LO, "patto-lodi-2025/local-police-to-state-rooms"),
        (CC_LO, "patto-lodi-2025/summer-night-venues"),
    ] == routed(decision)


def test_lodi_winter_tuesday_fight_reaches_only_the_questura() -> None:
    """The same FIGHT on a winter Tuesday night reaches only the Questura it was sent to."""
    env = envelope(PL_LO, (QUESTURA_LO,), eido="FIGHT", priority=common_pb2.PRIORITY_NORMAL)
    decision = shipped().route(env, ctx(now=datetime(2026, 1, 13, 23, 30, tzinfo=ROME)))
    assert [(QUESTURA_LO, "patto-lodi-2025/local-police-to-state-rooms")] == routed(decision)


def test_lodi_incident_to_the_prefettura_carries_no_personal_data() -> None:
    """An incident sent to the Prefettura di Lodi reaches it with every personal-data path removed."""
    env = envelope(PL_LO, (PREF_LO,))
    decision = shipped().route(env, ctx())
    assert [(PREF_LO, "patto-lodi-2025/road-safety-to-prefettura")] == routed(decision)
    mask = decision.routes[0].mask
    assert ALL_PERSONAL <= mask.hidden
    out = redact(env, mask)
    assert [] == present_hidden(out, mask_for((), ()))
    assert [] == present_hidden(out, mask)
    assert [] == [v for v in (*f.PERSONAL_VALUES, "OP-CUR-017") if v.encode() in out.SerializeToString()]
    assert not out.incident.HasField("call")
    assert not out.incident.agencies
    assert "FIGHT" == out.incident.type.eido_code


def test_torino_contact_card_masks_by_role() -> None:
    """A CUR contact card reaches the Questura whole and the Polizia Locale without the IMSI."""
    env = envelope(f.CUR, (f.QUESTURA, f.PL), comune=TORINO)
    decision = shipped().route(env, ctx(f.CUR))
    rule = "torino-112-sicurezza-integrata/contact-cards"
    assert [(f.QUESTURA, rule), (f.PL, rule)] == routed(decision)
    granted_pl = CATEGORIES - {"network_location", "staff"}
    assert {f.QUESTURA: frozenset(), f.PL: mask_for(granted_pl, ()).hidden} == hides(decision)
    out = redact(env, decision.routes[1].mask)
    assert "" == out.incident.call.network_location.imsi
    assert f.CALLER_PHONE == out.incident.call.caller.phone
