"""Transport hardening, shown against the real processes: the hub's TLS versions and ciphers, its NATS credentials.

The TLS probes use Python's ssl module as a client of the real gRPC server (the hub's
certificate is ECDSA P-256): TLS 1.0 and 1.1 handshakes are refused by the server, TLS 1.2 and
1.3 succeed, and of every TLS 1.2 cipher the client's OpenSSL offers, the server takes only
ECDHE with AES-GCM. The NATS tests run nats-server with the account the development setup
writes: the hub works end to end with its user, and a client without it, or with any other
identity, cannot publish to or read the hub's subjects and streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError

from broker.dev.certs import DevPki
from broker.dev.testing import LocalHub, local_hub
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW, take

pytestmark = pytest.mark.integration

# What the hub's gRPC server (gRPC core's defaults, docs/security.md#transport) accepts with an ECDSA certificate.
MODERN_TLS12 = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"}
# Each is what a hardened server must refuse: CBC with SHA-1 or SHA-256 MACs, no forward secrecy, RC4/3DES/NULL.
WEAK_TLS12 = ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-SHA", "AES128-GCM-SHA256", "DES-CBC3-SHA")


def _handshake(port: int, pki: DevPki, version: ssl.TLSVersion, ciphers: str = "ALL:@SECLEVEL=0") -> tuple[str, str]:
    """A TLS handshake with the hub as a room would make it (its client certificate, ALPN h2): (version, cipher).

    Raises ssl.SSLError or OSError if the handshake fails. SECLEVEL=0 lets the client offer
    what its OpenSSL would otherwise refuse to, so that the server's refusal is what is tested.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    pair = pki.agency(f.PL)
    ctx.load_cert_chain(pair.cert, pair.key)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    ctx.set_ciphers(ciphers)
    ctx.minimum_version = ctx.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        cipher = tls.cipher()
        return str(tls.version()), cipher[0] if cipher else ""


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    """The hub as the tests' conftest starts it (no NATS credentials needed for the TLS probes)."""
    async with local_hub(tmp_path, AGENCIES, ALLOW) as env:
        yield env


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["tls1.0", "tls1.1"])
async def test_tls_before_1_2_is_refused(hub: LocalHub, version: ssl.TLSVersion) -> None:
    """The server ends the handshake of a TLS 1.0 or 1.1 client (it sends no ServerHello: the client reads EOF)."""
    with pytest.raises((ssl.SSLError, OSError)) as caught:
        await asyncio.to_thread(_handshake, hub.hub.port, hub.pki, version)
    # Not the client's own refusal to speak the version (that would be NO_PROTOCOLS_AVAILABLE).
    assert "NO_PROTOCOLS_AVAILABLE" not in str(caught.value)


@pytest.mark.parametrize(
    ("version", "name"), [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")], ids=["1.2", "1.3"]
)
async def test_tls_1_2_and_1_3_succeed_with_aead_ciphers(hub: LocalHub, version: ssl.TLSVersion, name: str) -> None:
    negotiated, cipher = await asyncio.to_thread(_handshake, hub.hub.port, hub.pki, version)
    assert name == negotiated
    assert "GCM" in cipher or "CHACHA20" in cipher


async def test_only_ecdhe_aes_gcm_is_taken_on_tls_1_2(hub: LocalHub) -> None:
    """Of every TLS 1.2 cipher the client's OpenSSL knows, the server takes exactly ECDHE-ECDSA with AES-GCM."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    offered = [c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"]
    assert set(WEAK_TLS12) & set(offered), "the client offers none of the weak ciphers: the test would prove nothing"

    def taken(cipher: str) -> bool:
        try:
            _handshake(hub.hub.port, hub.pki, ssl.TLSVersion.TLSv1_2, cipher)
        except (ssl.SSLError, OSError):
            return False
        return True

    accepted = {cipher for cipher in offered if await asyncio.to_thread(taken, cipher)}
    print(f"TLS 1.2 ciphers offered: {len(offered)}; accepted: {sorted(accepted)}")
    assert MODERN_TLS12 == accepted


# -- NATS credentials ------------------------------------------------------------------------

# A second user of the hub's account, as an operator might add for a tool: it has a password
# but none of the hub's permissions. (Rooms get no NATS user at all.)
OTHER_USER = """      { user: "tool", password: "tool-password", permissions: { publish: ["tools.>"], subscribe: ["tools.>", "_INBOX.>"] } }
"""


@pytest.fixture
async def authed_hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    """The hub against a nats-server that takes only its user (dev PKI password), limited to its subjects."""
    async with local_hub(tmp_path, AGENCIES, ALLOW, nats_auth=True, nats_users=OTHER_USER) as env:
        yield env


async def connect_once(url: str, **credentials: str) -> tuple[nats.NATS | None, list[str]]:
    """A nats-py connection (no reconnects) and the errors the server reported; None if it was refused."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = nats.NATS()
    try:
        await nc.connect(
            url, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=0, error_cb=on_error, **credentials
        )
    except (NatsError, OSError, TimeoutError) as exc:
        errors.append(str(exc))
        with contextlib.suppress(NatsError, OSError):
            await nc.close()  # nats-py leaves the refused socket open otherwise
        return None, errors
    return nc, errors


async def test_hub_works_end_to_end_with_its_nats_user(authed_hub: LocalHub) -> None:
    cur, questura = authed_hub.client(f.CUR), authed_hub.client(f.QUESTURA)
    env = f.envelope(f.CUR, (f.QUESTURA,))
    await cur.publish(env)
    [delivery] = await take(questura.inbox(), 1)
    assert env.distribution_id == delivery.envelope.distribution_id
    assert {f.QUESTURA} == {r.agency_id for r in (await cur.receipt(env.distribution_id)).recipients}
    for client in (cur, questura):
        await client.close()


@pytest.mark.parametrize(
    "credentials",
    [{}, {"user": f.PL, "password": "guess"}, {"user": "opsroom-hub", "password": "guess"}],
    ids=["no credentials", "a room's agency id", "the hub's user, wrong password"],
)
async def test_a_connection_without_the_hubs_credentials_is_refused(
    authed_hub: LocalHub, credentials: dict[str, str]
) -> None:
    nc, errors = await connect_once(authed_hub.nats.url, **credentials)
    if nc is not None:
        await nc.close()
    assert nc is None
    assert any("authorization" in e.lower() for e in errors), errors


async def test_another_user_cannot_reach_the_hubs_subjects_or_streams(authed_hub: LocalHub) -> None:
    """A user of the same account without the hub's permissions: publishing, reading and the JetStream API refused."""
    nc, errors = await connect_once(authed_hub.nats.url, user="tool", password="tool-password")
    assert nc is not None
    try:
        await nc.publish(f"opsroom.dlv.{f.PL.replace('.', '_')}.urgent.forged", b"x")
        with contextlib.suppress(NatsError):
            await nc.subscribe("opsroom.>")
        with pytest.raises((NatsError, TimeoutError)):
            await nc.request("$JS.API.STREAM.INFO.OPSROOM", b"", timeout=2)
        with pytest.raises((NatsError, TimeoutError)):
            await nc.request("$JS.API.DIRECT.GET.OPSROOM", b'{"seq": 1}', timeout=2)
        await nc.flush(timeout=5)
        await asyncio.sleep(0.5)
    finally:
        await nc.close()
    violations = [e.lower() for e in errors if "permissions violation" in e.lower()]
    assert any("opsroom.dlv" in e for e in violations), errors
    assert any("opsroom.>" in e for e in violations), errors
    assert any("$js.api.stream.info.opsroom" in e for e in violations), errors


async def test_the_hubs_user_reaches_its_streams_only(authed_hub: LocalHub) -> None:
    """With the hub's own password: its stream answers; another stream, and the account's stream list, do not."""
    password = authed_hub.pki.nats_password.read_text().strip()
    nc, errors = await connect_once(authed_hub.nats.url, user="opsroom-hub", password=password)
    assert nc is not None
    try:
        info = await nc.request("$JS.API.STREAM.INFO.OPSROOM", b"", timeout=5)
        assert b'"name":"OPSROOM"' in info.data.replace(b" ", b"")
        for subject in ("$JS.API.STREAM.CREATE.OTHER", "$JS.API.STREAM.LIST", "$JS.API.STREAM.DELETE.OTHER"):
            with pytest.raises((NatsError, TimeoutError)):
                await nc.request(subject, b"{}", timeout=2)
        await asyncio.sleep(0.5)
    finally:
        await nc.close()
    violations = " ".join(e.lower() for e in errors if "permissions violation" in e.lower())
    assert "$js.api.stream.create.other" in violations
    assert "$js.api.stream.list" in violations
