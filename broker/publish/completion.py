"""Owns the answer to an envelope found stored: the first acceptance, and the completion of what its plan names.

A resend, or a write that found its distribution id claimed, is answered from the store: only
by the agency that sent it and with the same content (else DISTRIBUTION_ID_REUSED, nothing
written), and only once every delivery, escalation timer and response record its plan (the
first delivery's Opsroom-Plan header, broker/publish/plan.py) names is stored; what is missing
is written as first planned: same views, rules, expiries and acceptance time, never re-routed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC

from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2

from broker.errors import Reason, Refused
from broker.lanes import Lane, lane_of
from broker.ops.logging import get_logger
from broker.policy.redact import compile_mask, redact_reporting
from broker.publish.committer import Committer, GroupResult
from broker.publish.plan import Plan, PlanError, Planned, plan_of
from broker.store import receipts
from broker.store.layout import ACCEPTED_AT_HEADER, EXPIRES_HEADER, RULE_HEADER, Layout
from broker.store.model import OutMsg, Store, StoredMsg
from broker.times import timestamp_ns

log = get_logger(__name__)


class Completion:
    """Answers envelopes found stored and completes them from their plans."""

    def __init__(self, js: Store, committers: Mapping[Lane, Committer]) -> None:
        """Read through js; write the missing messages through the lane's committer."""
        self._js = js
        self._layout: Layout = js.layout
        self._committers = committers

    async def answer_from(
        self, env: envelope_pb2.Envelope, agency_id: str, data: bytes, digest: bytes, stored: list[StoredMsg]
    ) -> tuple[hub_pb2.Acceptance, asyncio.Future[GroupResult] | None]:
        """The first answer to env, found stored, and the write of what its plan names and the store lacks (if any).

        Raises DISTRIBUTION_ID_REUSED when the stored envelope is another agency's or has other
        content: then nothing is written.
        """
        first, first_digest, sender = receipts.first_acceptance(self._layout, stored)
        if sender != agency_id or first_digest != digest:
            raise reused()
        try:
            plan = plan_of([m.headers for m in sorted(stored, key=lambda m: m.seq)])
        except PlanError:
            log.warning("plan_unreadable", distribution_id=env.distribution_id)
            plan = None
        answer = hub_pb2.Acceptance()
        answer.CopyFrom(first)
        answer.replayed = True
        if plan is None:
            return answer, None
        del answer.recipients[:]
        answer.recipients.extend(plan.agencies)
        missing, tail = await self._missing(env, agency_id, data, digest, stored, plan)
        if not missing:
            return answer, None
        log.info("envelope_completed", distribution_id=env.distribution_id, count=len(missing))
        return answer, await self._committers[lane_of(env)].enqueue(missing, tail=tail, sender=agency_id)

    async def _missing(  # noqa: PLR0917 - the envelope as sent and what is stored of it
        self,
        env: envelope_pb2.Envelope,
        agency_id: str,
        data: bytes,
        digest: bytes,
        stored: list[StoredMsg],
        plan: Plan,
    ) -> tuple[list[OutMsg], bool]:
        """The messages the plan of env names that are not stored, and whether the last is a tail.

        They are deliveries, the escalation timer, and the response record (a tail: written after the rest).
        """
        layout = self._layout
        lane = lane_of(env)
        dist = env.distribution_id
        have = set()
        for message in stored:
            recipient, stored_lane, _ = layout.parse_delivery(message.subject)
            if stored_lane is lane:
                have.add(recipient)
        first = min(stored, key=lambda m: m.seq)
        accepted_ns = int(first.headers.get(ACCEPTED_AT_HEADER, "0"))
        out = [self._planned_delivery(env, data, digest, agency_id, p, accepted_ns) for p in plan.missing(have)]
        timer = plan.timer
        if timer is not None and await self._js.last_by_subject(layout.escalation_timer_subject(dist)) is None:
            due = timestamp_ns(timer.due_ns).ToDatetime(tzinfo=UTC)
            out.append(receipts.escalation_timer(layout, dist, due, timer.to_agency_id, timer.rule))
        if plan.response:
            # Written after this answer's deliveries: missing if the last answer recorded came before them.
            # A later answer's record must stay the last one: then this one is not written any more.
            record = response_of(layout, env, agency_id)
            last = await self._js.last_by_subject(record.subject)
            if last is None or last.seq < first.seq:
                out.append(record)
                return out, len(out) > 1
        return out, False

    def _planned_delivery(  # noqa: PLR0917 - the envelope as sent and its plan's entry
        self,
        env: envelope_pb2.Envelope,
        data: bytes,
        digest: bytes,
        sender: str,
        planned: Planned,
        accepted_ns: int,
    ) -> OutMsg:
        """The delivery of env to a planned recipient, as it was meant: same view, rule, expiry, acceptance time."""
        layout = self._layout
        mask = compile_mask(planned.hidden)
        payload = data if mask.empty else redact_reporting(env, mask)[0].SerializeToString()
        dist = env.distribution_id
        headers = receipts.delivery_headers(
            layout, dist, planned.agency_id, sender=sender, accepted_ns=accepted_ns, digest=digest
        )
        headers[RULE_HEADER] = planned.rule
        headers[EXPIRES_HEADER] = str(planned.expires_ns)
        return OutMsg(layout.delivery_subject(planned.agency_id, lane_of(env), dist), payload, headers)


def response_of(layout: Layout, env: envelope_pb2.Envelope, agency_id: str) -> OutMsg:
    """The record of agency_id's operator answering the request a RESPONSE refers to."""
    answer = env.assistance_response if env.WhichOneof("payload") == "assistance_response" else env.handover_response
    response = hub_pb2.BusinessResponse(
        outcome=answer.outcome,
        cause=answer.cause,
        response_distribution_id=env.distribution_id,
        responded_at=answer.responded_at,
    )
    return receipts.response_message(layout, env.references[0].distribution_id, agency_id, response)


def reused() -> Refused:
    """The refusal of a distribution id used before by another sender or for other content."""
    return Refused(
        Reason.DISTRIBUTION_ID_REUSED,
        "this distribution id was accepted before, from another sender or with different content: "
        "use a new id for a new envelope",
    )
