"""Owns the demo's rooms: `opsroom demo` and `opsroom sim` play the Torino drill scenario file, shown as it happens.

The demo is one drill among the others (deploy/scenarios/torino-demo.yaml): its four rooms are
real clients with the development certificates, each delivery is printed as its room receives it
(kind, payload, incident type and place; never the personal data inside), then the verdict of the
scenario's expectations. With once the rooms leave at the end; otherwise they stay connected
until Ctrl-C, so that `opsroom status` shows them.
"""

from __future__ import annotations

import asyncio

from opsroom_client import HubClient

from broker.dev.certs import DevPki
from broker.dev.testing import credentials
from broker.drill.command import verdict_lines
from broker.drill.expect import Observations, judge
from broker.drill.run import play
from broker.drill.scenario import default_schema_folder, load
from broker.ops.console import say
from broker.ops.console import until_signal as _until_signal

SCENARIO = "torino-demo.yaml"


async def play_demo(target: str, pki: DevPki, *, once: bool) -> int:
    """Play the Torino scenario against the hub at target; 0 when every expectation passed, else 1."""
    scenario = load(default_schema_folder() / SCENARIO)
    passed = False

    async def verdict(seen: Observations) -> None:
        nonlocal passed
        checks = judge(scenario, seen)
        for line in verdict_lines(checks):
            say(line)
        passed = all(c.passed for c in checks)
        if not passed:
            say("scenario FAILED")
        elif once:
            say("scenario complete")
        else:
            say("scenario complete; the hub keeps running with the rooms connected. Ctrl-C stops all.")
            await _until_signal(asyncio.Event())

    say(f"playing {scenario.path.name}: {scenario.title}")
    await play(
        scenario,
        lambda agency: HubClient(target, credentials(pki, agency), server_name="localhost"),
        say,
        show=True,
        linger=verdict,
    )
    return 0 if passed else 1
