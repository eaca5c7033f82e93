"""The CAP connector as a room runs it: real processes, real HTTP, the real hub over mTLS.

A plate reader's system posts a CAP alert to the Polizia Locale's connector; the hub routes it;
the Questura's connector keeps it in its Atom feed (and a gRPC room gets it on its stream); the
feed answers conditional GETs; a document the codec refuses is a 400 naming the element; a
refusal by the hub is its HTTP status with the hub's reason and fields.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree
from opsroom_client import HubClient

from adapters import atom, cap
from adapters.document import Context
from broker.dev.testing import LocalHub
from tests import factories as f
from tests.adapters.test_cap import PLATE_READER
from tests.integration.conftest import take
from tests.integration.connectors import call, start_connector, stop

pytestmark = pytest.mark.integration

FEED_LIVENESS = 60.0  # an alert reaches the other agency's feed within this (well under a second)


def fresh_alert(identifier: str) -> bytes:
    """The plate-reader alert, sent a minute ago and expiring in an hour, with its own identifier."""
    now = datetime.now(UTC).replace(microsecond=0)
    sent = (now - timedelta(minutes=1)).isoformat()
    expires = (now + timedelta(hours=1)).isoformat()
    return (
        PLATE_READER.replace(b"2026-11-23T13:00:00+01:00", sent.encode())
        .replace(b"2026-11-23T14:00:00+01:00", expires.encode())
        .replace(b"PLT-2026-000123", identifier.encode())
    )


async def feed_entries(url: str) -> list[etree._Element]:
    status, _headers, body = await call("GET", f"{url}/feed")
    assert status == 200
    return etree.fromstring(body).findall(f"{{{atom.ATOM}}}entry")


async def test_a_posted_alert_reaches_the_feed_and_the_stream_of_its_recipient(
    hub: LocalHub, clients: dict[str, HubClient], tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    pl = await start_connector(
        "cap", hub, f.PL, tmp_path / "pl", processes, "--recipient", f.QUESTURA, "--recipient", f.CC
    )
    questura = await start_connector("cap", hub, f.QUESTURA, tmp_path / "questura", processes)
    document = fresh_alert(f"PLT-{uuid.uuid4()}")

    status, _h, body = await call("POST", f"{pl}/alerts", document, {"Content-Type": atom.CAP_MEDIA_TYPE})
    assert status == 201, body
    answer = json.loads(body)
    assert sorted(answer["recipients"]) == sorted([f.QUESTURA, f.CC])
    again = await call("POST", f"{pl}/alerts", document, {"Content-Type": atom.CAP_MEDIA_TYPE})
    assert (again[0], json.loads(again[2])["distribution_id"]) == (201, answer["distribution_id"])

    # The Carabinieri room speaks the contract: the alert arrives on its stream, once.
    [delivery] = await take(clients[f.CC].inbox(), 1)
    assert delivery.envelope.distribution_id == answer["distribution_id"]
    assert delivery.envelope.origin.format == "cap-1.2"

    # The Questura reads CAP: the alert appears in its connector's feed.
    async with asyncio.timeout(FEED_LIVENESS):
        while not (entries := await feed_entries(questura)):
            await asyncio.sleep(0.2)
    assert [e.findtext(f"{{{atom.ATOM}}}id") for e in entries] == [f"urn:uuid:{answer['distribution_id']}"]
    status, headers, alert = await call("GET", f"{questura}/alerts/{answer['distribution_id']}")
    assert status == 200
    assert headers["Content-Type"].startswith(atom.CAP_MEDIA_TYPE)
    env = cap.decode(alert, Context(agency_id=f.QUESTURA))
    assert env.alert.vehicles[0].plate == f.PLATE
    assert env.alert.infos[0].event == "Transito veicolo segnalato"

    # Conditional GET: nothing new, 304.
    status, headers, _body = await call("GET", f"{questura}/feed")
    assert (await call("GET", f"{questura}/feed", None, {"If-None-Match": headers["ETag"]}))[0] == 304
    assert (await call("GET", f"{questura}/feed", None, {"If-Modified-Since": headers["Last-Modified"]}))[0] == 304
    assert (await call("GET", f"{questura}/alerts/{uuid.uuid4()}"))[0] == 404
    assert stop(processes) == [0, 0]


async def test_refusals_name_the_element_or_the_hub_reason(
    hub: LocalHub, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    pl = await start_connector("cap", hub, f.PL, tmp_path / "pl", processes, "--recipient", f.QUESTURA)

    status, _h, body = await call("POST", f"{pl}/alerts", b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.1"/>')
    assert status == 400
    assert json.loads(body)["path"] == "/alert"

    too_old = fresh_alert(f"PLT-{uuid.uuid4()}").replace(
        (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0).isoformat().encode()[:10],
        b"2020-01-01",
        1,
    )
    status, _h, body = await call("POST", f"{pl}/alerts", too_old)
    assert status == 422, body
    refusal = json.loads(body)
    assert refusal["reason"] == "INVALID_ENVELOPE"
    assert any((p["field"], p["rule"]) == ("envelope.sent_at", "too_old") for p in refusal["fields"]), refusal

    unknown = await start_connector("cap", hub, f.PL, tmp_path / "pl2", processes, "--recipient", "it.pl.999999")
    status, _h, body = await call("POST", f"{unknown}/alerts", fresh_alert(f"PLT-{uuid.uuid4()}"))
    assert status == 422, body
    assert any(p["rule"] == "registered" for p in json.loads(body)["fields"]), body
    assert stop(processes) == [0, 0]
