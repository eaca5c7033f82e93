"""Reads what `opsroom status` shows: nats-server's monitoring, the streams, each agency's session and consumers.

Read-only: it lists streams and consumers and reads each agency's last session record, as any
monitoring would; it changes nothing. A room counts as online when its last session record is
not closed and was refreshed within the presence timeout.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime

from opsroom.store.v1 import store_pb2

from broker.config import Agency, HubConfig
from broker.delivery import handoff
from broker.lanes import LANES
from broker.ops.status import AgencyStatus, ServerStatus, Snapshot, StreamStatus
from broker.store.jetstream import JetStream
from broker.store.model import ConsumerState


def _varz(url: str) -> ServerStatus:
    """One nats-server's /varz, or why it could not be read."""
    target = url.rstrip("/") + "/varz"
    if not target.startswith(("http://", "https://")):
        return ServerStatus(url, reachable=False, error="not an http(s) monitoring URL")
    try:
        with urllib.request.urlopen(target, timeout=5.0) as response:  # noqa: S310 - scheme checked above
            varz = json.load(response)
    except (OSError, ValueError) as exc:
        return ServerStatus(url, reachable=False, error=type(exc).__name__)
    jetstream = varz.get("jetstream", {})
    return ServerStatus(
        url,
        reachable=True,
        version=str(varz.get("version", "")),
        storage_bytes=int(jetstream.get("stats", {}).get("storage", 0)),
        max_storage_bytes=int(jetstream.get("config", {}).get("max_storage", 0)),
    )


async def snapshot(js: JetStream, cfg: HubConfig, now: datetime) -> Snapshot:
    """The hub's state as its store and nats-servers show it now."""
    servers = await asyncio.gather(*(asyncio.to_thread(_varz, url) for url in cfg.nats.monitor_urls))
    streams: list[StreamStatus] = []
    listed: dict[str, ConsumerState] = {}
    for name in (*(js.stream_of(lane) for lane in LANES), js.audit_stream):
        state = await js.stream_state(name)
        streams.append(StreamStatus(name, int(state.get("messages", 0)), int(state.get("bytes", 0))))
    for lane in LANES:
        listed.update({c.name: c for c in await js.consumers(js.stream_of(lane))})
    agencies = [await _agency(js, cfg, agency, listed, now) for agency in cfg.agencies]
    return Snapshot(at=now, servers=servers, streams=streams, agencies=agencies)


async def _agency(
    js: JetStream,
    cfg: HubConfig,
    agency: Agency,
    listed: dict[str, ConsumerState],
    now: datetime,
) -> AgencyStatus:
    agency_id, name, receives = agency.id, agency.name, agency.receives
    stored = await js.last_by_subject(js.layout.session_subject(agency_id))
    record = store_pb2.SessionRecord.FromString(stored.data) if stored is not None else None
    session_id = record.session_id if record is not None else None
    waiting: dict[str, int] = {}
    for lane in LANES:
        names = handoff.names_of(js.layout, agency_id, lane, session_id)
        found = next((listed[n] for n in names if n in listed), None)
        waiting[lane.value] = found.waiting if found is not None else 0
    if record is None:
        return AgencyStatus(agency_id, name, receives, online=False, waiting=waiting)
    last_seen = record.last_seen.ToDatetime(UTC) if record.HasField("last_seen") else None
    online = not record.closed and last_seen is not None and (now - last_seen) <= cfg.presence_timeout
    return AgencyStatus(
        agency_id,
        name,
        receives,
        online=online,
        replica=record.replica,
        since=record.opened_at.ToDatetime(UTC) if record.HasField("opened_at") else None,
        last_seen=last_seen,
        waiting=waiting,
    )
