"""The shipped Prometheus rules: `promtool check rules`, and `promtool test rules` with each alert firing and not firing.

The promtool test file is built here from CASES (series, time, the alerts expected): the
expected annotations are the rules' own templates filled with the case's labels and value, so a
changed summary does not need a second copy. Every alert of the rules file must have a case in
which it fires and one in which it does not (test_every_alert_has_a_firing_and_a_quiet_case).
promtool comes with Debian's `prometheus` package; .ci/run installs it and sets
OPSROOM_REQUIRE_PROMTOOL=1, so CI fails instead of skipping when it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "opsroom-rules.yml"
PROMTOOL = shutil.which("promtool")
PL, CC, QUESTURA = "it.pl.001272", "it.cc.cp.to", "it.ps.questura.to"

if PROMTOOL is None and os.environ.get("OPSROOM_REQUIRE_PROMTOOL") != "1":
    pytest.skip("promtool not installed (Debian: apt install prometheus)", allow_module_level=True)


@dataclass(frozen=True)
class Case:
    """Series, a time, and the alerts of one name expected then: each its labels (beyond the rule's) and value."""

    alert: str
    at: str
    series: dict[str, str]
    fires: list[tuple[dict[str, str], str]] = field(default_factory=list)


def burn(metric: str, le: str, slow_share: float) -> dict[str, str]:
    """A histogram where slow_share of 100 observations a minute fall above the bucket le."""
    fast = round(100 * (1 - slow_share), 3)
    return {
        f'{metric}_count{{instance="a"}}': "0+100x420",
        f'{metric}_bucket{{instance="a",le="{le}"}}': f"0+{fast}x420",
    }


DELIVERY = "opsroom_publish_to_delivery_seconds"
ACK = "opsroom_publish_to_ack_seconds"
FAILING = {'opsroom_publishes_total{agency="it.pl.001272",outcome="accepted",instance="a"}': "0+100x420",
           'opsroom_refusals_total{agency="it.pl.001272",code="UNAVAILABLE",reason="STORE_UNAVAILABLE",instance="a"}': "0+10x420"}  # fmt: skip
SENDERS_FAULT = {'opsroom_publishes_total{agency="it.pl.001272",outcome="refused",instance="a"}': "0+100x420",
                 'opsroom_refusals_total{agency="it.pl.001272",code="INVALID_ARGUMENT",reason="INVALID_ENVELOPE",instance="a"}': "0+50x420"}  # fmt: skip

CASES = [
    Case("OpsroomHubDown", "3m", {'up{job="opsroom-hub",instance="hub-a"}': "0x5", 'up{job="opsroom-hub",instance="hub-b"}': "1x5"},
         [({"job": "opsroom-hub", "instance": "hub-a"}, "0")]),
    Case("OpsroomHubDown", "30s", {'up{job="opsroom-hub",instance="hub-a"}': "0x5"}),
    Case("OpsroomRoomOfflineWithTrafficWaiting", "7m",
         {f'opsroom_waiting{{agency="{PL}",lane="urgent",instance="a"}}': "3x10", f'opsroom_waiting{{agency="{PL}",lane="bulk",instance="a"}}': "2x10",
          f'opsroom_room_online{{agency="{PL}",instance="a"}}': "0x10", f'opsroom_room_online{{agency="{PL}",instance="b"}}': "0x10",
          f'opsroom_waiting{{agency="{CC}",lane="urgent",instance="a"}}': "3x10", f'opsroom_room_online{{agency="{CC}",instance="b"}}': "1x10"},
         [({"agency": PL}, "5")]),
    Case("OpsroomRoomOfflineWithTrafficWaiting", "3m",
         {f'opsroom_waiting{{agency="{PL}",lane="urgent",instance="a"}}': "5x10", f'opsroom_room_online{{agency="{PL}",instance="a"}}': "0x10"}),
    Case("OpsroomBacklogGrowing", "45m",
         {f'opsroom_waiting{{agency="{QUESTURA}",lane="bulk",instance="a"}}': "0+200x60",
          f'opsroom_waiting{{agency="{PL}",lane="bulk",instance="a"}}': "100x60"},
         [({"agency": QUESTURA, "lane": "bulk", "instance": "a"}, "20800")]),
    Case("OpsroomBacklogGrowing", "45m", {f'opsroom_waiting{{agency="{PL}",lane="bulk",instance="a"}}': "4000-10x60"}),
    Case("OpsroomOldestUnackedOverBound", "10m",
         {f'opsroom_oldest_unacked_seconds{{agency="{PL}",lane="urgent",instance="a"}}': "400+60x10",
          f'opsroom_oldest_unacked_seconds{{agency="{PL}",lane="urgent",instance="b"}}': "0x10",
          f'opsroom_oldest_unacked_seconds{{agency="{QUESTURA}",lane="bulk",instance="a"}}': "1000+60x10"},
         [({"agency": PL, "lane": "urgent"}, "1000")]),
    Case("OpsroomOldestUnackedOverBound", "10m",
         {f'opsroom_oldest_unacked_seconds{{agency="{PL}",lane="urgent",instance="a"}}': "100 200 300 400 0 10 20 30 40 50 60",
          f'opsroom_oldest_unacked_seconds{{agency="{QUESTURA}",lane="bulk",instance="a"}}': "3000+10x10"}),
    Case("OpsroomEscalations", "4m", {f'opsroom_escalations_total{{agency="{QUESTURA}",outcome="delivered",instance="a"}}': "0 0 1 1 1"},
         [({"agency": QUESTURA}, "1.1538461538461537")]),
    Case("OpsroomEscalations", "4m", {f'opsroom_escalations_total{{agency="{QUESTURA}",outcome="delivered",instance="a"}}': "1 1 1 1 1"}),
    Case("OpsroomDeliveryLatencyFastBurn", "60m", burn(DELIVERY, "1.0", 0.5), [({}, "0.5")]),
    Case("OpsroomDeliveryLatencyFastBurn", "60m", burn(DELIVERY, "1.0", 0.005)),
    Case("OpsroomDeliveryLatencySlowBurn", "60m", burn(DELIVERY, "1.0", 0.1), [({}, "0.1")]),
    Case("OpsroomDeliveryLatencySlowBurn", "60m", burn(DELIVERY, "1.0", 0.005)),
    Case("OpsroomPublishAckFastBurn", "60m", burn(ACK, "0.5", 0.5), [({}, "0.5")]),
    Case("OpsroomPublishAckFastBurn", "60m", burn(ACK, "0.5", 0.1)),
    Case("OpsroomPublishAckSlowBurn", "60m", burn(ACK, "0.5", 0.1), [({}, "0.1")]),
    Case("OpsroomPublishAckSlowBurn", "60m", burn(ACK, "0.5", 0.01)),
    Case("OpsroomHubFailuresFastBurn", "60m", FAILING, [({}, "0.1")]),
    Case("OpsroomHubFailuresFastBurn", "60m", SENDERS_FAULT),
    Case("OpsroomHubFailuresSlowBurn", "60m", FAILING, [({}, "0.1")]),
    Case("OpsroomHubFailuresSlowBurn", "60m", SENDERS_FAULT),
    Case("OpsroomStoreWritesFailing", "3m", {'opsroom_commit_failures_total{kind="atomic",instance="a"}': "0 0 1 1"}, [({}, "1")]),
    Case("OpsroomStoreWritesFailing", "3m", {'opsroom_commit_failures_total{kind="atomic",instance="a"}': "2 2 2 2"}),
    Case("OpsroomNatsDisconnected", "3m", {'opsroom_nats_connected{instance="a"}': "1 0 0 0 0", 'opsroom_nats_connected{instance="b"}': "1x5"},
         [({"instance": "a"}, "0")]),
    Case("OpsroomNatsDisconnected", "3m", {'opsroom_nats_connected{instance="a"}': "1 1 0 1 1"}),
    Case("OpsroomAuditStale", "30m",
         {'opsroom_audit_last_write_timestamp_seconds{instance="a"}': "60x40",
          'opsroom_publishes_total{agency="it.nue.cur.to",outcome="accepted",instance="a"}': "0+10x40"},
         [({"instance": "a"}, "1740")]),
    Case("OpsroomAuditStale", "30m",
         {'opsroom_audit_last_write_timestamp_seconds{instance="a"}': "60x40",
          'opsroom_publishes_total{agency="it.nue.cur.to",outcome="accepted",instance="a"}': "0x40"}),
    Case("OpsroomStoreFillingUp", "60m",
         {'opsroom_jetstream_storage_bytes{server="http://n1:8222",instance="a"}': "0+1000000x70",
          'opsroom_jetstream_max_storage_bytes{server="http://n1:8222",instance="a"}': "100000000x70"},
         [({"server": "http://n1:8222", "instance": "a"}, "300000000")]),
    Case("OpsroomStoreFillingUp", "60m",
         {'opsroom_jetstream_storage_bytes{server="http://n1:8222",instance="a"}': "0+1000x70",
          'opsroom_jetstream_max_storage_bytes{server="http://n1:8222",instance="a"}': "100000000x70"}),
    Case("OpsroomStoreNearlyFull", "15m",
         {'opsroom_jetstream_storage_bytes{server="http://n1:8222",instance="a"}': "95x20",
          'opsroom_jetstream_max_storage_bytes{server="http://n1:8222",instance="a"}': "100x20"},
         [({"server": "http://n1:8222", "instance": "a"}, "0.95")]),
    Case("OpsroomStoreNearlyFull", "15m",
         {'opsroom_jetstream_storage_bytes{server="http://n1:8222",instance="a"}': "50x20",
          'opsroom_jetstream_max_storage_bytes{server="http://n1:8222",instance="a"}': "100x20"}),
    Case("OpsroomNatsMonitorDown", "7m", {'opsroom_nats_monitor_up{server="http://n1:8222",instance="a"}': "0x10"},
         [({"server": "http://n1:8222", "instance": "a"}, "0")]),
    Case("OpsroomNatsMonitorDown", "7m", {'opsroom_nats_monitor_up{server="http://n1:8222",instance="a"}': "1x10"}),
    Case("OpsroomAuditTamperDetected", "3m", {'opsroom_audit_tamper_alerts_total{instance="a"}': "0 0 1 1"},
         [({"instance": "a"}, "1.25")]),
    Case("OpsroomAuditTamperDetected", "3m", {'opsroom_audit_tamper_alerts_total{instance="a"}': "0 0 0 0"}),
    Case("OpsroomAgreementReloadRefused", "3m",
         {'opsroom_agreement_reloads_total{outcome="refused",instance="a"}': "0 1 1 1",
          'opsroom_agreement_reloads_total{outcome="reloaded",instance="a"}': "0 1 2 3"},
         [({"outcome": "refused", "instance": "a"}, "1.5")]),
    Case("OpsroomAgreementReloadRefused", "3m", {'opsroom_agreement_reloads_total{outcome="reloaded",instance="a"}': "0 1 2 3"}),
    Case("OpsroomRefusalsSpiking", "15m",
         {f'opsroom_refusals_total{{agency="{PL}",code="INVALID_ARGUMENT",reason="INVALID_ENVELOPE",instance="a"}}': "0+120x20",
          f'opsroom_refusals_total{{agency="{CC}",code="INVALID_ARGUMENT",reason="INVALID_ENVELOPE",instance="a"}}': "0+30x20"},
         [({"agency": PL, "reason": "INVALID_ENVELOPE"}, "2")]),
    Case("OpsroomRefusalsSpiking", "5m",
         {f'opsroom_refusals_total{{agency="{PL}",code="INVALID_ARGUMENT",reason="INVALID_ENVELOPE",instance="a"}}': "0+120x20"}),
    Case("OpsroomOverloaded", "10m",
         {f'opsroom_refusals_total{{agency="{PL}",code="RESOURCE_EXHAUSTED",reason="HUB_OVERLOADED",instance="a"}}': "0+10x20"},
         [({"agency": PL}, "0.16666666666666666")]),
    Case("OpsroomOverloaded", "10m",
         {f'opsroom_refusals_total{{agency="{PL}",code="RESOURCE_EXHAUSTED",reason="HUB_OVERLOADED",instance="a"}}': "5x20"}),
    Case("OpsroomDeliveriesExpiring", "3m", {f'opsroom_expired_total{{agency="{PL}",instance="a"}}': "0 0 2 2"}, [({"agency": PL}, "2.5")]),
    Case("OpsroomDeliveriesExpiring", "3m", {f'opsroom_expired_total{{agency="{PL}",instance="a"}}': "2 2 2 2"}),
    Case("OpsroomSessionGaps", "3m", {f'opsroom_session_gaps_total{{agency="{PL}",instance="a"}}': "0 1 1 1"}, [({"agency": PL}, "1.5")]),
    Case("OpsroomSessionGaps", "3m", {f'opsroom_session_gaps_total{{agency="{PL}",instance="a"}}': "1 1 1 1"}),
]  # fmt: skip


def alerts() -> dict[str, dict[str, Any]]:
    """The alerting rules of the shipped file, by name."""
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


_TEMPLATE = re.compile(r"\{\{\s*\$(labels\.(\w+)|value)\s*\}\}")


def render(text: str, labels: dict[str, str], value: str) -> str:
    """A rule's annotation with {{ $labels.x }} and {{ $value }} filled, as Prometheus would."""
    return _TEMPLATE.sub(lambda m: value if m.group(1) == "value" else labels.get(m.group(2), ""), text)


def promtool_tests() -> dict[str, Any]:
    rules = alerts()
    tests = []
    for case in CASES:
        rule = rules[case.alert]
        expected = []
        for extra, value in case.fires:
            labels = {**rule.get("labels", {}), **extra}
            annotations = {k: render(v, labels, value) for k, v in rule["annotations"].items()}
            expected.append({"exp_labels": labels, "exp_annotations": annotations})
        tests.append({
            "interval": "1m",
            "input_series": [{"series": name, "values": values} for name, values in case.series.items()],
            "alert_rule_test": [{"eval_time": case.at, "alertname": case.alert, "exp_alerts": expected}],
        })  # fmt: skip
    return {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is required here (Debian: apt install prometheus)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False)


def test_the_rules_are_valid() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_fires_and_stays_quiet_as_its_cases_say(tmp_path: Path) -> None:
    path = tmp_path / "opsroom-rules.test.yml"
    path.write_text(yaml.safe_dump(promtool_tests(), sort_keys=False), encoding="utf-8")
    done = promtool("test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_can_fail(tmp_path: Path) -> None:
    broken = promtool_tests()
    broken["tests"][0]["alert_rule_test"][0]["exp_alerts"] = []  # OpsroomHubDown fires: expecting nothing fails
    path = tmp_path / "broken.test.yml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False), encoding="utf-8")
    assert promtool("test", "rules", str(path)).returncode != 0


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing = {c.alert for c in CASES if c.fires}
    quiet = {c.alert for c in CASES if not c.fires}
    assert set(alerts()) == firing == quiet


def test_every_alert_names_its_runbook_section() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for name, rule in alerts().items():
        assert f"docs/operations.md#{name.lower()}" in rule["annotations"]["description"], name
        assert f"### {name}" in operations, name
