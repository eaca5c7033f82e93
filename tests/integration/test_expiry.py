"""Expiry through the real hub: an envelope not delivered before it expires is dropped, never silently."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2

from broker.delivery import handoff
from broker.dev.testing import LocalHub, local_hub
from broker.hub import Hub
from broker.lanes import Lane
from broker.times import ManualClock
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW, nothing_more, take

pytestmark = pytest.mark.integration


async def test_an_expired_delivery_is_dropped_and_the_sender_told(hub: LocalHub) -> None:
    """Expired while the room was offline: not delivered, receipt EXPIRED, a DELIVERY_EXPIRED notice to the sender."""
    sender = hub.client(f.CUR)
    short = f.envelope(f.CUR, (f.QUESTURA, f.PL))
    short.expires_at.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))
    lasting = f.envelope(f.CUR, (f.QUESTURA,))
    await sender.publish(short)
    await sender.publish(lasting)

    pl_room = hub.client(f.PL)
    [in_time] = await take(pl_room.inbox(), 1)  # the Polizia Locale was online: it got it in time
    assert short.distribution_id == in_time.envelope.distribution_id
    await pl_room.close()
    await asyncio.sleep(1.3)

    before = await sender.receipt(short.distribution_id)
    states = {r.agency_id: r.state for r in before.recipients}
    assert {f.QUESTURA: hub_pb2.DELIVERY_STATE_EXPIRED, f.PL: hub_pb2.DELIVERY_STATE_DELIVERED} == states

    room = hub.client(f.QUESTURA)
    inbox = room.inbox()
    [only] = await take(inbox, 1)
    assert lasting.distribution_id == only.envelope.distribution_id
    await nothing_more(inbox, 0.5)

    [notice] = await take(sender.inbox(), 1)
    env = notice.envelope
    assert (common_pb2.KIND_ERROR, "DELIVERY_EXPIRED") == (env.kind, env.acknowledgement.code)
    assert short.distribution_id == env.references[0].distribution_id
    assert f.QUESTURA in env.acknowledgement.description
    assert hub_pb2.LANE_URGENT == notice.lane

    after = await sender.receipt(short.distribution_id)
    assert hub_pb2.DELIVERY_STATE_EXPIRED == {r.agency_id: r.state for r in after.recipients}[f.QUESTURA]
    registry = hub.hub.metrics.registry
    assert 1.0 == registry.get_sample_value("opsroom_expired_total", {"agency": f.QUESTURA})
    await room.close()
    await sender.close()


async def test_a_later_session_does_not_see_the_dropped_delivery_again(hub: LocalHub) -> None:
    """The drop is recorded like an acknowledgement: the room's next session starts after it."""
    sender = hub.client(f.CUR)
    short = f.envelope(f.CUR, (f.QUESTURA,))
    short.expires_at.FromDatetime(datetime.now(UTC) + timedelta(seconds=0.5))
    await sender.publish(short)
    await asyncio.sleep(0.8)
    room = hub.client(f.QUESTURA)
    first = room.inbox()
    await nothing_more(first, 1.0)
    await room.close()
    later = f.envelope(f.CUR, (f.QUESTURA,))
    await sender.publish(later)
    again = hub.client(f.QUESTURA)
    [got] = await take(again.inbox(), 1)
    assert later.distribution_id == got.envelope.distribution_id
    await again.close()
    await sender.close()


AGREEMENT = (
    f.agreement_head("torino-expiry", "Torino, short-lived plate reads")
    + f"""\
parties:
  - {{agency: {f.PL}, role: polizia_locale}}
  - {{agency: {f.QUESTURA}, role: questura}}
roles:
  questura: {{personal_data: [vehicles, free_text, media]}}
rules:
  - id: reads
    from: [polizia_locale]
    to: [questura]
    kinds: [REPORT]
    payloads: [alert]
    expire_after_seconds: 1
  - id: incidents
    from: [polizia_locale]
    to: [questura]
    kinds: [REPORT]
    payloads: [incident]
"""
)


async def test_the_agreement_sets_the_expiry_when_the_sender_does_not(tmp_path: Path) -> None:
    """A rule's expire_after_seconds applies to envelopes without expires_at; other rules keep the 24 h default."""
    folder = tmp_path / "agreements"
    folder.mkdir()
    (folder / "torino.yaml").write_text(AGREEMENT)
    agencies = {f.PL: "PL Torino", f.QUESTURA: "Questura"}
    async with local_hub(tmp_path / "run", agencies, (), agreements=folder) as env:
        sender = env.client(f.PL)
        read = f.envelope(f.PL, (f.QUESTURA,), alert=f.plate_read())
        read.ClearField("expires_at")
        report = f.envelope(f.PL, (f.QUESTURA,))
        report.ClearField("expires_at")
        await sender.publish(read)
        await sender.publish(report)
        await asyncio.sleep(1.3)
        room = env.client(f.QUESTURA)
        [got] = await take(room.inbox(), 1)
        assert report.distribution_id == got.envelope.distribution_id
        receipt = await sender.receipt(read.distribution_id)
        assert hub_pb2.DELIVERY_STATE_EXPIRED == receipt.recipients[0].state
        await room.close()
        await sender.close()


NOTICE_WAIT = 30.0  # liveness: the expiry worker (a pass a second) notices an expired delivery and the notice arrives
PASSES = 2.5  # a little over two passes of the expiry worker


def Clock() -> ManualClock:  # noqa: N802 - reads as the class it makes
    """The hub's clock: the wall clock when made, then moved only by the test."""
    return ManualClock(datetime.now(UTC))


async def notices_stored(env: LocalHub, sender: str) -> list[envelope_pb2.Envelope]:
    """The DELIVERY_EXPIRED notices stored for sender (whether or not delivered), read from the stream."""
    js = env.hub.js
    stored = await js.read_matching(js.cfg.stream, js.layout.deliveries_of_agency(sender, Lane.URGENT), 1, 1000)
    envelopes = [envelope_pb2.Envelope.FromString(m.data) for m in stored]
    return [e for e in envelopes if e.acknowledgement.code == "DELIVERY_EXPIRED"]


async def test_an_expiry_fires_at_its_time_while_the_room_stays_away(tmp_path: Path) -> None:
    """The Questura never connects: the sender gets DELIVERY_EXPIRED once the expiry passes (not before), timed after
    it; the consumer is not acknowledged past the deliveries before and after, which the room gets when it comes back
    (the expired one not); no second notice then.
    """
    clock = Clock()
    async with local_hub(tmp_path, AGENCIES, ALLOW, clock=clock) as env:
        sender = env.client(f.CUR)
        before, short, after = (f.envelope(f.CUR, (f.QUESTURA,)) for _ in range(3))
        expiry = clock.now() + timedelta(minutes=5)
        short.expires_at.FromDatetime(expiry)
        for env_ in (before, short, after):
            await sender.publish(env_)
        notices = sender.inbox()
        await nothing_more(notices, PASSES)  # not expired yet: nothing
        assert hub_pb2.DELIVERY_STATE_STORED == (await sender.receipt(short.distribution_id)).recipients[0].state

        clock.advance(timedelta(minutes=5, seconds=1).total_seconds())
        [notice] = await take(notices, 1, timeout=NOTICE_WAIT)
        assert (common_pb2.KIND_ERROR, "DELIVERY_EXPIRED") == (
            notice.envelope.kind,
            notice.envelope.acknowledgement.code,
        )
        assert short.distribution_id == notice.envelope.references[0].distribution_id
        assert notice.envelope.sent_at.ToDatetime(tzinfo=UTC) >= expiry
        receipt = await sender.receipt(short.distribution_id)
        assert hub_pb2.DELIVERY_STATE_EXPIRED == receipt.recipients[0].state
        assert 0 == await handoff.agency_floor(env.hub.js, f.QUESTURA, Lane.URGENT)  # nothing acknowledged for the room
        registry = env.hub.metrics.registry
        assert 1.0 == registry.get_sample_value("opsroom_expired_total", {"agency": f.QUESTURA})

        room = env.client(f.QUESTURA)
        inbox = room.inbox()
        got = await take(inbox, 2)
        assert [before.distribution_id, after.distribution_id] == [d.envelope.distribution_id for d in got]
        await nothing_more(inbox, 1.0)
        await nothing_more(notices, PASSES)  # the session dropped it too: its notice was the same, stored once
        assert 1 == len(await notices_stored(env, f.CUR))
        assert 1.0 == registry.get_sample_value("opsroom_expired_total", {"agency": f.QUESTURA})
        await room.close()
        await sender.close()


async def test_two_replicas_notify_an_expiry_once(tmp_path: Path) -> None:
    """Both replicas run the expiry worker on the same store: one notice is stored, the sender hears of it once, and
    the replicas' opsroom_expired_total add up to one.
    """
    clock = Clock()
    async with local_hub(tmp_path, AGENCIES, ALLOW, clock=clock) as env:
        cfg = env.hub.cfg
        assert cfg.audit is not None
        second = Hub(replace(cfg, listen="127.0.0.1:0", audit=replace(cfg.audit, writer="hub-b")), clock=clock)
        await second.start()
        try:
            sender = env.client(f.CUR)
            short = f.envelope(f.CUR, (f.QUESTURA, f.CC))
            expiry = clock.now() + timedelta(seconds=30)
            short.expires_at.FromDatetime(expiry)
            await sender.publish(short)
            clock.advance(31)
            notices = sender.inbox()
            got = await take(notices, 2, timeout=NOTICE_WAIT)  # one per recipient
            assert {f.QUESTURA, f.CC} == {
                next(a for a in (f.QUESTURA, f.CC) if a in d.envelope.acknowledgement.description) for d in got
            }
            await nothing_more(notices, PASSES)
            assert 2 == len(await notices_stored(env, f.CUR))
            counted = {
                agency: sum(
                    hub.metrics.registry.get_sample_value("opsroom_expired_total", {"agency": agency}) or 0.0
                    for hub in (env.hub, second)
                )
                for agency in (f.QUESTURA, f.CC)
            }
            assert {f.QUESTURA: 1.0, f.CC: 1.0} == counted
            await sender.close()
        finally:
            await second.stop(grace=1)
