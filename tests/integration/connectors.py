"""Connector processes for the integration tests: started as an agency, spoken to over HTTP, stopped by PID."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from broker.dev.testing import LocalHub

START_LIVENESS = 60.0  # a connector says it listens within this (it takes about a second)


async def start_connector(
    fmt: str, hub: LocalHub, agency: str, data: Path, processes: list[subprocess.Popen[str]], *extra: str
) -> str:
    """Start a connector process (adapters.connect.<fmt>) for an agency; its base URL once it says where it listens."""
    pair = hub.pki.agency(agency)
    argv = [sys.executable, "-m", f"adapters.connect.{fmt}", "--hub", hub.target, "--server-name", "localhost",
            "--ca", str(hub.pki.ca), "--cert", str(pair.cert), "--key", str(pair.key), "--agency", agency,
            "--listen", "127.0.0.1:0", "--data", str(data), *extra]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    processes.append(proc)
    assert proc.stdout is not None
    async with asyncio.timeout(START_LIVENESS):
        line = await asyncio.to_thread(proc.stdout.readline)
    proc.stdout.close()  # the connector says nothing more there (its logs go to standard error)
    assert line.startswith("listening on "), line
    return "http://" + line.removeprefix("listening on ").strip()


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def call(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(http, method, url, body, headers)


def stop(processes: list[subprocess.Popen[str]]) -> list[int]:
    """SIGTERM each connector by its PID; their exit statuses."""
    for proc in processes:
        os.kill(proc.pid, signal.SIGTERM)
    return [proc.wait(timeout=30) for proc in processes]
