"""Outbox against a stand-in for HubClient.publish: order, what is removed, kept, refused, and resent.

The outbox's behaviour with a real hub (stored once after a crash, delivered) is tested in the
repository's tests/integration/test_outbox.py.
"""

import asyncio
import stat
from pathlib import Path

import grpc
import pytest
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubError, Outbox, new_envelope


class StandIn:
    """Answers publishes as told: accept, refuse for good, or fail as transient (after the client's retries)."""

    def __init__(self, answers: dict[str, HubError] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, bool]] = []

    async def publish(self, envelope: envelope_pb2.Envelope, *, resend: bool = False) -> hub_pb2.Acceptance:
        self.calls.append((envelope.distribution_id, resend))
        error = self.answers.get(envelope.distribution_id)
        if error is not None:
            raise error
        return hub_pb2.Acceptance(distribution_id=envelope.distribution_id)


def _envelopes(count: int) -> list[envelope_pb2.Envelope]:
    return [new_envelope("it.pl.001272", kind=common_pb2.KIND_REPORT, incident_ids=["inc-1"]) for _ in range(count)]


UNAVAILABLE = HubError(grpc.StatusCode.UNAVAILABLE, "", "hub unreachable")
INVALID = HubError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ENVELOPE", "incident.location: required")


def test_send_publishes_in_order_and_empties_the_outbox(tmp_path: Path) -> None:
    envelopes = _envelopes(5)
    hub = StandIn()
    with Outbox(tmp_path / "out.db") as outbox:
        assert all(outbox.put(e) for e in envelopes)
        assert outbox.waiting() == 5
        report = asyncio.run(outbox.send(hub))
        assert [a.distribution_id for a in report.accepted] == [e.distribution_id for e in envelopes]
        assert (report.waiting, report.refused, report.stopped_by) == (0, [], None)
        assert outbox.waiting() == 0
    assert hub.calls == [(e.distribution_id, False) for e in envelopes]


def test_a_hub_that_does_not_answer_stops_the_send_and_keeps_the_rest_in_order(tmp_path: Path) -> None:
    envelopes = _envelopes(4)
    hub = StandIn({envelopes[1].distribution_id: UNAVAILABLE})
    with Outbox(tmp_path / "out.db") as outbox:
        for e in envelopes:
            outbox.put(e)
        report = asyncio.run(outbox.send(hub))
        assert [a.distribution_id for a in report.accepted] == [envelopes[0].distribution_id]
        assert report.stopped_by is UNAVAILABLE
        assert report.waiting == 3
        assert outbox.waiting_ids() == [e.distribution_id for e in envelopes[1:]]
        assert [d for d, _ in hub.calls] == [envelopes[0].distribution_id, envelopes[1].distribution_id]
        hub.answers.clear()
        report = asyncio.run(outbox.send(hub))
        assert [a.distribution_id for a in report.accepted] == [e.distribution_id for e in envelopes[1:]]
    # the one handed over before is sent again marked resend; the others for the first time
    assert hub.calls[2:] == [(envelopes[1].distribution_id, True)] + [(e.distribution_id, False) for e in envelopes[2:]]


def test_a_refusal_for_good_moves_the_envelope_aside_and_the_send_goes_on(tmp_path: Path) -> None:
    envelopes = _envelopes(3)
    hub = StandIn({envelopes[1].distribution_id: INVALID})
    clock = iter([100.0, 101.0, 102.0, 103.0])
    with Outbox(tmp_path / "out.db", clock=lambda: next(clock)) as outbox:
        for e in envelopes:
            outbox.put(e)
        report = asyncio.run(outbox.send(hub))
        assert [a.distribution_id for a in report.accepted] == [
            envelopes[0].distribution_id,
            envelopes[2].distribution_id,
        ]
        assert report.refused == [(envelopes[1].distribution_id, INVALID)]
        assert outbox.waiting() == 0
        (refused,) = outbox.refused()
        assert refused.envelope == envelopes[1]
        assert (refused.code, refused.reason, refused.refused_at) == ("INVALID_ARGUMENT", "INVALID_ENVELOPE", 103.0)
        assert not outbox.put(envelopes[1]), "a refused id is not queued again"
        assert outbox.forget_refused(envelopes[1].distribution_id)
        assert outbox.refused() == []


def test_what_waits_survives_closing_and_reopening_and_is_sent_marked_resend_if_it_was_handed(tmp_path: Path) -> None:
    envelopes = _envelopes(3)
    path = tmp_path / "out.db"

    class Crashing(StandIn):
        """The program dies while the hub answers the first envelope."""

        async def publish(self, envelope: envelope_pb2.Envelope, *, resend: bool = False) -> hub_pb2.Acceptance:
            self.calls.append((envelope.distribution_id, resend))
            raise asyncio.CancelledError

    outbox = Outbox(path)
    for e in envelopes:
        outbox.put(e)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(outbox.send(Crashing()))
    outbox.close()
    hub = StandIn()
    with Outbox(path) as reopened:
        assert reopened.waiting_ids() == [e.distribution_id for e in envelopes]
        asyncio.run(reopened.send(hub))
    assert hub.calls == [(envelopes[0].distribution_id, True)] + [(e.distribution_id, False) for e in envelopes[1:]]


def test_putting_an_id_twice_keeps_the_first_and_an_envelope_without_id_is_refused(tmp_path: Path) -> None:
    (envelope,) = _envelopes(1)
    with Outbox(tmp_path / "out.db") as outbox:
        assert outbox.put(envelope)
        changed = envelope_pb2.Envelope()
        changed.CopyFrom(envelope)
        changed.recipients.append("it.cc.to")
        assert not outbox.put(changed)
        assert outbox.waiting() == 1
        with pytest.raises(ValueError, match="distribution_id"):
            outbox.put(envelope_pb2.Envelope())


def test_limit_sends_only_the_oldest(tmp_path: Path) -> None:
    envelopes = _envelopes(3)
    with Outbox(tmp_path / "out.db") as outbox:
        for e in envelopes:
            outbox.put(e)
        report = asyncio.run(outbox.send(StandIn(), limit=2))
        assert len(report.accepted) == 2
        assert outbox.waiting_ids() == [envelopes[2].distribution_id]


def test_the_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "out.db"
    Outbox(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
