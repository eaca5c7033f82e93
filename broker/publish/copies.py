"""Owns what an accepted envelope is stored as beside its plan: each copy, its expiry, the escalation timer (pure).

One copy per distinct mask of personal data (a recipient whose role sees everything gets the
sender's bytes as they came), and, when audited, what each recipient's copy holds and withholds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta

from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2

from broker.audit import records as audit_records
from broker.policy.redact import redact_reporting
from broker.policy.routing import Decision, Route
from broker.publish.plan import Timer
from broker.store import receipts
from broker.store.layout import Layout
from broker.store.model import OutMsg
from broker.times import timestamp


def expiry_ns(env: envelope_pb2.Envelope, route: Route, accepted_ns: int, default_ns: int) -> int:
    """When a delivery expires (ns): the sender's expires_at, else its rule's expire_after, else the hub's default."""
    if env.HasField("expires_at"):
        return env.expires_at.ToNanoseconds()
    return accepted_ns + (route.expire_after * 1_000_000_000 if route.expire_after else default_ns)


_REQUESTS = frozenset({"assistance_request", "handover_request"})


def escalation_timer(
    layout: Layout, env: envelope_pb2.Envelope, decision: Decision, now: datetime
) -> tuple[OutMsg, Timer] | None:
    """For a request whose rules set a deadline for an answer, the timer of the earliest one (and its plan entry)."""
    if env.kind != common_pb2.KIND_REQUEST or env.WhichOneof("payload") not in _REQUESTS:
        return None
    deadlines = [r for r in decision.routes if r.escalate_after > 0 and r.escalate_to]
    if not deadlines:
        return None
    first = min(deadlines, key=lambda r: (r.escalate_after, r.rule))
    due = now + timedelta(seconds=first.escalate_after)
    message = receipts.escalation_timer(layout, env.distribution_id, due, first.escalate_to, first.rule)
    return message, Timer(timestamp(due).ToNanoseconds(), first.escalate_to, first.rule)


# One copy: its bytes, the fields it holds and withholds (audited), its SHA-256 (audited), the mask paths that hit.
_Made = tuple[bytes, tuple[str, ...], tuple[str, ...], bytes, tuple[str, ...]]


class Copies:
    """The copies of one envelope, one per distinct mask, and (if audited) what each recipient's copy holds."""

    def __init__(
        self,
        env: envelope_pb2.Envelope,
        data: bytes,
        digest: bytes,
        *,
        audited: bool,
        formats: Mapping[str, str] | None = None,
    ) -> None:
        """The copies of env (serialized as data, hashed as digest); audited: also the views the audit log records.

        formats: the format each agency receives in (the hub's config; "grpc" when not named).
        """
        self._formats = formats or {}
        self._env = env
        self._data = data
        self._digest = digest
        self._audited = audited
        self._by_mask: dict[frozenset[str], _Made] = {}
        self._all: frozenset[str] | None = None
        self.views: list[audit_records.View] = []

    def of(self, route: Route) -> tuple[bytes, tuple[str, ...]]:
        """The envelope as route's recipient may see it, serialized, and the mask paths that removed something."""
        hidden = route.mask.hidden if route.mask is not None and not route.mask.empty else frozenset()
        made = self._by_mask.get(hidden)
        if made is None:
            removed: tuple[str, ...] = ()
            if not hidden or route.mask is None:
                copy = self._env
            else:
                copy, removed = redact_reporting(self._env, route.mask)
            data = self._data if copy is self._env else copy.SerializeToString()
            fields: tuple[str, ...] = ()
            withheld: tuple[str, ...] = ()
            if self._audited:
                if self._all is None:
                    self._all = frozenset(audit_records.present_fields(self._env))
                lost = audit_records.withheld(self._env, copy, self._all, hidden)
                fields = tuple(sorted(self._all - lost))
                withheld = tuple(sorted(lost))
            sha = (self._digest if data is self._data else hashlib.sha256(data).digest()) if self._audited else b""
            made = (data, fields, withheld, sha, removed)
            self._by_mask[hidden] = made
        data, fields, withheld, sha, removed = made
        if self._audited:
            fmt = self._formats.get(route.agency_id, "grpc")
            self.views.append(audit_records.View(route.agency_id, route.rule, sha, fields, withheld, fmt))
        return data, removed
