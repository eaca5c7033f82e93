"""Owns what a command says to the person at the terminal, and its wait for Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import signal


def say(line: str) -> None:
    """One line on standard output, flushed (a demo's or a command's output is for a person)."""
    print(line, flush=True)  # noqa: T201


async def until_signal(stop: asyncio.Event) -> None:
    """Return on SIGINT or SIGTERM (or when stop is set)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
