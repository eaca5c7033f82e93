"""The access-control matrix: every RPC the hub serves x every (caller, target) pair x every kind of client certificate.

One hub, one test agreement and four callers: three registered rooms (CUR, Questura, Milano's
Polizia Locale) whose agreement lets some pairs write to each other and not others, and one
agency with a certificate from the hub's CA that the hub does not know. "Target" is the agency
whose traffic the call reaches for: publishing to it as recipient or as its sender, answering a
request sent to it, reusing one of its distribution ids, reading the receipt of an envelope it
sent, acknowledging its delivery sequences, and opening Connect while it has deliveries waiting.
Health, reflection and a method the hub does not serve (where an audit query would be) are in
the table too, so a service added to the hub without a row here fails
test_every_served_method_has_a_row.

Certificate kinds: valid; expired, self-signed, from another CA and none at all, refused by the
TLS handshake (the client sees UNAVAILABLE: no call reaches the hub, nothing about it is
disclosed); with no agency identity or with two, refused by the hub (UNAUTHENTICATED
CERTIFICATE_WITHOUT_AGENCY); revoked (signed by the CA, named in the hub's deny file), refused by
the hub on every HubService call (UNAUTHENTICATED CERTIFICATE_REVOKED).

Every refusal is checked for leaks: its message and details may name the caller, and ids the
caller itself put in its request, and nothing else: no other agency id, distribution id or
payload text. The matrix's size and its outcomes are printed at the end of the run (and the size
is in docs/security.md; test_the_docs_state_the_matrix_size keeps it right).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2
from opsroom.audit.v1 import audit_pb2
from opsroom.common.v1 import common_pb2
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubError

from broker import ids
from broker.config import RevocationConfig
from broker.dev.certs import DevPki, make_dev_pki
from broker.dev.testing import LocalHub, local_hub
from broker.edge.servicer import SERVICE
from tests import factories as f

pytestmark = pytest.mark.integration
ON_THE_MODULE_HUB = pytest.mark.asyncio(loop_scope="module")  # the tests that share the module's hub and loop

CALL_TIMEOUT = 10.0  # liveness: one call of the matrix answers within this
RECEIPT_LIVENESS = 15.0  # liveness: an acknowledged delivery shows in the receipt within this
SESSION_READ = 5.0  # liveness: a session sends its whole backlog within this

# -- the agencies and the agreement -----------------------------------------------------------------

CUR, QUESTURA, MILANO, ROGUE = f.CUR, f.QUESTURA, f.PL_MILANO, f.ROGUE
REGISTERED = (CUR, QUESTURA, MILANO)
CALLERS = (*REGISTERED, ROGUE)  # ROGUE: a certificate from the hub's CA, an agency the hub does not know
TARGETS = REGISTERED
SHORT = {CUR: "cur", QUESTURA: "questura", MILANO: "milano", ROGUE: "rogue"}
# Who may write to whom (and nothing else): asymmetric on purpose.
ALLOWED = frozenset({(CUR, QUESTURA), (QUESTURA, CUR), (MILANO, CUR), (QUESTURA, MILANO)})
# For each target, an agency allowed to write to it (the sender of the requests and canaries it gets).
SENDER_TO = {CUR: QUESTURA, QUESTURA: CUR, MILANO: QUESTURA}
# For each agency, one it may write to.
PEER_OF = {CUR: QUESTURA, QUESTURA: CUR, MILANO: CUR, ROGUE: CUR}
AGENCIES = {CUR: "112 NUE - CUR Torino", QUESTURA: "Questura di Torino", MILANO: "Polizia Locale di Milano"}
_DATA = "[caller, network_location, persons, vehicles, free_text, media, staff]"
_KINDS = "[REPORT, UPDATE, REQUEST, RESPONSE, ACK, CANCEL]"
_PAYLOADS = "[incident, alert, assistance_request, assistance_response, acknowledgement]"
AGREEMENT = (
    f.agreement_head("matrix", "Access matrix, four one-way rules between three rooms")
    + f"""\
parties:
  - {{agency: {CUR}, role: cur}}
  - {{agency: {QUESTURA}, role: questura}}
  - {{agency: {MILANO}, role: polizia_locale}}
roles:
  cur: {{personal_data: {_DATA}}}
  questura: {{personal_data: {_DATA}}}
  polizia_locale: {{personal_data: {_DATA}}}
rules:
"""
    + "".join(
        f"  - {{id: {SHORT[a]}-to-{SHORT[b]}, from: [{a}], to: [{b}], kinds: {_KINDS}, payloads: {_PAYLOADS}}}\n"
        for a, b in sorted(ALLOWED)
    )
)

# -- certificate kinds ------------------------------------------------------------------------------

HANDSHAKE_REFUSED = "UNAVAILABLE (TLS handshake refused)"


@dataclass(frozen=True)
class CertKind:
    """A kind of client certificate; refused_by: "" (the hub decides), "tls" (the handshake) or "hub" (no identity)."""

    name: str
    refused_by: str


VALID = CertKind("valid", "")
CERT_KINDS: tuple[CertKind, ...] = (
    VALID,
    CertKind("expired", "tls"),
    CertKind("self-signed", "tls"),
    CertKind("other-ca", "tls"),
    CertKind("no-certificate", "tls"),
    CertKind("no-identity", "hub"),
    CertKind("two-identities", "hub"),
    CertKind("revoked", "hub"),
)


class Certificates:
    """Client credentials of every kind, made once per (kind, caller, target) that differs, with the dev PKI's CA."""

    def __init__(self, pki: DevPki, root: Path) -> None:
        """Certificates signed by the dev CA (its key beside ca.pem), and another CA under root."""
        self._pki = pki
        self._ca_pem = pki.ca.read_bytes()
        self._ca_cert = x509.load_pem_x509_certificate(self._ca_pem)
        key = serialization.load_pem_private_key((pki.root / "ca-key.pem").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._ca_key = key
        self._other_key = ec.generate_private_key(ec.SECP256R1())
        self._other_cert = _certificate(_name("another CA"), self._other_key, _name("another CA"), self._other_key, [])
        self._root = root
        # One revoked certificate per caller, made before the hub starts (its deny file lists them).
        self.revoked = {caller: self._issue(caller) for caller in CALLERS}

    def _issue(self, caller: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        return _certificate(_name(caller), key, self._ca_cert.subject, self._ca_key, [caller]), key

    def deny_file(self, path: Path) -> Path:
        """The hub's deny file: the fingerprints of the revoked certificates."""
        prints = ", ".join(f'"{c.fingerprint(hashes.SHA256()).hex()}"' for c, _ in self.revoked.values())
        path.write_text(f"fingerprints = [{prints}]\n")
        return path

    def credentials(self, kind: CertKind, caller: str, target: str) -> grpc.ChannelCredentials:
        """What a client presents for kind as caller (two-identities: the caller and the target, or a third agency)."""
        if kind.name == "no-certificate":
            return grpc.ssl_channel_credentials(self._ca_pem)
        if kind is VALID:
            pair = self._pki.agency(caller)
            return grpc.ssl_channel_credentials(self._ca_pem, pair.key.read_bytes(), pair.cert.read_bytes())
        cert, key = self.make(kind, caller, target)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return grpc.ssl_channel_credentials(self._ca_pem, key_pem, cert.public_bytes(serialization.Encoding.PEM))

    def make(self, kind: CertKind, caller: str, target: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The certificate and key of a kind other than valid and no-certificate."""
        if kind.name == "revoked":
            return self.revoked[caller]
        key = ec.generate_private_key(ec.SECP256R1())
        uris = [caller]
        issuer, issuer_key = self._ca_cert.subject, self._ca_key
        valid_until: datetime | None = None
        if kind.name == "expired":
            valid_until = datetime.now(UTC) - timedelta(days=1)
        elif kind.name == "self-signed":
            issuer, issuer_key = _name(caller), key
        elif kind.name == "other-ca":
            issuer, issuer_key = self._other_cert.subject, self._other_key
        elif kind.name == "no-identity":
            uris = []
        elif kind.name == "two-identities":
            uris = [caller, target if target != caller else PEER_OF[caller]]
        else:
            raise AssertionError(f"no certificate maker for kind {kind.name}")
        cert = _certificate(_name(caller), key, issuer, issuer_key, uris, valid_until)
        return cert, key


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(  # noqa: PLR0917 - a certificate's parts
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    agencies: list[str],
    valid_until: datetime | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    until = valid_until if valid_until is not None else now + timedelta(days=30)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(ids.AGENCY_URI_PREFIX + a) for a in agencies]
    names.append(x509.DNSName("room.example"))
    is_ca = issuer_key is key and not agencies
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, until) - timedelta(days=30))
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


# -- outcomes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a call got: a status code name and, for the hub's refusals, the catalogue reason."""

    code: str
    reason: str = ""

    def __str__(self) -> str:
        """ "CODE REASON"."""
        return f"{self.code} {self.reason}".strip()


OK = Outcome("OK")
TLS_REFUSED = Outcome("UNAVAILABLE")
NO_IDENTITY = Outcome("UNAUTHENTICATED", "CERTIFICATE_WITHOUT_AGENCY")
REVOKED = Outcome("UNAUTHENTICATED", "CERTIFICATE_REVOKED")
# What the hub answers on HubService to the kinds the TLS handshake lets in but the hub refuses.
BY_THE_HUB = {"revoked": REVOKED, "no-identity": NO_IDENTITY, "two-identities": NO_IDENTITY}
NOT_REGISTERED = Outcome("PERMISSION_DENIED", "AGENCY_NOT_REGISTERED")
UNIMPLEMENTED = Outcome("UNIMPLEMENTED")
# Sequences are numbered per session (epoch in the high bits): another room's sequence is, for the
# caller's session, a number of an earlier session of its own (ignored: OK) or one it never sent
# (the session ends INVALID_ARGUMENT ACK_NOT_SENT), depending on the two agencies' session counts.
# Either way the target's delivery stays unacknowledged, which the row checks.
ACK_NOT_SENT = Outcome("INVALID_ARGUMENT", "ACK_NOT_SENT")
FOREIGN_ACK = frozenset({OK, ACK_NOT_SENT})
# A stream call the hub ends (a refusal) while the client is still writing its first message can
# reach the client as INTERNAL "Internal error from Core" without the hub's status (grpc/grpc#36066);
# the client library retries it (HubError.stream_broken), and so does the matrix, counting each.
CORE_RACE = Outcome("INTERNAL")
STREAM_RETRIES = 5


@dataclass
class Observed:
    """A call's outcome, the text of its refusal (message and serialized details), and a check the op failed."""

    outcome: Outcome
    text: bytes = b""
    problem: str = ""


def observed_error(err: grpc.aio.AioRpcError) -> Observed:
    """The outcome of a failed call, with its message and details as bytes to search for leaks."""
    hub_error = HubError.from_rpc_error(err)
    text = (err.details() or "").encode()
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            text += b"\n" + value
    return Observed(Outcome(hub_error.code.name, hub_error.reason), text)


async def observed_call(call: Any) -> Observed:
    """The outcome of a call that ended with a status other than OK (its code, details and trailers)."""
    error = grpc.aio.AioRpcError(
        await call.code(), await call.initial_metadata(), await call.trailing_metadata(), await call.details()
    )
    return observed_error(error)


def observed_status(status: status_pb2.Status) -> Observed:
    """The outcome of a refused PublishStream entry."""
    error = HubError.from_status(status)
    return Observed(Outcome(error.code.name, error.reason), status.SerializeToString())


# -- the module's hub and its traffic ---------------------------------------------------------------


@dataclass
class Seed:
    """Traffic each target has before the matrix runs."""

    sent: envelope_pb2.Envelope  # an envelope the target sent (its receipt is the target's)
    request: envelope_pb2.Envelope  # a request sent to the target (only it may answer)
    canary: envelope_pb2.Envelope  # a delivery to the target that nobody else may acknowledge
    canary_sequence: int
    own: envelope_pb2.Envelope  # a delivery the target itself acknowledges in its row


@dataclass
class Matrix:
    """The running hub, channels per certificate, the seeds, and every envelope accepted with its recipients."""

    hub: LocalHub
    certs: Certificates
    seeds: dict[str, Seed] = field(default_factory=dict)
    accepted: dict[str, frozenset[str]] = field(default_factory=dict)
    channels: dict[tuple[str, str, str], grpc.aio.Channel] = field(default_factory=dict)
    results: collections.Counter[str] = field(default_factory=collections.Counter)
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)

    def channel(self, kind: CertKind, caller: str, target: str) -> grpc.aio.Channel:
        """One channel (one handshake) per certificate; reused by every row."""
        key = (
            kind.name,
            caller if kind.name != "no-certificate" else "",
            target if kind.name == "two-identities" else "",
        )
        if key not in self.channels:
            self.channels[key] = grpc.aio.secure_channel(
                self.hub.target,
                self.certs.credentials(kind, caller, target),
                options=[("grpc.ssl_target_name_override", "localhost")],
            )
        return self.channels[key]

    def secrets(self) -> set[str]:
        """What no refusal may reveal unless the caller named it: agency ids, distribution ids, payload text."""
        return {*CALLERS, *self.accepted, *f.PERSONAL_VALUES, "lite in strada", "rinforzo", "CUR-TO-1"}


def _unary(channel: grpc.aio.Channel, method: str, response: Any) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
    return channel.unary_unary(method, request_serializer=_serialize, response_deserializer=response.FromString)


def _stream(channel: grpc.aio.Channel, method: str, response: Any) -> grpc.aio.StreamStreamMultiCallable[Any, Any]:
    return channel.stream_stream(method, request_serializer=_serialize, response_deserializer=response.FromString)


async def _read_all(call: Any) -> list[Any]:
    out = []
    while (response := await call.read()) is not grpc.aio.EOF:
        out.append(response)
    return out


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


def _hub_method(name: str) -> str:
    return f"/{SERVICE}/{name}"


async def publish_as(matrix: Matrix, agency: str, env: envelope_pb2.Envelope) -> hub_pb2.Acceptance:
    """Publish with agency's valid certificate; the acceptance is recorded."""
    call = _unary(matrix.channel(VALID, agency, agency), _hub_method("Publish"), hub_pb2.PublishResponse)
    response = await call(hub_pb2.PublishRequest(envelope=env), timeout=CALL_TIMEOUT)
    matrix.accepted[response.acceptance.distribution_id] = frozenset(response.acceptance.recipients)
    return response.acceptance  # type: ignore[no-any-return]


async def read_until(call: Any, wanted: set[str], within: float) -> dict[str, int]:
    """Read deliveries from an open Connect call until every id in wanted is seen; their sequences."""
    seen: dict[str, int] = {}
    async with asyncio.timeout(within):
        while not wanted <= set(seen):
            response = await call.read()
            assert response is not grpc.aio.EOF, "the session ended before the wanted deliveries came"
            for delivery in response.deliveries.deliveries:
                seen[delivery.envelope.distribution_id] = delivery.sequence
    return seen


async def _connect(channel: grpc.aio.Channel, session: hub_pb2.OpenSession) -> tuple[Any, Any]:
    """A Connect call that sent session; the call and its first response (grpc.aio.EOF if it ended first)."""
    call = _stream(channel, _hub_method("Connect"), hub_pb2.ConnectResponse)(timeout=CALL_TIMEOUT * 3)
    await call.write(hub_pb2.ConnectRequest(open=session))
    return call, await call.read()


# The largest session a room may ask for: every delivery of a backlog comes in one read loop.
LARGEST = hub_pb2.OpenSession(window=10_000, max_batch=1000)


async def open_session(channel: grpc.aio.Channel) -> tuple[Any, hub_pb2.SessionOpened]:
    """A Connect call, opened; its SessionOpened."""
    call, first = await _connect(channel, hub_pb2.OpenSession())
    assert first is not grpc.aio.EOF
    assert first.WhichOneof("response") == "opened", first
    return call, first.opened


async def seed(matrix: Matrix) -> None:
    """For each target: an envelope it sent, a request and two canaries sent to it (their sequences read)."""
    for target in TARGETS:
        sender = SENDER_TO[target]
        sent = f.envelope(target, (PEER_OF[target],))
        await publish_as(matrix, target, sent)
        request = f.envelope(sender, (target,), kind=common_pb2.KIND_REQUEST, assistance_request=f.assistance_request())
        await publish_as(matrix, sender, request)
        canary, own = f.envelope(sender, (target,)), f.envelope(sender, (target,))
        await publish_as(matrix, sender, canary)
        await publish_as(matrix, sender, own)
        call, _opened = await open_session(matrix.channel(VALID, target, target))
        sequences = await read_until(call, {canary.distribution_id}, SESSION_READ)
        call.cancel()
        matrix.seeds[target] = Seed(sent, request, canary, sequences[canary.distribution_id], own)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def matrix(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> AsyncIterator[Matrix]:
    """One hub for the module under the test agreement; the seeds; the summary printed at the end of the run."""
    root = tmp_path_factory.mktemp("matrix")
    folder = root / "agreements"
    folder.mkdir()
    (folder / "matrix.yaml").write_text(AGREEMENT)
    pki = make_dev_pki(root / "run" / "pki", [*AGENCIES, ROGUE])  # local_hub keeps these files
    certs = Certificates(pki, root)
    revocation = RevocationConfig(deny_file=certs.deny_file(root / "deny.toml"))
    async with local_hub(
        root / "run", AGENCIES, (), agreements=folder, extra_certs=[ROGUE], revocation=revocation
    ) as hub:
        made = Matrix(hub, certs)
        await seed(made)
        request.config.pluginmanager.register(_Summary(made), "access-matrix-summary")
        yield made
        for channel in made.channels.values():
            await channel.close()


class _Summary:
    """Prints the matrix's size and outcome counts in pytest's terminal summary."""

    def __init__(self, matrix: Matrix) -> None:
        self._matrix = matrix

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """The size (rows x pairs x kinds), how many cases ran, and how many got each outcome."""
        counts = self._matrix.results
        terminalreporter.section("access matrix")
        terminalreporter.write_line(
            f"size: {len(ROWS)} RPC rows x {len(PAIRS)} (caller, target) pairs x {len(CERT_KINDS)} certificate kinds"
            f" = {len(CASES)} cases; {sum(counts.values())} ran"
        )
        for outcome, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            terminalreporter.write_line(f"  {count:5d}  {outcome}")


# -- the rows: one per RPC and what it reaches for ------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """An RPC (method path) and what the call does with the target; run returns what it got."""

    name: str
    method: str
    hub_service: bool  # HubService (identity checked by the hub) or another service
    run: Callable[[Matrix, grpc.aio.Channel, str, str], Awaitable[Observed]]
    expect: Callable[[Matrix, str, str], Outcome | frozenset[Outcome]]  # valid certificate, registered caller
    supplied: Callable[[Matrix, str, str], set[str]] = lambda _m, _c, _t: set()  # what the caller names itself

    @property
    def streams(self) -> bool:
        """True for the methods whose client writes on a stream."""
        return self.method.endswith(("/PublishStream", "/Connect", "/ServerReflectionInfo"))


async def _unary_call(channel: grpc.aio.Channel, method: str, request: Any, response: Any) -> tuple[Any, Observed]:
    try:
        answer = await _unary(channel, method, response)(request, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        return None, observed_error(err)
    return answer, Observed(OK)


def _accepted(matrix: Matrix, acceptance: hub_pb2.Acceptance, recipients: list[str]) -> str:
    matrix.accepted[acceptance.distribution_id] = frozenset(acceptance.recipients)
    if sorted(acceptance.recipients) != sorted(recipients):
        return f"accepted for {list(acceptance.recipients)}, asked {recipients}"
    return ""


def _to_target(_m: Matrix, caller: str, target: str) -> envelope_pb2.Envelope:
    return f.envelope(caller, (target,))


def _as_target(_m: Matrix, _caller: str, target: str) -> envelope_pb2.Envelope:
    return f.envelope(target, (PEER_OF[target],))


def _answer(matrix: Matrix, caller: str, target: str) -> envelope_pb2.Envelope:
    asked = matrix.seeds[target].request
    return f.envelope(
        caller,
        (asked.sender.agency_id,),
        kind=common_pb2.KIND_RESPONSE,
        references=((asked.distribution_id, asked.sender.agency_id),),
        assistance_response=f.assistance_response(),
    )


def _reuse(matrix: Matrix, caller: str, target: str) -> envelope_pb2.Envelope:
    env = copy.deepcopy(matrix.seeds[target].sent)
    if caller != target:
        env.sender.agency_id = caller
        del env.recipients[:]
        env.recipients.append(PEER_OF[caller])
    return env


def _publish(make: Callable[[Matrix, str, str], envelope_pb2.Envelope]) -> Callable[..., Awaitable[Observed]]:
    async def run(matrix: Matrix, channel: grpc.aio.Channel, caller: str, target: str) -> Observed:
        env = make(matrix, caller, target)
        answer, got = await _unary_call(
            channel, _hub_method("Publish"), hub_pb2.PublishRequest(envelope=env), hub_pb2.PublishResponse
        )
        if answer is not None:
            got.problem = _accepted(matrix, answer.acceptance, list(env.recipients))
        return got

    return run


def _publish_stream(make: Callable[[Matrix, str, str], envelope_pb2.Envelope]) -> Callable[..., Awaitable[Observed]]:
    async def run(matrix: Matrix, channel: grpc.aio.Channel, caller: str, target: str) -> Observed:
        env = make(matrix, caller, target)
        call = _stream(channel, _hub_method("PublishStream"), hub_pb2.PublishStreamResponse)(timeout=CALL_TIMEOUT)
        responses = []
        try:
            await call.write(hub_pb2.PublishStreamRequest(request_id=7, envelopes=[env]))
            await call.done_writing()
            responses = await _read_all(call)
        except grpc.aio.AioRpcError:
            pass  # a write to a call the hub already ended fails on its own: the call's status says why
        if await call.code() != grpc.StatusCode.OK:
            return await observed_call(call)
        [response] = responses
        [result] = response.results
        if result.WhichOneof("result") == "error":
            return observed_status(result.error)
        return Observed(OK, problem=_accepted(matrix, result.acceptance, list(env.recipients)))

    return run


def _publish_supplied(make: Callable[[Matrix, str, str], envelope_pb2.Envelope]) -> Callable[..., set[str]]:
    def supplied(matrix: Matrix, caller: str, target: str) -> set[str]:
        env = make(matrix, caller, target)
        return {
            env.distribution_id,
            env.sender.agency_id,
            *env.recipients,
            *(r.distribution_id for r in env.references),
        }

    return supplied


SELF_ADDRESSED = Outcome("INVALID_ARGUMENT", "INVALID_ENVELOPE")  # recipients[i]: must not be the sender itself


def _expect_to_target(_m: Matrix, caller: str, target: str) -> Outcome:
    if caller == target:
        return SELF_ADDRESSED
    return OK if (caller, target) in ALLOWED else Outcome("PERMISSION_DENIED", "RECIPIENT_NOT_ALLOWED")


def _expect_as_target(_m: Matrix, caller: str, target: str) -> Outcome:
    return OK if caller == target else Outcome("PERMISSION_DENIED", "SENDER_MISMATCH")


def _expect_answer(matrix: Matrix, caller: str, target: str) -> Outcome:
    if caller == target:
        return OK
    asker = matrix.seeds[target].request.sender.agency_id
    if caller == asker:
        return SELF_ADDRESSED
    if (caller, asker) in ALLOWED:  # the agreement lets it write there, but the request was not sent to it
        return Outcome("PERMISSION_DENIED", "NOT_A_RECIPIENT")
    return Outcome("PERMISSION_DENIED", "RECIPIENT_NOT_ALLOWED")


def _expect_reuse(_m: Matrix, caller: str, target: str) -> Outcome:
    return OK if caller == target else Outcome("FAILED_PRECONDITION", "DISTRIBUTION_ID_REUSED")


async def _get_receipt(matrix: Matrix, channel: grpc.aio.Channel, _caller: str, target: str) -> Observed:
    sent = matrix.seeds[target].sent
    answer, got = await _unary_call(
        channel,
        _hub_method("GetReceipt"),
        hub_pb2.GetReceiptRequest(distribution_id=sent.distribution_id),
        hub_pb2.GetReceiptResponse,
    )
    if answer is not None and answer.receipt.sender_agency_id != target:
        got.problem = f"a receipt of {answer.receipt.sender_agency_id}"
    return got


def _expect_receipt(_m: Matrix, caller: str, target: str) -> Outcome:
    return OK if caller == target else Outcome("PERMISSION_DENIED", "RECEIPT_NOT_YOURS")


async def _connect_open(matrix: Matrix, channel: grpc.aio.Channel, caller: str, target: str) -> Observed:
    """Open a session; it is the caller's, and every delivery its backlog holds was addressed to the caller."""
    try:
        call, first = await _connect(channel, LARGEST)
        if first is grpc.aio.EOF:
            await call
            return Observed(OK, problem="the session ended before it opened")
        opened = first.opened
        got = 0
        foreign: list[str] = []
        async with asyncio.timeout(SESSION_READ):
            while got < opened.backlog:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                for delivery in response.deliveries.deliveries:
                    got += 1
                    if caller not in matrix.accepted.get(delivery.envelope.distribution_id, frozenset()):
                        foreign.append(delivery.envelope.distribution_id)
        call.cancel()
    except grpc.aio.AioRpcError as err:
        return observed_error(err)
    problems = []
    if opened.agency_id != caller:
        problems.append(f"session opened as {opened.agency_id}")
    if got < opened.backlog:
        problems.append(f"{got} of a backlog of {opened.backlog} read")
    if foreign:
        targets_own = [d for d in foreign if target in matrix.accepted.get(d, frozenset())]
        problems.append(f"deliveries not addressed to the caller: {foreign} (of the target's: {targets_own})")
    return Observed(OK, problem="; ".join(problems))


async def _connect_ack(matrix: Matrix, channel: grpc.aio.Channel, caller: str, target: str) -> Observed:
    """Acknowledge the target's canary (the caller's own, for the target itself); only the target's ack counts."""
    seed_of = matrix.seeds[target]
    try:
        call, first = await _connect(channel, LARGEST)
        if first is grpc.aio.EOF:
            await call
            return Observed(OK, problem="the session ended before it opened")
        if caller == target:
            sequences = await read_until(call, {seed_of.own.distribution_id}, SESSION_READ)
            acked = [sequences[seed_of.own.distribution_id]]
        else:
            acked = [seed_of.canary_sequence]
        await call.write(hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=acked)))
        await call.done_writing()
        async with asyncio.timeout(CALL_TIMEOUT):
            while await call.read() is not grpc.aio.EOF:  # the hub ends the session once it has read the half-close
                pass
        got = Observed(OK)
    except grpc.aio.AioRpcError as err:
        got = observed_error(err)
        if caller == target or got.outcome != ACK_NOT_SENT:
            return got
    # The session records the acks it took before it ends: the receipt shows them now.
    checked = seed_of.own if caller == target else seed_of.canary
    want = hub_pb2.DELIVERY_STATE_DELIVERED if caller == target else hub_pb2.DELIVERY_STATE_STORED
    state = await _state_of(matrix, checked, target, want)
    if state != want:
        got.problem = f"the target's delivery is {hub_pb2.DeliveryState.Name(state)}"
    return got


async def _state_of(matrix: Matrix, env: envelope_pb2.Envelope, recipient: str, want: int) -> int:
    """The delivery state of env for recipient in its sender's receipt, waited for (within the liveness bound) to be want."""
    client = matrix.hub.client(env.sender.agency_id)
    try:
        deadline = asyncio.get_running_loop().time() + RECEIPT_LIVENESS
        while True:
            receipt = await client.receipt(env.distribution_id)
            state = {r.agency_id: r.state for r in receipt.recipients}[recipient]
            if state == want or asyncio.get_running_loop().time() > deadline:
                return state
            await asyncio.sleep(0.1)
    finally:
        await client.close()


def _expect_ack(_m: Matrix, caller: str, target: str) -> Outcome | frozenset[Outcome]:
    return OK if caller == target else FOREIGN_ACK


async def _health_check(_m: Matrix, channel: grpc.aio.Channel, _caller: str, _target: str) -> Observed:
    answer, got = await _unary_call(
        channel,
        "/grpc.health.v1.Health/Check",
        health_pb2.HealthCheckRequest(service=SERVICE),
        health_pb2.HealthCheckResponse,
    )
    if answer is not None and answer.status != health_pb2.HealthCheckResponse.SERVING:
        got.problem = f"health {answer.status}"
    return got


async def _health_watch(_m: Matrix, channel: grpc.aio.Channel, _caller: str, _target: str) -> Observed:
    call = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=_serialize,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )(health_pb2.HealthCheckRequest(service=SERVICE), timeout=CALL_TIMEOUT)
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as err:
        return observed_error(err)
    call.cancel()
    serving = first is not grpc.aio.EOF and first.status == health_pb2.HealthCheckResponse.SERVING
    return Observed(OK, problem="" if serving else f"health watch said {first}")


async def _raw_stream(method: str, channel: grpc.aio.Channel, request: bytes) -> Observed:
    call = channel.stream_stream(method, request_serializer=bytes, response_deserializer=bytes)(timeout=CALL_TIMEOUT)
    try:
        await call.write(request)
        await call.done_writing()
        await _read_all(call)
    except grpc.aio.AioRpcError as err:
        return observed_error(err)
    return Observed(OK)


REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
# Where an audit query would be: the hub serves no audit RPC (audit entries are read with the
# operators' CLI at the hub, docs/audit.md); any such call must find nothing.
AUDIT_QUERY = "/opsroom.audit.v1.AuditService/Query"


async def _reflection(_m: Matrix, channel: grpc.aio.Channel, _caller: str, _target: str) -> Observed:
    return await _raw_stream(REFLECTION, channel, b"\x3a\x00")  # list_services: ""


async def _audit_query(_m: Matrix, channel: grpc.aio.Channel, _caller: str, _target: str) -> Observed:
    answer, got = await _unary_call(channel, AUDIT_QUERY, audit_pb2.AuditRecord(), audit_pb2.AuditEntry)
    if answer is not None:
        got.problem = "an audit query was answered"
    return got


def _always(outcome: Outcome) -> Callable[[Matrix, str, str], Outcome]:
    return lambda _m, _c, _t: outcome


ROWS: tuple[Row, ...] = (
    Row("Publish:to-target", _hub_method("Publish"), True, _publish(_to_target), _expect_to_target,
        _publish_supplied(_to_target)),
    Row("Publish:as-target", _hub_method("Publish"), True, _publish(_as_target), _expect_as_target,
        _publish_supplied(_as_target)),
    Row("Publish:answer-targets-request", _hub_method("Publish"), True, _publish(_answer), _expect_answer,
        _publish_supplied(_answer)),
    Row("Publish:reuse-targets-id", _hub_method("Publish"), True, _publish(_reuse), _expect_reuse,
        _publish_supplied(_reuse)),
    Row("PublishStream:to-target", _hub_method("PublishStream"), True, _publish_stream(_to_target),
        _expect_to_target, _publish_supplied(_to_target)),
    Row("PublishStream:as-target", _hub_method("PublishStream"), True, _publish_stream(_as_target),
        _expect_as_target, _publish_supplied(_as_target)),
    Row("GetReceipt:targets-envelope", _hub_method("GetReceipt"), True, _get_receipt, _expect_receipt,
        lambda m, _c, t: {m.seeds[t].sent.distribution_id}),
    Row("Connect:open-while-target-waits", _hub_method("Connect"), True, _connect_open, _always(OK)),
    Row("Connect:ack-targets-sequence", _hub_method("Connect"), True, _connect_ack, _expect_ack),
    Row("Health/Check", "/grpc.health.v1.Health/Check", False, _health_check, _always(OK)),
    Row("Health/Watch", "/grpc.health.v1.Health/Watch", False, _health_watch, _always(OK)),
    Row("ServerReflection (off)", REFLECTION, False, _reflection, _always(UNIMPLEMENTED)),
    Row("audit query (no such RPC)", AUDIT_QUERY, False, _audit_query, _always(UNIMPLEMENTED)),
)  # fmt: skip
PAIRS = tuple(itertools.product(CALLERS, TARGETS))


@dataclass(frozen=True)
class Case:
    """One cell of the matrix."""

    row: Row
    caller: str
    target: str
    kind: CertKind

    @property
    def id(self) -> str:
        """A readable test id."""
        return f"{self.row.name}|{SHORT[self.caller]}->{SHORT[self.target]}|{self.kind.name}"


def cases() -> Iterator[Case]:
    """RPC rows x pairs x certificate kinds."""
    for row, (caller, target), kind in itertools.product(ROWS, PAIRS, CERT_KINDS):
        yield Case(row, caller, target, kind)


CASES = tuple(cases())


def expected(matrix: Matrix, case: Case) -> Outcome | frozenset[Outcome]:
    """What the hub must answer in this cell."""
    if case.kind.refused_by == "tls":
        return TLS_REFUSED
    if case.row.method in {REFLECTION, AUDIT_QUERY}:
        return UNIMPLEMENTED
    if not case.row.hub_service:
        return OK  # health answers any client the TLS handshake let in; it says nothing of agencies
    refused = BY_THE_HUB.get(case.kind.name)
    if refused is None and case.caller not in REGISTERED:
        refused = NOT_REGISTERED
    return refused if refused is not None else case.row.expect(matrix, case.caller, case.target)


@ON_THE_MODULE_HUB
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_access(matrix: Matrix, case: Case) -> None:
    """The cell's outcome is exactly the expected one, and a refusal reveals nothing the caller did not name."""
    want = expected(matrix, case)
    channel = matrix.channel(case.kind, case.caller, case.target)
    got = await case.row.run(matrix, channel, case.caller, case.target)
    for _retry in range(STREAM_RETRIES):
        if not (case.row.streams and got.outcome == CORE_RACE and b"Internal error from Core" in got.text):
            break
        matrix.results[f"(stream call retried: gRPC's {CORE_RACE} race)"] += 1
        got = await case.row.run(matrix, channel, case.caller, case.target)
    label = HANDSHAKE_REFUSED if case.kind.refused_by == "tls" else str(got.outcome)
    matrix.results[label] += 1
    wanted = want if isinstance(want, frozenset) else {want}
    assert got.outcome in wanted, f"{case.id}: expected {want}, got {got.outcome} ({got.text[:200]!r})"
    assert not got.problem, f"{case.id}: {got.problem}"
    if got.outcome != OK:
        allowed = {case.caller} | case.row.supplied(matrix, case.caller, case.target)
        leaked = sorted(s for s in matrix.secrets() - allowed if s.encode() in got.text)
        assert not leaked, f"{case.id}: the refusal names {leaked}: {got.text!r}"


# -- the table covers the hub, and the docs state its size ---------------------------------------------


def test_every_served_method_has_a_row() -> None:
    """Every HubService method has rows; no proto of the hub declares a service the matrix does not know."""
    served = {m.name for m in hub_pb2.DESCRIPTOR.services_by_name["HubService"].methods}
    rowed = {r.method.rsplit("/", 1)[1] for r in ROWS if r.hub_service}
    assert served == rowed
    assert {"HubService"} == set(hub_pb2.DESCRIPTOR.services_by_name)
    for module in (audit_pb2, envelope_pb2, common_pb2):
        assert not module.DESCRIPTOR.services_by_name, f"{module.__name__} declares a service: add its rows"
    assert "Health" in {r.name.split("/")[0] for r in ROWS}


def test_the_docs_state_the_matrix_size() -> None:
    """docs/security.md gives the size this module runs: rows x pairs x kinds = cases."""
    text = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    sizes = re.findall(
        r"(\d+) RPC rows x (\d+) \(caller, target\) pairs x (\d+) certificate kinds = ([\d,]+) cases", text
    )
    assert [(str(len(ROWS)), str(len(PAIRS)), str(len(CERT_KINDS)), f"{len(CASES):,}")] == sizes


# -- found by the matrix ---------------------------------------------------------------------------------

HALF_CLOSE_LIVENESS = 5.0  # liveness: a session ends this soon after its room half-closes (heartbeat: 15 s)


@ON_THE_MODULE_HUB
async def test_a_session_ends_when_its_room_half_closes_while_deliveries_arrive(matrix: Matrix) -> None:
    """A room that opens, half-closes at once and reads on sees its session end, though deliveries were on their way.

    Regression: the session's wait for the next delivery (asyncio.wait_for, Python 3.11) swallowed
    the cancellation that ends the session when a delivery arrived at the same moment; the session
    then went on sending heartbeats to a room that had said goodbye, until the room cancelled.
    """
    channel = matrix.channel(VALID, MILANO, MILANO)
    for _attempt in range(10):
        for _ in range(5):
            await publish_as(matrix, QUESTURA, f.envelope(QUESTURA, (MILANO,)))
        call, first = await _connect(channel, LARGEST)
        assert first.WhichOneof("response") == "opened"
        await call.write(hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=[2])))
        await call.done_writing()
        async with asyncio.timeout(HALF_CLOSE_LIVENESS):
            await _read_all(call)
        assert grpc.StatusCode.OK == await call.code()
