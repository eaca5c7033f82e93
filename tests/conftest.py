"""Fixtures every kind of test may use (tests/faults has its own `processes`, for its process rig)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Background processes a test starts (it appends them); any still running at the end is killed by its PID."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in reversed(started):
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
