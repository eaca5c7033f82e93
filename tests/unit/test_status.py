"""`opsroom status`'s screen and JSON, from a snapshot (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.ops.status import AgencyStatus, ServerStatus, Snapshot, StreamStatus, render, to_json

AT = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)


# fmt: off
def snapshot() -> Snapshot:
    return Snapshot(
        at=AT,
        servers=[
            ServerStatus("http://127.0.0.1:8222", reachable=True, version="2.15.1", storage_bytes=3 * 1024**2,
                         max_storage_bytes=10 * 1024**3),
            ServerStatus("http://10.0.0.2:8222", reachable=False, error="ConnectionRefusedError"),
        ],
        streams=[StreamStatus("OPSROOM", 12345, 4 * 1024**2)],
        escalation_timers=2,
        agencies=[
            AgencyStatus("it.pl.001272", "PL Torino", "grpc", online=True, replica="hub-a/101",
                         since=AT - timedelta(minutes=90), last_seen=AT - timedelta(seconds=4), waiting={"urgent": 0, "bulk": 2}),
            AgencyStatus("it.ps.questura.to", "Questura", "cap", online=False, waiting={"urgent": 7, "bulk": 0},
                         oldest_unacked={"urgent": 1500.0}, last_ack=AT - timedelta(hours=3), escalations_pending=2),
            AgencyStatus("it.cc.cp.to", "Carabinieri", "eido", online=False, waiting={"urgent": 0, "bulk": 0}),
        ],
    )
# fmt: on


def test_the_screen_puts_offline_rooms_with_traffic_first_and_says_so() -> None:
    text = render(snapshot())
    rows = [line.split()[0] for line in text.splitlines() if line.startswith("it.")]
    assert rows == ["it.ps.questura.to", "it.cc.cp.to", "it.pl.001272"]
    assert "hub replicas: hub-a/101" in text
    assert "nats http://127.0.0.1:8222: up, 2.15.1, JetStream storage 3.0 MB of 10.0 GB" in text
    assert "nats http://10.0.0.2:8222: UNREACHABLE (ConnectionRefusedError)" in text
    assert "stream OPSROOM: 12,345 messages, 4.0 MB" in text
    pl = next(line for line in text.splitlines() if line.startswith("it.pl.001272"))
    assert pl.split()[1:5] == ["online", "90m", "ago", "4s"]
    assert "1 room(s) offline with deliveries waiting: it.ps.questura.to" in text
    assert "escalation deadlines running: 2" in text
    questura = next(line for line in text.splitlines() if line.startswith("it.ps.questura.to")).split()
    # agency, room, since, last seen, urgent, bulk, oldest, last ack (2 words), escalations pending
    assert questura[:10] == ["it.ps.questura.to", "OFFLINE", "-", "-", "7", "0", "25m", "3h", "ago", "2"]
    assert pl.split()[8:12] == ["-", "-", "0", "grpc"]


def test_json_has_every_field_and_iso_times() -> None:
    data = to_json(snapshot())
    assert data["replicas"] == ["hub-a/101"]
    assert data["agencies"][0]["since"] == (AT - timedelta(minutes=90)).isoformat()
    assert data["agencies"][1]["waiting"] == {"urgent": 7, "bulk": 0}
    assert data["agencies"][1]["oldest_unacked"] == {"urgent": 1500.0}
    assert data["agencies"][1]["last_ack"] == (AT - timedelta(hours=3)).isoformat()
    assert (data["agencies"][1]["escalations_pending"], data["escalation_timers"]) == (2, 2)
    assert data["servers"][1] == {"url": "http://10.0.0.2:8222", "reachable": False, "version": "", "storage_bytes": 0,
                                  "max_storage_bytes": 0, "error": "ConnectionRefusedError"}  # fmt: skip
