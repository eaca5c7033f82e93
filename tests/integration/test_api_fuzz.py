"""Fuzzing the gRPC API through the real server: every input gets a precise status, and the hub stays whole.

The hub runs as its own process (`python -m broker serve`, as in production and bench/run.py), so
its memory can be read from /proc: its resident size after a warm-up and after the whole module
must stay within RSS_GROWTH_BOUND_MB. A fuzzing agency sends, on every HubService method:
hypothesis-built envelopes and requests (unknown enum numbers, out-of-range numbers, any text,
huge strings, hundreds of repeated items, out-of-range indices and sequences), strings that are
not UTF-8 (patched into the serialized bytes: the protobuf library refuses to write them),
deeply nested and random bytes (on health and on a method the hub does not serve too). Each call
must end with a status the hub chose (an ErrorInfo from its catalogue, with the code that reason
has; INVALID_ARGUMENT for a field naming it in a BadRequest) or OK; never UNKNOWN or INTERNAL,
never a deadline. Meanwhile a steady room (the Carabinieri publishing to the Questura every 50 ms)
must lose nothing and see every envelope delivered within STALL_LIVENESS.

OPSROOM_FUZZ_EXAMPLES sets the examples per test (CI: the default); `make fuzz-api` is the long
run. The inputs and what they found are in docs/security.md ("Fuzzing").
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import HubClient, HubError

from broker.dev import processes
from broker.dev.certs import DevPki, make_dev_pki
from broker.dev.embedded import NatsServer, free_port
from broker.dev.processes import rss_mb
from broker.dev.testing import credentials
from broker.errors import ERROR_DOMAIN, Reason
from tests import factories as f
from tests import strategies as s

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("OPSROOM_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
CALL_LIVENESS = 15.0  # liveness: any call of the fuzz ends within this (a stall fails with DEADLINE_EXCEEDED)
STALL_LIVENESS = 5.0  # liveness: the steady room's envelopes are delivered within this (about 20 ms when idle)
START_LIVENESS = 60.0  # liveness: the hub process listens within this
RSS_GROWTH_BOUND_MB = 64.0  # the hub's resident memory after the module, over its size after the warm-up
STEADY_PERIOD = 0.05  # the steady room publishes every 50 ms
STREAM_RETRIES = 5
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # the hub's default hub.max_request_bytes

FUZZER, STEADY_SENDER, STEADY_ROOM, OTHER = f.CUR, f.CC, f.QUESTURA, f.PL
SERVICE = "/opsroom.hub.v1.HubService/"
HEALTH = "/grpc.health.v1.Health/"
UNSERVED = "/opsroom.audit.v1.AuditService/Query"


def _identity(data: bytes) -> bytes:
    return data


# -- the hub process and the steady room ---------------------------------------------------------------------


def write_config(root: Path, pki: DevPki, nats: NatsServer, port: int) -> Path:
    """A hub config: the fuzzer and the steady sender write to the Questura and the Polizia Locale."""
    agencies = (FUZZER, STEADY_SENDER, STEADY_ROOM, OTHER)
    config = root / "hub.toml"
    config.write_text(
        f"""
[hub]
listen = "127.0.0.1:{port}"
[tls]
ca_file = "{pki.ca}"
cert_file = "{pki.hub.cert}"
key_file = "{pki.hub.key}"
[nats]
servers = ["{nats.url}"]
monitor_urls = ["{nats.monitor_url}"]
[audit]
signing_key = "{pki.audit_key}"
{"".join(f'[[agencies]]{chr(10)}id = "{a}"{chr(10)}' for a in agencies)}
[[allow]]
from = ["{FUZZER}", "{STEADY_SENDER}"]
to = ["{STEADY_ROOM}", "{OTHER}"]
"""
    )
    return config


class SteadyRoom:
    """A well-behaved pair of rooms on their own thread and loop: one publishes every STEADY_PERIOD, the other takes."""

    def __init__(self, target: str, pki: DevPki) -> None:
        """Not started."""
        self._target, self._pki = target, pki
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="steady-room", daemon=True)
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.sent = 0
        self.undelivered = -1

    def start(self) -> None:
        """Publish and receive until stop()."""
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing, wait for what was sent (STALL_LIVENESS), stop."""
        self._stop.set()
        self._thread.join(timeout=STALL_LIVENESS * 4)

    async def _run(self) -> None:
        sender = HubClient(self._target, credentials(self._pki, STEADY_SENDER), server_name="localhost")
        receiver = HubClient(self._target, credentials(self._pki, STEADY_ROOM), server_name="localhost")
        inbox = receiver.inbox()
        waiting: dict[str, float] = {}

        async def receive() -> None:
            async for delivery in inbox:
                inbox.ack(delivery)
                sent = waiting.pop(delivery.envelope.distribution_id, None)
                if sent is not None:
                    self.latencies.append(time.monotonic() - sent)

        taking = asyncio.create_task(receive())
        try:
            while not self._stop.is_set():
                env = f.envelope(STEADY_SENDER, (STEADY_ROOM,))
                waiting[env.distribution_id] = time.monotonic()
                try:
                    await sender.publish(env)
                    self.sent += 1
                except HubError as exc:
                    waiting.pop(env.distribution_id)
                    self.failures.append(f"{exc.code.name} {exc.reason}")
                await asyncio.sleep(STEADY_PERIOD)
            deadline = time.monotonic() + STALL_LIVENESS
            while waiting and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self.undelivered = len(waiting)
        finally:
            taking.cancel()
            await sender.close()
            await receiver.close()


@dataclass
class FuzzHub:
    """The hub process, the fuzzer's channel, the steady room, and what the module saw."""

    proc: subprocess.Popen[bytes]
    log: Path
    channel: grpc.Channel
    room: SteadyRoom
    rss_before: float = 0.0
    rss_after: float = 0.0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    calls: collections.Counter[str] = field(default_factory=collections.Counter)

    def alive(self) -> None:
        """The hub process is still running."""
        assert self.proc.poll() is None, f"the hub exited with {self.proc.returncode}; see {self.log}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[FuzzHub]:
    """nats-server, the hub as a process, the fuzzer's channel and the steady room; all stopped by PID at the end."""
    root = tmp_path_factory.mktemp("fuzz")
    pki = make_dev_pki(root / "pki", [FUZZER, STEADY_SENDER, STEADY_ROOM, OTHER])
    nats = NatsServer(root / "nats")
    nats.start()
    try:
        port = free_port()
        log = root / "hub.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "broker", "--log-level", "WARNING", "serve", "--config", str(
                    write_config(root, pki, nats, port))],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            _wait_listening(proc, port)
            pair = pki.agency(FUZZER)
            creds = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes())
            channel = grpc.secure_channel(
                f"127.0.0.1:{port}",
                creds,
                options=[("grpc.ssl_target_name_override", "localhost"), ("grpc.max_send_message_length", -1)],
            )
            made = FuzzHub(proc, log, channel, SteadyRoom(f"127.0.0.1:{port}", pki))
            _warm_up(made)
            made.rss_before = rss_mb(proc.pid)
            made.room.start()
            request.config.pluginmanager.register(_Summary(made), "api-fuzz-summary")
            yield made
            made.room.stop()
            channel.close()
        finally:
            processes.stop(proc, timeout=20)
    finally:
        nats.stop()


def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_LIVENESS
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the hub exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the hub did not listen on {port} within {START_LIVENESS} s")


def _warm_up(hub: FuzzHub) -> None:
    """One round of each kind of call (the largest too), so that the RSS measured next is the working size."""
    big = f.envelope(FUZZER, (STEADY_ROOM,))
    big.incident.description = "w" * (MAX_REQUEST_BYTES + 1024)
    for _ in range(3):
        for env in f.every_valid_envelope():
            env.recipients[:] = [OTHER]
            call(hub, "Publish", hub_pb2.PublishRequest(envelope=env).SerializeToString())
        call(hub, "Publish", hub_pb2.PublishRequest(envelope=big).SerializeToString())
        call(
            hub,
            "GetReceipt",
            hub_pb2.GetReceiptRequest(distribution_id=f.envelope().distribution_id).SerializeToString(),
        )
        call(hub, "Connect", hub_pb2.ConnectRequest(open=hub_pb2.OpenSession()).SerializeToString(), stream=True)
        call(hub, "PublishStream", b"\xff\xff", stream=True)
    hub.outcomes.clear()
    hub.calls.clear()


class _Summary:
    """Prints what the fuzz sent and got, the hub's memory and the steady room's latencies."""

    def __init__(self, hub: FuzzHub) -> None:
        self._hub = hub

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Calls per method, outcomes, RSS before and after, steady room latencies."""
        hub = self._hub
        terminalreporter.section("API fuzz")
        terminalreporter.write_line(
            f"{sum(hub.calls.values())} calls ({EXAMPLES} examples per test): "
            + ", ".join(f"{m} {n}" for m, n in sorted(hub.calls.items()))
        )
        for outcome, count in sorted(hub.outcomes.items(), key=lambda item: (-item[1], item[0])):
            terminalreporter.write_line(f"  {count:6d}  {outcome}")
        if hub.rss_after:
            terminalreporter.write_line(
                f"hub RSS {hub.rss_before:.1f} MB after the warm-up, {hub.rss_after:.1f} MB after the fuzz"
                f" (bound: +{RSS_GROWTH_BOUND_MB:.0f} MB)"
            )
        room = hub.room
        if room.latencies:
            ordered = sorted(room.latencies)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            terminalreporter.write_line(
                f"steady room: {room.sent} sent, {len(room.latencies)} delivered, publish->delivery "
                f"p50 {statistics.median(ordered) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"
            )


# -- calls and their statuses -------------------------------------------------------------------------------------


@dataclass
class Answer:
    """A call's code, its google.rpc.Status (None if the hub sent none) and its responses."""

    code: grpc.StatusCode
    message: str
    status: status_pb2.Status | None
    responses: list[bytes]


def _invoke(hub: FuzzHub, method: str, requests: list[bytes], *, stream: bool) -> Answer:
    path = method if method.startswith("/") else SERVICE + method
    responses: list[bytes] = []  # kept when the call ends with an error after some responses
    try:
        if stream:
            multi = hub.channel.stream_stream(path, request_serializer=_identity, response_deserializer=_identity)
            for response in multi(iter(requests), timeout=CALL_LIVENESS):
                responses.append(response)  # noqa: PERF402 - one at a time: kept if the call then fails
        elif method == HEALTH + "Watch":
            multi_out = hub.channel.unary_stream(path, request_serializer=_identity, response_deserializer=_identity)
            got = multi_out(requests[0], timeout=CALL_LIVENESS)
            responses = [next(got)]
            got.cancel()
        else:
            unary = hub.channel.unary_unary(path, request_serializer=_identity, response_deserializer=_identity)
            responses = [unary(requests[0], timeout=CALL_LIVENESS)]
    except grpc.RpcError as err:
        details = None
        for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
            if key == "grpc-status-details-bin":
                details = status_pb2.Status.FromString(value)
        return Answer(err.code(), err.details() or "", details, responses)  # type: ignore[attr-defined]
    return Answer(grpc.StatusCode.OK, "", None, responses)


def call(hub: FuzzHub, method: str, *requests: bytes, stream: bool = False) -> Answer:
    """Call method with raw request bytes; retried (and counted) when gRPC reports its stream race, see below."""
    hub.calls[method.rsplit("/", 1)[-1]] += 1
    answer = _invoke(hub, method, list(requests), stream=stream)
    for _ in range(STREAM_RETRIES):
        # A stream the hub ends while the client still writes may reach the client as INTERNAL
        # "Internal error from Core" without the hub's status (grpc/grpc#36066): the client library
        # retries it (HubError.stream_broken), and so does the fuzz, counting each.
        if not (stream and answer.code == grpc.StatusCode.INTERNAL and answer.status is None):
            break
        hub.outcomes["(stream retried: gRPC's INTERNAL race)"] += 1
        answer = _invoke(hub, method, list(requests), stream=stream)
    return answer


def precise(hub: FuzzHub, answer: Answer, *, allow: Callable[[Answer], str | None] = lambda _a: None) -> str:
    """The outcome's label; fails unless it is OK, or a refusal of the hub's catalogue with its code (or allow's)."""
    hub.alive()
    if answer.code == grpc.StatusCode.OK:
        hub.outcomes["OK"] += 1
        return "OK"
    assert answer.code not in {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}, (
        f"{answer.code.name}: {answer.message}"
    )
    if answer.status is None:
        label = allow(answer)
        assert label, f"{answer.code.name} without the hub's status: {answer.message}"
        hub.outcomes[label] += 1
        return label
    label = refusal_label(answer.status)
    assert answer.code.value[0] == answer.status.code
    hub.outcomes[label] += 1
    return label


def refusal_label(status: status_pb2.Status) -> str:
    """ "CODE REASON" of a google.rpc.Status the hub sent; fails unless it is one of its catalogue, well formed."""
    infos, bad = [], []
    for detail in status.details:
        info, request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            infos.append(info)
        elif detail.Unpack(request):
            bad.append(request)
    assert len(infos) == 1, status
    [info] = infos
    assert info.domain == ERROR_DOMAIN
    reason = Reason[info.reason]
    assert reason.code.value == status.code, f"{info.reason} sent with code {status.code}"
    assert status.message
    if reason in {Reason.INVALID_ENVELOPE, Reason.INVALID_REQUEST}:
        assert bad, f"{info.reason} without a BadRequest: {status.message}"
        assert bad[0].field_violations, f"{info.reason} without the field: {status.message}"
        assert all(v.field and v.reason and v.description for v in bad[0].field_violations)
    assert reason is not Reason.INTERNAL, status.message
    return f"{grpc.StatusCode(_code(status.code)).name} {info.reason}"


def _code(number: int) -> Any:
    return next(c.value for c in grpc.StatusCode if c.value[0] == number)


def _grpc_size_limit(answer: Answer) -> str | None:
    """gRPC's own refusal of a request above hub.max_request_bytes (before any handler runs)."""
    if answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "RESOURCE_EXHAUSTED (gRPC: request above max_request_bytes)"
    return None


def _unimplemented(answer: Answer) -> str | None:
    return "UNIMPLEMENTED (no such method)" if answer.code == grpc.StatusCode.UNIMPLEMENTED else None


# -- the fuzz --------------------------------------------------------------------------------------------------------


@FUZZ
@given(env=s.fuzzed_envelopes(FUZZER), resend=st.booleans())
def test_publish_fuzzed_envelopes(hub: FuzzHub, env: envelope_pb2.Envelope, resend: bool) -> None:
    """Publish: OK, or a catalogue refusal; INVALID_ARGUMENT names fields under "envelope."."""
    answer = call(hub, "Publish", hub_pb2.PublishRequest(envelope=env, resend=resend).SerializeToString())
    precise(hub, answer)
    if answer.status is not None:
        for field_path in _fields(answer.status):
            assert field_path.startswith("envelope"), field_path


def _fields(status: status_pb2.Status) -> list[str]:
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.extend(v.field for v in bad.field_violations)
    return out


_batches = st.builds(
    hub_pb2.PublishStreamRequest,
    request_id=st.integers(0, 2**64 - 1),
    envelopes=st.one_of(
        *[st.lists(s.fuzzed_envelopes(FUZZER), max_size=3)] * 4,  # four in five: small batches
        st.integers(1001, 1003).map(lambda n: [envelope_pb2.Envelope()] * n),  # above max_batch_envelopes
    ),
    resent=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 4), max_size=4),
)


@FUZZ
@given(batches=st.lists(_batches, min_size=1, max_size=3))
def test_publish_stream_fuzzed_batches(hub: FuzzHub, batches: list[hub_pb2.PublishStreamRequest]) -> None:
    """PublishStream: one answer per request, in order, one result per envelope, each OK or a catalogue refusal."""
    answer = call(hub, "PublishStream", *(b.SerializeToString() for b in batches), stream=True)
    precise(hub, answer)
    assert len(answer.responses) == len(batches)
    for batch, raw in zip(batches, answer.responses, strict=True):
        response = hub_pb2.PublishStreamResponse.FromString(raw)
        assert response.request_id == batch.request_id
        assert len(response.results) == len(batch.envelopes)
        labels = set()
        for i, result in enumerate(response.results):
            if result.WhichOneof("result") == "error":
                labels.add(refusal_label(result.error))
                assert all(p.startswith(f"envelopes[{i}]") for p in _fields(result.error))
        for label in labels:  # once per batch
            hub.outcomes[f"{label} (in a batch)"] += 1


_connect_requests = st.one_of(
    st.builds(
        lambda b, w: hub_pb2.ConnectRequest(open=hub_pb2.OpenSession(max_batch=b, window=w)),
        s.FIELD_VALUES[FieldDescriptor.TYPE_UINT32],
        s.FIELD_VALUES[FieldDescriptor.TYPE_UINT32],
    ),
    st.builds(
        lambda seqs: hub_pb2.ConnectRequest(ack=hub_pb2.AckDeliveries(sequences=seqs)),
        st.lists(s.FIELD_VALUES[FieldDescriptor.TYPE_UINT64], max_size=50),
    ),
    st.just(hub_pb2.ConnectRequest(keepalive=hub_pb2.KeepAlive())),
    st.just(hub_pb2.ConnectRequest()),
)


@FUZZ
@given(requests=st.lists(_connect_requests, min_size=1, max_size=6))
def test_connect_fuzzed_sessions(hub: FuzzHub, requests: list[hub_pb2.ConnectRequest]) -> None:
    """Connect: any sequence of opens, acks (any sequence numbers), keepalives and empty messages, then a half-close."""
    answer = call(hub, "Connect", *(r.SerializeToString() for r in requests), stream=True)
    label = precise(hub, answer)
    opens_first = requests[0].WhichOneof("request") == "open"
    if opens_first:
        opened = hub_pb2.ConnectResponse.FromString(answer.responses[0]) if answer.responses else None
        assert opened is not None, label
        assert opened.opened.agency_id == FUZZER
    else:
        assert label == "FAILED_PRECONDITION SESSION_NOT_OPENED"


@FUZZ
@given(distribution_id=s.text_values | st.uuids().map(str))
def test_get_receipt_fuzzed_ids(hub: FuzzHub, distribution_id: str) -> None:
    """GetReceipt: NOT_FOUND for a well-formed unknown id, INVALID_ARGUMENT naming distribution_id otherwise."""
    answer = call(hub, "GetReceipt", hub_pb2.GetReceiptRequest(distribution_id=distribution_id).SerializeToString())
    label = precise(hub, answer)
    assert label in {"NOT_FOUND RECEIPT_NOT_FOUND", "INVALID_ARGUMENT INVALID_REQUEST"}, label


_UTF8_BASES: dict[str, Message] = {
    "Publish": hub_pb2.PublishRequest(envelope=f.envelope(FUZZER, (STEADY_ROOM,))),
    "PublishStream": hub_pb2.PublishStreamRequest(envelopes=[f.envelope(FUZZER, (STEADY_ROOM,))]),
    "GetReceipt": hub_pb2.GetReceiptRequest(distribution_id=f.envelope().distribution_id),
}


@FUZZ
@given(data=st.data(), method=st.sampled_from(sorted(_UTF8_BASES)))
def test_strings_that_are_not_utf8(hub: FuzzHub, data: st.DataObject, method: str) -> None:
    """A string field holding bytes that are not UTF-8: INVALID_ARGUMENT MALFORMED_REQUEST, on every method with strings."""
    raw, _path = data.draw(s.invalid_utf8(_UTF8_BASES[method]))
    answer = call(hub, method, raw, stream=method == "PublishStream")
    assert precise(hub, answer) == "INVALID_ARGUMENT MALFORMED_REQUEST"


_METHODS = {  # method: is the client streaming
    "Publish": False,
    "PublishStream": True,
    "Connect": True,
    "GetReceipt": False,
    HEALTH + "Check": False,
    HEALTH + "Watch": False,
    HEALTH + "List": False,
    UNSERVED: False,
}
UNIMPLEMENTED_METHODS = {HEALTH + "List", UNSERVED}


def _health(answer: Answer) -> str | None:
    """Health's own answer for a service it does not know (a request that parsed to another service name)."""
    return "NOT_FOUND (health: unknown service)" if answer.code == grpc.StatusCode.NOT_FOUND else None


@FUZZ
@example(method=HEALTH + "Check", data=b"\x00")  # was UNKNOWN "Unexpected DecodeError" (gRPC health's own handlers)
@example(method=HEALTH + "Watch", data=b"\xff")
@given(
    method=st.sampled_from(sorted(_METHODS)),
    data=st.binary(max_size=2000) | s.protobuf_wire | s.deep_bytes,
)
def test_random_bytes_on_every_method(hub: FuzzHub, method: str, data: bytes) -> None:
    """Random, protobuf-shaped and deeply nested bytes as the request: a precise status on every method."""
    answer = call(hub, method, data, stream=_METHODS[method])
    if method in UNIMPLEMENTED_METHODS:
        assert precise(hub, answer, allow=_unimplemented) == "UNIMPLEMENTED (no such method)"
    elif method.startswith(HEALTH):
        label = precise(hub, answer, allow=_health)
        assert label in {"OK", "INVALID_ARGUMENT MALFORMED_REQUEST", "NOT_FOUND (health: unknown service)"}, label
    else:
        precise(hub, answer)


@settings(FUZZ, max_examples=min(EXAMPLES, 8))
@given(
    size=st.sampled_from([64 * 1024, 1024 * 1024, MAX_REQUEST_BYTES + 1]),
    method=st.sampled_from(["Publish", "PublishStream"]),
)
def test_oversized_requests(hub: FuzzHub, size: int, method: str) -> None:
    """An envelope above hub.max_envelope_bytes: ENVELOPE_TOO_LARGE; a request above max_request_bytes: gRPC's RESOURCE_EXHAUSTED."""
    env = f.envelope(FUZZER, (STEADY_ROOM,))
    env.incident.description = "o" * size
    if method == "Publish":
        answer = call(hub, method, hub_pb2.PublishRequest(envelope=env).SerializeToString())
    else:
        answer = call(hub, method, hub_pb2.PublishStreamRequest(envelopes=[env]).SerializeToString(), stream=True)
    label = precise(hub, answer, allow=_grpc_size_limit)
    if method == "Publish":
        assert label.startswith("RESOURCE_EXHAUSTED"), label
    elif answer.responses:
        [result] = hub_pb2.PublishStreamResponse.FromString(answer.responses[0]).results
        assert refusal_label(result.error) == "RESOURCE_EXHAUSTED ENVELOPE_TOO_LARGE"


# -- after the fuzz --------------------------------------------------------------------------------------------------


def test_the_hub_kept_its_memory_and_served_the_steady_room(hub: FuzzHub) -> None:
    """Runs last: the hub is up, logged no internal error, grew less than the bound, and the steady room lost nothing."""
    hub.alive()
    hub.rss_after = rss_mb(hub.proc.pid)
    growth = hub.rss_after - hub.rss_before
    assert growth <= RSS_GROWTH_BOUND_MB, f"the hub grew {growth:.1f} MB over the fuzz"
    hub.room.stop()
    room = hub.room
    assert not room.failures, room.failures
    assert room.sent > 0
    assert room.undelivered == 0, f"{room.undelivered} of {room.sent} steady envelopes not delivered"
    assert max(room.latencies) < STALL_LIVENESS, f"a steady envelope took {max(room.latencies):.1f} s"
    log = hub.log.read_text(errors="replace")
    assert "internal_error" not in log
    assert "Traceback" not in log
