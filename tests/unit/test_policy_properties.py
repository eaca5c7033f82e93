"""Properties of the policy engine over generated agreements and envelopes (hypothesis).

Agreements are generated as documents (dicts), written as YAML and read by the loader; every check
below re-derives what the engine should do from those documents, not from the engine's own code:
deny by default, no masked field in a delivery, EXERCISE and ACTUAL never cross, and a refused
reload leaves the decisions unchanged.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker.ops.metrics import Metrics
from broker.policy.engine import Policy
from broker.policy.loader import parse
from broker.policy.model import AgreementSet
from broker.policy.places import place_index
from broker.policy.redact import PERSONAL_DATA, Mask, mask_for, present_hidden, redact
from broker.policy.routing import REPLY_RULE, Decision, Referenced, RoutingContext
from broker.policy.store import PolicyStore
from tests import factories as f

# -- the pools the strategies draw from ---------------------------------------------------------------------------

ROME = ZoneInfo("Europe/Rome")
PREF = "it.pref.lo"
AGENCIES = ("it.nue.cur.to", "it.pl.001272", "it.ps.questura.to", "it.cc.cp.to", "it.pl.098031", PREF)
ROLES = ("cur", "polizia_locale", "questura", "carabinieri", "comune")  # PREF is always the prefettura
KINDS = ("REPORT", "UPDATE", "CANCEL", "REQUEST", "RESPONSE", "ACK", "ERROR")
PAYLOADS = (
    "incident",
    "alert",
    "closure",
    "assistance_request",
    "assistance_response",
    "handover_request",
    "handover_response",
    "acknowledgement",
)
# The kinds that admit each payload (as broker.validate.checker checks them).
KINDS_OF = {
    "incident": ("REPORT", "UPDATE", "CANCEL"),
    "alert": ("REPORT", "UPDATE", "CANCEL"),
    "closure": ("UPDATE",),
    "assistance_request": ("REQUEST", "CANCEL"),
    "handover_request": ("REQUEST", "CANCEL"),
    "assistance_response": ("RESPONSE",),
    "handover_response": ("RESPONSE",),
    "acknowledgement": ("ACK", "ERROR"),
}
INCIDENT_TYPES = ("FIGHT", "ROBBERY", "NOISE")
ALERT_CATEGORIES = ("SECURITY", "TRANSPORT", "FIRE")
PRIORITIES = ("IMMEDIATE", "HIGH", "NORMAL", "LOW")
PURPOSES = ("PUBLIC_SECURITY", "PREVENTION", "TRAINING", "STATISTICS")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CATEGORIES = tuple(sorted(PERSONAL_DATA))
HIDE = ("incident.locations.point", "incident.call", "incident.agencies", "alert.infos.areas", "incident.type")
TERRITORIES: tuple[dict[str, list[str]], ...] = (
    {"comuni": ["001272"]},
    {"comuni": ["098031", "015146"]},
    {"provinces": ["001"]},
    {"provinces": ["098"]},
    {"regions": ["03"]},
    {"regions": ["01"], "comuni": ["098031"]},
)
# Comuni events happen in: a point inside each, its region.
POINTS = {"001272": (45.070312, 7.686856), "098031": (45.3097, 9.5037), "015146": (45.464211, 9.191383)}
REGION = {"001272": "01", "098031": "03", "015146": "03"}
PLACES = (
    *(("comune", c) for c in POINTS),
    *(("point", c) for c in POINTS),
    ("province", "098"),
    ("province", "001"),
    ("region", "03"),
    ("none", ""),
)
STATUSES = (common_pb2.STATUS_ACTUAL, common_pb2.STATUS_EXERCISE, common_pb2.STATUS_TEST, common_pb2.STATUS_SYSTEM)
DRILL_STATUSES = (common_pb2.STATUS_EXERCISE, common_pb2.STATUS_TEST)
ENV_PURPOSES = (*PURPOSES, "INVESTIGATION", "UNSPECIFIED")
URGENCY_RANK = {"IMMEDIATE": 1, "EXPECTED": 2, "FUTURE": 3, "PAST": 4, "UNKNOWN": 4, "UNSPECIFIED": 4}
PRIORITY_RANK = {"IMMEDIATE": 1, "HIGH": 2, "NORMAL": 3, "LOW": 4}
REPLY_KINDS = ("RESPONSE", "ACK", "ERROR")
REF = "6f1c3e0a-8a5b-4b8e-9a43-1d2f3c4b5a69"


def subsets(items: Sequence[Any], min_size: int = 0) -> st.SearchStrategy[list[Any]]:
    """Lists of distinct items."""
    return st.lists(st.sampled_from(items), min_size=min_size, max_size=len(items), unique=True)


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    """A rule schedule: months, weekdays and a window, each optional (the window's ends differ)."""
    out: dict[str, Any] = {}
    months = draw(subsets(range(1, 13)))
    if months:
        out["months"] = sorted(months)
    weekdays = draw(subsets(WEEKDAYS))
    if weekdays:
        out["weekdays"] = weekdays
    if draw(st.booleans()) or not out:
        start, end = draw(st.lists(st.integers(0, 47), min_size=2, max_size=2, unique=True))
        out["from"] = f"{start // 2:02d}:{start % 2 * 30:02d}"
        out["to"] = f"{end // 2:02d}:{end % 2 * 30:02d}"
    return out


@st.composite
def rule_docs(draw: st.DrawFn, rule_id: str, who: Sequence[str]) -> dict[str, Any]:
    """One rule over these roles and agencies, with random conditions."""
    rule: dict[str, Any] = {
        "id": rule_id,
        "from": draw(st.lists(st.sampled_from(who), min_size=1, max_size=3, unique=True)),
        "to": draw(st.lists(st.sampled_from(who), min_size=1, max_size=3, unique=True)),
        "kinds": draw(subsets(KINDS, min_size=1)),
    }
    if draw(st.integers(0, 2)) == 0:
        rule["payloads"] = draw(subsets(PAYLOADS, min_size=1))
    if draw(st.integers(0, 2)) == 0:
        rule["incident_types"] = draw(subsets(INCIDENT_TYPES, min_size=1))
    if draw(st.integers(0, 2)) == 0:
        rule["alert_categories"] = draw(subsets(ALERT_CATEGORIES, min_size=1))
    if draw(st.integers(0, 2)) == 0:
        rule["min_priority"] = draw(st.sampled_from(PRIORITIES))
    rule["select"] = draw(st.sampled_from(("explicit", "territory")))
    if draw(st.integers(0, 2)) == 0:
        rule["territory"] = draw(st.sampled_from(TERRITORIES))
    if draw(st.integers(0, 2)) == 0:
        rule["schedule"] = draw(schedules())
    return rule


@st.composite
def agreement_docs(draw: st.DrawFn, agreement_id: str) -> dict[str, Any]:
    """One agreement document among some of the six agencies."""
    agencies = draw(st.lists(st.sampled_from(AGENCIES), min_size=2, max_size=len(AGENCIES), unique=True))
    parties = []
    for agency in agencies:
        party: dict[str, Any] = {
            "agency": agency,
            "role": "prefettura" if agency == PREF else draw(st.sampled_from(ROLES)),
        }
        if draw(st.booleans()):
            party["covers"] = draw(st.sampled_from(TERRITORIES))
        if draw(st.integers(0, 2)):
            party["drills"] = True
        parties.append(party)
    roles_used = sorted({p["role"] for p in parties})
    roles: dict[str, Any] = {}
    for role in draw(subsets(roles_used)):
        view: dict[str, Any] = {}
        if role != "prefettura":
            view["personal_data"] = draw(subsets(CATEGORIES))
        hide = draw(subsets(HIDE))
        if hide:
            view["hide"] = hide
        roles[role] = view
    who = (*roles_used, *agencies)
    rules = [draw(rule_docs(f"r{j}", who)) for j in range(draw(st.integers(1, 4)))]
    valid_from = draw(st.sampled_from(("2025-01-01", "2025-01-01", "2026-01-01", "2026-06-15")))
    doc: dict[str, Any] = {
        "id": agreement_id,
        "title": f"Accordo {agreement_id}",
        "valid_from": valid_from,
        "legal_basis": {"law": "d.l. 14/2017 art. 2", "purposes": draw(subsets(PURPOSES, min_size=1))},
        "territory": draw(st.sampled_from(TERRITORIES)),
        "parties": parties,
        "roles": roles,
        "rules": rules,
    }
    until = draw(st.sampled_from((None, "2026-12-31", "2027-12-31")))
    if until is not None and until >= valid_from:
        doc["valid_until"] = until
    return doc


@st.composite
def agreement_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Two or three agreement documents with distinct ids."""
    return [draw(agreement_docs(f"agr-{i}")) for i in range(draw(st.integers(2, 3)))]


def _incident_at(incident: Any, place: tuple[str, str], eido: str, priority: int, caller: bool) -> None:
    incident.type.eido_code = eido
    incident.priority = priority
    del incident.locations[:]
    how, code = place
    if how == "comune":
        incident.locations.add(type="CurrentIncident", comune_istat=code)
    elif how == "point":
        lat, lon = POINTS[code]
        incident.locations.add(type="CurrentIncident", point=common_pb2.GeoPoint(latitude=lat, longitude=lon))
    if caller:  # where the caller is, which never counts as the event's place
        lat, lon = POINTS["015146"]
        incident.locations.add(
            type="Caller", comune_istat="015146", point=common_pb2.GeoPoint(latitude=lat, longitude=lon)
        )


def _place_payload(env: envelope_pb2.Envelope, place: tuple[str, str], facts: Mapping[str, Any]) -> None:
    payload = env.WhichOneof("payload")
    how, code = place
    if payload == "incident":
        _incident_at(env.incident, place, facts["eido"], facts["priority"], facts["caller"])
    elif payload == "handover_request":
        _incident_at(env.handover_request.incident, place, facts["eido"], facts["priority"], facts["caller"])
    elif payload == "assistance_request":
        env.assistance_request.priority = facts["priority"]
        location = env.assistance_request.location
        if how == "comune":
            location.ClearField("point")
            location.comune_istat = code
        elif how == "point":
            location.comune_istat = ""
            location.point.latitude, location.point.longitude = POINTS[code]
        else:
            env.assistance_request.ClearField("location")
    elif payload == "alert":
        info = env.alert.infos[0]
        del info.categories[:]
        info.categories.extend(alert_pb2.Category.Value(f"CATEGORY_{c}") for c in facts["categories"])
        info.urgency = alert_pb2.Urgency.Value(f"URGENCY_{facts['urgency']}")
        area = info.areas[0]
        del area.comuni_istat[:]
        del area.circles[:]
        if how == "comune":
            area.comuni_istat.append(code)
        elif how == "point":
            lat, lon = POINTS[code]
            area.circles.add(center=common_pb2.GeoPoint(latitude=lat, longitude=lon), radius_km=1)
    del env.target_areas[:]
    if how in ("comune", "point"):
        env.target_areas.add(comune_istat=code)
    elif how == "province":
        env.target_areas.add(provincia_istat=code)
    elif how == "region":
        env.target_areas.add(regione_istat=code)


_BUILDERS: dict[str, Callable[[], Any]] = {
    "incident": f.incident,
    "alert": f.alert,
    "closure": f.closure,
    "assistance_request": f.assistance_request,
    "assistance_response": f.assistance_response,
    "handover_request": f.handover_request,
    "handover_response": f.handover_response,
    "acknowledgement": f.acknowledgement,
}


@dataclass(frozen=True)
class Case:
    """A generated envelope, its sending context, and the facts the generator knows about it."""

    env: envelope_pb2.Envelope
    ctx: RoutingContext
    keys: frozenset[str]  # territory keys of the event's place, as the generator placed it
    rank: int  # 0 when the payload carries no priority
    eido: str  # "" when the payload carries no incident type
    categories: frozenset[str]


def place_keys(place: tuple[str, str]) -> frozenset[str]:
    """Territory keys of a generated place."""
    how, code = place
    if how in ("comune", "point"):
        return frozenset({f"c:{code}", f"p:{code[:3]}", f"r:{REGION[code]}"})
    if how == "province":
        return frozenset({f"p:{code}"})
    if how == "region":
        return frozenset({f"r:{code}"})
    return frozenset()


# Moments near a few anchors: a spring weekday, summer weekend nights, the turns of the years (in Rome).
ANCHORS = (
    datetime(2026, 3, 10, 11, 0, tzinfo=UTC),
    datetime(2026, 7, 3, 21, 30, tzinfo=UTC),
    datetime(2026, 8, 15, 0, 30, tzinfo=UTC),
    datetime(2025, 12, 31, 23, 30, tzinfo=UTC),
    datetime(2026, 12, 31, 22, 30, tzinfo=UTC),
    datetime(2027, 6, 1, 8, 0, tzinfo=UTC),
)
times = st.builds(
    lambda anchor, minutes: anchor + timedelta(minutes=minutes),
    st.sampled_from(ANCHORS),
    st.integers(-4 * 24 * 60, 4 * 24 * 60),
)


@st.composite
def times_in(draw: st.DrawFn, schedule: Mapping[str, Any]) -> datetime:
    """A moment in 2026 that the schedule covers (Europe/Rome), or the first one after a window ends."""
    months = schedule.get("months") or range(1, 13)
    days = {WEEKDAYS.index(d) for d in schedule.get("weekdays", ())} or set(range(7))
    day = date(2026, draw(st.sampled_from(sorted(months))), 1)
    day += timedelta(days=draw(st.integers(0, 27)))
    while day.weekday() not in days:
        day += timedelta(days=1)
    start = time.fromisoformat(schedule.get("from", "00:00"))
    end = time.fromisoformat(schedule.get("to", "00:00"))
    minutes = (end.hour * 60 + end.minute - start.hour * 60 - start.minute) % (24 * 60) or 24 * 60
    offset = draw(st.one_of(st.sampled_from((0, minutes - 1, minutes)), st.integers(0, minutes - 1)))
    local = datetime.combine(day, start, ROME) + timedelta(minutes=offset)
    return local.astimezone(UTC)


@st.composite
def aimed(draw: st.DrawFn, docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Choices aimed at one rule of the documents (sender, recipients, kind, payload, purpose, place, time), or {}."""
    if not docs or draw(st.integers(0, 7)) == 0:
        return {}
    doc = draw(st.sampled_from(docs))
    rule = draw(st.sampled_from(doc["rules"]))
    payloads = [p for p in rule.get("payloads", PAYLOADS) if set(KINDS_OF[p]) & set(rule["kinds"])]
    if not payloads:
        return {}
    payload = draw(st.sampled_from(payloads))
    to = sorted(resolve(rule["to"], doc))
    area = territory_keys(rule.get("territory") or doc["territory"])
    aim = {
        "sender": draw(st.sampled_from(sorted(resolve(rule["from"], doc)))),
        "recipients": draw(st.lists(st.sampled_from(to), max_size=2, unique=True)),
        "payload": payload,
        "kind": draw(st.sampled_from(sorted(set(KINDS_OF[payload]) & set(rule["kinds"])))),
        "purpose": draw(st.sampled_from(doc["legal_basis"]["purposes"])),
        "agreement_id": draw(st.sampled_from(("", doc["id"]))),
        "place": draw(st.sampled_from([p for p in PLACES if not place_keys(p) or place_keys(p) & area])),
    }
    if "schedule" in rule and draw(st.integers(0, 2)):
        aim["now"] = draw(times_in(rule["schedule"]))
    # Now and then one choice misses the rule, so that each condition is seen to refuse.
    miss = draw(st.sampled_from((None, None, None, "payload", "purpose", "agreement_id", "place", "now")))
    for key in {"payload": ("payload", "kind")}.get(miss or "", (miss,)):
        aim.pop(key, None)
    return aim


@st.composite
def cases(
    draw: st.DrawFn,
    agencies: Sequence[str] = AGENCIES,
    agreement_ids: Sequence[str] = (),
    docs: Sequence[Mapping[str, Any]] = (),
) -> Case:
    """An envelope of a random payload, kind, status, purpose and place, from a random sender, at a random time.

    Given agreement documents, most cases aim at one of their rules (its sender, recipients, kind, payload,
    purpose, place and time), so that routes are frequent; status, types and priority stay random.
    """
    aim = draw(aimed(docs))
    payload = aim.get("payload") or draw(st.sampled_from(PAYLOADS))
    kind = aim.get("kind") or draw(st.sampled_from(KINDS_OF[payload]))
    sender = aim.get("sender") or draw(st.sampled_from(agencies))
    if "recipients" in aim:
        recipients = aim["recipients"]
    else:
        recipients = draw(st.lists(st.sampled_from((*agencies, f.ROGUE)), max_size=3, unique=True))
    place = aim.get("place") or draw(st.sampled_from(PLACES))
    facts = {
        "eido": draw(st.sampled_from((*INCIDENT_TYPES, "DRUGS"))),
        "priority": draw(st.integers(0, 4)),
        "caller": draw(st.booleans()),
        "categories": draw(subsets(ALERT_CATEGORIES)),
        "urgency": draw(st.sampled_from(tuple(URGENCY_RANK))),
    }
    referenced: dict[str, Referenced] = {}
    references: tuple[tuple[str, str], ...] = ()
    if kind in (*REPLY_KINDS, "CANCEL"):
        original_sender = draw(st.sampled_from(recipients or agencies))
        received_by = set(draw(st.lists(st.sampled_from(agencies), max_size=3)))
        if draw(st.booleans()):
            received_by.add(sender)
        received_by.discard(original_sender)  # the hub never delivers a message to its own sender
        references = ((REF, original_sender),)
        referenced = {REF: Referenced(original_sender, frozenset(received_by), "incident")}
    now = aim.get("now") or draw(times)
    env = f.envelope(
        sender,
        tuple(recipients),
        kind=common_pb2.Kind.Value(f"KIND_{kind}"),
        status=draw(st.sampled_from((common_pb2.STATUS_ACTUAL, *STATUSES))),
        distribution_id="9d3b0a55-7c2e-4f57-8d3e-5b8a4c1e2f10",
        sent=now,
        references=references,
        **{payload: _BUILDERS[payload]()},
    )
    _place_payload(env, place, facts)
    purpose = aim.get("purpose") or draw(st.sampled_from(ENV_PURPOSES))
    env.legal_basis.purpose = common_pb2.Purpose.Value(f"PURPOSE_{purpose}")
    if "agreement_id" in aim:
        env.legal_basis.agreement_id = aim["agreement_id"]
    else:
        env.legal_basis.agreement_id = draw(st.sampled_from(("", "", *agreement_ids, "agr-other")))
    keys = place_keys(place)
    rank, eido, categories = 0, "", frozenset()
    if payload in ("incident", "handover_request"):
        rank, eido = facts["priority"], facts["eido"]
    elif payload == "assistance_request":
        rank = facts["priority"]
    elif payload == "alert":
        rank, categories = URGENCY_RANK[facts["urgency"]], frozenset(facts["categories"])
    return Case(env, RoutingContext(sender, referenced, now), keys, rank, eido, categories)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[Case]]:
    """Agreement documents, and a batch of cases, most aimed at their rules."""
    docs = draw(agreement_sets())
    ids = tuple(d["id"] for d in docs)
    return docs, draw(st.lists(cases(agreement_ids=ids, docs=docs), min_size=1, max_size=6))


# -- building the policy, and the independent oracle --------------------------------------------------------------


def policy_of(docs: Sequence[Mapping[str, Any]], drill_only: frozenset[str] = frozenset()) -> Policy:
    """The documents written as YAML, read by the loader, compiled into a Policy."""
    agreements = tuple(parse(yaml.safe_dump(dict(doc), sort_keys=False), f"{doc['id']}.yaml") for doc in docs)
    return Policy(AgreementSet(agreements), place_index(), drill_only=drill_only)


def resolve(who: Sequence[str], doc: Mapping[str, Any]) -> frozenset[str]:
    """Agency ids named by roles and ids, among the document's parties."""
    return frozenset(p["agency"] for p in doc["parties"] if p["role"] in who or p["agency"] in who)


def territory_keys(territory: Mapping[str, Sequence[str]]) -> frozenset[str]:
    """Index keys of a territory document."""
    prefix = {"comuni": "c", "provinces": "p", "regions": "r"}
    return frozenset(f"{prefix[k]}:{code}" for k, codes in territory.items() for code in codes)


def party_of(doc: Mapping[str, Any], agency: str) -> Mapping[str, Any] | None:
    """The agency's party entry in the document."""
    return next((p for p in doc["parties"] if p["agency"] == agency), None)


def granted_to(doc: Mapping[str, Any], agency: str) -> frozenset[str]:
    """Personal-data categories the agency's role is granted in the document."""
    party = party_of(doc, agency)
    assert party is not None
    return frozenset(doc["roles"].get(party["role"], {}).get("personal_data", ()))


def hidden_for(doc: Mapping[str, Any], agency: str) -> frozenset[str]:
    """What the agency may not see under the document: categories not granted, and its role's hide paths."""
    party = party_of(doc, agency)
    assert party is not None
    view = doc["roles"].get(party["role"], {})
    granted = set(view.get("personal_data", ()))
    return frozenset(
        {path for c, paths in PERSONAL_DATA.items() if c not in granted for path in paths} | set(view.get("hide", ()))
    )


def schedule_active(schedule: Mapping[str, Any], local: datetime) -> bool:
    """Whether a schedule covers a Rome time: the window [from, to) of some day that fits months and weekdays."""
    months, days = set(schedule.get("months", ())), {WEEKDAYS.index(d) for d in schedule.get("weekdays", ())}

    def day_fits(day: date) -> bool:
        return (not months or day.month in months) and (not days or day.weekday() in days)

    if "from" not in schedule:
        return day_fits(local.date())
    start_t, end_t = (time.fromisoformat(schedule[k]) for k in ("from", "to"))
    wall = local.replace(tzinfo=None)
    for day in (local.date() - timedelta(days=1), local.date()):
        start, end = datetime.combine(day, start_t), datetime.combine(day, end_t)
        if end <= start:
            end += timedelta(days=1)
        if day_fits(day) and start <= wall < end:
            return True
    return False


def rule_applies(doc: Mapping[str, Any], rule: Mapping[str, Any], case: Case) -> bool:
    """Whether the rule of the agreement document applies to the case's facts (senders and drills aside)."""
    env = case.env
    local = case.ctx.now.astimezone(ROME)
    until = doc.get("valid_until")
    checks = (
        date.fromisoformat(doc["valid_from"]) <= local.date(),
        until is None or local.date() <= date.fromisoformat(until),
        env.legal_basis.agreement_id in ("", doc["id"]),
        common_pb2.Purpose.Name(env.legal_basis.purpose).removeprefix("PURPOSE_") in doc["legal_basis"]["purposes"],
        common_pb2.Kind.Name(env.kind).removeprefix("KIND_") in rule["kinds"],
        "payloads" not in rule or env.WhichOneof("payload") in rule["payloads"],
        "incident_types" not in rule or not case.eido or case.eido in rule["incident_types"],
        "alert_categories" not in rule
        or env.WhichOneof("payload") != "alert"
        or bool(case.categories & set(rule["alert_categories"])),
        "min_priority" not in rule or not case.rank or case.rank <= PRIORITY_RANK[rule["min_priority"]],
        "schedule" not in rule or schedule_active(rule["schedule"], local),
        not case.keys or bool(case.keys & territory_keys(rule.get("territory") or doc["territory"])),
    )
    return all(checks)


def drill_ok(doc: Mapping[str, Any], sender: str, recipient: str, status: int, drill_only: frozenset[str]) -> bool:
    """Drill traffic only between the agreement's drill participants; other traffic never to a drill-only room."""
    if status in DRILL_STATUSES:
        drills = {p["agency"] for p in doc["parties"] if p.get("drills")}
        return sender in drills and recipient in drills
    return recipient not in drill_only


@dataclass(frozen=True)
class Expected:
    """What the agreements allow for a case: per recipient, the rules allowing it and those selecting it."""

    allowed: dict[str, set[str]]
    selected: dict[str, set[str]]
    replies: frozenset[str]


def expected(docs: Sequence[Mapping[str, Any]], case: Case, drill_only: frozenset[str]) -> Expected:
    """Re-derive from the documents who may receive the case's envelope, and why."""
    sender, status = case.ctx.sender_agency_id, case.env.status
    allowed: dict[str, set[str]] = {}
    selected: dict[str, set[str]] = {}
    for doc in docs:
        for rule in doc["rules"]:
            if sender not in resolve(rule["from"], doc) or not rule_applies(doc, rule, case):
                continue
            for recipient in resolve(rule["to"], doc) - {sender}:
                if not drill_ok(doc, sender, recipient, status, drill_only):
                    continue
                name = f"{doc['id']}/{rule['id']}"
                allowed.setdefault(recipient, set()).add(name)
                party = party_of(doc, recipient)
                assert party is not None
                covers = territory_keys(party.get("covers") or doc["territory"])
                if rule["select"] == "territory" and case.keys & covers:
                    selected.setdefault(recipient, set()).add(name)
    replies: set[str] = set()
    if common_pb2.Kind.Name(case.env.kind).removeprefix("KIND_") in REPLY_KINDS:
        for ref in case.env.references:
            known = case.ctx.referenced.get(ref.distribution_id)
            if (
                known is not None
                and sender in known.recipients
                and reply_drill_ok(docs, sender, known.sender_agency_id, status, drill_only)
            ):
                replies.add(known.sender_agency_id)
    return Expected(allowed, selected, frozenset(replies))


def reply_drill_ok(
    docs: Sequence[Mapping[str, Any]], sender: str, recipient: str, status: int, drill_only: frozenset[str]
) -> bool:
    """Replies keep drills apart too: drill traffic under an agreement both sign as drill participants."""
    if status not in DRILL_STATUSES:
        return recipient not in drill_only
    return any(drill_ok(doc, sender, recipient, status, drill_only) for doc in shared(docs, sender, recipient))


def doc_of(docs: Sequence[Mapping[str, Any]], rule_name: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The agreement and rule documents a route's "<agreement>/<rule>" names."""
    agreement_id, _, rule_id = rule_name.partition("/")
    doc = next(d for d in docs if d["id"] == agreement_id)
    return doc, next(r for r in doc["rules"] if r["id"] == rule_id)


def shared(docs: Sequence[Mapping[str, Any]], a: str, b: str) -> list[Mapping[str, Any]]:
    """The agreements both agencies are parties of."""
    return [d for d in docs if party_of(d, a) is not None and party_of(d, b) is not None]


def personal_present(env: envelope_pb2.Envelope, categories: frozenset[str] | set[str]) -> list[str]:
    """Personal-data paths of these categories that are set in env."""
    paths = frozenset(p for c in categories for p in PERSONAL_DATA[c])
    return present_hidden(env, Mask(paths, {})) if paths else []


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
drill_onlys = st.frozensets(st.sampled_from(AGENCIES), max_size=2)


# -- (a) deny by default ------------------------------------------------------------------------------------------


@SETTINGS
@given(scenario=scenarios(), drill_only=drill_onlys)
def test_no_delivery_without_an_allowing_agreement(
    scenario: tuple[list[dict[str, Any]], list[Case]], drill_only: frozenset[str]
) -> None:
    """Every route is a reply to a reply target, or names a rule that names sender and recipient and applies."""
    docs, batch = scenario
    pol = policy_of(docs, drill_only)
    for case in batch:
        sender = case.ctx.sender_agency_id
        for route in pol.route(case.env, case.ctx).routes:
            if route.rule == REPLY_RULE:
                assert route.agency_id in expected(docs, case, drill_only).replies
                continue
            doc, rule = doc_of(docs, route.rule)
            assert sender in resolve(rule["from"], doc)
            assert route.agency_id in resolve(rule["to"], doc)
            assert route.agency_id != sender
            assert rule_applies(doc, rule, case), route.rule
            assert drill_ok(doc, sender, route.agency_id, case.env.status, drill_only)
            if route.agency_id not in case.env.recipients:
                assert "territory" == rule["select"]
                assert case.keys, "selected by territory without a place"


@SETTINGS
@given(scenario=scenarios(), drill_only=drill_onlys)
def test_decision_is_exactly_what_the_agreements_say(
    scenario: tuple[list[dict[str, Any]], list[Case]], drill_only: frozenset[str]
) -> None:
    """Refusals, recipients, their order, rules and masks all match an independent reading of the agreements."""
    docs, batch = scenario
    pol = policy_of(docs, drill_only)
    for case in batch:
        want = expected(docs, case, drill_only)
        decision = pol.route(case.env, case.ctx)
        named = list(case.env.recipients)
        refused = [
            (r, f"recipients[{i}]") for i, r in enumerate(named) if r not in want.allowed and r not in want.replies
        ]
        assert refused == [(r.agency_id, r.field) for r in decision.refusals]
        if refused:
            assert () == decision.routes
            continue
        extra = sorted(set(want.selected) - set(named))
        assert [*named, *extra] == list(decision.recipients)
        for route in decision.routes:
            if route.agency_id in named and route.agency_id not in want.allowed:
                assert REPLY_RULE == route.rule
                continue
            rules = want.allowed[route.agency_id] if route.agency_id in named else want.selected[route.agency_id]
            assert route.rule in rules
            assert route.mask is not None
            assert hidden_for(doc_of(docs, route.rule)[0], route.agency_id) == route.mask.hidden


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(cases(), min_size=1, max_size=5))
def test_no_agreements_no_delivery(batch: list[Case]) -> None:
    """With no agreement at all, nothing is routed but replies to a message received."""
    pol = Policy(AgreementSet(()), place_index())
    for case in batch:
        decision = pol.route(case.env, case.ctx)
        assert [] == [r for r in decision.routes if r.rule != REPLY_RULE]
        bare = pol.route(case.env, RoutingContext(case.ctx.sender_agency_id, now=case.ctx.now))
        assert () == bare.routes
        assert list(case.env.recipients) == [r.agency_id for r in bare.refusals]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), schedule=schedules())
def test_schedule_follows_the_calendar(data: st.DataObject, schedule: dict[str, Any]) -> None:
    """A rule with a schedule applies exactly at the Rome times its months, weekdays and window cover."""
    now = data.draw(st.one_of(times_in(schedule), times))
    doc = {
        "id": "agr-s",
        "title": "Orari",
        "valid_from": "2025-01-01",
        "legal_basis": {"law": "d.l. 14/2017 art. 2", "purposes": ["PUBLIC_SECURITY"]},
        "territory": {"provinces": ["001"]},
        "parties": [{"agency": f.CUR, "role": "cur"}, {"agency": f.QUESTURA, "role": "questura"}],
        "roles": {},
        "rules": [{"id": "r", "from": ["cur"], "to": ["questura"], "kinds": ["REPORT"], "schedule": schedule}],
    }
    env = f.envelope(f.CUR, (f.QUESTURA,))
    decision = policy_of([doc]).route(env, RoutingContext(f.CUR, now=now))
    assert schedule_active(schedule, now.astimezone(ROME)) == bool(decision.routes)


# -- (b) no masked field in a delivery ----------------------------------------------------------------------------


@SETTINGS
@given(scenario=scenarios())
def test_no_masked_field_in_a_delivery(scenario: tuple[list[dict[str, Any]], list[Case]]) -> None:
    """No delivery carries a field its mask hides, or personal data its role is not granted; the prefettura none."""
    docs, batch = scenario
    pol = policy_of(docs)
    for case in batch:
        before = case.env.SerializeToString(deterministic=True)
        sender = case.ctx.sender_agency_id
        for route in pol.route(case.env, case.ctx).routes:
            assert route.mask is not None
            out = redact(case.env, route.mask)
            assert [] == present_hidden(out, route.mask)
            if route.rule != REPLY_RULE:
                doc = doc_of(docs, route.rule)[0]
                assert [] == personal_present(out, set(PERSONAL_DATA) - granted_to(doc, route.agency_id))
                if not granted_to(doc, route.agency_id):
                    text = out.SerializeToString()
                    assert [] == [v for v in f.PERSONAL_VALUES if v.encode() in text]
            else:
                both = shared(docs, sender, route.agency_id)
                granted = granted_to(both[0], route.agency_id) if both else frozenset()
                assert [] == personal_present(out, set(PERSONAL_DATA) - granted)
            if route.agency_id == PREF:
                assert [] == personal_present(out, set(PERSONAL_DATA))
        assert before == case.env.SerializeToString(deterministic=True)


@settings(max_examples=200, deadline=None)
@given(
    batch=st.lists(cases(), min_size=1, max_size=4),
    granted=st.frozensets(st.sampled_from(CATEGORIES)),
    hide=st.frozensets(st.sampled_from(HIDE)),
)
def test_redaction_leaves_no_masked_field(batch: list[Case], granted: frozenset[str], hide: frozenset[str]) -> None:
    """For any grants and hide paths, the redacted copy holds no hidden path and no personal value not granted."""
    mask = mask_for(granted, hide)
    for case in batch:
        before = case.env.SerializeToString(deterministic=True)
        out = redact(case.env, mask)
        assert [] == present_hidden(out, mask)
        assert [] == personal_present(out, set(PERSONAL_DATA) - granted)
        if not granted:
            assert [] == [v for v in f.PERSONAL_VALUES if v.encode() in out.SerializeToString()]
        assert before == case.env.SerializeToString(deterministic=True)
        assert case.env.distribution_id == out.distribution_id


# -- (c) EXERCISE and ACTUAL never cross --------------------------------------------------------------------------


@SETTINGS
@given(scenario=scenarios(), drill_only=drill_onlys)
def test_exercise_and_actual_never_cross(
    scenario: tuple[list[dict[str, Any]], list[Case]], drill_only: frozenset[str]
) -> None:
    """EXERCISE and TEST go only between drill participants of the rule's agreement; ACTUAL never to a drill-only room."""
    docs, batch = scenario
    pol = policy_of(docs, drill_only)
    for case in batch:
        sender, status = case.ctx.sender_agency_id, case.env.status
        for route in pol.route(case.env, case.ctx).routes:
            if route.rule == REPLY_RULE:
                if status in DRILL_STATUSES:
                    assert any(
                        {sender, route.agency_id} <= {p["agency"] for p in doc["parties"] if p.get("drills")}
                        for doc in shared(docs, sender, route.agency_id)
                    )
                if status == common_pb2.STATUS_ACTUAL:
                    assert route.agency_id not in drill_only
                continue
            doc = doc_of(docs, route.rule)[0]
            drills = {p["agency"] for p in doc["parties"] if p.get("drills")}
            if status in DRILL_STATUSES:
                assert {sender, route.agency_id} <= drills
            if status == common_pb2.STATUS_ACTUAL:
                assert route.agency_id not in drill_only


# -- (d) a refused reload leaves the decisions unchanged ----------------------------------------------------------

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "agreements"
SHIPPED_AGENCIES = (
    "it.nue.cur.to",
    "it.pl.001272",
    "it.ps.questura.to",
    "it.cc.cp.to",
    "it.pl.098031",
    "it.pl.098010",
    "it.ps.questura.lo",
    "it.cc.cp.lo",
    "it.pref.lo",
    "it.gdf.cp.lo",
    "it.prov.lo",
)
TORINO_TEXT = (SHIPPED / "torino.yaml").read_text(encoding="utf-8")
LODI_TEXT = (SHIPPED / "patto-lodi.yaml").read_text(encoding="utf-8")
SHIPPED_DOCS = (yaml.safe_load(TORINO_TEXT), yaml.safe_load(LODI_TEXT))
# Each breaks the set: (file name, bytes written).
BROKEN = {
    "yaml-syntax": ("zz-new.yaml", b"id: [broken\n"),
    "schema": ("torino.yaml", TORINO_TEXT.replace("kinds: [REPORT, UPDATE, CANCEL]", "kinds: [REPORTT]", 1).encode()),
    "unknown-comune": ("patto-lodi.yaml", LODI_TEXT.replace('["098031"]', '["098999"]', 1).encode()),
    "not-a-party": ("patto-lodi.yaml", LODI_TEXT.replace("to: [prefettura]", "to: [it.pref.mi]").encode()),
    "duplicate-id": ("copy-of-lodi.yaml", LODI_TEXT.encode()),
    "not-utf8": (
        "zz-latin1.yaml",
        TORINO_TEXT.replace("Centrale", "Centrale è").replace("torino-112", "t2").encode("latin-1"),
    ),
    "empty": ("zz-empty.yaml", b""),
}


def shipped_folder(root: Path) -> Path:
    """A copy of deploy/agreements."""
    folder = root / "agreements"
    folder.mkdir()
    for name in ("torino.yaml", "patto-lodi.yaml"):
        shutil.copyfile(SHIPPED / name, folder / name)
    return folder


def reloads(store: PolicyStore, outcome: str) -> float:
    """The opsroom_agreement_reloads_total sample for that outcome."""
    value = store._metrics.registry.get_sample_value("opsroom_agreement_reloads_total", {"outcome": outcome})
    return value or 0.0


def lodi_fight() -> envelope_pb2.Envelope:
    """A FIGHT in Lodi from its Polizia Locale to the Questura."""
    env = f.envelope("it.pl.098031", ("it.ps.questura.lo",))
    del env.incident.locations[:]
    env.incident.locations.add(type="CurrentIncident", comune_istat="098031")
    del env.target_areas[:]
    return env


def known_cases() -> list[Case]:
    """Cases the shipped set routes: a summer-night FIGHT in Lodi, and a Torino contact card."""
    summer_night = datetime(2026, 7, 4, 23, 30, tzinfo=ROME)
    lodi = place_keys(("comune", "098031"))
    torino = place_keys(("comune", "001272"))
    return [
        Case(lodi_fight(), RoutingContext("it.pl.098031", now=summer_night), lodi, 2, "FIGHT", frozenset()),
        Case(f.envelope(), RoutingContext(f.CUR, now=summer_night), torino, 2, "FIGHT", frozenset()),
    ]


def decisions(store: PolicyStore, batch: Sequence[Case]) -> list[Decision]:
    """The store's decision for every case."""
    return [store.route(case.env, case.ctx) for case in batch]


@settings(max_examples=40, deadline=None)
@given(
    batch=st.lists(cases(SHIPPED_AGENCIES, (), SHIPPED_DOCS), min_size=5, max_size=15),
    broken=st.sampled_from(sorted(BROKEN)),
)
def test_refused_reload_leaves_decisions_unchanged(batch: list[Case], broken: str) -> None:
    """A bad new set is refused whole: reload() is False, the refusal is counted, and every decision stays the same."""
    batch = [*known_cases(), *batch]
    with tempfile.TemporaryDirectory() as tmp:
        folder = shipped_folder(Path(tmp))
        store = PolicyStore(folder, Metrics())
        before = decisions(store, batch)
        assert ("it.ps.questura.lo", "it.cc.cp.lo") == before[0].recipients
        policy_before = store.current
        name, content = BROKEN[broken]
        (folder / name).write_bytes(content)
        assert store.changed()
        assert store.reload() is False
        assert 1.0 == reloads(store, "refused")
        assert 0.0 == reloads(store, "reloaded")
        assert policy_before is store.current
        assert before == decisions(store, batch)
        assert not store.changed()  # the same bad files are not retried every poll


def test_reload_of_the_same_set_changes_nothing(tmp_path: Path) -> None:
    """Rewriting the same agreements is no reload: False, and nothing counted."""
    folder = shipped_folder(tmp_path)
    store = PolicyStore(folder, Metrics())
    policy_before = store.current
    (folder / "torino.yaml").write_text(TORINO_TEXT, encoding="utf-8")
    assert store.reload() is False
    assert policy_before is store.current
    assert (1.0, 0.0, 0.0) == (reloads(store, "loaded"), reloads(store, "reloaded"), reloads(store, "refused"))


def test_reload_of_a_changed_set_takes_effect(tmp_path: Path) -> None:
    """A valid change is put in force whole: True, counted, and decisions follow the new set."""
    folder = shipped_folder(tmp_path)
    store = PolicyStore(folder, Metrics())
    fight = lodi_fight()
    summer_night = RoutingContext("it.pl.098031", now=datetime(2026, 7, 4, 23, 30, tzinfo=ROME))
    assert ("it.ps.questura.lo", "it.cc.cp.lo") == store.route(fight, summer_night).recipients
    (folder / "patto-lodi.yaml").write_text(
        LODI_TEXT.replace("select: territory\n    schedule", "schedule"), encoding="utf-8"
    )
    assert store.reload() is True
    assert 1.0 == reloads(store, "reloaded")
    assert ("it.ps.questura.lo",) == store.route(fight, summer_night).recipients
    assert 2 == store._metrics.registry.get_sample_value("opsroom_agreements_loaded")


def test_refused_then_fixed(tmp_path: Path) -> None:
    """After a refused set, a valid change is taken; restoring the set in force is no change."""
    folder = shipped_folder(tmp_path)
    store = PolicyStore(folder, Metrics())
    (folder / "zz.yaml").write_bytes(BROKEN["yaml-syntax"][1])
    assert store.reload() is False
    (folder / "zz.yaml").unlink()
    assert store.reload() is False  # the set in force again: nothing to do
    (folder / "torino.yaml").unlink()
    assert store.reload() is True
    assert ("patto-lodi-2025",) == tuple(a.id for a in store.current.agreements.agreements)
    assert (1.0, 1.0) == (reloads(store, "refused"), reloads(store, "reloaded"))


def test_reload_refuses_an_impossible_date(tmp_path: Path) -> None:
    """A set with an impossible date is refused like any bad set."""
    folder = shipped_folder(tmp_path)
    store = PolicyStore(folder, Metrics())
    (folder / "torino.yaml").write_text(
        TORINO_TEXT.replace("valid_from: 2026-01-15", "valid_from: 2026-02-30"), encoding="utf-8"
    )
    assert store.reload() is False
    assert 1.0 == reloads(store, "refused")


def test_reload_refuses_a_control_character(tmp_path: Path) -> None:
    """A set with a stray control character is refused like any bad set."""
    folder = shipped_folder(tmp_path)
    store = PolicyStore(folder, Metrics())
    (folder / "torino.yaml").write_text(TORINO_TEXT + "# \x1b\n", encoding="utf-8")
    assert store.reload() is False
    assert 1.0 == reloads(store, "refused")
