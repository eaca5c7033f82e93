"""Owns the transport's consumers: the rooms' durable pull consumers (made, read, deleted) and the Puller."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from broker.errors import StoreUnavailable
from broker.lanes import Lane
from broker.ops.logging import get_logger
from broker.store.model import (
    ConsumerGone,
    ConsumerState,
    Pulled,
)
from broker.store.nats_api import (
    ERR_CONSUMER_EXISTS,
    ERR_CONSUMER_EXISTS_OLD,
    ERR_CONSUMER_NOT_FOUND,
    NANOS,
    NatsApi,
    api_error,
)
from broker.times import parse_rfc3339

log = get_logger(__name__)


MAX_PAGES = 1000  # of a paged JetStream listing (256 items a page)


def _parse_ack_subject(reply: str) -> tuple[int, int, int, int, int]:
    """(delivered, stream seq, time ns, pending, consumer seq) of a $JS.ACK subject, old (9 tokens) or new form."""
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        base = 4
    elif len(tokens) >= 11:  # $JS.ACK.<domain>.<acc hash>.<stream>.<consumer>.<delivered>...
        base = 6
    else:
        raise ValueError("not a JetStream ack subject")
    return int(tokens[base]), int(tokens[base + 1]), int(tokens[base + 3]), int(tokens[base + 4]), int(tokens[base + 2])


class Puller:
    """Keeps pull requests outstanding on one durable consumer and queues what arrives.

    The owner asks for credits with request(n) whenever it has room; messages arrive on an
    inbox and wait in a queue no larger than the credits asked for, so memory stays bounded.
    """

    EXPIRES = 30.0
    HEARTBEAT = 5.0

    def __init__(self, js: NatsApi, consumer: str, lane: Lane, ready: asyncio.Event | None = None) -> None:
        """A puller on consumer (of lane); call start() before use."""
        self.js = js
        self.consumer = consumer
        self.lane = lane
        self.ready = ready if ready is not None else asyncio.Event()
        self.queue: asyncio.Queue[Pulled | BaseException] = asyncio.Queue()
        self.outstanding = 0
        self.last_seen = time.monotonic()
        self._inbox = ""
        self._sub: Any = None

    async def start(self) -> None:
        """Subscribe to the inbox the server delivers to."""
        self._inbox = self.js.nc.new_inbox()
        self._sub = await self.js.nc.subscribe(self._inbox, cb=self._on_msg)

    async def stop(self) -> None:
        """Stop receiving; unacknowledged deliveries stay with the consumer."""
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except (NatsError, OSError):
                log.warning("pull_unsubscribe_failed", consumer=self.consumer)
            self._sub = None

    async def request(self, count: int) -> None:
        """Ask the server for up to count more messages."""
        if count <= 0:
            return
        body = {
            "batch": count,
            "expires": int(self.EXPIRES * NANOS),
            "idle_heartbeat": int(self.HEARTBEAT * NANOS),
        }
        try:
            await self.js.nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.js.stream_of(self.lane)}.{self.consumer}",
                json.dumps(body).encode(),
                reply=self._inbox,
            )
        except (NatsError, OSError) as exc:
            raise StoreUnavailable(f"cannot pull: {type(exc).__name__}") from exc
        self.outstanding += count

    def stalled(self) -> bool:
        """True when credits are outstanding but the server has been silent past two heartbeats."""
        return self.outstanding > 0 and time.monotonic() - self.last_seen > 2.5 * self.HEARTBEAT

    def forget_outstanding(self) -> None:
        """Treat outstanding requests as lost (after a stall), so the owner asks again."""
        self.outstanding = 0
        self.last_seen = time.monotonic()

    async def _on_msg(self, msg: Msg) -> None:
        self.last_seen = time.monotonic()
        headers = msg.headers
        if headers and "Status" in headers:
            self._on_status(headers)
            return
        try:
            delivered, seq, ts, pending, consumer_seq = _parse_ack_subject(msg.reply)
        except ValueError:
            log.warning("pull_unexpected_message", consumer=self.consumer)
            return
        self.outstanding = max(0, self.outstanding - 1)
        dist = msg.subject.rpartition(".")[2]
        self.put(Pulled(seq, delivered, ts, pending, msg.reply, dist, msg.data, headers or {}, consumer_seq))

    def put(self, item: Pulled | BaseException) -> None:
        """Queue item for the owner and wake it."""
        self.queue.put_nowait(item)
        self.ready.set()

    def _on_status(self, headers: dict[str, str]) -> None:
        status = headers.get("Status", "")
        if status == "100":  # idle heartbeat or flow control
            return
        if status in ("404", "408"):  # no messages / request expired: its credits are void
            pending = headers.get("Nats-Pending-Messages")
            self.outstanding = max(0, self.outstanding - int(pending)) if pending else 0
            return
        description = headers.get("Description", "")
        if status == "409" and ("Deleted" in description or "Leadership" in description):
            self.put(ConsumerGone(description))
            return
        # Other 409s (exceeded max waiting or max bytes) void the request.
        log.warning("pull_status", consumer=self.consumer, code=status, reason=description)
        pending = headers.get("Nats-Pending-Messages")
        self.outstanding = max(0, self.outstanding - int(pending)) if pending else 0


class Consumers(NatsApi):
    """Durable pull consumers: one per room and lane, and the workers' own."""

    def consumer_config(self, agency_id: str, lane: Lane, session_id: str = "", start_seq: int = 0) -> dict[str, Any]:
        """The durable consumer of an agency's deliveries on one lane (a session's own from start_seq, if given)."""
        config: dict[str, Any] = {
            "durable_name": self.layout.consumer_name(agency_id, lane, session_id),
            "filter_subject": self.layout.deliveries_of_agency(agency_id, lane),
            "deliver_policy": "all",
            # Acknowledging a delivery acknowledges all before it: the room's client acknowledges
            # in order, and the ack floor is exactly "where it acked" for the next session.
            "ack_policy": "all",
            "ack_wait": int(self.cfg.ack_wait.total_seconds() * NANOS),
            "max_ack_pending": self.cfg.max_ack_pending,
            "max_deliver": -1,
            "replay_policy": "instant",
            "num_replicas": 0,
        }
        if start_seq > 1:
            config["deliver_policy"] = "by_start_sequence"
            config["opt_start_seq"] = start_seq
        return config

    async def ensure_consumer(self, agency_id: str, lane: Lane) -> None:
        """Create the agency's consumer from before its first session, or update it to the wanted configuration."""
        await self._create_consumer(self.stream_of(lane), self.consumer_config(agency_id, lane))

    async def create_session_consumer(self, agency_id: str, lane: Lane, session_id: str, start_seq: int) -> int:
        """A session's own consumer of the agency's deliveries on lane, from start_seq; returns how many wait for it."""
        reply = await self._create_consumer(
            self.stream_of(lane), self.consumer_config(agency_id, lane, session_id, start_seq)
        )
        return int(reply.get("num_pending", 0)) + int(reply.get("num_ack_pending", 0))

    async def _create_consumer(self, stream: str, config: dict[str, Any]) -> dict[str, Any]:
        """Create a durable consumer, or update it to config; returns its info."""
        name = config["durable_name"]
        body: dict[str, Any] = {"stream_name": stream, "config": config}
        reply = await self.api(f"CONSUMER.CREATE.{stream}.{name}", body)
        err = api_error(reply)
        if err is not None and err[0] in (ERR_CONSUMER_EXISTS, ERR_CONSUMER_EXISTS_OLD):
            reply = await self.api(f"CONSUMER.CREATE.{stream}.{name}", {**body, "action": "update"})
            err = api_error(reply)
        if err is not None:
            raise StoreUnavailable(f"cannot create consumer {name}: {err[1]} ({err[0]})")
        return reply

    async def delete_consumer(self, name: str, lane: Lane) -> bool:
        """Delete a consumer of lane's stream; False if there was none."""
        reply = await self.api(f"CONSUMER.DELETE.{self.stream_of(lane)}.{name}")
        err = api_error(reply)
        if err is not None:
            if err[0] == ERR_CONSUMER_NOT_FOUND:
                return False
            raise StoreUnavailable(f"cannot delete consumer {name}: {err[1]} ({err[0]})")
        return True

    async def consumer_floor(self, name: str, lane: Lane) -> int | None:
        """Stream sequence up to which a consumer of lane's stream was acknowledged; None if there is no such one."""
        reply = await self.api(f"CONSUMER.INFO.{self.stream_of(lane)}.{name}")
        err = api_error(reply)
        if err is not None:
            if err[0] == ERR_CONSUMER_NOT_FOUND:
                return None
            raise StoreUnavailable(f"cannot read consumer {name}: {err[1]} ({err[0]})")
        return int(reply.get("ack_floor", {}).get("stream_seq", 0))

    async def consumers(self, stream: str) -> list[ConsumerState]:
        """Every consumer of a stream, with its filter, ack floor and the messages it still holds (paged list)."""
        out: list[ConsumerState] = []
        for _ in range(MAX_PAGES):
            reply = await self.api(f"CONSUMER.LIST.{stream}", {"offset": len(out)})
            err = api_error(reply)
            if err is not None:
                raise StoreUnavailable(f"cannot list the consumers of {stream}: {err[1]} ({err[0]})")
            page = reply.get("consumers") or []
            out.extend(
                ConsumerState(
                    name=str(info.get("name", "")),
                    filter_subject=str(info.get("config", {}).get("filter_subject", "")),
                    ack_floor=int(info.get("ack_floor", {}).get("stream_seq", 0)),
                    waiting=int(info.get("num_pending", 0)) + int(info.get("num_ack_pending", 0)),
                    created=parse_rfc3339(str(info.get("created", ""))),
                    last_ack=parse_rfc3339(str(info.get("ack_floor", {}).get("last_active", ""))),
                    redelivered=int(info.get("num_redelivered", 0)),
                )
                for info in page
            )
            if not page or len(out) >= int(reply.get("total", 0)):
                break
        return out

    async def ensure_work_consumer(self, name: str, subject_filter: str, ack_wait: float = 30.0) -> None:
        """A durable consumer of the main stream shared by the replicas: each message to one, acked one by one."""
        config = {
            "durable_name": name,
            "filter_subject": subject_filter,
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": int(ack_wait * NANOS),
            "max_ack_pending": self.cfg.max_ack_pending,
            "max_deliver": -1,
            "replay_policy": "instant",
            "num_replicas": 0,
        }
        await self._create_consumer(self.cfg.stream, config)

    def work_puller(self, name: str) -> Puller:
        """A continuous pull on a work consumer of the main stream."""
        puller = Puller(self, name, Lane.URGENT)  # the urgent lane's stream is the main stream
        self._events.pullers.add(puller)
        return puller

    async def nak(self, reply: str, delay: float) -> None:
        """Give a message back to its consumer, to be delivered again in delay seconds."""
        try:
            await self.nc.publish(reply, b"-NAK " + json.dumps({"delay": int(max(0.0, delay) * NANOS)}).encode())
        except (NatsError, OSError) as exc:
            raise StoreUnavailable(f"cannot give back: {type(exc).__name__}") from exc

    async def ack(self, reply: str) -> None:
        """Acknowledge a delivery and, the policy being ack-all, every one before it."""
        try:
            await self.nc.publish(reply, b"+ACK")
        except (NatsError, OSError) as exc:
            raise StoreUnavailable(f"cannot acknowledge: {type(exc).__name__}") from exc

    def puller(self, agency_id: str, lane: Lane, ready: asyncio.Event | None = None, session_id: str = "") -> Puller:
        """A continuous pull on the agency's consumer for lane (the session's own, if given), renewed after reconnects.

        ready, if given, is set whenever something is queued (one event may serve several pullers).
        """
        puller = Puller(self, self.layout.consumer_name(agency_id, lane, session_id), lane, ready)
        self._events.pullers.add(puller)
        return puller

    def forget(self, puller: Puller) -> None:
        """Stop telling puller about reconnects."""
        self._events.pullers.discard(puller)
