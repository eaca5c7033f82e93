"""The hub's Grafana dashboards, as code: writes deploy/grafana/dashboards/*.json (grafana-foundation-sdk).

    .venv/bin/python deploy/grafana/generate.py           # write the JSON files
    .venv/bin/python deploy/grafana/generate.py --check   # fail if the committed files differ

Three dashboards over the hub's metrics and the recording rules of deploy/prometheus: the hub
overview (traffic, latency percentiles, refusals, SLO budget left), the rooms (a row per agency:
online, backlog, deliveries and acknowledgements, escalations, expiries) and the audit and store
health. tests/integration/test_dashboards.py checks that every query names only metrics a running
hub exports (or the rules record) and that each file loads as a Grafana dashboard model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def _query(expr: str, legend: str = "") -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).datasource(DATASOURCE)
    return query.legend_format(legend) if legend else query


def _series(
    title: str, unit: str, *queries: prometheus.Dataquery, height: int = 8, width: int = 12
) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).height(height).span(width).datasource(DATASOURCE)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def _stat(title: str, unit: str, query: prometheus.Dataquery, width: int = 4) -> stat.Panel:
    return stat.Panel().title(title).unit(unit).height(4).span(width).datasource(DATASOURCE).with_target(query)


def _base(uid: str, title: str) -> dashboard.Dashboard:
    source = dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
    return (
        dashboard.Dashboard(title).uid(uid).tags(["opsroom"]).refresh("30s").time("now-6h", "now").with_variable(source)
    )


def overview() -> dashboard.Dashboard:
    """Traffic, latency, refusals and the service levels' budgets."""
    return (
        _base("opsroom-overview", "opsroom / hub overview")
        .with_row(dashboard.Row("Service levels (budget left over 6 h; 1 = untouched)"))
        .with_panel(_stat("Deliveries within 1 s (99%)", "percentunit",
                          _query("1 - opsroom:delivery_over_1s:ratio_rate6h / 0.01"), width=8))
        .with_panel(_stat("Publishes answered within 0.5 s (99%)", "percentunit",
                          _query("1 - opsroom:publish_ack_over_500ms:ratio_rate6h / 0.01"), width=8))
        .with_panel(_stat("No hub-side failures (99.9%)", "percentunit",
                          _query("1 - opsroom:publish_hub_failures:ratio_rate6h / 0.001"), width=8))
        .with_row(dashboard.Row("Traffic"))
        .with_panel(_series("Publishes by outcome", "reqps",
                            _query("sum by (outcome) (rate(opsroom_publishes_total[$__rate_interval]))", "{{outcome}}")))
        .with_panel(_series("Refusals by code and reason", "reqps",
                            _query("sum by (code, reason) (rate(opsroom_refusals_total[$__rate_interval]))",
                                   "{{code}} {{reason}}")))
        .with_panel(_series("Deliveries and acknowledgements", "ops",
                            _query("sum(rate(opsroom_deliveries_total[$__rate_interval]))", "delivered"),
                            _query("sum(rate(opsroom_acks_total[$__rate_interval]))", "acknowledged")))
        .with_panel(_series("Publishes in flight by lane", "short",
                            _query("sum by (lane) (opsroom_publishes_in_flight)", "{{lane}}")))
        .with_row(dashboard.Row("Latency"))
        .with_panel(_series("Publish to acknowledgement", "s",
                            _query("histogram_quantile(0.5, sum by (le) (rate(opsroom_publish_to_ack_seconds_bucket[$__rate_interval])))", "p50"),
                            _query("histogram_quantile(0.99, sum by (le) (rate(opsroom_publish_to_ack_seconds_bucket[$__rate_interval])))", "p99")))
        .with_panel(_series("Store to delivery", "s",
                            _query("histogram_quantile(0.5, sum by (le) (rate(opsroom_publish_to_delivery_seconds_bucket[$__rate_interval])))", "p50"),
                            _query("histogram_quantile(0.99, sum by (le) (rate(opsroom_publish_to_delivery_seconds_bucket[$__rate_interval])))", "p99")))
        .with_panel(_series("JetStream write time (p99) by lane and mode", "s",
                            _query("histogram_quantile(0.99, sum by (le, lane, mode) (rate(opsroom_commit_seconds_bucket[$__rate_interval])))",
                                   "{{lane}} {{mode}}")))
        .with_panel(_series("Messages per write (p50) by lane and mode", "short",
                            _query("histogram_quantile(0.5, sum by (le, lane, mode) (rate(opsroom_commit_messages_bucket[$__rate_interval])))",
                                   "{{lane}} {{mode}}")))
    )  # fmt: skip


def rooms() -> dashboard.Dashboard:
    """A row per agency: is its room online, what waits for it, what it takes."""
    agency = (
        dashboard.QueryVariable("agency")
        .label("Agency")
        .query("label_values(opsroom_room_online, agency)")
        .datasource(DATASOURCE)
        .multi(True)
        .include_all(True)
    )
    where = 'agency="$agency"'
    return (
        _base("opsroom-rooms", "opsroom / rooms")
        .with_variable(agency)
        .with_row(dashboard.Row("$agency").repeat("agency"))
        .with_panel(_stat("Online (any replica)", "bool_on_off", _query(f"max(opsroom_room_online{{{where}}})")))
        .with_panel(_stat("Deliveries waiting", "short", _query(f"max(sum by (instance) (opsroom_waiting{{{where}}}))")))
        .with_panel(_stat("Oldest unacknowledged", "s", _query(f"max(opsroom_oldest_unacked_seconds{{{where}}})")))
        .with_panel(_stat("Sent again, unacknowledged", "short", _query(f"max(sum by (instance) (opsroom_redelivered{{{where}}}))")))
        .with_panel(_stat("Deliveries / s", "ops", _query(f"sum(rate(opsroom_deliveries_total{{{where}}}[$__rate_interval]))")))
        .with_panel(_stat("Acknowledgements / s", "ops", _query(f"sum(rate(opsroom_acks_total{{{where}}}[$__rate_interval]))")))
        .with_panel(_stat("Escalations (1 h)", "short", _query(f"sum(increase(opsroom_escalations_total{{{where}}}[1h]))")))
        .with_panel(_stat("Expired (1 h)", "short", _query(f"sum(increase(opsroom_expired_total{{{where}}}[1h]))")))
    )  # fmt: skip


def health() -> dashboard.Dashboard:
    """The audit log, the agreements and the store."""
    return (
        _base("opsroom-health", "opsroom / audit and store")
        .with_row(dashboard.Row("Audit log"))
        .with_panel(_series("Audit entries written", "ops", _query("sum(rate(opsroom_audit_entries_total[$__rate_interval]))", "entries")))
        .with_panel(_series("Audit write time (p99)", "s",
                            _query("histogram_quantile(0.99, sum by (le) (rate(opsroom_audit_write_seconds_bucket[$__rate_interval])))", "p99")))
        .with_panel(_stat("Since the last signed audit entry (oldest replica)", "s",
                          _query("max(time() - opsroom_audit_last_write_timestamp_seconds)"), width=8))
        .with_panel(_stat("Tamper alerts (24 h)", "short", _query("sum(increase(opsroom_audit_tamper_alerts_total[24h]))"), width=8))
        .with_panel(_stat("Agreements in force", "short", _query("max(opsroom_agreements_loaded)"), width=8))
        .with_panel(_stat("Agreement reloads refused (24 h)", "short",
                          _query('sum(increase(opsroom_agreement_reloads_total{outcome="refused"}[24h]))'), width=8))
        .with_row(dashboard.Row("Store and sessions"))
        .with_panel(_series("JetStream writes refused or unconfirmed", "short",
                            _query("sum by (kind) (increase(opsroom_commit_failures_total[$__rate_interval]))", "{{kind}}")))
        .with_panel(_series("Session gaps (deliveries lost between JetStream and the hub)", "short",
                            _query("sum by (agency) (increase(opsroom_session_gaps_total[$__rate_interval]))", "{{agency}}")))
        .with_panel(_series("Open delivery sessions", "short", _query("sum by (agency) (opsroom_sessions)", "{{agency}}")))
        .with_panel(_series("Replicas answering scrapes", "short", _query('sum(up{job="opsroom-hub"})', "up")))
        .with_panel(_series("Replicas connected to NATS", "short", _query("sum(opsroom_nats_connected)", "connected")))
        .with_panel(_series("Versions running", "short", _query("count by (version) (opsroom_build_info)", "{{version}}")))
    )  # fmt: skip


DASHBOARDS = {"overview": overview, "rooms": rooms, "health": health}


def rendered() -> dict[str, str]:
    """File name -> JSON text of each dashboard."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {f"opsroom-{name}.json": encoder.encode(build().build()) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards, or with --check compare them with the committed files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for name, text in rendered().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale: {', '.join(stale)}; run python deploy/grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
