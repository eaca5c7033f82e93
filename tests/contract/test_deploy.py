"""The files in deploy/ are valid for the programs that read them, and keep the durability setting."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from broker.config import load
from broker.embedded import CONFIG_TEMPLATE, SYNC_ALWAYS, find_nats_server

ROOT = Path(__file__).resolve().parents[2]
NATS_CONFIGS = sorted((ROOT / "deploy" / "nats").rglob("*.conf"))


@pytest.mark.parametrize("path", NATS_CONFIGS, ids=[p.name for p in NATS_CONFIGS])
def test_nats_configs_are_valid_and_sync_always(path: Path) -> None:
    """nats-server accepts each config (-t), and each sets jetstream sync_interval: always."""
    result = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(path)], capture_output=True, text=True, check=False
    )
    assert 0 == result.returncode, result.stderr
    assert re.search(r"^\s*sync_interval:\s*always\s*$", path.read_text(), re.MULTILINE)


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
