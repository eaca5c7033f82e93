"""The EIDO conveyance's notifier rules (NENA-STA-024), without a socket: every message it sends is schema-valid."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from adapters import conveyance
from adapters.conveyance import Board, Notifier, Policy
from adapters.document import DocumentError
from adapters.schemas import check_json


def eido(incident_id: str, version: int = 1) -> dict[str, Any]:
    return {"$id": incident_id, "eidoVersion": "1.0", "lastUpdateTimeStamp": f"2026-12-07T10:00:0{version}Z"}


@pytest.fixture
def board() -> Board:
    b = Board()
    b.put("inc-a", eido("inc-a"), active=True)
    b.put("inc-b", eido("inc-b"), active=True)
    return b


def notifier(board: Board, **policy: int) -> Notifier:
    counter = itertools.count(1)
    return Notifier(board, lambda: f"id-{next(counter)}", Policy(**policy))


def sent(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages, each checked against the notifier schema of STA-024."""
    for message in messages:
        ((kind, _body),) = message.items()
        assert kind in conveyance.NOTIFIER_KINDS
        check_json(message, conveyance.validator(kind))
    return messages


def subscribe(n: Notifier, now: float = 0.0, **fields: Any) -> list[dict[str, Any]]:
    body = {"requestId": "r1", "requestType": "EIDO", "requestSubType": "new"} | fields
    return sent(n.receive({"subscribe": body}, now))


def notified(messages: list[dict[str, Any]]) -> list[list[str]]:
    return [[doc["$id"] for doc in m["event"]["notification"]] for m in messages if "event" in m]


def test_a_new_subscriber_gets_every_active_incident_at_once(board: Board) -> None:
    board.put("inc-closed", eido("inc-closed"), active=False)
    n = notifier(board)
    out = subscribe(n, minRate=60, expires=600)
    response = out[0]["subscribeResponse"]
    assert (response["statusCode"], response["minRate"], response["expires"]) == (200, 60, 600)
    assert notified(out) == [["inc-a", "inc-b"]]


def test_changes_are_notified_at_most_once_per_max_rate(board: Board) -> None:
    n = notifier(board)
    subscribe(n, maxRate=10, minRate=600)
    board.put("inc-a", eido("inc-a", 2), active=True)
    assert sent(n.changed("inc-a", 1.0)) == []
    board.put("inc-a", eido("inc-a", 3), active=True)
    board.put("inc-c", eido("inc-c"), active=True)
    assert sent(n.changed("inc-a", 2.0)) == []
    assert sent(n.changed("inc-c", 3.0)) == []
    assert n.next_deadline() == 10.0
    out = sent(n.tick(10.0))
    assert notified(out) == [["inc-a", "inc-c"]]
    assert out[0]["event"]["notification"][0]["lastUpdateTimeStamp"].endswith("03Z")
    assert sent(n.tick(11.0)) == []


def test_without_max_rate_each_change_goes_out_at_once(board: Board) -> None:
    n = notifier(board)
    subscribe(n, minRate=600)
    assert notified(n.changed("inc-b", 1.0)) == [["inc-b"]]
    assert notified(n.changed("inc-a", 1.5)) == [["inc-a"]]


def test_min_rate_sends_the_current_state_again_and_is_held_to_the_floor(board: Board) -> None:
    n = notifier(board, min_rate_floor=10)
    out = subscribe(n, minRate=1)
    assert out[0]["subscribeResponse"]["minRate"] == 10
    assert sent(n.tick(9.9)) == []
    assert notified(sent(n.tick(10.0))) == [["inc-a", "inc-b"]]
    assert sent(n.tick(19.0)) == []
    board.put("inc-b", eido("inc-b", 2), active=False)
    assert notified(sent(n.changed("inc-b", 19.5))) == [["inc-b"]]
    board.forget_closed()
    assert notified(sent(n.tick(29.5))) == [["inc-a"]]


def test_expiry_terminates_and_renewal_extends(board: Board) -> None:
    n = notifier(board)
    sub_id = subscribe(n, expires=100, minRate=600)[0]["subscribeResponse"]["subscriptionId"]
    renewed = sent(n.receive({"subscribe": {"requestId": "r2", "subscriptionId": sub_id, "expires": 100}}, 50.0))
    assert renewed[0]["subscribeResponse"]["expires"] == 100
    assert sent(n.tick(100.0)) == []
    out = sent(n.tick(150.0))
    assert out == [{"terminate": {"requestId": out[0]["terminate"]["requestId"], "subscriptionId": sub_id}}]
    assert list(n.subscription_ids()) == []
    gone = sent(n.receive({"subscribe": {"requestId": "r3", "subscriptionId": sub_id}}, 151.0))
    assert gone[0]["subscribeResponse"]["statusCode"] == 481


def test_single_covers_one_incident_and_unknown_is_404(board: Board) -> None:
    n = notifier(board)
    assert subscribe(n, requestSubType="single", incidentId="nope")[0]["subscribeResponse"]["statusCode"] == 404
    out = subscribe(n, requestSubType="single", incidentId="inc-b", minRate=600)
    assert notified(out) == [["inc-b"]]
    assert sent(n.changed("inc-a", 1.0)) == []
    assert notified(sent(n.changed("inc-b", 2.0))) == [["inc-b"]]


def test_unsubscribe_and_unknown_subscription(board: Board) -> None:
    n = notifier(board)
    sub_id = subscribe(n)[0]["subscribeResponse"]["subscriptionId"]
    first = sent(n.receive({"unsubscribe": {"requestId": "u1", "subscriptionId": sub_id}}, 1.0))
    again = sent(n.receive({"unsubscribe": {"requestId": "u2", "subscriptionId": sub_id}}, 2.0))
    assert first[0]["unsubscribeResponse"]["statusCode"] == 200
    assert again[0]["unsubscribeResponse"]["statusCode"] == 481
    assert sent(n.changed("inc-a", 3.0)) == []


@pytest.mark.parametrize(
    ("message", "key", "status", "text"),
    [
        ({"subscribe": {"requestType": "EIDO"}}, "subscribeResponse", 400, "'requestId' is a required property"),
        ({"subscribe": {"requestId": "r", "requestType": "CAP"}}, "subscribeResponse", 400, "/requestType"),
        ({"subscribe": {"requestId": "r", "requestType": "EIDO", "requestSubType": "new", "minRate": "x"}},
         "subscribeResponse", 400, "/minRate"),
        ({"subscribe": {"requestId": "r", "requestType": "EIDO", "requestSubType": "new",
                        "requestAccepts": "application/xml"}}, "subscribeResponse", 406, "only application/emergency.eido+json"),
        ({"subscribe": {"requestId": "r", "requestType": "EIDO", "requestSubType": "new", "incidentId": "inc-a"}},
         "subscribeResponse", 400, "incidentId is for subtype single"),
        ({"unsubscribe": {"requestId": "r"}}, "unsubscribeResponse", 400, "'subscriptionId' is a required property"),
        ({"hello": {"requestId": "r"}}, "response", 501, "Not implemented"),
        (["subscribe"], "response", 501, "Not implemented"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_precise_answer(board: Board, message: Any, key: str, status: int, text: str) -> None:
    out = sent(notifier(board).receive(message, 0.0))
    assert len(out) == 1
    assert out[0][key]["statusCode"] == status
    assert text in out[0][key]["statusText"]


def test_too_many_subscriptions_is_503(board: Board) -> None:
    n = notifier(board, max_subscriptions=2)
    assert [subscribe(n)[0]["subscribeResponse"]["statusCode"] for _ in range(3)] == [200, 200, 503]


def test_unanswered_events_end_the_subscription(board: Board) -> None:
    n = notifier(board, max_pending=2)
    subscribe(n, minRate=600)  # one event pending
    answered = notified(sent(n.changed("inc-a", 1.0)))
    transaction = sent(n.changed("inc-b", 2.0))[0]["event"]["transactionId"]
    assert answered == [["inc-a"]]
    n.receive({"eventResponse": {"transactionId": transaction, "statusCode": 200, "statusText": "OK"}}, 2.5)
    assert notified(sent(n.changed("inc-a", 3.0))) == [["inc-a"]]
    out = sent(n.changed("inc-b", 4.0))
    assert [next(iter(m)) for m in out] == ["terminate"]


def test_the_schema_check_of_sent_messages_can_fail() -> None:
    with pytest.raises(DocumentError, match="transactionId"):
        sent([{"event": {"subscriptionId": "s"}}])
