"""broker.ops.supervisor: the owner of the hub's background tasks (pure asyncio, no servers)."""

from __future__ import annotations

import asyncio
import json

import pytest
from structlog.testing import capture_logs

from broker.ops.logging import drop_unlisted_keys, traceback_without_values
from broker.ops.supervisor import RETURNED, Failure, Supervisor
from tests import factories as f

WAIT = 5.0  # liveness: a task's end reaches the supervisor's callback


class Owner:
    """Records the failures the supervisor reports, and wakes the test on the first."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []
        self.failed = asyncio.Event()

    def __call__(self, failure: Failure) -> None:
        self.failures.append(failure)
        self.failed.set()

    async def until_failed(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.failed.wait()


async def forever() -> None:
    await asyncio.Event().wait()


async def raises_after(go: asyncio.Event, text: str = "broken") -> None:
    await go.wait()
    raise RuntimeError(text)


async def returns_after(go: asyncio.Event) -> None:
    await go.wait()


async def settle() -> None:
    """Let done callbacks run."""
    for _ in range(5):
        await asyncio.sleep(0)


def rendered(event: dict[str, object]) -> str:
    """The event as the hub's log processors leave it (exception type and stack, no message), as JSON."""
    out = drop_unlisted_keys(None, "error", traceback_without_values(None, "error", dict(event)))
    return json.dumps(out, default=str)


async def test_a_task_that_raises_is_a_failure_logged_without_its_message() -> None:
    """The owner hears of it once, with the task's name and the error's type; the log line carries no message text."""
    owner, go = Owner(), asyncio.Event()
    supervisor = Supervisor(owner)
    supervisor.start("committer-urgent", forever())
    supervisor.start("escalations", raises_after(go, f"cannot escalate for {f.CALLER_SURNAME}"))
    with capture_logs() as logs:
        go.set()
        await owner.until_failed()
    assert [Failure("escalations", "RuntimeError")] == owner.failures
    assert owner.failures[0] == supervisor.failure
    [event] = [e for e in logs if e["event"] == "background_task_failed"]
    assert ("escalations", "RuntimeError", "error") == (event["task"], event["error_type"], event["log_level"])
    line = rendered(event)
    assert "RuntimeError" in line
    assert f.CALLER_SURNAME not in line
    assert ["committer-urgent"] == supervisor.names
    supervisor.stopping()
    assert [] == await supervisor.cancel(supervisor.names, within=WAIT)


async def test_a_task_that_returns_before_the_hub_stops_is_a_failure() -> None:
    """A worker loop that simply ends leaves the hub without it: reported as RETURNED."""
    owner, go = Owner(), asyncio.Event()
    supervisor = Supervisor(owner)
    supervisor.start("expiries", returns_after(go))
    go.set()
    await owner.until_failed()
    assert [Failure("expiries", RETURNED)] == owner.failures


async def test_a_task_cancelled_by_someone_else_is_a_failure() -> None:
    """Only the owner, once stopping, may end a task."""
    owner = Owner()
    supervisor = Supervisor(owner)
    supervisor.start("agreements-watch", forever())
    [task] = [t for t in asyncio.all_tasks() if t.get_name() == "agreements-watch"]
    task.cancel()
    await owner.until_failed()
    assert [Failure("agreements-watch", "CancelledError")] == owner.failures


async def test_only_the_first_failure_is_reported() -> None:
    """Two tasks die: the owner is called once (it is stopping the hub already); both are logged."""
    owner, go = Owner(), asyncio.Event()
    supervisor = Supervisor(owner)
    supervisor.start("a", raises_after(go))
    supervisor.start("b", returns_after(go))
    with capture_logs() as logs:
        go.set()
        await owner.until_failed()
        await settle()
    assert 1 == len(owner.failures)
    assert {"a", "b"} == {e["task"] for e in logs if e["event"] == "background_task_failed"}


async def test_tasks_ending_once_stopping_are_no_failure() -> None:
    """After stopping(): returning, being cancelled, are how tasks end; nothing is reported or logged."""
    owner, go = Owner(), asyncio.Event()
    supervisor = Supervisor(owner)
    supervisor.start("committer-urgent", returns_after(go))
    supervisor.start("escalations", forever())
    with capture_logs() as logs:
        supervisor.stopping()
        assert [] == await supervisor.cancel(["escalations"], within=WAIT)
        go.set()
        assert [] == await supervisor.drain(["committer-urgent"], within=WAIT)
        await settle()
    assert [] == owner.failures
    assert [] == [e for e in logs if e["event"] == "background_task_failed"]
    assert [] == supervisor.names


async def test_drain_waits_then_cancels_what_is_late() -> None:
    """A commit loop that does not finish within the time given is cancelled and named."""
    owner, go = Owner(), asyncio.Event()
    supervisor = Supervisor(owner)
    supervisor.start("committer-urgent", returns_after(go))
    supervisor.start("committer-bulk", forever())
    supervisor.stopping()
    go.set()
    assert ["committer-bulk"] == await supervisor.drain(["committer-urgent", "committer-bulk"], within=0.2)
    assert [] == supervisor.names
    assert [] == owner.failures


async def test_cancel_names_a_task_that_will_not_stop() -> None:
    """A task that swallows its cancellation is reported back, still running."""
    owner, release = Owner(), asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    supervisor = Supervisor(owner)
    supervisor.start("audit-retention", stubborn())
    await settle()  # inside its loop, where it swallows cancellations
    supervisor.stopping()
    assert ["audit-retention"] == await supervisor.cancel(["audit-retention"], within=0.1)
    release.set()
    assert [] == await supervisor.cancel(["audit-retention"], within=WAIT)


async def test_no_task_starts_once_stopping_nor_twice_under_one_name() -> None:
    """Names are unique among running tasks; a stopping supervisor starts nothing."""
    supervisor = Supervisor(Owner())
    supervisor.start("escalations", forever())
    with pytest.raises(RuntimeError):
        supervisor.start("escalations", forever())
    supervisor.stopping()
    with pytest.raises(RuntimeError):
        supervisor.start("expiries", forever())
    await supervisor.cancel(supervisor.names, within=WAIT)
