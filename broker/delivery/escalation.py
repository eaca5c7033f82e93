"""Escalation of unanswered requests: the worker that takes up due timers and sends requests to the alternate room.

A request whose agreement rule sets `escalate: {after_seconds, to}` is stored with an
EscalationTimer. Every hub replica runs this worker on one shared durable consumer of the
timers: JetStream hands each timer to one replica; a timer not yet due is given back with a
delay (NAK), so it comes back when due (or after `hub.timer_recheck_seconds`, whichever is
first, to be judged again on the hub's clock), after any restart, on whichever replica is alive.
When due, the request escalates unless some recipient's operator answered (a RESPONSE): the
alternate room gets it (redacted to its own view, under an agreement that allows it), the
sender gets a REQUEST_ESCALATED notice, the receipt shows the escalation, the audit log records
the disclosure, and opsroom_escalations_total counts it. Every write is idempotent, so a
timer taken up twice (a replica died half way) escalates once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from opsroom.audit.v1 import audit_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom.store.v1 import store_pb2

from broker.audit import records as audit_records
from broker.audit.log import Draft
from broker.errors import OpsroomError
from broker.lanes import Lane
from broker.ops.logging import get_logger
from broker.ops.metrics import Metrics
from broker.policy.routing import Route, Router, RoutingContext
from broker.publish.committer import Committer
from broker.publish.copies import Copies
from broker.store import receipts
from broker.store.consumers import Puller
from broker.store.jetstream import JetStream
from broker.store.layout import EXPIRES_HEADER, RULE_HEADER
from broker.store.model import ConsumerGone, OutMsg, Pulled, StoredMsg, Wake
from broker.times import timestamp

log = get_logger(__name__)

CONSUMER = "escalations"
PULL = 64


class Escalator:
    """The escalation worker of one hub replica (run() in the hub's task group)."""

    def __init__(
        self,
        js: JetStream,
        committer: Committer,
        router: Router,
        metrics: Metrics,
        clock: Callable[[], datetime],
        *,
        audited: bool,
        recheck: float = 60.0,
        formats: Mapping[str, str] | None = None,
    ) -> None:
        """A worker writing through committer (audited: with disclosure records).

        A timer not yet due is given back for at most recheck seconds: when it comes back it is
        judged again against clock, the hub's one clock (a test moves it; a clock set forward or
        back is followed).
        """
        self._recheck = recheck
        self._js = js
        self._committer = committer
        self._router = router
        self._metrics = metrics
        self._clock = clock
        self._audited = audited
        self._formats = dict(formats or {})
        self._stopped = False

    def stop(self) -> None:
        """Take up no more timers (the hub cancels run() too)."""
        self._stopped = True

    async def run(self) -> None:
        """Take up timers until cancelled; store errors are logged and the loop goes on."""
        puller: Puller | None = None
        while not self._stopped:
            try:
                puller = await self._next(puller)
            except OpsroomError as exc:
                log.warning("escalation_worker_retrying", reason=exc.reason.name)
                await asyncio.sleep(1)

    async def _next(self, puller: Puller | None) -> Puller | None:
        """Take up the next timer (waiting at most a few seconds); returns the puller to go on with."""
        if puller is None:
            await self._js.ensure_work_consumer(CONSUMER, self._js.layout.escalation_timers)
            puller = self._js.work_puller(CONSUMER)
            await puller.start()
        if puller.stalled():
            puller.forget_outstanding()
        if puller.outstanding < PULL // 2:
            await puller.request(PULL - puller.outstanding)
        try:
            async with asyncio.timeout(5):  # (wait_for of Python 3.11 may swallow a cancellation)
                item = await puller.queue.get()
        except TimeoutError:
            return puller
        if isinstance(item, ConsumerGone):
            await puller.stop()
            self._js.forget(puller)
            return None
        if isinstance(item, Pulled):
            await self.take_up(item)
        elif not isinstance(item, Wake):
            raise item
        return puller

    async def take_up(self, item: Pulled) -> None:
        """One timer: give it back until due; then escalate unless answered; then acknowledge it."""
        try:
            timer = store_pb2.EscalationTimer.FromString(item.data)
        except DecodeError:  # not a timer this hub wrote: dropped, never retried (it would fail every time)
            log.exception("escalation_timer_unreadable", sequence=item.stream_seq)
            await self._js.ack(item.reply)
            return
        now = self._clock()
        wait = (timer.due_at.ToDatetime(tzinfo=UTC) - now).total_seconds()
        if wait > 0:
            await self._js.nak(item.reply, min(wait, self._recheck))
            return
        layout = self._js.layout
        answers = await self._js.last_per_subject(layout.responses_of_envelope(timer.distribution_id))
        if not answers and await self._js.last_by_subject(layout.escalation_subject(timer.distribution_id)) is None:
            await self._escalate(timer, now)
        await self._js.ack(item.reply)

    async def _escalate(self, timer: store_pb2.EscalationTimer, now: datetime) -> None:
        layout = self._js.layout
        dist, alternate = timer.distribution_id, timer.to_agency_id
        main = self._js.stream_of(Lane.URGENT)
        stored = await self._js.last_per_subject(layout.deliveries_of_envelope(dist), stream=main)
        if not stored:
            return
        acceptance, digest, sender = receipts.first_acceptance(layout, stored)
        messages: list[OutMsg] = []
        draft = None
        if alternate in acceptance.recipients:
            said = "already with"
        else:
            first = min(stored, key=lambda m: m.seq)
            delivery, draft = self._delivery(first, sender, alternate, digest, timer.rule, now)
            messages.extend(delivery)
            said = "sent to" if delivery else "no agreement allows sending it to"
        delivered = bool(messages)
        escalation = hub_pb2.Escalation(
            to_agency_id=alternate, escalated_at=timestamp(now), rule=timer.rule, delivered=delivered
        )
        messages.append(
            receipts.hub_notice(
                layout,
                sender,
                dist,
                now,
                code="REQUEST_ESCALATED",
                description=f"no recipient answered in time ({timer.rule}); {said} {alternate}",
                key=f"escalated:{dist}",
            )
        )
        done = store_pb2.EscalationRecord(escalation=escalation)
        once = {"Nats-Expected-Last-Subject-Sequence": "0", "Nats-Msg-Id": f"escd:{dist}"}
        messages.append(OutMsg(layout.escalation_subject(dist), done.SerializeToString(), once))
        await (await self._committer.enqueue(messages, audit=draft))
        self._metrics.escalations.labels(alternate, "delivered" if delivered else "notified").inc()
        log.info("request_escalated", distribution_id=dist, agency=alternate, delivered=delivered)

    def _delivery(  # noqa: PLR0917 - the request and where it goes
        self, first: StoredMsg, sender: str, alternate: str, digest: bytes, rule: str, now: datetime
    ) -> tuple[list[OutMsg], Draft | None]:
        """The delivery to the alternate room (redacted to its view) and its disclosure; none if not allowed."""
        env = envelope_pb2.Envelope.FromString(first.data)
        route = self._route(env, sender, alternate, now)
        if route is None:
            return [], None
        layout = self._js.layout
        copies = Copies(
            env, first.data, hashlib.sha256(first.data).digest(), audited=self._audited, formats=self._formats
        )
        accepted_ns = int(now.timestamp() * 1e9)
        headers = receipts.delivery_headers(
            layout, env.distribution_id, alternate, sender=sender, accepted_ns=accepted_ns, digest=digest
        )
        headers[RULE_HEADER] = route.rule
        if EXPIRES_HEADER in first.headers:
            headers[EXPIRES_HEADER] = first.headers[EXPIRES_HEADER]
        subject = layout.delivery_subject(alternate, Lane.URGENT, env.distribution_id)
        message = OutMsg(subject, copies.of(route)[0], headers)
        if not self._audited:
            return [message], None
        hub = audit_records.Caller(audit_records.HUB)
        disclosures = [
            r
            for r in audit_records.publish_records(env, hub, digest, copies.views, now)
            if r.action == audit_pb2.ACTION_DISCLOSURE
        ]
        for disclosure in disclosures:
            disclosure.detail = f"escalated: no answer within the deadline of {rule}"
        return [message], Draft.of(disclosures, f"esc:{env.distribution_id}")

    def _route(self, env: envelope_pb2.Envelope, sender: str, alternate: str, now: datetime) -> Route | None:
        """The route to the alternate room if an agreement allows the sender to reach it with this request."""
        probe = envelope_pb2.Envelope()
        probe.CopyFrom(env)
        del probe.recipients[:]
        probe.recipients.append(alternate)
        decision = self._router.route(probe, RoutingContext(sender, {}, now))
        route = next((r for r in decision.routes if r.agency_id == alternate), None)
        if decision.refusals or route is None:
            log.warning("escalation_not_allowed", distribution_id=env.distribution_id, agency=alternate)
            return None
        return route
