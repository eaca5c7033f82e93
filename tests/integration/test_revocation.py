"""Revocation without a restart: a room's certificate revoked by rewriting the CRL or the deny file.

Each test runs the real hub over mTLS against a real nats-server, with [tls] crl_file and
deny_file checked every 0.2 s. A revoked room's open Connect and PublishStream calls end with
UNAUTHENTICATED CERTIFICATE_REVOKED, its new calls are refused, the other rooms go on, and a
list without it lets it back in; a list that does not load is refused and the old one stays.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, HubError, RetryPolicy

from broker.config import RevocationConfig
from broker.dev.certs import make_dev_pki, write_crl
from broker.dev.testing import LocalHub, local_hub
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW

pytestmark = pytest.mark.integration

RELOAD = timedelta(seconds=0.2)
# liveness: a reload every 0.2 s, then the stream's end; 30 s is far past that on a loaded machine.
REVOKE_LIVENESS = 30.0
NO_RETRY = RetryPolicy(attempts=1, timeout=10)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    """The hub with an empty CRL (signed by the dev CA) and an empty deny file, reloaded every 0.2 s."""
    pki = make_dev_pki(tmp_path / "pki", list(AGENCIES))
    crl = write_crl(pki.root)
    deny = tmp_path / "deny.toml"
    deny.write_text("agencies = []\n")
    revocation = RevocationConfig(crl_file=crl, deny_file=deny, reload=RELOAD)
    async with local_hub(tmp_path, AGENCIES, ALLOW, metrics_listen="127.0.0.1:0", revocation=revocation) as env:
        yield env


def _reloads(hub: LocalHub, outcome: str) -> float:
    value = hub.hub.metrics.registry.get_sample_value("opsroom_revocation_reloads_total", {"outcome": outcome})
    return value or 0.0


async def _until(condition: object, within: float) -> None:
    async with asyncio.timeout(within):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def _open_session(client: HubClient) -> object:
    call = client.connect_call()
    await call.write(hub_pb2.ConnectRequest(open=hub_pb2.OpenSession()))
    async with asyncio.timeout(REVOKE_LIVENESS):
        first = await call.read()
    assert first.WhichOneof("response") == "opened"
    return call


async def _ended_with(call: object) -> HubError:
    """Read the call until it ends; the status it ended with."""

    async def drain() -> None:
        async with asyncio.timeout(REVOKE_LIVENESS):
            while True:
                await call.read()  # type: ignore[attr-defined]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await drain()
    return HubError.from_rpc_error(caught.value)


async def test_revoked_by_crl_ends_open_streams_and_refuses_new_calls(hub: LocalHub) -> None:
    """The Polizia Locale connected and publishing is revoked by a new CRL: both its streams end with
    UNAUTHENTICATED CERTIFICATE_REVOKED, its new calls are refused, the Questura goes on; a CRL
    without it lets it back in."""
    pl, cur, questura = hub.client(f.PL, retry=NO_RETRY), hub.client(f.CUR), hub.client(f.QUESTURA)
    session = await _open_session(pl)
    questura_session = await _open_session(questura)
    requests: asyncio.Queue[hub_pb2.PublishStreamRequest | None] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[hub_pb2.PublishStreamRequest]:
        while (request := await requests.get()) is not None:
            yield request

    stream = pl.publish_stream_call(outgoing())
    await requests.put(hub_pb2.PublishStreamRequest(request_id=1, envelopes=[f.envelope(f.PL, (f.QUESTURA,))]))
    async with asyncio.timeout(REVOKE_LIVENESS):
        answer = await stream.read()
    assert answer.results[0].WhichOneof("result") == "acceptance"

    write_crl(hub.pki.root, revoke=[f.PL])
    for call in (session, stream):
        error = await _ended_with(call)
        assert (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_REVOKED") == (error.code, error.reason)
    assert 1.0 == _reloads(hub, "reloaded")
    for attempt in (pl.publish(f.envelope(f.PL, (f.QUESTURA,))), pl.receipt(f.envelope().distribution_id)):
        with pytest.raises(HubError) as caught:
            await attempt
        assert (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_REVOKED") == (caught.value.code, caught.value.reason)
        assert "revoked" in caught.value.message

    # The other rooms are undisturbed: the Questura's session stayed open and receives.
    env = f.envelope(f.CUR, (f.QUESTURA,))
    await cur.publish(env)
    received: set[str] = set()
    async with asyncio.timeout(REVOKE_LIVENESS):
        while env.distribution_id not in received:
            frame = await questura_session.read()  # type: ignore[attr-defined]
            received |= {d.envelope.distribution_id for d in frame.deliveries.deliveries}

    write_crl(hub.pki.root, reinstate=[f.PL])
    await _until(lambda: _reloads(hub, "reloaded") >= 2.0, REVOKE_LIVENESS)
    accepted = await pl.publish(f.envelope(f.PL, (f.QUESTURA,)))
    assert accepted.distribution_id
    again = await _open_session(pl)  # its Connect opens again
    again.cancel()  # type: ignore[attr-defined]
    questura_session.cancel()  # type: ignore[attr-defined]
    for client in (pl, cur, questura):
        await client.close()


async def test_deny_file_revokes_an_agency_and_a_bad_file_is_refused(hub: LocalHub, tmp_path: Path) -> None:
    """An agency in the deny file is refused; a deny file that does not parse, and a CRL no trusted CA
    signed, are refused whole and the lists in force stay (the agency stays refused)."""
    deny = tmp_path / "deny.toml"
    cc = hub.client(f.CC, retry=NO_RETRY)
    inbox = cc.inbox()
    inbox.start()
    async with asyncio.timeout(REVOKE_LIVENESS):
        await inbox.opened.wait()

    deny.write_text(f'agencies = ["{f.CC}"]\n')
    with pytest.raises(HubError) as ended:
        async with asyncio.timeout(REVOKE_LIVENESS):
            await inbox.__anext__()
    assert (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_REVOKED") == (ended.value.code, ended.value.reason)

    deny.write_text('agencies = ["not an agency"]\nserials = [7]\n')
    await _until(lambda: _reloads(hub, "refused") >= 1.0, REVOKE_LIVENESS)
    deny.write_text(f'agencies = ["{f.CC}"]\n')  # good again: the same lists, nothing to change
    other = make_dev_pki(tmp_path / "other-ca", [])
    write_crl(other.root)
    (hub.pki.root / "crl.pem").write_bytes((other.root / "crl.pem").read_bytes() + b"\n")
    await _until(lambda: _reloads(hub, "refused") >= 2.0, REVOKE_LIVENESS)
    (hub.pki.root / "crl.pem").write_bytes(b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    await _until(lambda: _reloads(hub, "refused") >= 3.0, REVOKE_LIVENESS)

    with pytest.raises(HubError) as refused:
        await cc.publish(f.envelope(f.CC, (f.QUESTURA,)))
    assert (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_REVOKED") == (refused.value.code, refused.value.reason)
    assert 1.0 == _reloads(hub, "reloaded")  # the bad files changed nothing in force
    accepted = await hub.client(f.CUR).publish(f.envelope(f.CUR, (f.QUESTURA,)))
    assert accepted.distribution_id
    await cc.close()
