"""Owns running a drill: the scenario's rooms as real clients of a hub, its steps published in order, what they saw.

Each room is a client of the hub with its own certificate (the development PKI of the embedded
hub, or the files of a running hub's): it records every delivery as it arrives (before any
deduplication), acknowledges it, and answers the requests its operator answers in the scenario.
Each step is published by its room's client; a refusal is recorded with its code and reason, not
raised. After a step the drill waits until every delivery and answer the step expects has arrived,
or for `patience` seconds (a liveness bound: the drill goes on and the verdict says what is
missing). Times are one monotonic clock; the verdict is broker/drill/expect.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom.request.v1 import request_pb2
from opsroom_client import HubClient, HubError, RetryPolicy, new_envelope

from broker.audit.query import Question, Row, answer
from broker.audit.tools import read_log
from broker.dev.certs import DevPki
from broker.dev.commands import wait_serving
from broker.dev.sim import summary
from broker.dev.testing import credentials, local_hub
from broker.drill.expect import Observations, Published, Received
from broker.drill.scenario import Room, Scenario, Step, envelope_of
from broker.errors import ConfigError
from broker.ops.logging import get_logger
from broker.store.jetstream import JetStream
from broker.times import Clock, ShiftedClock, SystemClock, timestamp

log = get_logger(__name__)

Printer = Callable[[str], None]
ClientOf = Callable[[str], HubClient]
# After the last step: how long a delivery that should not happen is given to show up.
SETTLE_SECONDS = 1.0
# A drill's publish gives up after this long (a refusal is an answer; only a hub that does not
# answer at all takes this long).
PUBLISH_TIMEOUT = 30.0


class _SimRoom:
    """A room's client: records, acknowledges and answers what it receives."""

    client: HubClient

    def __init__(
        self,
        room: Room,
        seen: Observations,
        changed: asyncio.Event,
        *,
        status: int,
        clock: Clock,
        show: Printer | None = None,
        seed: int = 1,
    ) -> None:
        self.room = room
        self._clock = clock
        self._show = show
        self._rng = random.Random(f"{seed}:{room.agency}")  # noqa: S311 - a drill's draws, not security
        self._seen = seen
        self._changed = changed
        self._status = status
        self._acks: set[asyncio.TimerHandle] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self, client: HubClient) -> None:
        """Connect (again) with client and receive."""
        self.client = client
        self._task = asyncio.create_task(self.run(), name=f"drill-room-{self.room.agency}")

    async def stop(self) -> None:
        """Go away: the session ends, and what was not yet acknowledged stays unacknowledged."""
        for handle in self._acks:
            handle.cancel()
        self._acks.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.client.close()

    async def run(self) -> None:
        """Receive until cancelled; acknowledge each delivery after the room's ack delay."""
        inbox = self.client.inbox(max_batch=32, window=256)
        delay = self.room.ack_delay_ms / 1000
        async for delivery in inbox:
            env = delivery.envelope
            lane = hub_pb2.Lane.Name(delivery.lane).removeprefix("LANE_").lower() if delivery.lane else ""
            self._seen.received.append(Received(self.room.agency, env, time.monotonic(), lane))
            if self._show is not None:
                self._show(f"  [{self.room.name}] <- {summary(env)}")
            if delay:
                handle = asyncio.get_running_loop().call_later(delay, inbox.ack, delivery)
                self._acks.add(handle)
            else:
                inbox.ack(delivery)
            self._changed.set()
            payload = env.WhichOneof("payload") or ""
            answer = self.room.answers.get(payload)
            if env.kind == common_pb2.KIND_REQUEST and answer:
                await self._answer(env, payload, self._draw(answer))

    def _draw(self, answer: str | Mapping[str, float]) -> str:
        """The outcome to answer: the one given, or one drawn by weight."""
        if isinstance(answer, str):
            return answer
        outcomes = sorted(answer)
        return self._rng.choices(outcomes, weights=[answer[o] for o in outcomes])[0]

    async def _answer(self, request: envelope_pb2.Envelope, payload: str, outcome: str) -> None:
        value = common_pb2.Outcome.Value(f"OUTCOME_{outcome}")
        now = timestamp(self._clock.now())
        assistance = payload == "assistance_request"
        field = "assistance_response" if assistance else "handover_response"
        message = request_pb2.AssistanceResponse if assistance else request_pb2.HandoverResponse
        answer: dict[str, Any] = {field: message(outcome=value, cause="esercitazione", responded_at=now)}
        response = new_envelope(
            self.room.agency,
            kind=common_pb2.KIND_RESPONSE,
            recipients=[request.sender.agency_id],
            status=self._status,
            operator_id="OP-DRILL",
            incident_ids=request.incident_ids,
            references=[(request.distribution_id, request.sender.agency_id)],
            **answer,
        )
        response.sent_at.CopyFrom(now)  # the drill's clock (shifted when the drill is set in time)
        try:
            await self.client.publish(response)
            if self._show is not None:
                self._show(f"  [{self.room.name}] -> RESPONSE {outcome} sent")
        except HubError as err:  # the verdict will say the answer never arrived
            log.warning("drill_answer_refused", agency=self.room.agency, reason=err.reason)


def _expected_here(step: Step, seen: Observations, published: Published, online: set[str]) -> bool:
    """Whether everything the step waits for (deliveries, answers) from the rooms online has arrived."""
    dist = published.distribution_id
    if any(not seen.copies(agency, dist) for agency in step.expect.delivered_to if agency in online):
        return False
    return all(seen.responses(step.sender, dist, agency) for agency in step.expect.answered if agency in online)


async def play(
    scenario: Scenario,
    client_of: ClientOf,
    out: Printer,
    *,
    clock: Clock | None = None,
    patience: float = 30.0,
    show: bool = False,
    linger: Callable[[Observations], Awaitable[None]] | None = None,
) -> Observations:
    """Run the scenario's steps against the hub the clients reach; what the rooms saw.

    clock stamps the envelopes (the hub's, when the drill is set at another time). A room whose
    `offline` window starts at a step leaves before it and comes back before the step its window
    ends at; a step waits only for the rooms online, and the drill ends once everything expected
    has arrived (or after patience). show prints each delivery as its room receives it (without
    its personal data); linger runs with the rooms still connected, once everything has arrived.
    """
    clock = clock or SystemClock()
    seen = Observations()
    changed = asyncio.Event()
    status = common_pb2.Status.Value(f"STATUS_{scenario.status}")
    rooms = {
        r.agency: _SimRoom(r, seen, changed, status=status, clock=clock, show=out if show else None, seed=scenario.seed)
        for r in scenario.rooms
    }
    for agency, room in rooms.items():
        room.start(client_of(agency))
    online = set(rooms)
    sent: dict[str, tuple[str, str]] = {}
    try:
        for number, step in enumerate(scenario.steps, 1):
            await asyncio.sleep(step.pause_ms / 1000)
            out(f"{number}. {step.say or step.id}")
            await _comings_and_goings(scenario, step, rooms=rooms, online=online, client_of=client_of, out=out)
            published = await _publish(
                scenario, step, client=rooms[step.sender].client, clock=clock, seen=seen, sent=sent, out=out
            )
            if published is None:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(patience):
                    while not _expected_here(step, seen, published, online):
                        changed.clear()
                        await changed.wait()
        for agency in set(rooms) - online:  # a window open to the end closes with the drill
            rooms[agency].start(client_of(agency))
            online.add(agency)
            out(f"   {rooms[agency].room.name} is back")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(patience):
                while not all(
                    _expected_here(step, seen, seen.published[step.id], online)
                    for step in scenario.steps
                    if step.id in seen.published and seen.published[step.id].refused is None
                ):
                    changed.clear()
                    await changed.wait()
        await asyncio.sleep(SETTLE_SECONDS)
        if linger is not None:
            await linger(seen)
    finally:
        for room in rooms.values():
            await room.stop()
    return seen


async def _comings_and_goings(
    scenario: Scenario,
    step: Step,
    *,
    rooms: dict[str, _SimRoom],
    online: set[str],
    client_of: ClientOf,
    out: Printer,
) -> None:
    """Before step: the rooms whose offline window ends here come back, those whose window starts here leave."""
    for room in scenario.rooms:
        if room.offline is None:
            continue
        leave, back = room.offline
        if step.id == back and room.agency not in online:
            rooms[room.agency].start(client_of(room.agency))
            online.add(room.agency)
            out(f"   {room.name} is back")
        if step.id == leave and room.agency in online:
            await rooms[room.agency].stop()
            online.discard(room.agency)
            out(f"   {room.name} goes offline")


async def _publish(
    scenario: Scenario,
    step: Step,
    *,
    client: HubClient,
    clock: Clock,
    seen: Observations,
    sent: dict[str, tuple[str, str]],
    out: Printer,
) -> Published | None:
    """Publish the step's envelope; record it, accepted or refused; None when it was not accepted."""
    missing = [ref for ref in step.references if ref not in sent]
    if missing:
        seen.published[step.id] = Published(
            step.id, "", time.monotonic(), ("NOT_SENT", "REFERENCE_REFUSED"), f"step {missing[0]} was refused"
        )
        out(f"   not sent: it refers to {missing[0]}, which was refused")
        return None
    env = envelope_of(step, scenario.status, clock.now(), sent)
    at = time.monotonic()
    try:
        acceptance = await client.publish(env)
    except HubError as err:
        seen.published[step.id] = Published(step.id, env.distribution_id, at, (err.code.name, err.reason), err.message)
        out(f"   refused: {err.code.name} {err.reason}")
        return None
    published = seen.published[step.id] = Published(step.id, env.distribution_id, at)
    sent[step.id] = (env.distribution_id, step.sender)
    out(f"   accepted for {', '.join(acceptance.recipients) or 'nobody'}")
    return published


class DrillHub:
    """The hub a drill runs against: clients for its rooms, and the audit records of the drill's envelopes."""

    def __init__(self, client_of: ClientOf, js: JetStream | None, clock: Clock) -> None:
        """client_of makes a room's client; js is the embedded hub's store (None: its audit log is not read)."""
        self.client_of = client_of
        self.clock = clock
        self._js = js

    async def audit_rows(self, distribution_ids: Iterable[str]) -> list[Row]:
        """The audit records about these envelopes (their own and those linking them), in log order."""
        if self._js is None:
            return []
        log = await read_log(self._js)
        wanted = set(distribution_ids)
        return [
            row
            for row in answer(log.items, Question())
            if row.distribution_id in wanted or wanted.intersection(row.linked)
        ]


@contextlib.asynccontextmanager
async def embedded_hub(scenario: Scenario, work: Path) -> AsyncIterator[DrillHub]:
    """nats-server and a hub under work with the scenario's rooms and agreements, its audit log on."""
    agencies = {r.agency: r.name for r in scenario.rooms}
    retry = RetryPolicy(timeout=PUBLISH_TIMEOUT)
    clock: Clock = ShiftedClock(scenario.at) if scenario.at is not None else SystemClock()
    async with local_hub(work, agencies, (), agreements=scenario.agreements, clock=clock) as hub:
        yield DrillHub(lambda agency: hub.client(agency, retry=retry), hub.hub.js, clock)


@contextlib.asynccontextmanager
async def remote_hub(scenario: Scenario, target: str, pki_root: Path, *, wait: float) -> AsyncIterator[DrillHub]:
    """A hub already running at target, reached with the development certificates in pki_root (dev-certs' layout).

    Every room's certificate must be there (a ConfigError names the first missing file); waits up
    to wait seconds for the hub to say SERVING. Its audit log is not read (the report says so).
    """
    pki = DevPki.at(pki_root)
    for room in scenario.rooms:
        pair = pki.agency(room.agency)
        for path in (pki.ca, pair.cert, pair.key):
            if not path.is_file():
                raise ConfigError(f"{path}: no such file (make the PKI with `opsroom dev-certs --config FILE`)")
    await wait_serving(target, pki, scenario.rooms[0].agency, wait)
    retry = RetryPolicy(timeout=PUBLISH_TIMEOUT)
    yield DrillHub(
        lambda agency: HubClient(target, credentials(pki, agency), server_name="localhost", retry=retry),
        None,
        SystemClock(),
    )
