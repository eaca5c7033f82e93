"""The README's "Running the hub alone" steps, run as written, and the hub's one-line refusals at start.

The steps are read from the README's code block (so the two cannot drift) and run as real
processes in a copy of deploy/: `opsroom dev-certs`, nats-server with deploy/nats/local.conf
(which admits only the hub's NATS user, from the account dev-certs wrote), `opsroom serve`,
`opsroom sim --once`; the only change is the ports (free ones instead of 4222,
8222, 7443 and 9464), in the copied files and in the sim's --hub. Every process is stopped by
its PID. Time bounds here are liveness bounds on a busy machine, not performance claims.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.config import NatsConfig
from broker.dev.embedded import find_nats_server, free_port
from broker.store.jetstream import _host_port, _reach_one
from tests.integration.test_transport import connect_once

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: what `. .venv/bin/activate` puts first on PATH

# Liveness bounds, generous for a loaded 2-core machine: a process that takes longer is stuck.
STEP_LIVENESS = 120.0  # dev-certs, the scenario, a hub that refuses to start
STOP_LIVENESS = 60.0  # SIGTERM to exit
START_ALLOWANCE = 30.0  # interpreter and imports before the hub's own wait for NATS begins

# The ports the README's files use, and where.
PORTS = {
    "nats": ("127.0.0.1:4222", ("deploy/nats/local.conf", "deploy/hub.toml")),
    "monitor": ("127.0.0.1:8222", ("deploy/nats/local.conf", "deploy/hub.toml")),
    "hub": ("0.0.0.0:7443", ("deploy/hub.toml",)),
    "metrics": ("127.0.0.1:9464", ("deploy/hub.toml",)),
}

# What the test runs, in order; the README's block must say exactly this (comments aside).
EXPECTED_STEPS = [
    "make venv",
    ". .venv/bin/activate",
    "opsroom dev-certs --config deploy/hub.toml",
    "nats-server -c deploy/nats/local.conf &",
    "opsroom serve --config deploy/hub.toml &",
    "opsroom sim --once",
    "kill %2; wait %2; kill %1",
]


def readme_steps() -> list[str]:
    """The commands of the README's run-alone block, without comments."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- steps: run-alone -->\n```sh\n(.*?)```", text, re.DOTALL)
    assert match, "the README lost its run-alone steps"
    return [line.split("  #", 1)[0].strip() for line in match.group(1).splitlines() if line.strip()]


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}


def _copy_deploy(work: Path) -> dict[str, int]:
    """deploy/ as in the repository, under work, with free ports in place of the README's; the ports."""
    shutil.copytree(ROOT / "deploy", work / "deploy", ignore=shutil.ignore_patterns("pki", "keys"))
    ports = {name: free_port() for name in PORTS}
    for name, (address, files) in PORTS.items():
        host = "127.0.0.1" if name == "hub" else address.split(":")[0]
        for rel in files:
            path = work / rel
            text = path.read_text(encoding="utf-8")
            assert address in text, f"{rel} no longer says {address}: update this test's PORTS"
            path.write_text(text.replace(address, f"{host}:{ports[name]}"), encoding="utf-8")
    return ports


def _stop(proc: subprocess.Popen[str], within: float = STOP_LIVENESS) -> int:
    """SIGTERM by PID, wait; SIGKILL if it does not stop within the bound."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def test_the_readme_says_exactly_the_steps_this_test_runs() -> None:
    assert EXPECTED_STEPS == readme_steps()
    assert "venv:" in (ROOT / "Makefile").read_text(encoding="utf-8"), "the README's `make venv` needs its target"


def _argv(step: str) -> list[str]:
    """A README command as argv, its program resolved on the venv's PATH (as after activate)."""
    argv = shlex.split(step.removesuffix("&").strip())
    if argv[0] == "nats-server":
        return [str(find_nats_server()), *argv[1:]]
    assert argv[0] == "opsroom", step
    return [str(BIN / "opsroom"), *argv[1:]]


def test_readme_steps_run_the_hub_alone(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    """Certificates, nats-server, the hub and the simulated rooms, as the README says; the scenario completes."""
    steps = readme_steps()
    assert steps[:2] == ["make venv", ". .venv/bin/activate"]  # this test already runs in the venv
    assert steps[-1] == "kill %2; wait %2; kill %1"  # done below: the hub by PID, waited for, then nats-server
    ports = _copy_deploy(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    hub_log = logs / "none.log"
    background: dict[str, subprocess.Popen[str]] = {}
    for i, step in enumerate(steps[2:-1]):
        argv = _argv(step)
        if argv[1] == "sim":
            argv += ["--hub", f"localhost:{ports['hub']}"]  # the one port that is an argument, not in a file
        if step.endswith("&"):
            with (logs / f"step{i}.log").open("w", encoding="utf-8") as log:  # the child keeps its own copy
                proc = subprocess.Popen(argv, cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
            processes.append(proc)
            background[argv[1] if argv[1] == "serve" else "nats"] = proc
            hub_log = logs / f"step{i}.log" if argv[1] == "serve" else hub_log
            continue
        result = subprocess.run(
            argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=STEP_LIVENESS, check=False
        )
        assert 0 == result.returncode, f"{step}\n{result.stdout}\n{result.stderr}\n{_logs(logs)}"
        if argv[1] == "sim":
            out = result.stdout
            assert "scenario complete" in out, out
            assert "PASS  backup: it.cc.cp.to answered ACCEPTED" in out, out
            assert "PASS  handover: it.ps.questura.to answered ACCEPTED" in out, out
            assert "27 of 27 expectations passed" in out, out
    # What the steps made, where the README says.
    assert (tmp_path / "deploy/pki/hub.pem").is_file()
    assert (tmp_path / "deploy/pki/agencies/it.pl.001272-key.pem").is_file()
    assert (tmp_path / "deploy/keys/audit.pem").is_file()
    assert (tmp_path / "deploy/keys/audit.pub.pem").is_file()
    assert (tmp_path / ".opsroom/nats/jetstream").is_dir()
    assert (tmp_path / "deploy/pki/nats-auth.conf").is_file()
    # The nats-server of the steps admits the hub's user only: a client without it is refused.
    refusal = asyncio.run(_nats_refusal(ports["nats"]))
    assert any("authorization" in e.lower() for e in refusal), refusal
    # kill %2; wait %2; kill %1: the hub drains and exits 0, then nats-server.
    assert ["nats", "serve"] == sorted(background)
    assert 0 == _stop(background["serve"]), _logs(logs)
    _stop(background["nats"])
    said = hub_log.read_text(encoding="utf-8")
    assert f"opsroom hub listening on 127.0.0.1:{ports['hub']}" in said
    assert "Traceback" not in said


async def _nats_refusal(port: int) -> list[str]:
    """What nats-server said to a client that brought no credentials (empty if it got in)."""
    nc, errors = await connect_once(f"nats://127.0.0.1:{port}")
    if nc is not None:
        await nc.close()
        return []
    return errors


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(encoding='utf-8')[-4000:]}" for p in sorted(folder.glob("*.log")))


def _dev_deploy(work: Path) -> dict[str, int]:
    """A copy of deploy/ on free ports with its development certificates and audit key made."""
    ports = _copy_deploy(work)
    result = subprocess.run(
        [str(BIN / "opsroom"), "dev-certs", "--config", "deploy/hub.toml"],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=STEP_LIVENESS,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    return ports


def _serve(work: Path, within: float = STEP_LIVENESS) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "opsroom"), "serve", "--config", "deploy/hub.toml"],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=within,
        check=False,
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    ("key", "rel"),
    [
        ("tls.ca_file", "deploy/pki/ca.pem"),
        ("tls.cert_file", "deploy/pki/hub.pem"),
        ("tls.key_file", "deploy/pki/hub-key.pem"),
        ("agreements.folder", "deploy/agreements"),
        ("audit.signing_key", "deploy/keys/audit.pem"),
    ],
)
def test_a_missing_file_is_named_in_one_line(tmp_path: Path, key: str, rel: str) -> None:
    """The hub names the key and the path, exits non-zero, and tries no NATS server (none runs here)."""
    _dev_deploy(tmp_path)
    missing = tmp_path / rel
    if missing.is_dir():
        shutil.rmtree(missing)
    else:
        missing.unlink()
    result, _ = _serve(tmp_path)
    assert 0 != result.returncode
    lines = result.stderr.strip().splitlines()
    assert 1 == len(lines), result.stderr  # no traceback, no attempt at NATS (no nats_unreachable lines)
    assert lines[0].startswith(f"opsroom: deploy/hub.toml: {key}: no such "), lines[0]
    assert rel in lines[0]
    assert "" == result.stdout


def test_nats_unreachable_is_named_and_the_hub_gives_up(tmp_path: Path) -> None:
    """With no nats-server, a line naming the URL on each attempt, then one clear line, within the bound."""
    ports = _dev_deploy(tmp_path)  # nothing listens on ports["nats"]: nats-server is never started
    bound = 3
    config = tmp_path / "deploy/hub.toml"
    text = config.read_text(encoding="utf-8")
    assert "connect_timeout_seconds = 30" in text  # the documented default, spelt out in the example config
    config.write_text(text.replace("connect_timeout_seconds = 30", f"connect_timeout_seconds = {bound}"))
    url = f"nats://127.0.0.1:{ports['nats']}"
    result, took = _serve(tmp_path, within=bound + START_ALLOWANCE + STEP_LIVENESS)
    assert 0 != result.returncode
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    attempts = [json.loads(line) for line in lines if '"nats_unreachable"' in line]
    assert len(attempts) >= 2, result.stderr  # about one a second
    assert all(a["url"] == url for a in attempts)
    assert lines[-1] == (
        f"opsroom: cannot reach NATS at {url} within {bound} s (nats.connect_timeout_seconds): "
        "start nats-server there, or correct nats.servers"
    )
    assert took >= bound
    assert took < bound + START_ALLOWANCE, f"took {took:.1f} s"  # liveness: it gives up, it does not hang


async def test_each_unreachable_server_is_named_and_a_reachable_one_is_used() -> None:
    """Of a list, the server that does not answer is named; the hub goes on with the one that does."""
    accepted = asyncio.Event()

    async def took(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        writer.close()

    listening = await asyncio.start_server(took, "127.0.0.1", 0)
    up = f"nats://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
    down = f"nats://127.0.0.1:{free_port()}"
    cfg = NatsConfig(servers=(down, up), connect_timeout=timedelta(seconds=STOP_LIVENESS))
    try:
        with capture_logs() as logs:
            await _reach_one(cfg, asyncio.get_running_loop().time() + cfg.connect_timeout.total_seconds())
        await asyncio.wait_for(accepted.wait(), STOP_LIVENESS)
    finally:
        listening.close()
        await listening.wait_closed()
    assert [(down, 1)] == [(e["url"], e["attempt"]) for e in logs if e["event"] == "nats_unreachable"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nats://10.0.0.1:4223", ("10.0.0.1", 4223)),
        ("tls://nats-1.opsroom.internal:4222", ("nats-1.opsroom.internal", 4222)),
        ("nats://127.0.0.1", ("127.0.0.1", 4222)),
        ("127.0.0.1:5222", ("127.0.0.1", 5222)),
    ],
)
def test_server_urls_give_host_and_port(url: str, expected: tuple[str, int]) -> None:
    assert expected == _host_port(url)
