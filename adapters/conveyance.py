"""The NENA-STA-024 EIDO conveyance, notifier side, without I/O: subscribe, notify, unsubscribe, terminate.

A subscriber (a CAD) opens a WebSocket to the EIDO connector and subscribes; the connector is the
notifier. This module owns the protocol's state and rules, as h11 owns HTTP's: the connector feeds
it the subscriber's messages, the incidents as the hub delivers them and the time, and sends what
it returns. Messages are checked against the conveyance schema (adapters/data/eido-conveyance/
websocket.yaml, NENA's OpenAPI components of STA-024 v1.1).

Rules kept here:
- `subscribe` of type EIDO: subtype `new` (every incident, the active ones at once) or `single`
  (one incidentId, 404 if unknown); a `subscriptionId` renews an existing subscription (481 if
  there is none). minRate, maxRate and expires are negotiated within the Policy and returned.
- A new subscription first receives every active incident it covers, in one event.
- An incident that changes is notified to every subscription covering it, at most once per
  maxRate seconds (changes in between are coalesced into the next event); a subscription that has
  had no event for minRate seconds gets the current state of what it covers again.
- At expiry the notifier sends `terminate`; `unsubscribe` ends a subscription at once.
- Every event carries a transactionId the subscriber answers with an `eventResponse`; events
  left unanswered are counted (`pending`), and past Policy.max_pending the subscription ends.
- A closed incident is notified once more (its final state) and then leaves the active set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jsonschema

from adapters.schemas import from_openapi, validator_for

_SCHEMA = "eido-conveyance/websocket.yaml"

OK, BAD_REQUEST, FORBIDDEN, NOT_FOUND, NOT_ACCEPTABLE, NO_SUBSCRIPTION, UNAVAILABLE = 200, 400, 403, 404, 406, 481, 503
_TEXT = {
    OK: "OK",
    BAD_REQUEST: "Bad request",
    FORBIDDEN: "Forbidden",
    NOT_FOUND: "Incident not found",
    NOT_ACCEPTABLE: "Not acceptable",
    NO_SUBSCRIPTION: "Subscription does not exist",
    UNAVAILABLE: "Too many subscriptions",
}
EIDO_MEDIA_TYPE = "application/emergency.eido+json"

Message = dict[str, Any]
_SUBSCRIBER_KINDS = frozenset({"subscribe", "unsubscribe", "eventResponse", "terminateResponse"})


@dataclass(frozen=True)
class Policy:
    """The bounds the notifier negotiates within (seconds) and the per-connection limits."""

    min_rate_floor: int = 10
    max_rate_floor: int = 0
    default_expires: int = 3600
    max_expires: int = 86400
    max_subscriptions: int = 16
    max_pending: int = 256


@dataclass
class Incident:
    """An incident's latest EIDO document and whether it is still active."""

    eido: Mapping[str, Any]
    active: bool


@dataclass
class Board:
    """The incidents a connector knows, shared by its connections: id -> latest state."""

    incidents: dict[str, Incident] = field(default_factory=dict)

    def put(self, incident_id: str, eido: Mapping[str, Any], *, active: bool) -> None:
        """Record an incident's latest state; a closed incident leaves the board after its last notice."""
        self.incidents[incident_id] = Incident(eido, active)

    def active(self) -> list[str]:
        """The active incidents' ids, in the order they were first seen."""
        return [i for i, incident in self.incidents.items() if incident.active]

    def forget_closed(self) -> None:
        """Drop the closed incidents (once every connection has been told)."""
        self.incidents = {i: inc for i, inc in self.incidents.items() if inc.active}


@dataclass
class Subscription:
    """One subscription of a connection."""

    subscription_id: str
    incident_id: str | None
    min_rate: int
    max_rate: int
    expires_at: float
    last_sent: float
    due: set[str] = field(default_factory=set)

    def covers(self, incident_id: str) -> bool:
        """Whether an incident is in this subscription."""
        return self.incident_id is None or self.incident_id == incident_id


@cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    """The validator of one kind of message ("subscribe", "event", ...): the schema's <kind>Object.

    The published subscriberMessage and notifierMessage are oneOf branches none of which requires
    its own key, so any object matches several and fails oneOf; a message is checked instead
    against the branch its one key names.
    """
    return validator_for(from_openapi(_SCHEMA, f"{kind}Object"))


NOTIFIER_KINDS = frozenset({"subscribeResponse", "unsubscribeResponse", "response", "event", "terminate"})


class Notifier:
    """The notifier side of one WebSocket connection."""

    def __init__(self, board: Board, new_id: Callable[[], str], policy: Policy | None = None) -> None:
        """The board is shared by the connector's connections; new_id makes subscription and transaction ids."""
        self.board = board
        self.new_id = new_id
        self.policy = policy or Policy()
        self.subscriptions: dict[str, Subscription] = {}
        self.pending: dict[str, str] = {}  # transactionId -> subscriptionId, events not yet answered

    # -- from the subscriber ------------------------------------------------------------------

    def receive(self, message: Any, now: float) -> list[Message]:
        """The answers to one message of the subscriber (already parsed from JSON).

        A message of a kind the notifier does not take gets the schema's `response` 501; an invalid
        subscribe or unsubscribe its own response with 400 and the path of the first problem; an
        invalid eventResponse or terminateResponse is dropped.
        """
        request_id = _request_id(message)
        if not isinstance(message, dict) or len(message) != 1 or next(iter(message)) not in _SUBSCRIBER_KINDS:
            return [{"response": {"requestId": request_id, "statusCode": 501, "statusText": "Not implemented"}}]
        ((kind, body),) = message.items()
        error = jsonschema.exceptions.best_match(validator(kind).iter_errors(message))
        if error is not None:
            return _invalid(kind, body, request_id, error)
        if kind == "subscribe":
            if "subscriptionId" in body:
                return [self._renew(body, now)]
            refusal = self._refusal(body)
            return [refusal] if refusal is not None else self._subscribe(body, now)
        if kind == "unsubscribe":
            return [self._unsubscribe(body)]
        if kind == "eventResponse":
            self.pending.pop(body["transactionId"], None)
        return []  # terminateResponse: the subscription is already gone

    def _renew(self, body: Mapping[str, Any], now: float) -> Message:
        sub = self.subscriptions.get(body["subscriptionId"])
        if sub is None:
            return _subscribe_response(body["requestId"], NO_SUBSCRIPTION)
        policy = self.policy
        sub.expires_at = now + _bounded(body.get("expires"), policy.default_expires, 1, policy.max_expires)
        return _subscribe_response(body["requestId"], OK, sub, now)

    def _refusal(self, body: Mapping[str, Any]) -> Message | None:
        """The response refusing a new subscription, or None when it can be made."""
        request_id = body["requestId"]
        subtype, incident_id, accepts = body.get("requestSubType"), body.get("incidentId"), body.get("requestAccepts")
        if body.get("requestType") != "EIDO" or subtype not in {"new", "single"}:
            return _subscribe_response(request_id, BAD_REQUEST, text="requestType EIDO, subtype new or single")
        if accepts is not None and not accepts.startswith(EIDO_MEDIA_TYPE):
            return _subscribe_response(request_id, NOT_ACCEPTABLE, text=f"only {EIDO_MEDIA_TYPE}")
        if subtype == "single" and (incident_id is None or incident_id not in self.board.incidents):
            return _subscribe_response(request_id, NOT_FOUND)
        if subtype == "new" and incident_id is not None:
            return _subscribe_response(request_id, BAD_REQUEST, text="incidentId is for subtype single")
        if len(self.subscriptions) >= self.policy.max_subscriptions:
            return _subscribe_response(request_id, UNAVAILABLE)
        return None

    def _subscribe(self, body: Mapping[str, Any], now: float) -> list[Message]:
        policy = self.policy
        floor_min, floor_max, top = policy.min_rate_floor, policy.max_rate_floor, policy.max_expires
        sub = Subscription(
            subscription_id=self.new_id(),
            incident_id=body.get("incidentId"),
            min_rate=_bounded(body.get("minRate"), floor_min * 6, floor_min, top),
            max_rate=_bounded(body.get("maxRate"), floor_max, floor_max, top),
            expires_at=now + _bounded(body.get("expires"), policy.default_expires, 1, top),
            last_sent=now,
        )
        self.subscriptions[sub.subscription_id] = sub
        out = [_subscribe_response(body["requestId"], OK, sub, now)]
        board = self.board.incidents
        covered = [i for i in board if sub.covers(i) and (board[i].active or sub.incident_id == i)]
        if covered:
            out.append(self._event(sub, covered, now))
        return out

    def _unsubscribe(self, body: Mapping[str, Any]) -> Message:
        sub = self.subscriptions.pop(body["subscriptionId"], None)
        status = OK if sub is not None else NO_SUBSCRIPTION
        self.pending = {t: s for t, s in self.pending.items() if s != body["subscriptionId"]}
        return _unsubscribe_response(body["requestId"], body["subscriptionId"], status, _TEXT[status])

    # -- from the hub and the clock -----------------------------------------------------------

    def changed(self, incident_id: str, now: float) -> list[Message]:
        """The events owed now for an incident whose state on the board changed."""
        for sub in self.subscriptions.values():
            if sub.covers(incident_id):
                sub.due.add(incident_id)
        return self.tick(now)

    def tick(self, now: float) -> list[Message]:
        """What is owed at this time: coalesced changes, minRate refreshes, expiry terminations."""
        out: list[Message] = []
        for sub in list(self.subscriptions.values()):
            if now >= sub.expires_at or self._overdue(sub):
                out.append(self._terminate(sub))
                continue
            if sub.due and now >= sub.last_sent + sub.max_rate:
                ids, sub.due = [i for i in self.board.incidents if i in sub.due], set()
                if ids:
                    out.append(self._event(sub, ids, now))
            elif now >= sub.last_sent + sub.min_rate:
                ids = [i for i in self.board.incidents if sub.covers(i) and self.board.incidents[i].active]
                if ids:
                    out.append(self._event(sub, ids, now))
                else:
                    sub.last_sent = now
        return out

    def next_deadline(self) -> float | None:
        """When tick next has something to do (for the connection to sleep until), or None."""
        times: list[float] = []
        for sub in self.subscriptions.values():
            times.append(sub.expires_at)
            times.append(sub.last_sent + (sub.max_rate if sub.due else sub.min_rate))
        return min(times) if times else None

    def _overdue(self, sub: Subscription) -> bool:
        return sum(1 for s in self.pending.values() if s == sub.subscription_id) > self.policy.max_pending

    def _event(self, sub: Subscription, incident_ids: list[str], now: float) -> Message:
        transaction = self.new_id()
        self.pending[transaction] = sub.subscription_id
        sub.last_sent = now
        sub.due.difference_update(incident_ids)
        return {
            "event": {
                "subscriptionId": sub.subscription_id,
                "transactionId": transaction,
                "notification": [dict(self.board.incidents[i].eido) for i in incident_ids],
            }
        }

    def _terminate(self, sub: Subscription) -> Message:
        del self.subscriptions[sub.subscription_id]
        self.pending = {t: s for t, s in self.pending.items() if s != sub.subscription_id}
        return {"terminate": {"requestId": self.new_id(), "subscriptionId": sub.subscription_id}}

    def subscription_ids(self) -> Iterator[str]:
        """The live subscriptions' ids."""
        return iter(self.subscriptions)


def _bounded(value: Any, default: int, low: int, high: int) -> int:
    chosen = default if not isinstance(value, int) or isinstance(value, bool) else value
    return max(low, min(high, chosen))


def _request_id(message: Any) -> str:
    body = next(iter(message.values()), None) if isinstance(message, dict) else None
    value = body.get("requestId") if isinstance(body, dict) else None
    return value if isinstance(value, str) else ""


def _invalid(kind: str, body: Any, request_id: str, error: jsonschema.ValidationError) -> list[Message]:
    text = "/" + "/".join(str(p) for p in error.absolute_path) + f": {error.message[:200]}"
    if kind == "subscribe":
        return [_subscribe_response(request_id, BAD_REQUEST, text=text)]
    if kind == "unsubscribe":
        sub_id = body.get("subscriptionId") if isinstance(body, dict) else None
        return [_unsubscribe_response(request_id, sub_id if isinstance(sub_id, str) else "", BAD_REQUEST, text)]
    return []


def _unsubscribe_response(request_id: str, subscription_id: str, status: int, text: str) -> Message:
    return {
        "unsubscribeResponse": {
            "requestId": request_id,
            "subscriptionId": subscription_id,
            "statusCode": status,
            "statusText": text,
        }
    }


def _subscribe_response(
    request_id: str, status: int, sub: Subscription | None = None, now: float = 0.0, text: str | None = None
) -> Message:
    body: dict[str, Any] = {"requestId": request_id, "statusCode": status, "statusText": text or _TEXT[status]}
    if sub is not None:
        body |= {
            "subscriptionId": sub.subscription_id,
            "minRate": sub.min_rate,
            "maxRate": sub.max_rate,
            "expires": max(0, round(sub.expires_at - now)),
        }
    return {"subscribeResponse": body}
