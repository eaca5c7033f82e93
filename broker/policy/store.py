"""The agreements in force at the hub, reloaded from their folder without a restart; a bad new set is refused whole.

The store is the hub's Router: each decision uses the policy current when it starts, and a
reload swaps the whole policy at once, so no envelope is routed by half an old and half a new
set. Reloads happen when the folder changes (polled) or on SIGHUP; a refused set leaves the
previous one in force, with a log event and a metric saying why.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from opsroom.envelope.v1 import envelope_pb2

from broker.ops.logging import get_logger
from broker.ops.metrics import Metrics
from broker.policy.engine import Policy
from broker.policy.loader import AgreementsInvalid, agreement_files, load_dir
from broker.policy.places import place_index
from broker.policy.routing import Decision, RoutingContext

log = get_logger(__name__)


def folder_signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of the agreement files: changes when any file does."""
    try:
        files = agreement_files(folder)
    except OSError:
        return ()
    out = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue
        out.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(out)


class PolicyStore:
    """Holds the current Policy; a Router for the hub."""

    def __init__(self, folder: Path, metrics: Metrics, *, drill_only: frozenset[str] = frozenset()) -> None:
        """Load the folder now; raises AgreementsInvalid if the first set is bad (the hub must not start)."""
        self.folder = folder
        self._metrics = metrics
        self._drill_only = drill_only
        self._signature = folder_signature(folder)
        self.current = Policy(load_dir(folder), place_index(), drill_only=drill_only)
        self._publish_state("loaded")

    @property
    def agencies(self) -> frozenset[str]:
        """Every party of the agreements in force."""
        return self.current.agencies

    def route(self, env: envelope_pb2.Envelope, ctx: RoutingContext) -> Decision:
        """Route with the policy in force now."""
        return self.current.route(env, ctx)

    def reload(self) -> bool:
        """Load the folder again; True if the new set is now in force, False if it was refused (or unchanged)."""
        signature = folder_signature(self.folder)
        try:
            policy = Policy(load_dir(self.folder), place_index(), drill_only=self._drill_only)
        except AgreementsInvalid as exc:
            self._signature = signature  # do not retry the same bad files every poll
            self._metrics.agreement_reloads.labels("refused").inc()
            log.warning(
                "agreements_reload_refused",
                path=str(self.folder),
                count=len(exc.problems),
                error="; ".join(str(p) for p in exc.problems[:5]),
            )
            return False
        self._signature = signature
        if policy.agreements.digest == self.current.agreements.digest:
            return False
        self.current = policy
        self._publish_state("reloaded")
        return True

    def _publish_state(self, outcome: str) -> None:
        agreements = self.current.agreements
        self._metrics.agreements_loaded.set(len(agreements.agreements))
        self._metrics.agreement_reloads.labels(outcome).inc()
        event = "agreements_loaded" if outcome == "loaded" else "agreements_reloaded"
        log.info(event, path=str(self.folder), count=len(agreements.agreements), version=agreements.digest[:12])

    def changed(self) -> bool:
        """Whether the folder differs from the last load attempt."""
        return folder_signature(self.folder) != self._signature

    async def watch(self, interval: float) -> None:
        """Reload whenever the folder changes; runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if self.changed():
                self.reload()
