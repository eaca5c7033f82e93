"""The contract in a second language: a Node.js client built from protos/ alone talks to a real hub.

tests/contract/node/client.js loads the .proto files with @grpc/proto-loader (include paths
`protos` and `protos/third_party`, as docs/contract.md says), connects over mutual TLS with
development certificates, publishes to another room, which receives and acknowledges the
envelope on its Connect session, reads the receipt, and decodes the google.rpc.Status of a
refused publish (ErrorInfo, BadRequest) with the vendored google/rpc protos. Its pinned
dependencies (package-lock.json) are installed once with `npm ci` into a cache folder keyed by the
lock file. Without `node` the test skips, or fails when OPSROOM_REQUIRE_NODE=1 (as in CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from broker.dev.testing import local_hub
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "contract" / "node"
RUN_WAIT = 120.0  # liveness: node starts, runs the whole exchange against a hub on loopback and exits
INSTALL_WAIT = 600.0  # npm ci from the registry on a slow network


def _tool(name: str) -> str:
    """The path of node or npm; skips the test without it, or fails it when OPSROOM_REQUIRE_NODE=1."""
    found = shutil.which(name)
    if found is None:
        message = f"`{name}` is not installed: the second-language client test needs Node.js 18+ and npm"
        if os.environ.get("OPSROOM_REQUIRE_NODE") == "1":
            pytest.fail(f"{message} (OPSROOM_REQUIRE_NODE=1)")
        pytest.skip(message)
    return found


def install_node_modules() -> Path:
    """The client's node_modules, installed with `npm ci` (pinned by package-lock.json) once per lock file.

    The cache folder is $OPSROOM_NODE_CACHE, or .cache/node under the repository; the install goes into
    a temporary folder first and is renamed into place, so a broken install is never used.
    """
    lock = (NODE_DIR / "package-lock.json").read_bytes()
    key = hashlib.sha256(lock + (NODE_DIR / "package.json").read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("OPSROOM_NODE_CACHE", ROOT / ".cache" / "node")) / key
    if (cache / "node_modules").is_dir():
        return cache / "node_modules"
    npm = _tool("npm")
    cache.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=cache.parent))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(NODE_DIR / name, work / name)
        result = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=INSTALL_WAIT,
            check=False,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
        with contextlib.suppress(OSError):  # another run installed the same lock meanwhile: use that one
            work.rename(cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cache / "node_modules"


async def run_node(node_modules: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Run client.js with config; its JSON output (fails with its stderr if it exits non-zero)."""
    env = {**os.environ, "NODE_PATH": str(node_modules)}
    proc = await asyncio.create_subprocess_exec(
        _tool("node"),
        str(NODE_DIR / "client.js"),
        json.dumps(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(RUN_WAIT):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, 9)
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    print("node client:", json.dumps(result, indent=1))  # shown when the test fails
    return result


async def test_node_client_publishes_receives_acks_reads_receipts_and_decodes_errors(tmp_path: Path) -> None:
    """The Node client: health SERVING; the Questura's session opens as its own agency; the CUR's envelope is
    stored for the Questura, received there as sent (urgent lane) and acknowledged; the CUR's receipt says
    DELIVERED; an envelope naming a comune that does not exist is refused INVALID_ARGUMENT, and the client reads
    ErrorInfo (reason INVALID_ENVELOPE, domain opsroom.hub) and BadRequest (the field path and rule) from the
    grpc-status-details-bin trailer.
    """
    _tool("node")
    node_modules = await asyncio.to_thread(install_node_modules)
    async with local_hub(tmp_path, AGENCIES, ALLOW) as env:
        sender, recipient = env.pki.agency(f.CUR), env.pki.agency(f.QUESTURA)
        config = {
            "target": env.target,
            "server_name": "localhost",
            "protos": str(ROOT / "protos"),
            "ca": str(env.pki.ca),
            "sender": {"agency": f.CUR, "cert": str(sender.cert), "key": str(sender.key)},
            "recipient": {"agency": f.QUESTURA, "cert": str(recipient.cert), "key": str(recipient.key)},
        }
        out = await run_node(node_modules, config)

    assert "SERVING" == out["health"]
    assert f.QUESTURA == out["session_agency"]
    sent = out["published"]["distribution_id"]
    assert [f.QUESTURA] == out["published"]["recipients"]
    assert {
        "distribution_id": sent,
        "sender": f.CUR,
        "payload": "incident",
        "eido_code": "VANDAL",
        "lane": "LANE_URGENT",
    } == {k: v for k, v in out["received"].items() if k != "sequence"}
    assert int(out["received"]["sequence"]) > 0
    assert {"distribution_id": sent, "sender": f.CUR} == {k: out["receipt"][k] for k in ("distribution_id", "sender")}
    [receipt] = out["receipt"]["recipients"]
    assert {"agency_id": f.QUESTURA, "state": "DELIVERY_STATE_DELIVERED", "delivered": True} == {
        k: receipt[k] for k in ("agency_id", "state", "delivered")
    }
    refusal = out["refusal"]
    assert ("INVALID_ARGUMENT", 3) == (refusal["grpc_code"], refusal["status_code"])
    assert ("INVALID_ENVELOPE", "opsroom.hub") == (refusal["reason"], refusal["domain"])
    assert {"google.rpc.ErrorInfo", "google.rpc.BadRequest"} == set(refusal["detail_types"])
    assert {"field": "envelope.incident.locations[0].comune_istat", "reason": "code_list"} in refusal[
        "field_violations"
    ]
