"""The owner of the hub's background work: named tasks that must run for as long as the hub does (pure asyncio).

The hub starts its commit loops, escalation worker, expiry worker, agreements watch and audit
retention here instead of as loose tasks. Until the hub begins to stop, none of them may end: a
task that raises, returns or is cancelled by someone else is a failure. The first failure is
logged (`background_task_failed`: the task's name and the exception's type and stack, never
its message) and handed to the owner's callback, which stops the hub: a hub with a dead commit
loop or escalation worker would otherwise go on answering health checks while doing half its
job. Once stopping() is called, tasks that end are expected; the owner cancels (cancel()) or
drains (drain()) them in its own order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from broker.ops.logging import get_logger

log = get_logger(__name__)

RETURNED = "returned"  # the error type of a task that returned while it should have kept running


@dataclass(frozen=True, slots=True)
class Failure:
    """A background task that ended while the hub was not stopping: its name and how it ended."""

    task: str
    error_type: str  # the exception's type name, RETURNED, or "CancelledError"


class Supervisor:
    """Starts named tasks, watches them, and reports the first one that ends before its time."""

    def __init__(self, on_failure: Callable[[Failure], None]) -> None:
        """A supervisor calling on_failure (once, from the event loop) when a task ends unexpectedly."""
        self._on_failure = on_failure
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self.failure: Failure | None = None

    def start(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """Run work as the task called name (unique among this supervisor's running tasks)."""
        running = self._tasks.get(name)
        if self._stopping or (running is not None and not running.done()):
            work.close()
            raise RuntimeError(f"cannot start {name}: " + ("stopping" if self._stopping else "already running"))
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._ended)

    @property
    def names(self) -> list[str]:
        """The tasks started and not yet ended, in the order they were started."""
        return [name for name, task in self._tasks.items() if not task.done()]

    def stopping(self) -> None:
        """From now on tasks end because the owner stops them: that is no failure."""
        self._stopping = True

    def is_stopping(self) -> bool:
        """Whether stopping() was called."""
        return self._stopping

    async def cancel(self, names: Iterable[str], within: float) -> list[str]:
        """Cancel these tasks (after stopping()) and wait up to within seconds for them; returns those still running."""
        tasks = [self._tasks[name] for name in names if name in self._tasks]
        for task in tasks:
            task.cancel()
        return [task.get_name() for task in await self._wait(tasks, within)]

    async def drain(self, names: Iterable[str], within: float) -> list[str]:
        """Wait up to within seconds for these tasks to end by themselves, then cancel the rest (returned)."""
        tasks = [self._tasks[name] for name in names if name in self._tasks]
        late = await self._wait(tasks, within)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        return [task.get_name() for task in late]

    @staticmethod
    async def _wait(tasks: list[asyncio.Task[None]], within: float) -> list[asyncio.Task[None]]:
        """Wait up to within seconds for tasks to end; those still running, in order."""
        if not tasks:
            return []
        _done, pending = await asyncio.wait(tasks, timeout=within)
        return [task for task in tasks if task in pending]

    def _ended(self, task: asyncio.Task[None]) -> None:
        """Done callback of every task: tell a failure from an expected end."""
        name = task.get_name()
        if task.cancelled():
            if self._stopping:
                return
            error: BaseException | None = asyncio.CancelledError()
        else:
            error = task.exception()
            if error is None and self._stopping:
                return
        error_type = RETURNED if error is None else type(error).__name__
        log.error("background_task_failed", task=name, error_type=error_type, exc_info=error)
        if self.failure is None and not self._stopping:
            self.failure = Failure(name, error_type)
            self._on_failure(self.failure)
