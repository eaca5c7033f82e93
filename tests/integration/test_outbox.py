"""The client's outbox against the real hub: in order, refusals set aside, and once only after a crash.

An agency's program keeps what its operators send in an Outbox (a SQLite file) and publishes
from there. These tests check, with the real hub and nats-server, what the outbox promises: the
events of an incident reach the recipient in the order they were put; a refused envelope is set
aside with the hub's reason while the rest go on; an envelope whose acceptance the program did
not live to record is sent again marked resend, answered from the hub's store, and delivered once;
a hub that cannot be reached leaves everything waiting.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, Outbox

from broker.dev.testing import LocalHub, credentials
from tests import factories as f
from tests.integration.conftest import FAST_RETRY, nothing_more, take

pytestmark = pytest.mark.integration


def _incident_events(count: int) -> list[envelope_pb2.Envelope]:
    return [f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(count)]


async def test_an_outbox_delivers_in_order_and_sets_a_refused_envelope_aside(
    clients: dict[str, HubClient], tmp_path: Path
) -> None:
    events = _incident_events(3)
    not_allowed = f.envelope(f.CUR, (f.PL_MILANO,))  # Torino's CUR may not write to Milano
    with Outbox(tmp_path / "outbox.db") as outbox:
        for envelope in [events[0], not_allowed, *events[1:]]:
            assert outbox.put(envelope)
        report = await outbox.send(clients[f.CUR])
        assert [a.distribution_id for a in report.accepted] == [e.distribution_id for e in events]
        assert [a.recipients for a in report.accepted] == [[f.QUESTURA]] * 3
        [(refused_id, error)] = report.refused
        assert (refused_id, error.code.name, error.reason) == (
            not_allowed.distribution_id,
            "PERMISSION_DENIED",
            "RECIPIENT_NOT_ALLOWED",
        )
        assert (report.waiting, report.stopped_by) == (0, None)
        [kept] = outbox.refused()
        assert (kept.distribution_id, kept.reason) == (not_allowed.distribution_id, "RECIPIENT_NOT_ALLOWED")
    inbox = clients[f.QUESTURA].inbox()
    received = await take(inbox, 3)
    assert [d.envelope for d in received] == events
    await nothing_more(inbox)


async def test_an_envelope_stored_before_the_program_died_is_delivered_once(
    hub: LocalHub, clients: dict[str, HubClient], tmp_path: Path
) -> None:
    """The program dies after the hub accepted the first envelope and before the outbox removed it."""
    events = _incident_events(2)
    path = tmp_path / "outbox.db"

    class DiesAfterTheHubAnswers:
        async def publish(self, envelope: envelope_pb2.Envelope, *, resend: bool = False) -> hub_pb2.Acceptance:
            await clients[f.CUR].publish(envelope, resend=resend)
            raise asyncio.CancelledError  # the process is gone before the row is deleted

    outbox = Outbox(path)
    for envelope in events:
        outbox.put(envelope)
    with pytest.raises(asyncio.CancelledError):
        await outbox.send(DiesAfterTheHubAnswers())
    outbox.close()

    restarted = hub.client(f.CUR, retry=FAST_RETRY)  # a new process: a new connection
    try:
        with Outbox(path) as reopened:
            assert reopened.waiting_ids() == [e.distribution_id for e in events]
            report = await reopened.send(restarted)
    finally:
        await restarted.close()
    assert [(a.distribution_id, a.replayed) for a in report.accepted] == [
        (events[0].distribution_id, True),
        (events[1].distribution_id, False),
    ]
    inbox = clients[f.QUESTURA].inbox()
    assert [d.envelope for d in await take(inbox, 2)] == events
    await nothing_more(inbox)


async def test_a_hub_that_cannot_be_reached_leaves_everything_waiting(
    hub: LocalHub, clients: dict[str, HubClient], tmp_path: Path
) -> None:
    events = _incident_events(3)
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    nowhere = HubClient(closed, credentials(hub.pki, f.CUR), server_name="localhost", retry=FAST_RETRY)
    with Outbox(tmp_path / "outbox.db") as outbox:
        for envelope in events:
            outbox.put(envelope)
        try:
            report = await outbox.send(nowhere)
        finally:
            await nowhere.close()
        assert report.accepted == []
        assert report.stopped_by is not None
        assert report.stopped_by.code.name == "UNAVAILABLE"
        assert outbox.waiting_ids() == [e.distribution_id for e in events]
        report = await outbox.send(clients[f.CUR])
        assert [a.distribution_id for a in report.accepted] == [e.distribution_id for e in events]
    inbox = clients[f.QUESTURA].inbox()
    assert [d.envelope for d in await take(inbox, 3)] == events
