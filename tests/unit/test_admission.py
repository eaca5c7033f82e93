"""broker.edge.admission: the bounds on envelopes in flight per lane and agency, the retry delay, the aggregated log."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from broker.edge.admission import MAX_RETRY_AFTER, Admission, Bounds
from broker.errors import Overloaded, Reason
from broker.lanes import Lane
from tests import factories as f


def test_an_agency_is_refused_over_its_own_bound_and_others_are_not() -> None:
    """Past per_agency envelopes in flight, that agency's next one is refused (scope agency); another agency's is taken."""
    admission = Admission(Bounds(per_lane=10, per_agency=2, retry_after=0.5))
    admission.enter(f.CUR, Lane.URGENT)
    admission.enter(f.CUR, Lane.URGENT)
    with pytest.raises(Overloaded) as caught:
        admission.enter(f.CUR, Lane.URGENT)
    err = caught.value
    assert (Reason.HUB_OVERLOADED, 0.5) == (err.reason, err.retry_after)
    assert {"scope": "agency", "lane": "urgent"} == dict(err.metadata)
    admission.enter(f.PL, Lane.URGENT)
    assert (3, 2) == (admission.in_flight(Lane.URGENT), admission.in_flight_of(f.CUR, Lane.URGENT))


def test_the_hub_bound_holds_for_all_agencies_together() -> None:
    """Past per_lane envelopes in flight on a lane, every agency is refused on it (scope hub)."""
    admission = Admission(Bounds(per_lane=2, per_agency=2))
    admission.enter(f.CUR, Lane.URGENT)
    admission.enter(f.PL, Lane.URGENT)
    with pytest.raises(Overloaded) as caught:
        admission.enter(f.CC, Lane.URGENT)
    assert "hub" == caught.value.metadata["scope"]


def test_bulk_envelopes_never_take_the_urgent_lane_s_room() -> None:
    """Each lane has its bounds: a full bulk lane leaves urgent envelopes of the same agency admitted."""
    admission = Admission(Bounds(per_lane=3, per_agency=3))
    for _ in range(3):
        admission.enter(f.PL, Lane.BULK)
    with pytest.raises(Overloaded):
        admission.enter(f.PL, Lane.BULK)
    admission.enter(f.PL, Lane.URGENT)
    assert (3, 1) == (admission.in_flight(Lane.BULK), admission.in_flight(Lane.URGENT))


def test_leaving_makes_room_again_and_forgets_idle_agencies() -> None:
    """An answered envelope frees its place; an agency with nothing in flight is dropped from the table."""
    admission = Admission(Bounds(per_lane=1, per_agency=1))
    admission.enter(f.CUR, Lane.URGENT)
    admission.leave(f.CUR, Lane.URGENT)
    admission.enter(f.CUR, Lane.URGENT)
    admission.leave(f.CUR, Lane.URGENT)
    assert 0 == admission.in_flight()
    assert {} == dict(admission._agency)


def test_bulk_retry_delay_covers_what_the_ceiling_must_let_through_first() -> None:
    """On the bulk lane with a ceiling, the delay is at least in-flight / ceiling (capped); urgent gets the base delay."""
    admission = Admission(Bounds(per_lane=10_000, per_agency=10_000, retry_after=1.0, bulk_per_second=100))
    for _ in range(500):
        admission.enter(f.PL, Lane.BULK)
    assert 5.0 == admission.retry_after(Lane.BULK)
    assert 1.0 == admission.retry_after(Lane.URGENT)
    for _ in range(5000):
        admission.enter(f.PL, Lane.BULK)
    assert MAX_RETRY_AFTER == admission.retry_after(Lane.BULK)


def test_refusals_are_logged_as_one_event_per_agency_lane_and_scope_with_the_count() -> None:
    """A thousand refusals make one log event each for agency, lane and scope, not a thousand."""
    admission = Admission(Bounds(per_lane=3, per_agency=1))
    admission.enter(f.CUR, Lane.URGENT)
    for agency in (f.PL, f.CC, f.QUESTURA):
        admission.enter(agency, Lane.BULK)
    for _ in range(1000):
        for agency, lane in ((f.CUR, Lane.URGENT), (f.CC, Lane.BULK)):
            with pytest.raises(Overloaded):
                admission.enter(agency, lane)
    with structlog.testing.capture_logs() as logs:
        admission.flush_log()
        admission.flush_log()  # nothing new: nothing logged
    assert [
        {"agency": f.CC, "lane": "bulk", "scope": "hub", "count": 1000, "in_flight": 1},
        {"agency": f.CUR, "lane": "urgent", "scope": "agency", "count": 1000, "in_flight": 1},
    ] == [{k: e[k] for k in ("agency", "lane", "scope", "count", "in_flight")} for e in logs]
    assert {("publishes_refused_overloaded", "HUB_OVERLOADED")} == {(e["event"], e["reason"]) for e in logs}


# -- streams: slowed, not refused, over the agency's own limits ---------------------------------

# liveness: a wait that leave() or the next token ends takes milliseconds.
WAIT_LIVENESS = 10.0


async def test_a_stream_over_its_agency_s_bound_waits_for_a_slot_and_takes_it_when_one_is_freed() -> None:
    """wait_enter does not refuse at the agency's bound: it returns once one of the agency's envelopes leaves."""
    admission = Admission(Bounds(per_lane=10, per_agency=2))
    admission.enter(f.CUR, Lane.URGENT)
    admission.enter(f.CUR, Lane.URGENT)
    waiting = asyncio.get_running_loop().create_task(admission.wait_enter(f.CUR, Lane.URGENT, "peer-1"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert admission.waits[f.CUR, Lane.URGENT, "agency"] >= 1
    admission.enter(f.PL, Lane.URGENT)  # another agency is not held up by it
    admission.leave(f.CUR, Lane.URGENT)
    await asyncio.wait_for(waiting, WAIT_LIVENESS)
    assert 2 == admission.in_flight_of(f.CUR, Lane.URGENT)
    assert 1 == admission.in_flight_on("peer-1", Lane.URGENT)
    admission.close()


async def test_a_stream_over_its_agency_s_rate_waits_for_the_next_token_on_the_hub_s_clock() -> None:
    """With a clock that does not move, the wait goes on; once the clock moves by a token's time, it returns."""
    now = [100.0]
    admission = Admission(Bounds(per_lane=10, per_agency=10, agency_rate=4.0, agency_burst=1.0), clock=lambda: now[0])
    await admission.wait_enter(f.CUR, Lane.URGENT)  # the burst
    waiting = asyncio.get_running_loop().create_task(admission.wait_enter(f.CUR, Lane.URGENT))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    assert admission.waits[f.CUR, Lane.URGENT, "rate"] >= 1
    now[0] += 0.25
    await asyncio.wait_for(waiting, WAIT_LIVENESS)
    assert 2 == admission.in_flight_of(f.CUR, Lane.URGENT)
    admission.close()


async def test_a_stream_is_still_refused_over_the_hub_wide_bound() -> None:
    """The hub-wide bound is every agency's: over it a stream's envelope is refused (scope hub), not held."""
    admission = Admission(Bounds(per_lane=1, per_agency=1))
    admission.enter(f.PL, Lane.URGENT)
    with pytest.raises(Overloaded) as caught:
        await admission.wait_enter(f.CUR, Lane.URGENT)
    assert "hub" == caught.value.metadata["scope"]
    admission.close()
