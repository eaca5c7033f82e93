"""Per-agency limits (pure): the token bucket, the rate per agency and lane, open streams, sizes by payload; their config."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from broker.config import parse
from broker.edge.admission import Admission, Bounds
from broker.edge.server import keepalive_options
from broker.errors import ConfigError, Overloaded, Reason, Refused, StatusCode
from broker.lanes import Lane
from broker.limits import (
    DEFAULT_PAYLOAD_BYTES,
    PAYLOADS,
    RateLimited,
    RateLimiter,
    SizeLimits,
    StreamCount,
    TokenBucket,
    TooManyStreams,
)
from tests import factories as f
from tests.unit.test_config import doc, hub

BASE = Path("/etc/opsroom")

# -- TokenBucket ---------------------------------------------------------------------------------


def test_a_full_bucket_gives_its_burst_then_refuses_saying_when_the_next_token_comes() -> None:
    """burst takes at once; the next is refused with the wait for one token (1/rate), nothing taken."""
    bucket = TokenBucket.full(rate=10.0, burst=3.0, now=100.0)
    assert [0.0, 0.0, 0.0] == [bucket.take(100.0) for _ in range(3)]
    assert pytest.approx(0.1) == bucket.take(100.0)
    assert pytest.approx(0.05) == bucket.take(100.05)  # half a token earned: half the wait left
    assert 0.0 == bucket.take(100.1)  # the token the refusal promised is there
    assert pytest.approx(0.1) == bucket.take(100.1)


def test_a_bucket_keeps_at_most_its_burst_and_a_clock_read_backwards_adds_nothing() -> None:
    """A long pause refills to burst only; an earlier reading than the last neither adds nor removes tokens."""
    bucket = TokenBucket.full(rate=5.0, burst=2.0, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.take(-50.0) > 0  # earlier than the last reading: still empty
    assert bucket.is_full(3600.0)
    assert [0.0, 0.0] == [bucket.take(3600.0), bucket.take(3600.0)]
    assert bucket.take(3600.0) > 0


@given(
    rate=st.floats(min_value=0.5, max_value=10_000),
    burst=st.integers(min_value=1, max_value=1000),
    gaps=st.lists(st.floats(min_value=0, max_value=2.0), min_size=1, max_size=300),
)
def test_a_bucket_never_lets_through_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """Whatever the arrivals, what it let through by time t is at most burst + rate * t; a refusal's wait is exact."""
    bucket = TokenBucket.full(rate, float(burst), 0.0)
    now, taken = 0.0, 0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        if wait == 0.0:
            taken += 1
        else:
            assert 0.0 == bucket.take(now + wait * (1 + 1e-9) + 1e-9)  # after the wait, one token is there
            now += wait * (1 + 1e-9) + 1e-9
            taken += 1
        assert taken <= burst + rate * now + 1e-6


# -- RateLimiter ---------------------------------------------------------------------------------


def test_the_rate_is_per_agency_and_lane() -> None:
    """One agency's empty bucket on a lane refuses it there only: its other lane and other agencies go on."""
    limiter = RateLimiter(rate=2.0, burst=2.0)
    limiter.take(f.CUR, "bulk", 0.0)
    limiter.take(f.CUR, "bulk", 0.0)
    with pytest.raises(RateLimited) as caught:
        limiter.take(f.CUR, "bulk", 0.0)
    err = caught.value
    assert (Reason.AGENCY_RATE_LIMITED, StatusCode.RESOURCE_EXHAUSTED) == (err.reason, err.reason.code)
    assert 0.5 == err.retry_after
    assert {"lane": "bulk", "rate": "2", "burst": "2"} == dict(err.metadata)
    limiter.take(f.CUR, "urgent", 0.0)
    limiter.take(f.PL, "bulk", 0.0)


def test_the_retry_delay_is_rounded_up_to_the_millisecond() -> None:
    """A client that waits exactly the RetryInfo delay finds its token there."""
    limiter = RateLimiter(rate=3.0, burst=1.0)
    limiter.take(f.CUR, "urgent", 0.0)
    with pytest.raises(RateLimited) as caught:
        limiter.take(f.CUR, "urgent", 0.0)
    delay = caught.value.retry_after
    assert delay is not None
    assert 0.334 == delay
    limiter.take(f.CUR, "urgent", delay)


def test_rate_zero_is_no_limit_and_holds_no_bucket() -> None:
    limiter = RateLimiter(rate=0.0, burst=0.0)
    for _ in range(10_000):
        limiter.take(f.CUR, "urgent", 0.0)
    assert (False, 0) == (limiter.enabled, len(limiter))


def test_full_buckets_are_forgotten() -> None:
    """The table keeps only agencies whose bucket is not full: a thousand one-off senders leave nothing behind."""
    limiter = RateLimiter(rate=100.0, burst=10.0)
    for i in range(1500):
        limiter.take(f"it.pl.{i:06d}", "urgent", i * 1.0)  # each bucket is full again a second later
    assert len(limiter) < 1024
    limiter.forget_idle(10_000.0)
    assert 0 == len(limiter)


# -- Admission: per connection and rate ------------------------------------------------------------


def test_a_connection_is_refused_over_its_own_bound_and_the_agency_s_other_connections_are_not() -> None:
    """Past per_connection envelopes in flight on a lane from one peer: HUB_OVERLOADED, scope connection."""
    admission = Admission(Bounds(per_lane=100, per_agency=100, per_connection=2, retry_after=0.5))
    admission.enter(f.CUR, Lane.URGENT, "ipv4:10.0.0.1:5000")
    admission.enter(f.CUR, Lane.URGENT, "ipv4:10.0.0.1:5000")
    with pytest.raises(Overloaded) as caught:
        admission.enter(f.CUR, Lane.URGENT, "ipv4:10.0.0.1:5000")
    assert {"scope": "connection", "lane": "urgent"} == dict(caught.value.metadata)
    assert "this connection" in caught.value.message
    admission.enter(f.CUR, Lane.URGENT, "ipv4:10.0.0.1:5001")
    admission.enter(f.CUR, Lane.BULK, "ipv4:10.0.0.1:5000")
    assert (3, 2) == (
        admission.in_flight_of(f.CUR, Lane.URGENT),
        admission.in_flight_on("ipv4:10.0.0.1:5000", Lane.URGENT),
    )
    admission.leave(f.CUR, Lane.URGENT, "ipv4:10.0.0.1:5000")
    admission.enter(f.CUR, Lane.URGENT, "ipv4:10.0.0.1:5000")
    for peer in ("ipv4:10.0.0.1:5000", "ipv4:10.0.0.1:5000", "ipv4:10.0.0.1:5001"):
        admission.leave(f.CUR, Lane.URGENT, peer)
    admission.leave(f.CUR, Lane.BULK, "ipv4:10.0.0.1:5000")
    assert (0, 0) == (admission.in_flight(), admission.in_flight_on("ipv4:10.0.0.1:5000", Lane.URGENT))


def test_admission_refuses_over_the_agency_rate_on_the_hub_clock_and_takes_no_place() -> None:
    """The rate is read on the clock Admission is given; a rate refusal leaves nothing in flight; logged once, counted."""
    now = [0.0]
    admission = Admission(Bounds(agency_rate=10.0, agency_burst=5.0), clock=lambda: now[0])
    for _ in range(5):
        admission.enter(f.CUR, Lane.URGENT)
        admission.leave(f.CUR, Lane.URGENT)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(RateLimited):
                admission.enter(f.CUR, Lane.URGENT)
        admission.enter(f.PL, Lane.URGENT)  # another agency: its own bucket
        admission.flush_log()
    assert 1 == admission.in_flight()
    assert [("publishes_refused_rate_limited", f.CUR, "urgent", 3, "AGENCY_RATE_LIMITED")] == [
        (e["event"], e["agency"], e["lane"], e["count"], e["reason"]) for e in logs
    ]
    now[0] = 0.1  # one token earned
    admission.enter(f.CUR, Lane.URGENT)


def test_a_bound_is_checked_before_the_rate_so_an_overload_refusal_costs_no_token() -> None:
    admission = Admission(Bounds(per_agency=1, agency_rate=1.0, agency_burst=2.0), clock=lambda: 0.0)
    admission.enter(f.CUR, Lane.URGENT)
    with pytest.raises(Overloaded):
        admission.enter(f.CUR, Lane.URGENT)
    admission.leave(f.CUR, Lane.URGENT)
    admission.enter(f.CUR, Lane.URGENT)  # the second token is still there


# -- StreamCount ---------------------------------------------------------------------------------


def test_streams_over_the_cap_are_refused_and_each_agency_has_its_own_count() -> None:
    streams = StreamCount(cap=2, retry_after=1.5)
    streams.open(f.CUR, "Connect")
    streams.open(f.CUR, "PublishStream")
    with pytest.raises(TooManyStreams) as caught:
        streams.open(f.CUR, "PublishStream")
    err = caught.value
    assert (Reason.TOO_MANY_STREAMS, StatusCode.RESOURCE_EXHAUSTED, 1.5) == (
        err.reason,
        err.reason.code,
        err.retry_after,
    )
    assert {"cap": "2", "method": "PublishStream"} == dict(err.metadata)
    assert "2 streams" in err.message
    streams.open(f.PL, "Connect")
    streams.close(f.CUR)
    streams.open(f.CUR, "PublishStream")
    assert (2, 1) == (streams.of(f.CUR), streams.of(f.PL))


def test_cap_zero_counts_without_refusing() -> None:
    streams = StreamCount(cap=0)
    for _ in range(1000):
        streams.open(f.CUR, "Connect")
    assert 1000 == streams.of(f.CUR)
    for _ in range(1000):
        streams.close(f.CUR)
    assert 0 == streams.of(f.CUR)


# -- SizeLimits ----------------------------------------------------------------------------------


def test_every_payload_has_a_default_size_under_the_overall_default() -> None:
    assert set(PAYLOADS) == set(DEFAULT_PAYLOAD_BYTES)
    assert all(0 < size <= 64 * 1024 for size in DEFAULT_PAYLOAD_BYTES.values())
    assert DEFAULT_PAYLOAD_BYTES["acknowledgement"] < DEFAULT_PAYLOAD_BYTES["alert"] < DEFAULT_PAYLOAD_BYTES["incident"]


def test_an_envelope_over_its_payload_s_limit_is_refused_naming_the_payload_field() -> None:
    sizes = SizeLimits(overall=64 * 1024, by_payload={"acknowledgement": 1000, "incident": 100_000})
    sizes.check("acknowledgement", 1000)
    with pytest.raises(Refused) as caught:
        sizes.check("acknowledgement", 1001)
    err = caught.value
    assert (Reason.ENVELOPE_TOO_LARGE, StatusCode.RESOURCE_EXHAUSTED) == (err.reason, err.reason.code)
    [violation] = err.violations
    assert ("envelope.acknowledgement", "max_bytes") == (violation.under("envelope").field, violation.rule)
    assert {"payload": "acknowledgement", "limit": "1000", "size": "1001"} == dict(err.metadata)
    assert 64 * 1024 == sizes.limit("incident")  # never above the overall limit
    assert 64 * 1024 == sizes.limit(None) == sizes.limit("something_new")


# -- config --------------------------------------------------------------------------------------


def test_limits_defaults_do_not_bind_a_single_agency_at_the_hub_s_top_rate() -> None:
    """No rate limit unless set; in flight per connection as per agency; 100 streams; sizes; keepalive as before."""
    cfg = parse(doc(), "hub.toml", BASE)
    assert (0.0, 0.0) == (cfg.agency_publish_rate, cfg.agency_publish_burst)
    assert cfg.max_inflight_publishes_per_connection == cfg.max_inflight_publishes_per_agency == 4000
    assert 100 == cfg.max_streams_per_agency
    assert dict(DEFAULT_PAYLOAD_BYTES) == dict(cfg.payload_bytes)
    assert (timedelta(seconds=20), timedelta(seconds=10), timedelta(seconds=5), 2) == (
        cfg.keepalive_time,
        cfg.keepalive_timeout,
        cfg.min_ping_interval,
        cfg.max_ping_strikes,
    )
    assert (timedelta(minutes=15), timedelta(0)) == (cfg.max_connection_idle, cfg.max_connection_age)
    options = dict(keepalive_options(cfg))
    assert (20_000, 10_000, 5_000, 2, 900_000) == (
        options["grpc.keepalive_time_ms"],
        options["grpc.keepalive_timeout_ms"],
        options["grpc.http2.min_ping_interval_without_data_ms"],
        options["grpc.http2.max_ping_strikes"],
        options["grpc.max_connection_idle_ms"],
    )
    assert "grpc.max_connection_age_ms" not in options


def test_limits_settings_are_read() -> None:
    text = doc(
        hub=hub(
            "agency_publish_rate = 500\nmax_inflight_publishes_per_connection = 64\nmax_streams_per_agency = 8\n"
            "keepalive_time_seconds = 30\nmax_connection_idle_seconds = 0\nmax_connection_age_seconds = 3600\n"
            "max_connection_age_grace_seconds = 5\nmax_ping_strikes = 0"
        ),
        sizes="[sizes]\nacknowledgement = 2048\nalert = 4096\n",
    )
    cfg = parse(text, "hub.toml", BASE)
    assert (500.0, 500.0, 64, 8) == (
        cfg.agency_publish_rate,
        cfg.agency_publish_burst,  # a second's worth unless set
        cfg.max_inflight_publishes_per_connection,
        cfg.max_streams_per_agency,
    )
    assert (2048, 4096, 64 * 1024) == (
        cfg.payload_bytes["acknowledgement"],
        cfg.payload_bytes["alert"],
        cfg.payload_bytes["incident"],
    )
    options = dict(keepalive_options(cfg))
    assert "grpc.max_connection_idle_ms" not in options
    assert (30_000, 3_600_000, 5_000, 0) == (
        options["grpc.keepalive_time_ms"],
        options["grpc.max_connection_age_ms"],
        options["grpc.max_connection_age_grace_ms"],
        options["grpc.http2.max_ping_strikes"],
    )
    burst = parse(doc(hub=hub("agency_publish_rate = 0.5\nagency_publish_burst = 20")), "hub.toml", BASE)
    assert (0.5, 20.0) == (burst.agency_publish_rate, burst.agency_publish_burst)


@pytest.mark.parametrize(
    ("pieces", "problem"),
    [
        ({"hub": hub("agency_publish_rate = -1")}, "hub.agency_publish_rate: must be 0 (no limit) or envelopes per second"),
        ({"hub": hub("agency_publish_rate = inf")}, "hub.agency_publish_rate: must be 0 (no limit) or envelopes per second"),
        ({"hub": hub("agency_publish_rate = 5\nagency_publish_burst = 0.5")}, "hub.agency_publish_burst: must be at least 1 envelope"),
        ({"hub": hub("max_inflight_publishes_per_connection = 0")}, "hub.max_inflight_publishes_per_connection: must be a positive integer"),
        ({"hub": hub("max_streams_per_agency = -1")}, "hub.max_streams_per_agency: must be 0 (none) or a positive integer"),
        ({"hub": hub("max_connection_idle_seconds = -1")}, "hub.max_connection_idle_seconds: must be 0 (off) or a positive number of seconds (at most ten years)"),
        ({"hub": hub("keepalive_time_seconds = 0")}, "hub.keepalive_time_seconds: must be a positive number of seconds (at most ten years)"),
        ({"sizes": "[sizes]\nacknowledgement = 0\n"}, "sizes.acknowledgement: must be a positive integer"),
        ({"sizes": "[sizes]\nplate_read = 100\n"}, "sizes.plate_read: is not a known setting"),
    ],
)  # fmt: skip
def test_limits_settings_errors_name_the_key(pieces: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(doc(**pieces), "hub.toml", BASE)
    assert f"hub.toml: {problem}" == str(caught.value)
