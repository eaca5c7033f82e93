"""The lane gate (broker.publish.gate.LaneGate): bulk waits for urgent work in flight, and keeps under its ceiling."""

from __future__ import annotations

import asyncio

from broker.publish.gate import LaneGate


async def test_bulk_waits_while_an_urgent_envelope_is_in_flight() -> None:
    """A bulk turn does not return until every urgent envelope that entered is done."""
    gate = LaneGate()
    first, second = asyncio.get_running_loop().create_future(), asyncio.get_running_loop().create_future()
    gate.urgent_started(first)
    gate.urgent_started(second)
    turn = asyncio.ensure_future(gate.bulk_turn())
    await asyncio.sleep(0.01)
    assert not turn.done()
    first.set_result(None)
    await asyncio.sleep(0.01)
    assert not turn.done()
    second.set_exception(RuntimeError("refused"))  # a refused urgent envelope ends too
    second.exception()
    await asyncio.wait_for(turn, 1)
    assert 0 == gate.urgent_in_flight


async def test_bulk_goes_at_once_without_urgent_work_or_ceiling() -> None:
    """No urgent work and no ceiling: a thousand bulk turns pass without waiting on the clock."""
    gate = LaneGate()
    async with asyncio.timeout(2):
        for _ in range(1000):
            await gate.bulk_turn()


async def test_the_ceiling_spaces_bulk_turns_after_a_small_burst() -> None:
    """At 100 per second, 30 turns from a cold start take about 0.2 s (a burst of 10, then 20 spaced by 10 ms)."""
    now = [1000.0]
    slept: list[float] = []
    gate = LaneGate(100, clock=lambda: now[0])
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds
        await real_sleep(0)

    asyncio_sleep, asyncio.sleep = asyncio.sleep, fake_sleep  # type: ignore[assignment]
    try:
        for _ in range(30):
            await gate.bulk_turn()
    finally:
        asyncio.sleep = asyncio_sleep  # type: ignore[assignment]
    waited = sum(s for s in slept if s > 0)
    assert 0.18 <= waited <= 0.21, waited
    assert 1000.18 <= now[0] <= 1000.21
