"""What the README promises a newcomer: the client example works, and the demo plays its scenario."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from broker.dev.testing import LocalHub
from tests import factories as f

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def readme_example(readme: Path = ROOT / "README.md", name: str = "room-client") -> str:
    text = readme.read_text(encoding="utf-8")
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, f"{readme} lost its {name} example"
    return match.group(1)


def test_readme_example_is_short() -> None:
    """The integration example stays about twenty lines of code (blank lines and imports aside)."""
    lines = [
        line
        for line in readme_example().splitlines()
        if line.strip() and not line.startswith(("import ", "from ")) and not line.strip().startswith("#")
    ]
    assert len(lines) <= 30


async def test_readme_client_example_runs(hub: LocalHub, tmp_path: Path) -> None:
    """The README's example, run as written against a live hub, publishes and receives."""
    sender = hub.client(f.QUESTURA)
    await sender.publish(f.envelope(f.QUESTURA, (f.PL,)))  # something waiting in the PL's inbox
    await sender.close()
    work = tmp_path / "agency"
    work.mkdir()
    (work / "deploy").mkdir()
    (work / "deploy" / "pki").symlink_to(hub.pki.root)
    script = readme_example().replace("localhost:7443", f"localhost:{hub.hub.port}")
    # The hub runs in this event loop: the example must run beside it, not block it.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        cwd=work,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert 0 == proc.returncode, err.decode()
    stdout = out.decode()
    assert f"stored for ['{f.QUESTURA}']" in stdout
    assert f"received incident from {f.QUESTURA}" in stdout


async def test_client_readme_outbox_example_runs_twice_and_sends_what_the_first_run_left(
    hub: LocalHub, tmp_path: Path
) -> None:
    """The client package's outbox example, run as written: first with the hub unreachable, then with it."""
    work = tmp_path / "agency"
    work.mkdir()
    (work / "pki").symlink_to(hub.pki.root)
    script = readme_example(ROOT / "clients" / "python" / "README.md", "outbox")

    async def run(target: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, target, cwd=work,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(120):  # liveness bound: the client's retries against a closed port take ~1 s
            out, err = await proc.communicate()
        assert 0 == proc.returncode, err.decode()
        return out.decode()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    assert "accepted 0 refused 0 waiting 1" in await run(closed)
    assert "accepted 2 refused 0 waiting 0" in await run(hub.target)
    reader = hub.client(f.QUESTURA)
    try:
        inbox = reader.inbox()
        async with asyncio.timeout(60):  # liveness bound
            received = [await anext(inbox) for _ in range(2)]
    finally:
        await reader.close()
    assert [d.envelope.sender.agency_id for d in received] == [f.PL, f.PL]


def test_demo_plays_the_scenario(tmp_path: Path) -> None:
    """`opsroom demo --once` starts nats-server, the hub and four rooms, plays the scenario and stops cleanly."""
    result = subprocess.run(
        [sys.executable, "-m", "broker", "demo", "--once", "--data", str(tmp_path / "demo"),
         "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr
    out = result.stdout
    for expected in (
        "[Questura di Torino] <- REPORT incident from it.nue.cur.to: FIGHT at Torino (001272)",
        "[Carabinieri - Comando Provinciale di Torino] <- REQUEST assistance_request from it.pl.001272",
        "[Polizia Locale di Torino] <- RESPONSE assistance_response from it.cc.cp.to: ACCEPTED",
        "plate withheld",
        "PASS  backup: it.cc.cp.to answered ACCEPTED",
        "PASS  handover: it.ps.questura.to answered ACCEPTED",
        "27 of 27 expectations passed",
        "scenario complete",
        "stopped nats-server",
    ):
        assert expected in out
    assert f.PLATE not in out
    assert "ZZ000ZZ" not in out  # the demo's plate, personal data, is never printed
