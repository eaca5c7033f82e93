"""What `opsroom status` shows, and how (pure): NATS, the streams, and each agency's room at a glance.

The snapshot is read by broker.delivery.status_reader from JetStream and nats-server's monitoring
endpoint; this module only holds it and renders it as one screen of text or as JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ServerStatus:
    """One nats-server as its monitoring endpoint answered (or did not)."""

    url: str
    reachable: bool
    version: str = ""
    storage_bytes: int = 0
    max_storage_bytes: int = 0
    error: str = ""


@dataclass(frozen=True)
class StreamStatus:
    """One of the hub's streams."""

    name: str
    messages: int
    bytes: int


@dataclass(frozen=True)
class AgencyStatus:
    """One agency's room: its session, and what waits for it on each lane."""

    agency_id: str
    name: str
    receives: str
    online: bool
    replica: str = ""
    since: datetime | None = None
    last_seen: datetime | None = None
    waiting: dict[str, int] = field(default_factory=dict)
    oldest_unacked: dict[str, float] = field(default_factory=dict)  # seconds, by lane, of the lanes holding any
    last_ack: datetime | None = None  # when the room last moved an ack floor (either lane)
    escalations_pending: int = 0  # requests to this room whose escalation deadline runs, not answered yet


@dataclass(frozen=True)
class Snapshot:
    """The hub as `opsroom status` saw it at one moment."""

    at: datetime
    servers: Sequence[ServerStatus]
    streams: Sequence[StreamStatus]
    agencies: Sequence[AgencyStatus]
    escalation_timers: int = 0  # escalation deadlines running, over every room

    @property
    def replicas(self) -> list[str]:
        """The hub replicas serving a room now."""
        return sorted({a.replica for a in self.agencies if a.online and a.replica})


def to_json(snapshot: Snapshot) -> dict[str, Any]:
    """The snapshot as JSON-ready data (times in ISO 8601)."""

    def convert(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        return value

    out: dict[str, Any] = convert(asdict(snapshot))
    out["replicas"] = snapshot.replicas
    return out


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover - the loop returns


def _duration(seconds: float) -> str:
    whole = max(0, int(seconds))
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m"
    return f"{whole // 3600}h"


def _ago(at: datetime, then: datetime | None) -> str:
    if then is None:
        return "-"
    return f"{_duration((at - then).total_seconds())} ago"


def _oldest(a: AgencyStatus) -> str:
    return _duration(max(a.oldest_unacked.values())) if a.oldest_unacked else "-"


def render(snapshot: Snapshot) -> str:
    """One screen of text: servers and streams, then a row per agency, the offline ones with traffic first."""
    at = snapshot.at
    lines = [f"opsroom status at {at.isoformat(timespec='seconds')}"]
    replicas = ", ".join(snapshot.replicas) or "none serving a room"
    lines.append(f"hub replicas: {replicas}")
    for server in snapshot.servers:
        if not server.reachable:
            lines.append(f"nats {server.url}: UNREACHABLE ({server.error})")
            continue
        used = _size(server.storage_bytes)
        limit = f" of {_size(server.max_storage_bytes)}" if server.max_storage_bytes else ""
        lines.append(f"nats {server.url}: up, {server.version}, JetStream storage {used}{limit}")
    lines.extend(f"stream {s.name}: {s.messages:,} messages, {_size(s.bytes)}" for s in snapshot.streams)
    lines.append(f"escalation deadlines running: {snapshot.escalation_timers:,}")
    lines.append("")
    header = (
        f"{'agency':<24} {'room':<8} {'since':<10} {'last seen':<10} {'urgent':>7} {'bulk':>7} {'oldest':>6} "
        f"{'last ack':<10} {'esc':>4}  receives  replica"
    )
    lines.append(header)
    lines.append("-" * len(header))

    def order(a: AgencyStatus) -> tuple[int, str]:
        waiting = any(a.waiting.values())
        return (0 if not a.online and waiting else 1 if not a.online else 2, a.agency_id)

    for a in sorted(snapshot.agencies, key=order):
        room = "online" if a.online else "OFFLINE"
        urgent, bulk = a.waiting.get("urgent", 0), a.waiting.get("bulk", 0)
        lines.append(
            f"{a.agency_id:<24} {room:<8} {_ago(at, a.since):<10} {_ago(at, a.last_seen):<10} "
            f"{urgent:>7,} {bulk:>7,} {_oldest(a):>6} {_ago(at, a.last_ack):<10} {a.escalations_pending:>4}  "
            f"{a.receives:<8}  {a.replica or '-'}"
        )
    offline = [a.agency_id for a in snapshot.agencies if not a.online and any(a.waiting.values())]
    if offline:
        lines.append("")
        lines.append(f"{len(offline)} room(s) offline with deliveries waiting: " + ", ".join(offline))
    return "\n".join(lines) + "\n"
