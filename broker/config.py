"""The hub's settings: frozen dataclasses read from a TOML file and checked at startup.

Every error names the file and the key (e.g. "hub.toml: nats.replicas: must be 1, 3 or 5").
Relative paths in the file are resolved against the file's folder.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from broker import ids
from broker.errors import ConfigError
from broker.limits import DEFAULT_PAYLOAD_BYTES, PAYLOADS
from broker.policy.routing import AllowRule
from broker.validate.checker import Limits

T = TypeVar("T")


@dataclass(frozen=True)
class TlsConfig:
    """PEM files of the hub's gRPC server: the CA that signs agency certificates, and the hub's own pair."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class RevocationConfig:
    """Client certificates refused although their CA signed them: a CRL and/or a deny file, reloaded while running."""

    crl_file: Path | None = None
    deny_file: Path | None = None
    # How often the files are checked for changes (SIGHUP reloads at once).
    reload: timedelta = timedelta(seconds=2)


@dataclass(frozen=True)
class NatsConfig:
    """How the hub reaches JetStream and how it lays out its stream."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    # Monitoring endpoints checked at startup: each server must run with sync_interval: always.
    monitor_urls: tuple[str, ...] = ()
    require_sync_always: bool = True
    stream: str = "OPSROOM"
    subject_prefix: str = "opsroom"
    replicas: int = 1
    duplicate_window: timedelta = timedelta(minutes=20)
    max_age: timedelta = timedelta(days=7)
    max_bytes: int = -1
    ack_wait: timedelta = timedelta(seconds=60)
    max_ack_pending: int = 10_000
    # Largest atomic batch; nats-server accepts at most 1000 messages per batch.
    commit_max_messages: int = 1000
    commit_max_bytes: int = 8 * 1024 * 1024
    # Writes of fewer messages go as pipelined single publishes (lower latency at low load);
    # larger ones as one atomic batch (a fixed few fsyncs for the whole batch).
    atomic_threshold: int = 64
    commit_timeout: timedelta = timedelta(seconds=10)
    # At start, how long the hub tries to reach a server before it exits naming them (a line per
    # failed attempt meanwhile). Once connected, it reconnects for as long as it runs.
    connect_timeout: timedelta = timedelta(seconds=30)
    tls: TlsConfig | None = None
    # The hub's own NATS user (nats-server authorization); its password is read from password_file.
    user: str = ""
    password_file: Path | None = None


@dataclass(frozen=True)
class Agency:
    """An agency (room) registered at the hub; a drill-only room (a simulator) never gets ACTUAL traffic."""

    id: str
    name: str
    drill_only: bool = False
    receives: str = "grpc"


@dataclass(frozen=True)
class AgreementsConfig:
    """Where the agreement files are, and how often the folder is checked for changes."""

    folder: Path
    reload: timedelta = timedelta(seconds=2)


@dataclass(frozen=True)
class AuditConfig:
    """The audit log: who signs its entries, whose signatures are trusted, how long records are kept."""

    signing_key: Path
    # Public keys of every hub replica writing to the same log (this hub's own is always trusted).
    trusted_keys: tuple[Path, ...] = ()
    # Names this replica in the entries it writes.
    writer: str = "hub"
    # A retried envelope within this window finds its records stored and adds none.
    duplicate_window: timedelta = timedelta(days=1)
    # In a batch written at once, at least every checkpoint_every-th entry is signed (and the last).
    checkpoint_every: int = 1000
    # Records older than this are purged (the purge is itself recorded); None keeps them all.
    retention: timedelta | None = None
    # How often the hub checks for records past retention.
    purge_interval: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class HubConfig:
    """Everything the hub process needs."""

    listen: str
    tls: TlsConfig
    nats: NatsConfig
    agencies: tuple[Agency, ...]
    allow: tuple[AllowRule, ...]
    agreements: AgreementsConfig | None = None
    # None: no audit log (benchmarks only; a production hub config must have an [audit] section).
    audit: AuditConfig | None = None
    metrics_listen: str = ""
    max_envelope_bytes: int = 64 * 1024
    max_batch_envelopes: int = 1000
    max_request_bytes: int = 16 * 1024 * 1024
    grace: timedelta = timedelta(seconds=10)
    heartbeat: timedelta = timedelta(seconds=15)
    # gRPC server reflection, so that grpcurl and similar tools list and call the services
    # (behind mTLS like the rest); for development hubs.
    reflection: bool = False
    # Most bulk-lane envelopes (plate reads, routine alerts) taken in per second; 0: no ceiling.
    # The ceiling keeps room in the hub for urgent traffic during a bulk flood (docs/guarantees.md).
    bulk_max_per_second: int = 1000
    # A room that sends nothing (acknowledgement or keepalive) this long is offline: its session ends.
    presence_timeout: timedelta = timedelta(seconds=60)
    # Calls one connection may have open at once (HTTP/2 MAX_CONCURRENT_STREAMS); more wait in the client.
    max_calls_per_connection: int = 100
    # Envelopes in flight (taken, not yet answered) per lane, for all agencies and for each one;
    # past either, publishes are refused at once with HUB_OVERLOADED and a retry delay.
    max_inflight_publishes: int = 10_000
    max_inflight_publishes_per_agency: int = 4_000
    # The retry delay a refused sender is asked to wait (bulk lane: at least what the ceiling needs).
    overload_retry_after: timedelta = timedelta(seconds=1)
    # An envelope without expires_at is dropped, undelivered, this long after its acceptance.
    default_expiry: timedelta = timedelta(hours=24)
    # A timer not yet due (an escalation deadline) is looked at again at least this often, against
    # the hub's clock: a clock set forward or back is followed within this time.
    timer_recheck: timedelta = timedelta(seconds=60)
    limits: Limits = field(default_factory=Limits)
    # -- per-agency limits (docs/architecture.md#per-agency-limits) ----------------------------
    # Envelopes a second each agency may publish on each lane (a token bucket holding burst); 0: none.
    agency_publish_rate: float = 0.0
    agency_publish_burst: float = 0.0
    # Envelopes in flight per lane from one connection (a gRPC peer), beside the agency's bound.
    max_inflight_publishes_per_connection: int = 4_000
    # Streaming calls (Connect, PublishStream) one agency may have open at once; 0: no cap.
    max_streams_per_agency: int = 100
    # The largest envelope by payload (its `payload` field), under max_envelope_bytes.
    payload_bytes: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PAYLOAD_BYTES))
    # gRPC keepalive and idle limits of the server (broker/edge/server.py); 0 turns the last two off.
    keepalive_time: timedelta = timedelta(seconds=20)
    keepalive_timeout: timedelta = timedelta(seconds=10)
    min_ping_interval: timedelta = timedelta(seconds=5)
    max_ping_strikes: int = 2
    max_connection_idle: timedelta = timedelta(minutes=15)
    max_connection_age: timedelta = timedelta(0)
    max_connection_age_grace: timedelta = timedelta(seconds=30)
    # Revoked client certificates ([tls] crl_file, deny_file); None: none beyond what the CA signs.
    revocation: RevocationConfig | None = None

    @property
    def agency_ids(self) -> frozenset[str]:
        """Ids of the agencies registered in the config (parties of agreements are registered too)."""
        return frozenset(a.id for a in self.agencies)

    @property
    def formats(self) -> dict[str, str]:
        """The format each registered agency receives in (its `receives`; "grpc" unless it runs a connector)."""
        return {a.id: a.receives for a in self.agencies}

    @property
    def drill_only(self) -> frozenset[str]:
        """Agencies that take drill traffic only."""
        return frozenset(a.id for a in self.agencies if a.drill_only)


class _Reader:
    """Typed access to a TOML table with errors naming the file and the key."""

    def __init__(self, source: str, table: Mapping[str, Any], prefix: str = "") -> None:
        self.source = source
        self.table = table
        self.prefix = prefix
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.prefix}{key}: {problem}")

    def get(self, key: str, kind: type[T], default: T) -> T:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"must be a {kind.__name__}")
        return value

    def require(self, key: str, kind: type[T]) -> T:
        if key not in self.table:
            raise self.error(key, "is required")
        value: T = self.get(key, kind, self.table[key])
        if isinstance(value, str) and not value:
            raise self.error(key, "must not be empty")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key, list, list(default))
        if not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return tuple(value)

    def seconds(self, key: str, default: timedelta) -> timedelta:
        value = self.get(key, float, default.total_seconds())
        if not 0 < value <= 10 * 365 * 86400:  # also refuses nan and inf
            raise self.error(key, "must be a positive number of seconds (at most ten years)")
        return timedelta(seconds=value)

    def positive(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value <= 0:
            raise self.error(key, "must be a positive integer")
        return value

    def at_least_zero(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value < 0:
            raise self.error(key, "must be 0 (none) or a positive integer")
        return value

    def sub(self, key: str) -> _Reader:
        self.used.add(key)
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, "must be a table")
        return _Reader(self.source, value, f"{self.prefix}{key}.")

    def check_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], "is not a known setting")


def _path(reader: _Reader, base: Path, key: str) -> Path:
    path = Path(reader.require(key, str))
    return path if path.is_absolute() else base / path


def _tls(reader: _Reader, base: Path) -> TlsConfig:
    tls = TlsConfig(_path(reader, base, "ca_file"), _path(reader, base, "cert_file"), _path(reader, base, "key_file"))
    reader.check_unknown()
    return tls


def _revocation(reader: _Reader, base: Path) -> RevocationConfig | None:
    """The [tls] keys naming revoked certificates (crl_file, deny_file, reload_seconds); None without either file."""
    crl = _path(reader, base, "crl_file") if "crl_file" in reader.table else None
    deny = _path(reader, base, "deny_file") if "deny_file" in reader.table else None
    reload = reader.seconds("reload_seconds", RevocationConfig().reload)
    if crl is None and deny is None:
        if "reload_seconds" in reader.table:
            raise reader.error("reload_seconds", "needs crl_file or deny_file (the files it reloads)")
        return None
    return RevocationConfig(crl, deny, reload)


def _nats_auth(reader: _Reader, base: Path) -> tuple[str, Path | None]:
    """The hub's NATS user and password file ([nats] user, password_file): both or neither."""
    user = reader.get("user", str, "")
    password_file = _path(reader, base, "password_file") if "password_file" in reader.table else None
    if user and password_file is None:
        raise reader.error("password_file", "is required when user is set (the file holding the user's password)")
    if password_file is not None and not user:
        raise reader.error("user", "is required when password_file is set")
    return user, password_file


def _nats(reader: _Reader, base: Path) -> NatsConfig:
    d = NatsConfig()
    replicas = reader.get("replicas", int, d.replicas)
    if replicas not in (1, 3, 5):
        raise reader.error("replicas", "must be 1, 3 or 5")
    commit_max = reader.positive("commit_max_messages", d.commit_max_messages)
    if commit_max > 1000:
        raise reader.error("commit_max_messages", "must be at most 1000 (the nats-server batch limit)")
    tls = _tls(reader.sub("tls"), base) if "tls" in reader.table else None
    cfg = NatsConfig(
        servers=reader.strings("servers", d.servers),
        monitor_urls=reader.strings("monitor_urls", d.monitor_urls),
        require_sync_always=reader.get("require_sync_always", bool, d.require_sync_always),
        stream=reader.get("stream", str, d.stream),
        subject_prefix=reader.get("subject_prefix", str, d.subject_prefix),
        replicas=replicas,
        duplicate_window=reader.seconds("duplicate_window_seconds", d.duplicate_window),
        max_age=reader.seconds("max_age_seconds", d.max_age),
        max_bytes=reader.get("max_bytes", int, d.max_bytes),
        ack_wait=reader.seconds("ack_wait_seconds", d.ack_wait),
        max_ack_pending=reader.positive("max_ack_pending", d.max_ack_pending),
        commit_max_messages=commit_max,
        commit_max_bytes=reader.positive("commit_max_bytes", d.commit_max_bytes),
        atomic_threshold=reader.positive("atomic_threshold", d.atomic_threshold),
        commit_timeout=reader.seconds("commit_timeout_seconds", d.commit_timeout),
        connect_timeout=reader.seconds("connect_timeout_seconds", d.connect_timeout),
        tls=tls,
    )
    user, password_file = _nats_auth(reader, base)
    cfg = replace(cfg, user=user, password_file=password_file)
    if not cfg.servers:
        raise reader.error("servers", "must name at least one server")
    if cfg.require_sync_always and not cfg.monitor_urls:
        raise reader.error("monitor_urls", "must list the servers' monitoring URLs when require_sync_always is true")
    reader.check_unknown()
    return cfg


# How an agency receives: on its gRPC stream, or through the connector of a standard it runs
# (adapters/connect): CAP Atom feed, EIDO WebSocket, EMSI over HTTP, 112 NUE SOAP push.
RECEIVE_FORMATS = ("grpc", "cap", "eido", "emsi", "nue112")


def _agencies(source: str, items: object) -> tuple[Agency, ...]:
    if not isinstance(items, list):
        raise ConfigError(f"{source}: agencies: must be an array of tables")
    out: list[Agency] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: agencies[{i}]: must be a table")
        reader = _Reader(source, item, f"agencies[{i}].")
        agency_id = reader.require("id", str)
        if not ids.is_agency_id(agency_id):
            raise reader.error("id", "must be an agency id such as it.pl.001272")
        if agency_id in seen:
            raise reader.error("id", "is registered twice")
        seen.add(agency_id)
        receives = reader.get("receives", str, "grpc")
        if receives not in RECEIVE_FORMATS:
            raise reader.error("receives", f"must be one of {', '.join(RECEIVE_FORMATS)}, not {receives!r}")
        name = reader.get("name", str, agency_id)
        out.append(Agency(agency_id, name, reader.get("drill_only", bool, False), receives))
        reader.check_unknown()
    return tuple(out)


def _allow(source: str, items: object, known: frozenset[str]) -> tuple[AllowRule, ...]:
    if not isinstance(items, list):
        raise ConfigError(f"{source}: allow: must be an array of tables")
    rules: list[AllowRule] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: allow[{i}]: must be a table")
        reader = _Reader(source, item, f"allow[{i}].")
        name = reader.get("name", str, f"allow[{i}]")
        senders = reader.strings("from", ())
        recipients = reader.strings("to", ())
        for key, values in (("from", senders), ("to", recipients)):
            if not values:
                raise reader.error(key, "must list at least one agency")
            for value in values:
                if value not in known:
                    raise reader.error(key, f"names {value!r}, which is not in [[agencies]]")
        rules.append(AllowRule(name, frozenset(senders), frozenset(recipients)))
        reader.check_unknown()
    return tuple(rules)


def _limits(reader: _Reader) -> Limits:
    d = Limits()
    limits = Limits(
        max_recipients=reader.positive("max_recipients", d.max_recipients),
        max_target_areas=reader.positive("max_target_areas", d.max_target_areas),
        max_incident_ids=reader.positive("max_incident_ids", d.max_incident_ids),
        max_references=reader.positive("max_references", d.max_references),
        max_items=reader.positive("max_items", d.max_items),
        max_media=reader.positive("max_media", d.max_media),
        max_text=reader.positive("max_text", d.max_text),
        max_unmapped=reader.positive("max_unmapped", d.max_unmapped),
        max_short=reader.positive("max_short", d.max_short),
        max_future_skew=reader.seconds("max_future_skew_seconds", d.max_future_skew),
        max_sent_age=reader.seconds("max_sent_age_seconds", d.max_sent_age),
    )
    reader.check_unknown()
    return limits


def _off_or_seconds(reader: _Reader, key: str, value: float) -> timedelta:
    """A duration read as value (seconds) from key, where 0 means off."""
    if not 0 <= value <= 10 * 365 * 86400:  # also refuses nan and inf
        raise reader.error(key, "must be 0 (off) or a positive number of seconds (at most ten years)")
    return timedelta(seconds=value)


def _agency_limits(hub: _Reader) -> dict[str, Any]:
    """The [hub] keys of the per-agency limits and of gRPC keepalive (HubConfig's fields of the same names)."""
    rate = hub.get("agency_publish_rate", float, 0.0)
    if not 0 <= rate < math.inf:
        raise hub.error("agency_publish_rate", "must be 0 (no limit) or envelopes per second")
    burst = hub.get("agency_publish_burst", float, 0.0)
    if not 0 <= burst < math.inf:
        raise hub.error("agency_publish_burst", "must be 0 (as many as the rate) or a number of envelopes")
    if rate and burst and burst < 1:
        raise hub.error("agency_publish_burst", "must be at least 1 envelope")
    timeout = hub.seconds("keepalive_timeout_seconds", timedelta(seconds=10))
    return {
        "agency_publish_rate": rate,
        "agency_publish_burst": (burst or max(rate, 1.0)) if rate else 0.0,
        "max_inflight_publishes_per_connection": hub.positive("max_inflight_publishes_per_connection", 4_000),
        "max_streams_per_agency": hub.at_least_zero("max_streams_per_agency", 100),
        "keepalive_time": hub.seconds("keepalive_time_seconds", timedelta(seconds=20)),
        "keepalive_timeout": timeout,
        "min_ping_interval": hub.seconds("min_ping_interval_seconds", timedelta(seconds=5)),
        "max_ping_strikes": hub.at_least_zero("max_ping_strikes", 2),
        "max_connection_idle": _off_or_seconds(
            hub, "max_connection_idle_seconds", hub.get("max_connection_idle_seconds", float, 900.0)
        ),
        "max_connection_age": _off_or_seconds(
            hub, "max_connection_age_seconds", hub.get("max_connection_age_seconds", float, 0.0)
        ),
        "max_connection_age_grace": hub.seconds("max_connection_age_grace_seconds", timedelta(seconds=30)),
    }


def _payload_bytes(reader: _Reader) -> dict[str, int]:
    """[sizes]: the largest envelope by payload, each key a payload field name."""
    d = DEFAULT_PAYLOAD_BYTES
    sizes = {
        "incident": reader.positive("incident", d["incident"]),
        "assistance_request": reader.positive("assistance_request", d["assistance_request"]),
        "assistance_response": reader.positive("assistance_response", d["assistance_response"]),
        "handover_request": reader.positive("handover_request", d["handover_request"]),
        "handover_response": reader.positive("handover_response", d["handover_response"]),
        "alert": reader.positive("alert", d["alert"]),
        "closure": reader.positive("closure", d["closure"]),
        "acknowledgement": reader.positive("acknowledgement", d["acknowledgement"]),
    }
    if tuple(sizes) != PAYLOADS:  # a payload added to the contract needs its key here
        raise reader.error("", f"the loader reads {sorted(sizes)}, not every payload {sorted(PAYLOADS)}")
    reader.check_unknown()
    return sizes


def _audit(root: _Reader, base: Path) -> AuditConfig | None:
    section = root.sub("audit")
    if not section.get("enabled", bool, True):
        section.check_unknown()
        return None  # for benchmarks that compare the hub with and without its audit log
    d = AuditConfig(Path())
    retention_days = section.get("retention_days", int, 0)
    if retention_days < 0:
        raise section.error("retention_days", "must be 0 (keep everything) or a number of days")
    writer = section.get("writer", str, d.writer)
    if not writer or len(writer) > 64:
        raise section.error("writer", "must be a name of 1 to 64 characters")
    cfg = AuditConfig(
        signing_key=_path(section, base, "signing_key"),
        trusted_keys=tuple(base / p for p in section.strings("trusted_keys", ())),
        writer=writer,
        duplicate_window=section.seconds("duplicate_window_seconds", d.duplicate_window),
        checkpoint_every=section.positive("checkpoint_every", d.checkpoint_every),
        retention=timedelta(days=retention_days) if retention_days else None,
        purge_interval=section.seconds("purge_interval_seconds", d.purge_interval),
    )
    section.check_unknown()
    return cfg


def parse(text: str, source: str, base: Path) -> HubConfig:
    """Parse a hub config from TOML text; source names it in errors, base resolves relative paths."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    root = _Reader(source, data)
    hub = root.sub("hub")
    agencies = _agencies(source, data.get("agencies", []))
    root.used.add("agencies")
    allow = _allow(source, data.get("allow", []), frozenset(a.id for a in agencies))
    root.used.add("allow")
    agreements = None
    if "agreements" in data:
        section = root.sub("agreements")
        agreements = AgreementsConfig(
            _path(section, base, "folder"), section.seconds("reload_seconds", timedelta(seconds=2))
        )
        section.check_unknown()
        if allow:
            raise root.error("allow", "use either [agreements] or [[allow]], not both")
    if "audit" not in data:
        raise root.error("audit", "missing: every hub keeps an audit log (set audit.signing_key)")
    audit = _audit(root, base)
    d_grace, d_heartbeat = timedelta(seconds=10), timedelta(seconds=15)
    tls_reader = root.sub("tls")
    revocation = _revocation(tls_reader, base)
    cfg = HubConfig(
        listen=hub.require("listen", str),
        metrics_listen=hub.get("metrics_listen", str, ""),
        reflection=hub.get("reflection", bool, False),
        max_envelope_bytes=hub.positive("max_envelope_bytes", 64 * 1024),
        max_batch_envelopes=hub.positive("max_batch_envelopes", 1000),
        max_request_bytes=hub.positive("max_request_bytes", 16 * 1024 * 1024),
        grace=hub.seconds("grace_seconds", d_grace),
        heartbeat=hub.seconds("heartbeat_seconds", d_heartbeat),
        bulk_max_per_second=hub.at_least_zero("bulk_max_per_second", 1000),
        default_expiry=hub.seconds("default_expiry_seconds", timedelta(hours=24)),
        presence_timeout=hub.seconds("presence_timeout_seconds", timedelta(seconds=60)),
        timer_recheck=hub.seconds("timer_recheck_seconds", timedelta(seconds=60)),
        max_calls_per_connection=hub.positive("max_calls_per_connection", 100),
        max_inflight_publishes=hub.positive("max_inflight_publishes", 10_000),
        max_inflight_publishes_per_agency=hub.positive("max_inflight_publishes_per_agency", 4_000),
        overload_retry_after=hub.seconds("overload_retry_after_seconds", timedelta(seconds=1)),
        tls=_tls(tls_reader, base),
        nats=_nats(root.sub("nats"), base),
        agencies=agencies,
        allow=allow,
        agreements=agreements,
        audit=audit,
        limits=_limits(root.sub("limits")),
        **_agency_limits(hub),
        payload_bytes=_payload_bytes(root.sub("sizes")),
        revocation=revocation,
    )
    hub.check_unknown()
    root.check_unknown()
    return cfg


def named_files(cfg: HubConfig) -> list[tuple[str, Path, bool]]:
    """Every file and folder the config names: (its key, its path, whether it is a folder)."""
    files: list[tuple[str, Path, bool]] = [
        ("tls.ca_file", cfg.tls.ca_file, False),
        ("tls.cert_file", cfg.tls.cert_file, False),
        ("tls.key_file", cfg.tls.key_file, False),
    ]
    if cfg.nats.tls is not None:
        files += [
            ("nats.tls.ca_file", cfg.nats.tls.ca_file, False),
            ("nats.tls.cert_file", cfg.nats.tls.cert_file, False),
            ("nats.tls.key_file", cfg.nats.tls.key_file, False),
        ]
    if cfg.nats.password_file is not None:
        files.append(("nats.password_file", cfg.nats.password_file, False))
    if cfg.revocation is not None:
        for key, path in (("tls.crl_file", cfg.revocation.crl_file), ("tls.deny_file", cfg.revocation.deny_file)):
            if path is not None:
                files.append((key, path, False))
    if cfg.agreements is not None:
        files.append(("agreements.folder", cfg.agreements.folder, True))
    if cfg.audit is not None:
        files.append(("audit.signing_key", cfg.audit.signing_key, False))
        files += [(f"audit.trusted_keys[{i}]", p, False) for i, p in enumerate(cfg.audit.trusted_keys)]
    return files


_MAKE_IT = {
    "tls.crl_file": "the certificate revocation list of the agencies' CA (`opsroom dev-certs --revoke AGENCY` makes a"
    " development one)",
    "tls.deny_file": "a TOML file listing agencies, serials and fingerprints to refuse (docs/security.md#revocation)",
    "nats.password_file": "the hub's NATS password, as nats-server's authorization names it (`opsroom dev-certs"
    " --config {source}` makes a development one)",
    "tls.": "`opsroom dev-certs --config {source}` makes development certificates where the config looks",
    "nats.tls.": "the hub's client certificate for nats-server, from the PKI that nats-server trusts",
    "agreements.": "the folder of agreement files (deploy/agreements/ holds examples)",
    "audit.signing_key": "`opsroom audit keygen --out {path}` makes one (`opsroom dev-certs --config {source}`"
    " makes a development one)",
    "audit.trusted_keys": "the public key (.pub.pem) of another hub replica writing to the same log",
}


def check_files(cfg: HubConfig, source: str) -> None:
    """Raise ConfigError naming the first file or folder the config names that is missing or unreadable.

    The message is one line: the config file, the key, the path, and how to make it. The hub
    calls this before it touches NATS, so a missing file costs no stream and no connection.
    """
    for key, path, folder in named_files(cfg):
        if folder:
            problem = "" if path.is_dir() else "no such folder"
        elif not path.exists():
            problem = "no such file"
        elif not path.is_file():
            problem = "not a file"
        else:
            problem = "" if os.access(path, os.R_OK) else "not readable by this user"
        if problem:
            hint = next(h for prefix, h in _MAKE_IT.items() if key.startswith(prefix))
            raise ConfigError(f"{source}: {key}: {problem}: {path} ({hint.format(source=source, path=path)})")


def load(path: Path) -> HubConfig:
    """Read and check the hub config at path."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse(text, str(path), path.parent)
