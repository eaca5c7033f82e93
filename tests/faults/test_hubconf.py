"""The hub config file the fault tests write: it reads back as the HubConfig it was written from."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from broker.config import Agency, AgreementsConfig, AuditConfig, HubConfig, NatsConfig, TlsConfig, load
from broker.policy.routing import AllowRule
from broker.validate.checker import Limits
from tests.faults.agreement import CC, CUR, QUESTURA
from tests.faults.hubconf import write_hub_toml

pytestmark = pytest.mark.faults


def a_config(root: Path) -> HubConfig:
    """Settings away from their defaults wherever the file can say so."""
    tls = TlsConfig(root / "ca.pem", root / "hub.pem", root / "hub-key.pem")
    return HubConfig(
        listen="127.0.0.1:7443",
        metrics_listen="127.0.0.1:9464",
        tls=tls,
        nats=NatsConfig(
            servers=("nats://127.0.0.1:4222", "nats://127.0.0.1:4223"),
            monitor_urls=("http://127.0.0.1:8222", "http://127.0.0.1:8223"),
            stream="FAULTS",
            subject_prefix="faults",
            replicas=3,
            duplicate_window=timedelta(minutes=2),
            max_age=timedelta(hours=5),
            max_bytes=1 << 30,
            ack_wait=timedelta(seconds=2.5),
            max_ack_pending=500,
            commit_max_messages=200,
            commit_max_bytes=1 << 20,
            atomic_threshold=8,
            commit_timeout=timedelta(seconds=4),
            tls=tls,
        ),
        agencies=(
            Agency(CUR, '112 NUE - CUR "Torino"'),
            Agency(QUESTURA, "Questura", drill_only=True),
            Agency(CC, "CC"),
        ),
        allow=(AllowRule("one", frozenset({CUR, CC}), frozenset({QUESTURA})),),
        audit=AuditConfig(
            root / "audit-key.pem",
            trusted_keys=(root / "other.pub.pem",),
            writer="replica-2",
            duplicate_window=timedelta(hours=3),
            checkpoint_every=10,
            retention=timedelta(days=30),
            purge_interval=timedelta(minutes=7),
        ),
        max_envelope_bytes=32_000,
        max_batch_envelopes=50,
        max_request_bytes=1 << 22,
        grace=timedelta(seconds=3),
        heartbeat=timedelta(seconds=4),
        limits=Limits(max_recipients=5, max_text=100, max_future_skew=timedelta(seconds=30)),
    )


def test_written_config_reads_back(tmp_path: Path) -> None:
    cfg = a_config(tmp_path)
    assert cfg == load(write_hub_toml(cfg, tmp_path / "hub.toml"))


def test_agreements_and_no_audit_read_back(tmp_path: Path) -> None:
    cfg = replace(
        a_config(tmp_path),
        allow=(),
        agreements=AgreementsConfig(tmp_path / "agreements", timedelta(seconds=1)),
        audit=None,
    )
    assert cfg == load(write_hub_toml(cfg, tmp_path / "hub.toml"))


def test_a_setting_the_file_cannot_say_is_refused(tmp_path: Path) -> None:
    cfg = a_config(tmp_path)
    assert cfg.audit is not None
    cfg = replace(cfg, audit=replace(cfg.audit, retention=timedelta(hours=36)))
    with pytest.raises(ValueError, match="whole days"):
        write_hub_toml(cfg, tmp_path / "hub.toml")
