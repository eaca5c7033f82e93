"""The import contract: the folder tree is the data path, and imports run one way along it.

Checked on the source (every import statement, those inside functions included), without
importing anything:

- layers: a module imports broker modules of its own layer or of the layers below it only;
- the pure core (validation, policy, codecs, the audit chain and records, the store's model and
  layout, lanes, plans, receipts, the delivery window and numbering, the error catalogue, ids and times) imports neither asyncio,
  gRPC nor nats-py, and no broker module that is not pure itself;
- only broker.store imports nats-py; only broker.edge imports gRPC (and the development helpers);
- nothing of the hub imports broker.dev or broker.drill, but the CLI's development and drill
  commands, inside a function;
- the adapters are clients of the hub: they use the hub's pure modules only (code lists, the
  validation), their codecs are pure, only their connectors (adapters.connect) do I/O; the hub
  never imports them, but the CLI's convert and adapter commands, inside a function.

`check` is tested on made-up modules too, so that a contract that cannot fail is noticed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Lowest first. A module of a layer may import from its own layer and the ones before it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("broker.errors", "broker.ids", "broker.names", "broker.times", "broker.lanes", "broker.limits"),
    ("broker.ops",),
    ("broker.validate",),
    ("broker.policy",),
    ("broker.config",),
    ("broker.store",),
    ("broker.audit",),
    ("broker.publish",),
    ("broker.delivery",),
    ("broker.edge",),
    ("broker.hub",),
    ("broker.cli", "broker.__main__"),
    ("broker.dev",),
    ("broker.drill",),
)
PURE = (
    "broker.errors",
    "broker.ids",
    "broker.names",
    "broker.times",
    "broker.lanes",
    "broker.limits",
    "broker.ops.status",
    "broker.validate",
    "broker.policy.model",
    "broker.policy.redact",
    "broker.policy.engine",
    "broker.policy.places",
    "broker.policy.loader",
    "broker.policy.routing",
    "broker.policy.revocation",
    "broker.store.model",
    "broker.store.layout",
    "broker.store.receipts",
    "broker.store.memory",
    "broker.publish.plan",
    "broker.publish.copies",
    "broker.delivery.window",
    "broker.delivery.numbering",
    "broker.audit.chain",
    "broker.audit.records",
    "broker.audit.verify",
    "broker.audit.query",
    "broker.drill.scenario",
    "broker.drill.expect",
)
IO = (
    "asyncio",
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "grpc_status",
    "nats",
    "socket",
    "subprocess",
    "prometheus_client",
)
ONLY_IN = {"nats": ("broker.store",), "grpc": ("broker.edge", "broker.dev"), "grpc_health": ("broker.edge", "broker.dev"),
           "grpc_reflection": ("broker.edge",),
           "grpc_status": ("broker.edge",)}  # fmt: skip
DEV = ("broker.dev", "broker.drill")  # development helpers and the drill tool: never in the serving path
DEV_LAZY_OK = ("broker.cli",)
ADAPTERS = "adapters"
ADAPTERS_IO = ("adapters.connect",)
ADAPTERS_LAZY_OK = ("broker.cli",)


@dataclass(frozen=True)
class Import:
    """One import statement's target, and whether it sits at the top of the module."""

    module: str
    target: str
    line: int
    top: bool


def _under(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(module: str, source: str) -> list[Import]:
    tree = ast.parse(source)
    top_level = {id(node) for node in tree.body}
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _under(node.module, "broker"):  # from broker.policy import model: the name may be a module
                found += [
                    Import(module, f"{node.module}.{a.name}", node.lineno, id(node) in top_level) for a in node.names
                ]
            else:
                found.append(Import(module, node.module, node.lineno, id(node) in top_level))
    return found


def layer_of(name: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if _under(name, layer):
            return index
    return None


def check(sources: dict[str, str]) -> list[str]:
    """Every breach of the contract in these modules (name -> source), one line each."""
    problems: list[str] = []
    for module, source in sorted(sources.items()):
        if module in ("broker", ADAPTERS):
            continue
        if _under(module, ADAPTERS):
            problems += _check_adapter(module, source)
            continue
        own = layer_of(module)
        if own is None:
            problems.append(f"{module}: in no layer of the contract (add it to LAYERS)")
            continue
        for imp in imports_of(module, source):
            where = f"{module}:{imp.line} imports {imp.target}"
            root = imp.target.split(".")[0]
            if root == ADAPTERS and not (_under(module, ADAPTERS_LAZY_OK) and not imp.top):
                problems.append(f"{where}: the hub never imports the adapters")
            if _under(module, PURE) and (root in IO or (_under(imp.target, "broker") and not _under(imp.target, PURE))):
                problems.append(f"{where}: a pure module imports neither I/O nor impure hub code")
            if root in ONLY_IN and not _under(module, ONLY_IN[root]):
                problems.append(f"{where}: only {', '.join(ONLY_IN[root])} may import {root}")
            if not _under(imp.target, "broker") or imp.target == "broker":
                continue
            if _under(imp.target, DEV) and not _under(module, DEV):
                if not (_under(module, DEV_LAZY_OK) and not imp.top):
                    problems.append(f"{where}: the hub never imports the development helpers")
                continue
            theirs = layer_of(imp.target)
            if theirs is not None and theirs > own:
                problems.append(f"{where}: against the layers ({LAYERS[own][0]} is below {LAYERS[theirs][0]})")
    return problems


def _check_adapter(module: str, source: str) -> list[str]:
    problems: list[str] = []
    for imp in imports_of(module, source):
        where = f"{module}:{imp.line} imports {imp.target}"
        root = imp.target.split(".")[0]
        if _under(imp.target, "broker") and not _under(imp.target, PURE):
            problems.append(f"{where}: an adapter uses only the hub's pure modules")
        if root in IO and not _under(module, ADAPTERS_IO):
            problems.append(f"{where}: a codec is pure; only {', '.join(ADAPTERS_IO)} does I/O")
    return problems


def _sources() -> dict[str, str]:
    paths = sorted((ROOT / "broker").rglob("*.py")) + sorted((ROOT / "adapters").rglob("*.py"))
    return {module_name(p, ROOT): p.read_text(encoding="utf-8") for p in paths}


def test_the_hub_keeps_the_import_contract() -> None:
    assert check(_sources()) == []


def test_every_pure_module_named_exists() -> None:
    sources = _sources()
    assert [p for p in PURE if not any(_under(m, p) for m in sources)] == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("broker.validate.checker", "import asyncio\n", "a pure module imports neither I/O"),
        (
            "broker.store.receipts",
            "from broker.store.jetstream import JetStream\n",
            "a pure module imports neither I/O",
        ),
        ("broker.publish.committer", "import nats\n", "only broker.store may import nats"),
        ("broker.delivery.sessions", "import grpc\n", "only broker.edge, broker.dev may import grpc"),
        ("broker.store.jetstream", "from broker.publish.committer import Committer\n", "against the layers"),
        ("broker.hub", "from broker.dev.embedded import NatsServer\n", "never imports the development helpers"),
        ("broker.cli", "from broker.dev import commands\n", "never imports the development helpers"),
        ("broker.hub", "from broker.drill.run import play\n", "never imports the development helpers"),
        ("broker.drill.expect", "import asyncio\n", "a pure module imports neither I/O"),
        ("broker.newthing", "x = 1\n", "in no layer of the contract"),
        ("adapters.cap", "import asyncio\n", "a codec is pure"),
        ("adapters.cap", "from broker.store.jetstream import JetStream\n", "only the hub's pure modules"),
        ("broker.edge.servicer", "from adapters import cap\n", "the hub never imports the adapters"),
        ("broker.cli", "from adapters import convert\n", "the hub never imports the adapters"),
    ],
)
def test_the_contract_catches_a_wrong_import(module: str, source: str, expected: str) -> None:
    problems = check({module: source})
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_the_cli_may_load_the_development_commands_inside_a_function() -> None:
    assert check({"broker.cli": "def dev():\n    from broker.dev import commands\n"}) == []


def test_the_cli_may_load_the_adapters_inside_a_function_and_connectors_do_io() -> None:
    assert check({"broker.cli": "def convert():\n    from adapters import convert\n"}) == []
    assert check({"adapters.connect.cap": "import asyncio\nfrom broker.validate import checker\n"}) == []
