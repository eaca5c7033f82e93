"""The files in deploy/ are valid for the programs that read them, and keep the durability setting."""

from __future__ import annotations

import configparser
import importlib
import re
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from broker.config import load
from broker.dev.certs import NATS_HUB_USER, nats_authorization
from broker.dev.embedded import CONFIG_TEMPLATE, SYNC_ALWAYS, find_nats_server

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NATS_CONFIGS = sorted((ROOT / "deploy" / "nats").rglob("*.conf"))


# Where each shipped nats-server config includes the hub's account from (relative to its folder).
AUTH_INCLUDE = re.compile(r'^include "((?:\.\./pki/)?nats-auth\.conf)"$', re.MULTILINE)


@pytest.mark.parametrize("path", NATS_CONFIGS, ids=[p.name for p in NATS_CONFIGS])
def test_nats_configs_are_valid_and_sync_always(path: Path, tmp_path: Path) -> None:
    """nats-server accepts each config (-t) with the account dev-certs writes where it includes it; sync_interval: always."""
    copy = tmp_path / "deploy" / path.relative_to(DEPLOY)
    copy.parent.mkdir(parents=True)
    copy.write_text(path.read_text())
    include = AUTH_INCLUDE.search(path.read_text())
    assert include, f"{path.name} admits clients without the hub's credentials"
    auth = copy.parent / include.group(1)
    auth.parent.mkdir(parents=True, exist_ok=True)
    auth.write_text(nats_authorization("development-password"))
    result = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(copy)], capture_output=True, text=True, check=False
    )
    assert 0 == result.returncode, result.stderr
    assert re.search(r"^\s*sync_interval:\s*always\s*$", path.read_text(), re.MULTILINE)
    auth.unlink()  # without the account the server does not start: no config runs open by mistake
    missing = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(copy)], capture_output=True, text=True, check=False
    )
    assert 0 != missing.returncode


@pytest.mark.parametrize("name", ["hub.toml", "hub-cluster.toml"])
def test_example_hub_configs_connect_with_the_hubs_nats_user(name: str) -> None:
    """The shipped hub configs name the user the account grants and the password file dev-certs writes."""
    cfg = load(DEPLOY / name)
    assert NATS_HUB_USER == cfg.nats.user
    assert DEPLOY / "pki" / "nats-hub.password" == cfg.nats.password_file


def test_embedded_config_is_sync_always() -> None:
    """The embedded default's config sets sync_interval: always too."""
    assert "sync_interval: always" in SYNC_ALWAYS
    assert "{sync}" in CONFIG_TEMPLATE


def test_example_hub_config_loads() -> None:
    """deploy/hub.toml is a valid hub config that requires sync_always and registers its agencies."""
    cfg = load(ROOT / "deploy" / "hub.toml")
    assert cfg.nats.require_sync_always
    assert cfg.nats.monitor_urls
    assert {"it.nue.cur.to", "it.pl.001272", "it.cc.cp.to", "it.ps.questura.to"} == cfg.agency_ids


CLUSTER_DIR = ROOT / "deploy" / "nats" / "cluster"
CLUSTER_CONFIGS = [CLUSTER_DIR / f"nats-{n}.conf" for n in (1, 2, 3)]


def _setting(text: str, key: str) -> str:
    found = re.search(rf"^\s*{key}:\s*(\S+)", text, re.MULTILINE)
    assert found, key
    return found.group(1)


def _cluster_block(text: str) -> str:
    found = re.search(r"^cluster\s*\{(.*?)^\}", text, re.MULTILINE | re.DOTALL)
    assert found, "no cluster block"
    return found.group(1)


def test_cluster_configs_form_one_three_node_cluster() -> None:
    """The three node configs share the cluster name and routes, which name all three nodes; names are unique."""
    assert sorted(CLUSTER_DIR.glob("*.conf")) == CLUSTER_CONFIGS
    assert set(CLUSTER_CONFIGS) <= set(NATS_CONFIGS)  # so nats-server -t checks each (first test)
    texts = [p.read_text() for p in CLUSTER_CONFIGS]
    assert 3 == len({_setting(t, "server_name") for t in texts})
    blocks = [_cluster_block(t) for t in texts]
    assert 1 == len({_setting(b, "name") for b in blocks})
    routes = [tuple(re.findall(r"nats-route://([\w.-]+):(\d+)", b)) for b in blocks]
    assert 1 == len(set(routes))
    assert 3 == len({host for host, _ in routes[0]})
    # Apart from the node's own name, the files are the same.
    assert 1 == len({re.sub(r"(node |opsroom-nats-)\d", r"\1N", t) for t in texts})


def test_cluster_hub_config_uses_three_replicas_on_the_three_nodes() -> None:
    """deploy/hub-cluster.toml loads, keeps 3 replicas, and names each node's client and monitoring URL."""
    cfg = load(ROOT / "deploy" / "hub-cluster.toml")
    assert 3 == cfg.nats.replicas
    assert 3 == len(cfg.nats.servers)
    assert 3 == len(cfg.nats.monitor_urls)
    assert cfg.nats.require_sync_always
    hosts = {
        host for host, _ in re.findall(r"nats-route://([\w.-]+):(\d+)", _cluster_block(CLUSTER_CONFIGS[0].read_text()))
    }
    assert hosts == {re.sub(r"^nats://([\w.-]+):\d+$", r"\1", s) for s in cfg.nats.servers}
    assert hosts == {re.sub(r"^http://([\w.-]+):\d+$", r"\1", u) for u in cfg.nats.monitor_urls}
    # Everything else is the single-node example's.
    single = load(ROOT / "deploy" / "hub.toml")
    assert single == replace(cfg, nats=single.nats)
    assert replace(single.nats, servers=(), monitor_urls=(), replicas=3) == replace(
        cfg.nats, servers=(), monitor_urls=()
    )


def _unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(path.read_text(encoding="utf-8"))
    return unit


@pytest.mark.parametrize("name", ["opsroom-hub.service", "nats-server.service", "opsroom-adapter@.service"])
def test_systemd_units_run_shipped_commands_with_shipped_configs(name: str) -> None:
    unit = _unit(DEPLOY / "systemd" / name)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    command = shlex.split(unit["Service"]["ExecStart"])
    assert command[0].startswith("/opt/opsroom/.venv/bin/")
    if name == "nats-server.service":
        assert command[1:3] == ["--config", "/etc/opsroom/nats/single.conf"]
        assert (DEPLOY / "nats" / "single.conf").is_file()
    elif name == "opsroom-hub.service":
        assert command[-3:] == ["serve", "--config", "/etc/opsroom/hub.toml"]
        assert (DEPLOY / "hub.toml").is_file()
    else:
        assert command[1:3] == ["adapter", "%i"]
        assert unit["Service"]["EnvironmentFile"] == "/etc/opsroom/adapters/%i.env"


@pytest.mark.parametrize("fmt", ["cap", "eido", "emsi", "nue112"])
def test_adapter_examples_parse_with_their_connector(fmt: str) -> None:
    """The example options for opsroom-adapter@<format> are options the connector takes."""
    text = (DEPLOY / "systemd" / f"opsroom-adapter-{fmt}.env").read_text(encoding="utf-8")
    [line] = [line for line in text.splitlines() if line.startswith("OPSROOM_ADAPTER_OPTIONS=")]
    options = shlex.split(line.removeprefix("OPSROOM_ADAPTER_OPTIONS="))
    module = importlib.import_module(f"adapters.connect.{fmt}")
    args = module.argument_parser().parse_args([*options, "--data", "/var/lib/opsroom-adapter-x"])
    assert args.cert.name == f"{args.agency}.pem"
    assert args.key.name == f"{args.agency}-key.pem"
