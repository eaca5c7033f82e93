"""Owns stopping and measuring the processes the development tools start (Linux /proc): by PID, bounded.

One place for what nats-server, a hub started as its own process (benchmarks, drills, the API
fuzz), and their measurements need: SIGTERM and a bounded wait, SIGKILL after it; CPU seconds
and resident memory read from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM by PID and wait up to timeout; SIGKILL (and wait for it) if the process has not exited."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """A process's resident memory, in MB; raises LookupError if /proc does not say it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no VmRSS for process {pid}")
