"""The publish path: identity, validation, routing, and the write of one delivery per recipient.

An envelope is acknowledged only after JetStream confirmed, on a server running with
sync_interval: always, every one of its deliveries. Its first delivery claims the distribution
id (no other delivery of that id may be stored before it) and carries the plan of the whole
envelope (broker.publish.plan); the others are written only once it is stored. A distribution id found
taken is answered from the store, never routed again: by another agency, or with other content,
it is refused (DISTRIBUTION_ID_REUSED) and nothing is written; by the same sender with the same
content (a retry), the deliveries the plan names and the store lacks are written first, with
the first attempt's acceptance time, rules, expiries and views, and the first answer, naming
every intended recipient, comes back.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2

from broker.audit import records as audit_records
from broker.audit.log import Draft
from broker.audit.records import Caller
from broker.errors import InvalidEnvelope, NotPermitted, OpsroomError, Reason, Refused, StoreUnavailable
from broker.lanes import Lane, lane_of
from broker.ops.logging import get_logger
from broker.policy.routing import REPLY_KINDS, Decision, Referenced, Router, RoutingContext
from broker.publish.committer import Committer, GroupResult, Outcome
from broker.publish.completion import Completion, response_of, reused
from broker.publish.copies import Copies, escalation_timer, expiry_ns
from broker.publish.gate import LaneGate
from broker.publish.plan import PLAN_HEADER, Plan, Planned
from broker.store import receipts
from broker.store.layout import EXPIRES_HEADER, RULE_HEADER, Layout
from broker.store.model import OutMsg, Store
from broker.times import timestamp
from broker.validate.checker import ValidationContext, validate_envelope

log = get_logger(__name__)

# Acknowledgement records looked at, after a delivery, to find when it was acknowledged.
# Which request payload each response payload answers.
_ANSWERS = {"assistance_response": "assistance_request", "handover_response": "handover_request"}


@dataclass(frozen=True, slots=True)
class Accepted:
    """The acceptance and what the hub needs to report on it."""

    acceptance: hub_pb2.Acceptance
    decision: Decision | None


class Publisher:
    """Turns envelopes into stored deliveries; shared by every gRPC call of the hub."""

    def __init__(
        self,
        js: Store,
        committers: Mapping[Lane, Committer],
        router: Router,
        validation: ValidationContext,
        clock: Callable[[], datetime],
        *,
        audited: bool = False,
        bulk_per_second: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        default_expiry: timedelta = timedelta(hours=24),
        formats: Mapping[str, str] | None = None,
    ) -> None:
        """Wire the publish path; with audited, each envelope's write carries its audit records.

        formats: the format each agency receives in, recorded with each disclosure.

        bulk_per_second, if not 0, is the most bulk-lane envelopes the hub takes in per second.
        An envelope without expires_at expires default_expiry after its acceptance.
        """
        self._default_expiry = default_expiry
        self._audited = audited
        self._formats = dict(formats or {})
        self._js = js
        self._layout: Layout = js.layout
        self._committers = committers
        self._router = router
        self._validation = validation
        self._clock = clock
        # Envelopes being published, by distribution id: their digest, sender and future answer.
        self._inflight: dict[str, tuple[bytes, str, asyncio.Future[Accepted]]] = {}
        self._lanes = LaneGate(bulk_per_second, clock=monotonic)
        self._completion = Completion(js, committers)
        self._lookups: set[asyncio.Task[None]] = set()

    def check(self, env: envelope_pb2.Envelope, agency_id: str) -> None:
        """Identity and field checks that need no I/O; raises NotPermitted or InvalidEnvelope."""
        if env.HasField("sender") and env.sender.agency_id and env.sender.agency_id != agency_id:
            raise NotPermitted(
                Reason.SENDER_MISMATCH,
                "sender.agency_id must be the agency of the client certificate",
                {"certificate_agency": agency_id},
            )
        violations = validate_envelope(env, self._validation, self._clock())
        if violations:
            raise InvalidEnvelope(violations)

    async def publish(self, env: envelope_pb2.Envelope, caller: Caller | str, *, resend: bool = False) -> Accepted:
        """Check, route and store env for the caller (or agency id); returns the (possibly replayed) acceptance."""
        return await (await self.begin(env, caller, resend=resend))

    async def begin(
        self, env: envelope_pb2.Envelope, caller: Caller | str, *, resend: bool = False
    ) -> asyncio.Future[Accepted]:
        """Check and route env, and queue its write; returns the future acceptance.

        Raises the refusal at once when the envelope is refused before any write. Envelopes
        queued one after the other by one caller are stored in that order. A resend (the
        sender says it may have sent env before) found in the store is answered from there,
        without routing it again and without new audit records, once every delivery it was
        meant to have is stored.
        """
        caller = caller if isinstance(caller, Caller) else Caller(caller)
        agency_id = caller.agency_id
        lane = lane_of(env)
        if lane is Lane.BULK:
            await self._lanes.bulk_turn()
        self.check(env, agency_id)
        data = env.SerializeToString()
        digest = hashlib.sha256(data).digest()
        dist = env.distribution_id
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Accepted] = loop.create_future()
        running = self._inflight.get(dist)
        if running is not None:
            first_digest, first_sender, first = running
            first.add_done_callback(
                lambda f: _chain_replay(f, result, (first_sender, first_digest), (agency_id, digest))
            )
            return result
        self._inflight[dist] = (digest, agency_id, result)
        result.add_done_callback(lambda f: self._forget(dist, f))
        if lane is Lane.URGENT:
            self._lanes.urgent_started(result)
        try:
            stored = await self._js.deliveries_of(dist, lane) if resend else []
            if stored:
                answer, completion = await self._completion.answer_from(env, agency_id, data, digest, stored)
                if completion is None:
                    result.set_result(Accepted(answer, None))
                else:
                    completion.add_done_callback(lambda g: _on_completed(g, result, answer))
                return result
            group, acceptance, decision = await self._queue_write(env, caller, data, digest)
        except BaseException as exc:
            _settle(result, exc)
            raise
        group.add_done_callback(
            lambda g: self._on_stored(g, result, acceptance, decision, (env, agency_id, data, digest))
        )
        return result

    def _forget(self, dist: str, result: asyncio.Future[Accepted]) -> None:
        """Drop the in-flight entry; mark an error retrieved (the caller may have gone away)."""
        if self._inflight.get(dist, (b"", "", None))[2] is result:
            del self._inflight[dist]
        if not result.cancelled():
            result.exception()

    def _on_stored(
        self,
        group: asyncio.Future[GroupResult],
        result: asyncio.Future[Accepted],
        acceptance: hub_pb2.Acceptance,
        decision: Decision,
        sent: tuple[envelope_pb2.Envelope, str, bytes, bytes],
    ) -> None:
        """Answer the publish whose write ended: accepted, failed, or (the id was taken) from the store.

        sent is the envelope, its sender, its bytes and their digest.
        """
        if _settled_by_failure(group, result):
            return
        if group.result().outcome is Outcome.STORED:
            result.set_result(Accepted(acceptance, decision))
        else:  # the distribution id was taken: answer from the store
            task = asyncio.get_running_loop().create_task(self._resolve_duplicate(result, *sent))
            self._lookups.add(task)
            task.add_done_callback(self._lookups.discard)

    async def _resolve_duplicate(
        self, result: asyncio.Future[Accepted], env: envelope_pb2.Envelope, agency_id: str, data: bytes, digest: bytes
    ) -> None:
        try:
            stored = await self._js.deliveries_of(env.distribution_id)
            if not stored:
                _settle(
                    result, StoreUnavailable("the envelope was stored but its deliveries are not readable yet; retry")
                )
                return
            answer, completion = await self._completion.answer_from(env, agency_id, data, digest, stored)
            if completion is not None:
                await completion
        except Exception as exc:
            _settle(result, exc)
        else:
            if not result.done():
                result.set_result(Accepted(answer, None))

    async def _queue_write(
        self, env: envelope_pb2.Envelope, caller: Caller, data: bytes, digest: bytes
    ) -> tuple[asyncio.Future[GroupResult], hub_pb2.Acceptance, Decision]:
        agency_id = caller.agency_id
        referenced = await self._referenced(env)
        now = self._clock()
        decision = self._router.route(env, RoutingContext(agency_id, referenced, now))
        if decision.refusals:
            fields = ", ".join(f"envelope.{r.field} ({r.agency_id})" for r in decision.refusals)
            raise NotPermitted(
                Reason.RECIPIENT_NOT_ALLOWED,
                f"no agreement allows this sender to reach: {fields}",
                {"recipients": ",".join(r.agency_id for r in decision.refusals)},
            )
        if not decision.routes:
            raise Refused(Reason.NO_RECIPIENTS, "no recipient: no agreement in force selects or allows one")
        extra = self._response_record(env, agency_id, referenced)
        dist = env.distribution_id
        acceptance = hub_pb2.Acceptance(
            distribution_id=dist, accepted_at=timestamp(now), recipients=decision.recipients
        )
        accepted_ns = acceptance.accepted_at.ToNanoseconds()
        default_expiry_ns = int(self._default_expiry.total_seconds() * 1e9)
        layout = self._layout
        lane = lane_of(env)
        copies = Copies(env, data, digest, audited=self._audited, formats=self._formats)
        messages = []
        planned = []
        for route in decision.routes:
            headers = receipts.delivery_headers(
                layout, dist, route.agency_id, sender=agency_id, accepted_ns=accepted_ns, digest=digest
            )
            expires = expiry_ns(env, route, accepted_ns, default_expiry_ns)
            headers[RULE_HEADER] = route.rule
            headers[EXPIRES_HEADER] = str(expires)
            payload, hidden = copies.of(route)
            messages.append(OutMsg(layout.delivery_subject(route.agency_id, lane, dist), payload, headers))
            planned.append(Planned(route.agency_id, route.rule, expires, hidden))
        timer = escalation_timer(layout, env, decision, now)
        if timer is not None:
            messages.append(timer[0])
        if extra is not None:
            messages.append(extra)  # written once the response itself is delivered
        # The first delivery claims the distribution id and says what the envelope is written as.
        plan = Plan(tuple(planned), timer[1] if timer is not None else None, response=extra is not None)
        claim = layout.deliveries_of_envelope(dist)
        messages[0].headers.update(receipts.claim_headers(claim))
        messages[0].headers[PLAN_HEADER] = plan.encode()
        draft = None
        if self._audited:
            entry = audit_records.publish_entry(env, caller, digest, copies.views, acceptance.accepted_at)
            draft = Draft.of_entry(entry)  # shares an entry with the batch (no message id)
        group = await self._committers[lane].enqueue(
            messages, tail=extra is not None, audit=draft, claim=claim, sender=agency_id
        )
        return group, acceptance, decision

    async def _referenced(self, env: envelope_pb2.Envelope) -> dict[str, Referenced]:
        """What the hub stored of the messages a reply refers to (empty for other kinds)."""
        if env.kind not in REPLY_KINDS or not env.references:
            return {}
        wanted = list(dict.fromkeys(ref.distribution_id for ref in env.references))[:4]
        found = await asyncio.gather(*(self._js.deliveries_of(d) for d in wanted))
        out: dict[str, Referenced] = {}
        for dist, stored in zip(wanted, found, strict=True):
            if stored:
                acceptance, _digest, sender = receipts.first_acceptance(self._layout, stored)
                payload = envelope_pb2.Envelope.FromString(stored[0].data).WhichOneof("payload") or ""
                out[dist] = Referenced(sender, frozenset(acceptance.recipients), payload)
        return out

    def _response_record(
        self, env: envelope_pb2.Envelope, agency_id: str, referenced: dict[str, Referenced]
    ) -> OutMsg | None:
        """For a RESPONSE, the business acknowledgement of the request it answers."""
        if env.kind != common_pb2.KIND_RESPONSE:
            return None
        payload = env.WhichOneof("payload") or ""
        request_id = env.references[0].distribution_id
        request = referenced.get(request_id)
        if request is None:
            raise Refused(Reason.REFERENCE_NOT_FOUND, "references[0] names no message the hub accepted")
        if agency_id not in request.recipients:
            raise NotPermitted(Reason.NOT_A_RECIPIENT, "references[0] names a message not sent to this agency")
        if _ANSWERS.get(payload) != request.payload:
            raise Refused(
                Reason.RESPONSE_MISMATCH,
                f"{payload} does not answer the {request.payload or 'message'} in references[0]",
            )
        return response_of(self._layout, env, agency_id)


def _settle(result: asyncio.Future[Accepted], exc: BaseException) -> None:
    if not result.done():
        result.set_exception(exc if isinstance(exc, Exception) else StoreUnavailable("interrupted; retry"))


def _chain_replay(
    first: asyncio.Future[Accepted],
    result: asyncio.Future[Accepted],
    first_by: tuple[str, bytes],
    by: tuple[str, bytes],
) -> None:
    """Resolve a publish that arrived while the first one of its distribution id was still being stored.

    first_by and by are (sender agency, digest of the envelope) of the two.
    """
    if result.done():
        return
    if first.cancelled():
        result.set_exception(StoreUnavailable("the first attempt was interrupted; retry"))
        return
    exc = first.exception()
    if exc is not None:
        result.set_exception(exc)
        return
    if first_by != by:
        result.set_exception(reused())
        return
    replay = hub_pb2.Acceptance()
    replay.CopyFrom(first.result().acceptance)
    replay.replayed = True
    result.set_result(Accepted(replay, None))


def _on_completed(
    group: asyncio.Future[GroupResult], result: asyncio.Future[Accepted], answer: hub_pb2.Acceptance
) -> None:
    """Answer a resend once the deliveries its first attempt lacked are stored."""
    if not _settled_by_failure(group, result):
        result.set_result(Accepted(answer, None))


def _settled_by_failure(group: asyncio.Future[GroupResult], result: asyncio.Future[Accepted]) -> bool:
    """Give result the failure of the write group (cancelled, or an error); True if result is settled now."""
    if result.done():
        return True
    if group.cancelled():
        result.set_exception(StoreUnavailable("the write was interrupted; retry"))
        return True
    exc = group.exception()
    if exc is not None:
        result.set_exception(exc)
        return True
    return False


def is_refusal(exc: BaseException) -> bool:
    """True for errors that are the caller's to fix (not the store's)."""
    return isinstance(exc, OpsroomError) and exc.reason not in (
        Reason.STORE_UNAVAILABLE,
        Reason.SHUTTING_DOWN,
    )
