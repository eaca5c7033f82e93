"""broker.config: the hub's TOML settings, their defaults, and errors that name the file and the key."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from broker.config import (
    Agency,
    AgreementsConfig,
    AuditConfig,
    HubConfig,
    NatsConfig,
    TlsConfig,
    check_files,
    load,
    named_files,
    parse,
)
from broker.errors import ConfigError
from broker.policy.routing import AllowRule
from broker.validate.checker import Limits
from tests import factories as f

REPO = Path(__file__).resolve().parents[2]
BASE = Path("/etc/opsroom")

FULL = """
[hub]
listen = "0.0.0.0:7443"
metrics_listen = "127.0.0.1:9464"
max_envelope_bytes = 32768
max_batch_envelopes = 500
max_request_bytes = 1048576
grace_seconds = 2.5
heartbeat_seconds = 20
max_calls_per_connection = 50
max_inflight_publishes = 3000
max_inflight_publishes_per_agency = 300
overload_retry_after_seconds = 0.5

[tls]
ca_file = "pki/ca.pem"
cert_file = "/srv/pki/hub.pem"
key_file = "pki/hub-key.pem"

[nats]
servers = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]
monitor_urls = ["http://10.0.0.1:8222", "http://10.0.0.2:8222", "http://10.0.0.3:8222"]
require_sync_always = true
stream = "OPSROOM_TO"
subject_prefix = "opsroom-to"
replicas = 3
duplicate_window_seconds = 600
max_age_seconds = 86400
max_bytes = 1073741824
ack_wait_seconds = 30
max_ack_pending = 500
commit_max_messages = 1000
commit_max_bytes = 4194304
atomic_threshold = 4
commit_timeout_seconds = 5
connect_timeout_seconds = 12

[nats.tls]
ca_file = "nats/ca.pem"
cert_file = "nats/hub.pem"
key_file = "nats/hub-key.pem"

[audit]
signing_key = "keys/audit-a.pem"
trusted_keys = ["keys/audit-b.pub.pem", "/srv/keys/audit-c.pub.pem"]
writer = "hub-a"
duplicate_window_seconds = 7200
checkpoint_every = 50
retention_days = 3650
purge_interval_seconds = 600

[limits]
max_recipients = 8
max_target_areas = 9
max_incident_ids = 3
max_references = 4
max_items = 10
max_media = 2
max_text = 1000
max_short = 100
max_future_skew_seconds = 60
max_sent_age_seconds = 3600

[[agencies]]
id = "it.nue.cur.to"
name = "112 NUE - CUR Torino"

[[agencies]]
id = "it.pl.001272"
name = "Polizia Locale di Torino"

[[agencies]]
id = "it.pl.015146"

[[allow]]
name = "torino"
from = ["it.nue.cur.to", "it.pl.001272"]
to = ["it.nue.cur.to", "it.pl.001272"]

[[allow]]
from = ["it.pl.015146"]
to = ["it.nue.cur.to"]
"""

# The smallest valid config, in pieces that the error cases replace one at a time.
SECTIONS = {
    "root": "",
    "hub": '[hub]\nlisten = "127.0.0.1:7443"\n',
    "tls": '[tls]\nca_file = "pki/ca.pem"\ncert_file = "pki/hub.pem"\nkey_file = "pki/hub-key.pem"\n',
    "nats": '[nats]\nmonitor_urls = ["http://127.0.0.1:8222"]\n',
    "audit": '[audit]\nsigning_key = "keys/audit.pem"\n',
    "limits": "",
    "agencies": '[[agencies]]\nid = "it.nue.cur.to"\n\n[[agencies]]\nid = "it.pl.001272"\n',
    "allow": '[[allow]]\nfrom = ["it.nue.cur.to"]\nto = ["it.pl.001272"]\n',
}


def doc(**pieces: str) -> str:
    """The minimal config with some sections replaced (root keys stay first, as TOML requires)."""
    return "\n".join({**SECTIONS, **pieces}.values())


def hub(extra: str) -> str:
    return SECTIONS["hub"] + extra + "\n"


def nats(extra: str) -> str:
    return SECTIONS["nats"] + extra + "\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, "hub.toml", BASE)
    return str(info.value)


def test_full_config_parses_every_setting() -> None:
    """Every documented setting is read, with relative paths resolved against the base folder."""
    cfg = parse(FULL, "hub.toml", BASE)
    expected = HubConfig(
        listen="0.0.0.0:7443",
        metrics_listen="127.0.0.1:9464",
        max_envelope_bytes=32768,
        max_batch_envelopes=500,
        max_request_bytes=1048576,
        grace=timedelta(seconds=2.5),
        heartbeat=timedelta(seconds=20),
        max_calls_per_connection=50,
        max_inflight_publishes=3000,
        max_inflight_publishes_per_agency=300,
        overload_retry_after=timedelta(milliseconds=500),
        tls=TlsConfig(BASE / "pki/ca.pem", Path("/srv/pki/hub.pem"), BASE / "pki/hub-key.pem"),
        nats=NatsConfig(
            servers=("nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"),
            monitor_urls=("http://10.0.0.1:8222", "http://10.0.0.2:8222", "http://10.0.0.3:8222"),
            require_sync_always=True,
            stream="OPSROOM_TO",
            subject_prefix="opsroom-to",
            replicas=3,
            duplicate_window=timedelta(minutes=10),
            max_age=timedelta(days=1),
            max_bytes=1073741824,
            ack_wait=timedelta(seconds=30),
            max_ack_pending=500,
            commit_max_messages=1000,
            commit_max_bytes=4194304,
            atomic_threshold=4,
            commit_timeout=timedelta(seconds=5),
            connect_timeout=timedelta(seconds=12),
            tls=TlsConfig(BASE / "nats/ca.pem", BASE / "nats/hub.pem", BASE / "nats/hub-key.pem"),
        ),
        agencies=(
            Agency(f.CUR, "112 NUE - CUR Torino"),
            Agency(f.PL, "Polizia Locale di Torino"),
            Agency(f.PL_MILANO, f.PL_MILANO),
        ),
        allow=(
            AllowRule("torino", frozenset({f.CUR, f.PL}), frozenset({f.CUR, f.PL})),
            AllowRule("allow[1]", frozenset({f.PL_MILANO}), frozenset({f.CUR})),
        ),
        audit=AuditConfig(
            signing_key=BASE / "keys/audit-a.pem",
            trusted_keys=(BASE / "keys/audit-b.pub.pem", Path("/srv/keys/audit-c.pub.pem")),
            writer="hub-a",
            duplicate_window=timedelta(hours=2),
            checkpoint_every=50,
            retention=timedelta(days=3650),
            purge_interval=timedelta(minutes=10),
        ),
        limits=Limits(
            max_recipients=8,
            max_target_areas=9,
            max_incident_ids=3,
            max_references=4,
            max_items=10,
            max_media=2,
            max_text=1000,
            max_short=100,
            max_future_skew=timedelta(minutes=1),
            max_sent_age=timedelta(hours=1),
        ),
    )
    assert expected == cfg
    assert frozenset({f.CUR, f.PL, f.PL_MILANO}) == cfg.agency_ids


def test_minimal_config_takes_the_defaults() -> None:
    """Settings left out take the dataclass defaults; nats.tls stays unset."""
    cfg = parse(doc(), "hub.toml", BASE)
    assert NatsConfig(monitor_urls=("http://127.0.0.1:8222",)) == cfg.nats
    assert Limits() == cfg.limits
    assert "" == cfg.metrics_listen
    assert timedelta(seconds=10) == cfg.grace
    assert timedelta(seconds=15) == cfg.heartbeat
    assert (Agency(f.CUR, f.CUR), Agency(f.PL, f.PL)) == cfg.agencies
    assert (AllowRule("allow[0]", frozenset({f.CUR}), frozenset({f.PL})),) == cfg.allow
    assert AuditConfig(BASE / "keys/audit.pem") == cfg.audit


def test_audit_can_be_turned_off_explicitly_only() -> None:
    """enabled = false (for benchmarks) turns the audit log off; leaving [audit] out is an error."""
    assert parse(doc(audit="[audit]\nenabled = false\n"), "hub.toml", BASE).audit is None
    assert "audit: missing" in error_of(doc(audit=""))


def test_relative_paths_resolve_against_base_and_absolute_paths_stay() -> None:
    """Relative TLS paths are joined to base; absolute ones are kept as written."""
    tls = '[tls]\nca_file = "ca.pem"\ncert_file = "../up/hub.pem"\nkey_file = "/abs/hub-key.pem"\n'
    cfg = parse(doc(tls=tls), "hub.toml", Path("/opt/hub/conf"))
    assert TlsConfig(Path("/opt/hub/conf/ca.pem"), Path("/opt/hub/conf/../up/hub.pem"), Path("/abs/hub-key.pem")) == (
        cfg.tls
    )


def test_require_sync_always_false_needs_no_monitor_urls() -> None:
    """With require_sync_always = false the monitoring URLs may be left out."""
    cfg = parse(doc(nats="[nats]\nrequire_sync_always = false\n"), "hub.toml", BASE)
    assert (False, ()) == (cfg.nats.require_sync_always, cfg.nats.monitor_urls)


def test_integer_and_fractional_seconds() -> None:
    """Seconds may be written as integers or floats."""
    cfg = parse(doc(hub=hub("grace_seconds = 1\nheartbeat_seconds = 0.25")), "hub.toml", BASE)
    assert (timedelta(seconds=1), timedelta(milliseconds=250)) == (cfg.grace, cfg.heartbeat)


def test_bulk_ceiling_default_and_none() -> None:
    """The bulk lane's ceiling is 1,000 envelopes a second unless set; 0 lifts it."""
    assert 1000 == parse(doc(), "hub.toml", BASE).bulk_max_per_second
    assert 0 == parse(doc(hub=hub("bulk_max_per_second = 0")), "hub.toml", BASE).bulk_max_per_second


def test_overload_bounds_defaults() -> None:
    """Calls per connection, envelopes in flight per lane (all, each agency) and the retry delay have defaults."""
    cfg = parse(doc(), "hub.toml", BASE)
    assert (100, 10_000, 4_000, timedelta(seconds=1)) == (
        cfg.max_calls_per_connection,
        cfg.max_inflight_publishes,
        cfg.max_inflight_publishes_per_agency,
        cfg.overload_retry_after,
    )


def test_deploy_hub_toml_loads() -> None:
    """The shipped deploy/hub.toml is a valid config, its paths resolved against deploy/."""
    path = REPO / "deploy" / "hub.toml"
    cfg = load(path)
    deploy = path.parent
    assert "0.0.0.0:7443" == cfg.listen
    assert "127.0.0.1:9464" == cfg.metrics_listen
    assert TlsConfig(deploy / "pki/ca.pem", deploy / "pki/hub.pem", deploy / "pki/hub-key.pem") == cfg.tls
    assert (f.CUR, f.PL, f.CC, f.QUESTURA) == tuple(a.id for a in cfg.agencies)
    assert () == cfg.allow
    assert cfg.agreements is not None
    assert (deploy / "agreements", timedelta(seconds=2)) == (cfg.agreements.folder, cfg.agreements.reload)
    assert ("http://127.0.0.1:8222",) == cfg.nats.monitor_urls
    assert (1, timedelta(days=7)) == (cfg.nats.replicas, cfg.nats.max_age)
    assert timedelta(seconds=30) == cfg.nats.connect_timeout == NatsConfig().connect_timeout
    assert cfg.audit is not None
    assert deploy / "keys/audit.pem" == cfg.audit.signing_key


def _all_files_present(tmp_path: Path) -> tuple[Path, HubConfig]:
    """FULL with its paths under tmp_path (absolute ones made relative), and every file it names made."""
    text = FULL.replace("/srv/", "srv/")
    path = tmp_path / "hub.toml"
    path.write_text(text, encoding="utf-8")
    cfg = load(path)
    for rel in ("pki/ca.pem", "srv/pki/hub.pem", "pki/hub-key.pem", "nats/ca.pem", "nats/hub.pem",
                "nats/hub-key.pem", "keys/audit-a.pem", "keys/audit-b.pub.pem", "srv/keys/audit-c.pub.pem"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x", encoding="utf-8")
    return path, cfg


def test_named_files_lists_every_file_the_config_names(tmp_path: Path) -> None:
    _, cfg = _all_files_present(tmp_path)
    assert [
        "tls.ca_file", "tls.cert_file", "tls.key_file", "nats.tls.ca_file", "nats.tls.cert_file",
        "nats.tls.key_file", "audit.signing_key", "audit.trusted_keys[0]", "audit.trusted_keys[1]",
    ] == [key for key, _, _ in named_files(cfg)]  # fmt: skip
    check_files(cfg, "hub.toml")  # all there: no error


@pytest.mark.parametrize(
    ("key", "rel"),
    [
        ("tls.ca_file", "pki/ca.pem"),
        ("tls.cert_file", "srv/pki/hub.pem"),
        ("tls.key_file", "pki/hub-key.pem"),
        ("nats.tls.ca_file", "nats/ca.pem"),
        ("nats.tls.key_file", "nats/hub-key.pem"),
        ("audit.signing_key", "keys/audit-a.pem"),
        ("audit.trusted_keys[1]", "srv/keys/audit-c.pub.pem"),
    ],
)
def test_check_files_names_the_key_and_path_of_a_missing_file(tmp_path: Path, key: str, rel: str) -> None:
    _, cfg = _all_files_present(tmp_path)
    (tmp_path / rel).unlink()
    with pytest.raises(ConfigError) as info:
        check_files(cfg, "hub.toml")
    message = str(info.value)
    assert message.startswith(f"hub.toml: {key}: no such file: {tmp_path / rel} (")
    assert "\n" not in message


def test_check_files_names_a_missing_agreements_folder_and_a_folder_given_as_a_file(tmp_path: Path) -> None:
    _, cfg = _all_files_present(tmp_path)
    cfg = replace(cfg, agreements=AgreementsConfig(tmp_path / "agreements"))
    with pytest.raises(ConfigError, match=r"^hub.toml: agreements.folder: no such folder: "):
        check_files(cfg, "hub.toml")
    (tmp_path / "agreements").mkdir()
    check_files(cfg, "hub.toml")
    (tmp_path / "pki/ca.pem").unlink()
    (tmp_path / "pki/ca.pem").mkdir()
    with pytest.raises(ConfigError, match=r"^hub.toml: tls.ca_file: not a file: "):
        check_files(cfg, "hub.toml")


def test_load_names_the_path_in_errors(tmp_path: Path) -> None:
    """load() uses the file's path as the source in error messages."""
    path = tmp_path / "bad.toml"
    path.write_text(doc(nats=nats("replicas = 2")), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert f"{path}: nats.replicas: must be 1, 3 or 5" == str(info.value)


def test_load_resolves_paths_against_the_file_folder(tmp_path: Path) -> None:
    """load() resolves relative paths against the folder of the config file."""
    path = tmp_path / "conf" / "hub.toml"
    path.parent.mkdir()
    path.write_text(doc(), encoding="utf-8")
    assert tmp_path / "conf" / "pki" / "ca.pem" == load(path).tls.ca_file


def test_load_of_a_missing_file() -> None:
    """A file that cannot be read gives a ConfigError naming it."""
    path = Path("/nonexistent/opsroom/hub.toml")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert f"{path}: cannot read: No such file or directory" == str(info.value)


def test_invalid_toml_syntax() -> None:
    """A TOML syntax error gives a ConfigError naming the file, caused by the decoder's error."""
    with pytest.raises(ConfigError) as info:
        parse('[hub]\nlisten = "127.0.0.1:7443\n', "hub.toml", BASE)
    assert str(info.value).startswith("hub.toml: ")
    assert "line 2" in str(info.value)
    assert isinstance(info.value.__cause__, tomllib.TOMLDecodeError)


ERRORS = [
    # [hub]
    ("missing listen", {"hub": '[hub]\nmetrics_listen = "127.0.0.1:9464"\n'}, "hub.listen: is required"),
    ("missing hub table", {"hub": ""}, "hub.listen: is required"),
    ("empty listen", {"hub": '[hub]\nlisten = ""\n'}, "hub.listen: must not be empty"),
    ("listen not a string", {"hub": "[hub]\nlisten = 7443\n"}, "hub.listen: must be a str"),
    ("hub not a table", {"root": 'hub = "x"\n', "hub": ""}, "hub: must be a table"),
    ("int as string", {"hub": hub('max_envelope_bytes = "64k"')}, "hub.max_envelope_bytes: must be a int"),
    ("int as bool", {"hub": hub("max_batch_envelopes = true")}, "hub.max_batch_envelopes: must be a int"),
    ("int as float", {"hub": hub("max_request_bytes = 1.5")}, "hub.max_request_bytes: must be a int"),
    ("zero int", {"hub": hub("max_envelope_bytes = 0")}, "hub.max_envelope_bytes: must be a positive integer"),
    (
        "negative ceiling",
        {"hub": hub("bulk_max_per_second = -1")},
        "hub.bulk_max_per_second: must be 0 (none) or a positive integer",
    ),
    ("metrics not a string", {"hub": hub("metrics_listen = 9464")}, "hub.metrics_listen: must be a str"),
    (
        "zero calls per connection",
        {"hub": hub("max_calls_per_connection = 0")},
        "hub.max_calls_per_connection: must be a positive integer",
    ),
    (
        "zero in flight",
        {"hub": hub("max_inflight_publishes_per_agency = 0")},
        "hub.max_inflight_publishes_per_agency: must be a positive integer",
    ),
    (
        "zero retry delay",
        {"hub": hub("overload_retry_after_seconds = 0")},
        "hub.overload_retry_after_seconds: must be a positive number of seconds (at most ten years)",
    ),
    ("seconds as string", {"hub": hub('grace_seconds = "10"')}, "hub.grace_seconds: must be a float"),
    ("seconds as bool", {"hub": hub("heartbeat_seconds = true")}, "hub.heartbeat_seconds: must be a float"),
    (
        "negative hub seconds",
        {"hub": hub("heartbeat_seconds = -1")},
        "hub.heartbeat_seconds: must be a positive number of seconds (at most ten years)",
    ),
    (
        "zero seconds",
        {"hub": hub("grace_seconds = 0")},
        "hub.grace_seconds: must be a positive number of seconds (at most ten years)",
    ),
    (
        "negative nats seconds",
        {"nats": nats("ack_wait_seconds = -0.5")},
        "nats.ack_wait_seconds: must be a positive number of seconds (at most ten years)",
    ),
    (
        "negative limits seconds",
        {"limits": "[limits]\nmax_sent_age_seconds = -3600\n"},
        "limits.max_sent_age_seconds: must be a positive number of seconds (at most ten years)",
    ),
    (
        "zero atomic threshold",
        {"nats": nats("atomic_threshold = 0")},
        "nats.atomic_threshold: must be a positive integer",
    ),
    (
        "negative limit",
        {"limits": "[limits]\nmax_recipients = -1\n"},
        "limits.max_recipients: must be a positive integer",
    ),
    # [audit]
    ("missing audit", {"audit": ""}, "audit: missing: every hub keeps an audit log (set audit.signing_key)"),
    ("audit without key", {"audit": '[audit]\nwriter = "a"\n'}, "audit.signing_key: is required"),
    (
        "negative retention",
        {"audit": '[audit]\nsigning_key = "k.pem"\nretention_days = -1\n'},
        "audit.retention_days: must be 0 (keep everything) or a number of days",
    ),
    (
        "empty writer",
        {"audit": '[audit]\nsigning_key = "k.pem"\nwriter = ""\n'},
        "audit.writer: must be a name of 1 to 64 characters",
    ),
    (
        "trusted keys not a list",
        {"audit": '[audit]\nsigning_key = "k.pem"\ntrusted_keys = "b.pem"\n'},
        "audit.trusted_keys: must be a list",
    ),
    (
        "unknown audit key",
        {"audit": '[audit]\nsigning_key = "k.pem"\nretention = 10\n'},
        "audit.retention: is not a known setting",
    ),
    # unknown keys
    ("unknown root key", {"root": 'colour = "red"\n'}, "colour: is not a known setting"),
    ("unknown hub key", {"hub": hub('listne = "0.0.0.0:7443"')}, "hub.listne: is not a known setting"),
    ("unknown nats key", {"nats": nats("replica = 3")}, "nats.replica: is not a known setting"),
    ("unknown tls key", {"tls": SECTIONS["tls"] + 'crl_url = "crl.pem"\n'}, "tls.crl_url: is not a known setting"),
    # revocation and the hub's NATS user (docs/security.md)
    (
        "reload without a list",
        {"tls": SECTIONS["tls"] + "reload_seconds = 5\n"},
        "tls.reload_seconds: needs crl_file or deny_file (the files it reloads)",
    ),
    ("crl_file empty", {"tls": SECTIONS["tls"] + 'crl_file = ""\n'}, "tls.crl_file: must not be empty"),
    (
        "nats user without password",
        {"nats": nats('user = "opsroom-hub"')},
        "nats.password_file: is required when user is set (the file holding the user's password)",
    ),
    (
        "nats password without user",
        {"nats": nats('password_file = "p"')},
        "nats.user: is required when password_file is set",
    ),
    (
        "unknown nats.tls key",
        {"nats": nats('[nats.tls]\nca_file = "a"\ncert_file = "b"\nkey_file = "c"\npassword = "x"')},
        "nats.tls.password: is not a known setting",
    ),
    ("unknown limits key", {"limits": "[limits]\nmax_emojis = 3\n"}, "limits.max_emojis: is not a known setting"),
    (
        "unknown agency key",
        {"agencies": SECTIONS["agencies"] + 'region = "Piemonte"\n'},
        "agencies[1].region: is not a known setting",
    ),
    (
        "unknown allow key",
        {"allow": SECTIONS["allow"] + "both_ways = true\n"},
        "allow[0].both_ways: is not a known setting",
    ),
    # [tls]
    ("missing cert_file", {"tls": '[tls]\nca_file = "ca.pem"\nkey_file = "k.pem"\n'}, "tls.cert_file: is required"),
    ("missing tls table", {"tls": ""}, "tls.ca_file: is required"),
    (
        "empty key_file",
        {"tls": '[tls]\nca_file = "ca.pem"\ncert_file = "c.pem"\nkey_file = ""\n'},
        "tls.key_file: must not be empty",
    ),
    # [[agencies]]
    (
        "agencies not an array",
        {"root": 'agencies = "x"\n', "agencies": "", "allow": ""},
        "agencies: must be an array of tables",
    ),
    ("agency id missing", {"agencies": '[[agencies]]\nname = "CUR"\n'}, "agencies[0].id: is required"),
    ("agency id not a string", {"agencies": "[[agencies]]\nid = 112\n"}, "agencies[0].id: must be a str"),
    ("agency name not a string", {"agencies": SECTIONS["agencies"] + "name = 1\n"}, "agencies[1].name: must be a str"),
    (
        "duplicate agency",
        {"agencies": SECTIONS["agencies"] + '\n[[agencies]]\nid = "it.nue.cur.to"\n'},
        "agencies[2].id: is registered twice",
    ),
    # [[allow]]
    ("allow not an array", {"root": 'allow = "all"\n', "allow": ""}, "allow: must be an array of tables"),
    (
        "allow to unregistered",
        {"allow": '[[allow]]\nfrom = ["it.nue.cur.to"]\nto = ["it.pl.001272", "it.cc.cp.to"]\n'},
        "allow[0].to: names 'it.cc.cp.to', which is not in [[agencies]]",
    ),
    (
        "allow from unregistered",
        {"allow": SECTIONS["allow"] + '\n[[allow]]\nfrom = ["it.xx.rogue"]\nto = ["it.pl.001272"]\n'},
        "allow[1].from: names 'it.xx.rogue', which is not in [[agencies]]",
    ),
    (
        "allow empty from",
        {"allow": '[[allow]]\nfrom = []\nto = ["it.pl.001272"]\n'},
        "allow[0].from: must list at least one agency",
    ),
    (
        "allow missing from",
        {"allow": '[[allow]]\nto = ["it.pl.001272"]\n'},
        "allow[0].from: must list at least one agency",
    ),
    (
        "allow empty to",
        {"allow": '[[allow]]\nfrom = ["it.pl.001272"]\nto = []\n'},
        "allow[0].to: must list at least one agency",
    ),
    (
        "allow to as string",
        {"allow": '[[allow]]\nfrom = ["it.pl.001272"]\nto = "it.nue.cur.to"\n'},
        "allow[0].to: must be a list",
    ),
    ("allow name not a string", {"allow": SECTIONS["allow"] + "name = 3\n"}, "allow[0].name: must be a str"),
    # [nats]
    ("replicas 2", {"nats": nats("replicas = 2")}, "nats.replicas: must be 1, 3 or 5"),
    ("replicas 0", {"nats": nats("replicas = 0")}, "nats.replicas: must be 1, 3 or 5"),
    ("replicas as string", {"nats": nats('replicas = "3"')}, "nats.replicas: must be a int"),
    (
        "commit_max_messages 1001",
        {"nats": nats("commit_max_messages = 1001")},
        "nats.commit_max_messages: must be at most 1000 (the nats-server batch limit)",
    ),
    (
        "commit_max_messages 0",
        {"nats": nats("commit_max_messages = 0")},
        "nats.commit_max_messages: must be a positive integer",
    ),
    (
        "sync always without monitor urls",
        {"nats": "[nats]\nrequire_sync_always = true\n"},
        "nats.monitor_urls: must list the servers' monitoring URLs when require_sync_always is true",
    ),
    (
        "sync always by default without monitor urls",
        {"nats": ""},
        "nats.monitor_urls: must list the servers' monitoring URLs when require_sync_always is true",
    ),
    ("sync flag as string", {"nats": nats('require_sync_always = "yes"')}, "nats.require_sync_always: must be a bool"),
    ("servers as string", {"nats": nats('servers = "nats://127.0.0.1:4222"')}, "nats.servers: must be a list"),
    ("servers of ints", {"nats": nats("servers = [4222]")}, "nats.servers: must be a list of strings"),
    ("no servers", {"nats": nats("servers = []")}, "nats.servers: must name at least one server"),
    ("nats not a table", {"root": "nats = 1\n", "nats": ""}, "nats: must be a table"),
]


@pytest.mark.parametrize(("case", "pieces", "problem"), ERRORS, ids=[e[0] for e in ERRORS])
def test_error_names_file_and_key(case: str, pieces: dict[str, str], problem: str) -> None:
    """Each broken setting gives a ConfigError "<file>: <key path>: <problem>"."""
    assert f"hub.toml: {problem}" == error_of(doc(**pieces))


@pytest.mark.parametrize(
    "agency_id",
    [
        "IT.PL.001272",
        "it",
        "it.",
        "it..pl",
        "it.pl_001272",
        "ita.pl.1",
        "it.pl.-x",
        "it.pl.x-",
        " it.pl.1",
        "it.a." + "b" * 60,
    ],
)
def test_malformed_agency_id(agency_id: str) -> None:
    """An agency id that is not of the form it.pl.001272 is refused, naming the entry."""
    text = doc(agencies=SECTIONS["agencies"] + f'\n[[agencies]]\nid = "{agency_id}"\n')
    assert "hub.toml: agencies[2].id: must be an agency id such as it.pl.001272" == error_of(text)


def test_long_but_valid_agency_id_is_accepted() -> None:
    """An agency id of exactly 64 characters matching the pattern is accepted."""
    long_id = "it.a." + "b" * 59
    cfg = parse(doc(agencies=SECTIONS["agencies"] + f'\n[[agencies]]\nid = "{long_id}"\n'), "hub.toml", BASE)
    assert long_id == cfg.agencies[-1].id


@pytest.mark.parametrize("value", ["nan", "inf", "1e300"])
def test_non_finite_seconds_give_a_config_error(value: str) -> None:
    """A duration that is not a finite, representable number of seconds is a ConfigError naming the key."""
    message = error_of(doc(hub=hub(f"grace_seconds = {value}")))
    assert message.startswith("hub.toml: hub.grace_seconds: ")


def test_agreements_section_and_drill_only_rooms() -> None:
    """[agreements] names the folder (resolved against the config's folder) and the poll interval;
    an agency may be a drill-only room."""
    text = doc(
        agencies=SECTIONS["agencies"] + '\n[[agencies]]\nid = "it.sim.to"\ndrill_only = true\n',
        allow='[agreements]\nfolder = "agreements"\nreload_seconds = 0.5\n',
    )
    cfg = parse(text, "hub.toml", BASE)
    assert cfg.agreements is not None
    assert (BASE / "agreements", timedelta(seconds=0.5)) == (cfg.agreements.folder, cfg.agreements.reload)
    assert frozenset({"it.sim.to"}) == cfg.drill_only
    assert () == cfg.allow


def test_agreements_and_allow_list_exclude_each_other() -> None:
    """A config routes either by agreements or by an allow-list, never both."""
    text = doc(allow=SECTIONS["allow"] + '\n[agreements]\nfolder = "agreements"\n')
    assert "hub.toml: allow: use either [agreements] or [[allow]], not both" == error_of(text)


def test_an_agency_names_the_format_it_receives_in() -> None:
    """`receives` names the connector an agency runs; grpc when not said; anything else is refused."""
    text = doc(agencies=SECTIONS["agencies"] + '\n[[agencies]]\nid = "it.cc.cp.to"\nreceives = "eido"\n')
    cfg = parse(text, "hub.toml", BASE)
    assert cfg.formats["it.cc.cp.to"] == "eido"
    assert {fmt for agency, fmt in cfg.formats.items() if agency != "it.cc.cp.to"} == {"grpc"}
    bad = doc(agencies=SECTIONS["agencies"] + '\n[[agencies]]\nid = "it.cc.cp.to"\nreceives = "fax"\n')
    assert error_of(bad) == "hub.toml: agencies[2].receives: must be one of grpc, cap, eido, emsi, nue112, not 'fax'"


def test_revocation_files_and_the_nats_user_are_read_and_checked(tmp_path: Path) -> None:
    """[tls] crl_file, deny_file, reload_seconds and [nats] user, password_file: paths resolved, files checked at start."""
    text = doc(
        tls=SECTIONS["tls"] + 'crl_file = "pki/crl.pem"\ndeny_file = "deny.toml"\nreload_seconds = 0.5\n',
        nats=nats('user = "opsroom-hub"\npassword_file = "pki/nats-hub.password"'),
    )
    cfg = parse(text, "hub.toml", tmp_path)
    assert cfg.revocation is not None
    assert (tmp_path / "pki/crl.pem", tmp_path / "deny.toml") == (cfg.revocation.crl_file, cfg.revocation.deny_file)
    assert 0.5 == cfg.revocation.reload.total_seconds()
    assert ("opsroom-hub", tmp_path / "pki/nats-hub.password") == (cfg.nats.user, cfg.nats.password_file)
    keys = {key for key, _, _ in named_files(cfg)}
    assert {"tls.crl_file", "tls.deny_file", "nats.password_file"} <= keys
    for rel in ("pki/ca.pem", "pki/hub.pem", "pki/hub-key.pem", "pki/nats-hub.password", "keys/audit.pem"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^hub.toml: tls.crl_file: no such file: .*dev-certs --revoke"):
        check_files(cfg, "hub.toml")
    assert parse(doc(), "hub.toml", tmp_path).revocation is None
