"""Expiry through the real hub: an envelope not delivered before it expires is dropped, never silently."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opsroom.common.v1 import common_pb2
from opsroom.hub.v1 import hub_pb2

from broker.testing import LocalHub, local_hub
from tests import factories as f
from tests.integration.conftest import nothing_more, take

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


AGREEMENT = f"""
id: torino-expiry
title: Torino, short-lived plate reads
valid_from: 2020-01-01
legal_basis:
  law: "d.l. 14/2017 art. 2"
  purposes: [PUBLIC_SECURITY]
territory: {{provinces: ["001"]}}
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
