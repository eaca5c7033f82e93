"""Decision cost of the policy engine with the whole ISTAT list loaded and 10, 100 and 1,000 agreements.

    .venv/bin/python bench/policy.py            # about 30 s
    .venv/bin/python bench/policy.py --quick    # fewer envelopes

Each agreement is a provincial "Patto" like Lodi's: the Prefettura, the Questura and the
Carabinieri of a province, and the Polizia Locale of a few of its comuni, with seven rules
(territory selection, categories, a summer-night schedule, priorities). Envelopes are incident
reports from random parties about random comuni of their province, half with the comune given
and half with coordinates only (so the point-to-comune lookup is in the cost). Reported per
agreement count: median and p99 of one `route()` call, in microseconds, and the mean cost of
redacting the envelope for one recipient.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.policy.engine import Policy  # noqa: E402
from broker.policy.model import Agreement, AgreementSet, Party, RoleView, Rule, Schedule, Territory  # noqa: E402
from broker.policy.places import place_index  # noqa: E402
from broker.policy.redact import mask_for, redact  # noqa: E402
from broker.policy.routing import RoutingContext  # noqa: E402
from broker.validate import codelists  # noqa: E402
from tests import factories as f  # noqa: E402

ALL_PD = frozenset({"caller", "network_location", "persons", "vehicles", "free_text", "media", "staff"})


def provinces() -> dict[str, list[str]]:
    """Province code -> its comuni."""
    out: dict[str, list[str]] = {}
    for code in codelists.comuni_by_code():
        out.setdefault(code[:3], []).append(code)
    return out


def agreement(n: int, province: str, comuni: list[str], rng: random.Random) -> Agreement:
    """A provincial Patto numbered n."""
    pl = [f"it.pl.{c}" for c in rng.sample(comuni, min(len(comuni), rng.randint(3, 8)))]
    questura, cc, pref = f"it.ps.questura.p{province}", f"it.cc.cp.p{province}", f"it.pref.p{province}"
    parties = (
        *(Party(a, "polizia_locale", covers=Territory(comuni=frozenset({a.rsplit(".", 1)[1]}))) for a in pl),
        Party(questura, "questura", drills=True),
        Party(cc, "carabinieri", drills=True),
        Party(pref, "prefettura"),
    )
    state = frozenset({questura, cc})
    rules = (
        Rule("pl-to-state", frozenset(pl), state, frozenset({"REPORT", "UPDATE", "CANCEL"}), frozenset({"incident"})),
        Rule("state-to-pl", state, frozenset(pl), frozenset({"REPORT", "UPDATE"}), frozenset({"incident"}),
             min_priority="HIGH", select="territory"),
        Rule("backup", frozenset(pl) | state, frozenset(pl) | state, frozenset({"REQUEST", "CANCEL"}),
             frozenset({"assistance_request", "handover_request"})),
        Rule("alerts", frozenset(pl), state, frozenset({"REPORT"}), frozenset({"alert"}),
             alert_categories=frozenset({"SECURITY"}), select="territory"),
        Rule("nights", frozenset(pl), state, frozenset({"REPORT", "UPDATE"}), frozenset({"incident"}),
             incident_types=frozenset({"NOISE", "FIGHT", "DISORD"}), select="territory",
             schedule=Schedule(frozenset({6, 7, 8, 9}), frozenset({4, 5, 6}), *_night())),
        Rule("fraud", frozenset(pl) | state, state, frozenset({"REPORT"}), frozenset({"incident"}),
             incident_types=frozenset({"FRAUD", "SHOPLIFT"})),
        Rule("to-prefettura", frozenset(pl) | state, frozenset({pref}), frozenset({"REPORT", "UPDATE"})),
    )  # fmt: skip
    return Agreement(
        id=f"patto-{n:04d}",
        title=f"Patto {n}",
        source="generated",
        valid_from=date(2025, 1, 1),
        valid_until=None,
        law="d.l. 14/2017 art. 2",
        purposes=frozenset({"PUBLIC_SECURITY", "PREVENTION"}),
        territory=Territory(provinces=frozenset({province})),
        parties=parties,
        roles={"questura": RoleView(ALL_PD), "carabinieri": RoleView(ALL_PD), "polizia_locale": RoleView(frozenset({"vehicles"}))},
        rules=rules,
    )  # fmt: skip


def _night() -> tuple[object, object]:
    from datetime import time as t  # noqa: PLC0415

    return t(21), t(5)


def envelopes(agreements: list[Agreement], count: int, rng: random.Random) -> list[tuple[str, object]]:
    """(sender, envelope) pairs: incidents from a random party about a comune of its province."""
    index = place_index()
    out = []
    centroid = index.centroids()
    for _ in range(count):
        a = rng.choice(agreements)
        sender = rng.choice(a.parties[:-1]).agency
        province = next(iter(a.territory.provinces))
        comune = rng.choice([c for c in centroid if c.startswith(province)] or ["001272"])
        recipients = tuple(p.agency for p in a.parties if p.role in ("questura", "carabinieri") and p.agency != sender)
        env = f.envelope(sender, recipients[:1])
        env.incident.type.eido_code = rng.choice(["FIGHT", "NOISE", "ROBBERY", "FRAUD", "BURGLARY"])
        loc = env.incident.locations[0]
        if rng.random() < 0.5:
            loc.comune_istat = comune
            loc.ClearField("point")
        else:
            loc.comune_istat = ""
            loc.point.latitude, loc.point.longitude = centroid[comune]
        del env.target_areas[:]
        out.append((sender, env))
    return out


def measure(count_agreements: int, all_agreements: list[Agreement], n_envelopes: int, rng: random.Random) -> str:
    """One line of results for the first count_agreements agreements."""
    chosen = all_agreements[:count_agreements]
    started = time.perf_counter()
    policy = Policy(AgreementSet(tuple(chosen)), place_index())
    compile_s = time.perf_counter() - started
    sample = envelopes(chosen, n_envelopes, rng)
    now = datetime(2026, 7, 18, 21, 30, tzinfo=UTC)
    costs = []
    routed = 0
    for sender, env in sample:
        ctx = RoutingContext(sender, now=now)
        t0 = time.perf_counter_ns()
        decision = policy.route(env, ctx)  # type: ignore[arg-type]
        costs.append((time.perf_counter_ns() - t0) / 1000)
        routed += len(decision.routes)
    costs.sort()
    mask = mask_for({"vehicles"}, ())
    t0 = time.perf_counter()
    for _, env in sample[:2000]:
        redact(env, mask)  # type: ignore[arg-type]
    redact_us = (time.perf_counter() - t0) / min(2000, len(sample)) * 1e6
    p50 = statistics.median(costs)
    p99 = costs[int(0.99 * (len(costs) - 1))]
    return (
        f"{count_agreements:>6} {len(sample):>9} {p50:>9.1f} {p99:>9.1f} {routed / len(sample):>10.2f} "
        f"{redact_us:>10.1f} {compile_s:>9.2f}"
    )


def main() -> int:
    """Build 1,000 agreements and time decisions with 10, 100 and 1,000 of them loaded."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rng = random.Random(20261123)
    by_province = provinces()
    codes = sorted(by_province)
    agreements = [agreement(n, codes[n % len(codes)], by_province[codes[n % len(codes)]], rng) for n in range(1000)]
    n = 3000 if args.quick else 20000
    print(f"comuni loaded: {len(codelists.load().comuni)}; envelopes per run: {n}")
    print(
        f"{'agreements':>10} {'envelopes':>9} {'p50 us':>9} {'p99 us':>9} {'recipients':>10} {'redact us':>10} {'compile s':>9}"
    )
    for count in (10, 100, 1000):
        print(f"{'':4}{measure(count, agreements, n, rng)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
