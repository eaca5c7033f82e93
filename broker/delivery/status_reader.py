"""Reads what `opsroom status` shows: nats-server's monitoring, the streams, each agency's session and consumers.

Read-only: it lists streams and consumers and reads each agency's last session record, as any
monitoring would; it changes nothing. A room counts as online when its last session record is
not closed and was refreshed within the presence timeout. A room's oldest unacknowledged
delivery is the first above its consumer's ack floor; its escalations pending are the requests
delivered to it whose escalation deadline has not passed and that nobody answered yet (read from
the escalation timers the escalation worker has not acknowledged, at most MAX_TIMERS of them).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from opsroom.store.v1 import store_pb2

from broker.config import Agency, HubConfig
from broker.delivery import escalation, handoff
from broker.lanes import LANES, Lane
from broker.ops.status import AgencyStatus, ServerStatus, Snapshot, StreamStatus
from broker.store.jetstream import JetStream
from broker.store.model import ConsumerState

MAX_TIMERS = 1000  # escalation timers read (one batched read); a larger number is shown as at least this
READS_IN_FLIGHT = 64


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
    running = await _deadlines_running(js, listed.get(escalation.CONSUMER), now)
    agencies = [await _agency(js, cfg, agency, listed, now, running=running) for agency in cfg.agencies]
    return Snapshot(
        at=now,
        servers=servers,
        streams=streams,
        agencies=agencies,
        escalation_timers=len(running),
    )


async def _deadlines_running(js: JetStream, consumer: ConsumerState | None, now: datetime) -> dict[str, list[str]]:
    """The recipients of each request whose escalation deadline runs and that nobody answered, by distribution id."""
    layout = js.layout
    main = js.stream_of(Lane.URGENT)
    floor = consumer.ack_floor if consumer is not None else 0
    dists: list[str] = []
    for stored in await js.read_matching(main, layout.escalation_timers, floor + 1, MAX_TIMERS):
        try:
            timer = store_pb2.EscalationTimer.FromString(stored.data)
        except DecodeError:
            continue  # not a timer this hub wrote (the worker drops it too)
        if timer.due_at.ToDatetime(UTC) > now:
            dists.append(timer.distribution_id)
    running: dict[str, list[str]] = {}
    for start in range(0, len(dists), READS_IN_FLIGHT):
        chunk = dists[start : start + READS_IN_FLIGHT]
        answers = await asyncio.gather(*(js.last_per_subject(layout.responses_of_envelope(d)) for d in chunk))
        deliveries = await asyncio.gather(
            *(js.last_per_subject(layout.deliveries_of_envelope(d), stream=main) for d in chunk)
        )
        for dist, answered, delivered in zip(chunk, answers, deliveries, strict=True):
            if not answered:
                running[dist] = [layout.parse_delivery(m.subject)[0] for m in delivered]
    return running


async def _agency(
    js: JetStream,
    cfg: HubConfig,
    agency: Agency,
    listed: dict[str, ConsumerState],
    now: datetime,
    *,
    running: dict[str, list[str]],
) -> AgencyStatus:
    agency_id, name, receives = agency.id, agency.name, agency.receives
    stored = await js.last_by_subject(js.layout.session_subject(agency_id))
    record = store_pb2.SessionRecord.FromString(stored.data) if stored is not None else None
    session_id = record.session_id if record is not None else None
    waiting: dict[str, int] = {}
    oldest: dict[str, float] = {}
    acks: list[datetime] = []
    for lane in LANES:
        names = handoff.names_of(js.layout, agency_id, lane, session_id)
        found = next((listed[n] for n in names if n in listed), None)
        waiting[lane.value] = found.waiting if found is not None else 0
        if found is None:
            continue
        if found.last_ack is not None:
            acks.append(found.last_ack)
        if found.waiting > 0:
            first = await js.next_by_subject(
                js.layout.deliveries_of_agency(agency_id, lane), found.ack_floor + 1, stream=js.stream_of(lane)
            )
            if first is not None:
                oldest[lane.value] = max(0.0, now.timestamp() - first.time_ns / 1e9)
    last_ack = max(acks, default=None)
    pending = sum(agency_id in recipients for recipients in running.values())
    if record is None:
        return AgencyStatus(
            agency_id,
            name,
            receives,
            online=False,
            waiting=waiting,
            oldest_unacked=oldest,
            last_ack=last_ack,
            escalations_pending=pending,
        )
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
        oldest_unacked=oldest,
        last_ack=last_ack,
        escalations_pending=pending,
    )
