"""Owns the revocation lists in force at the edge: loaded at start, reloaded without a restart, a bad set refused whole.

The files ([tls] crl_file and deny_file, read by broker.policy.revocation) are checked every
reload interval (their sizes and modification times) and on SIGHUP; a new set that does not
load leaves the previous one in force, with a log event and
opsroom_revocation_reloads_total{outcome="refused"}. A set that loads replaces the old at once
and its listeners are told (the edge ends the open streams of certificates it now revokes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from broker.config import RevocationConfig
from broker.ops.logging import get_logger
from broker.ops.metrics import Metrics
from broker.policy.revocation import RevocationInvalid, Revocations, load, load_cas

log = get_logger(__name__)


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of the files: changes when any file does (or goes)."""
    out = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            out.append((str(path), -1, -1))
            continue
        out.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(out)


class RevocationStore:
    """The Revocations in force; reload() swaps them whole, and tells the listeners when they changed."""

    def __init__(self, cfg: RevocationConfig, ca_file: Path, metrics: Metrics, clock: Callable[[], datetime]) -> None:
        """Load the files now; raises RevocationInvalid if they are bad (the hub must not start)."""
        self._cfg = cfg
        self._ca_file = ca_file
        self._metrics = metrics
        self._clock = clock
        self._paths = tuple(p for p in (cfg.crl_file, cfg.deny_file) if p is not None)
        self._signature = _signature(self._paths)
        self._listeners: list[Callable[[Revocations], None]] = []
        self.current = self._load()
        self._publish_state("loaded")

    def _load(self) -> Revocations:
        revocations, warnings = load(self._cfg.crl_file, self._cfg.deny_file, load_cas(self._ca_file), self._clock())
        for warning in warnings:
            log.warning("revocation_list_stale", error=warning)
        return revocations

    def on_change(self, listener: Callable[[Revocations], None]) -> None:
        """Call listener with the new lists each time a reload puts different ones in force."""
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Read the files again; True if a different set is now in force, False if refused or unchanged."""
        self._signature = _signature(self._paths)  # a bad set is not read again until the files change
        try:
            revocations = self._load()
        except RevocationInvalid as exc:
            self._metrics.revocation_reloads.labels("refused").inc()
            log.warning(
                "revocation_reload_refused",
                count=len(exc.problems),
                error="; ".join(exc.problems[:5]),
                entries=self.current.size,
            )
            return False
        if revocations.digest == self.current.digest:
            return False
        self.current = revocations
        self._publish_state("reloaded")
        for listener in self._listeners:
            listener(revocations)
        return True

    def _publish_state(self, outcome: str) -> None:
        self._metrics.revoked_entries.set(self.current.size)
        self._metrics.revocation_reloads.labels(outcome).inc()
        event = "revocations_loaded" if outcome == "loaded" else "revocations_reloaded"
        log.info(event, entries=self.current.size, version=self.current.digest[:12])

    def changed(self) -> bool:
        """Whether a file differs from the last load attempt."""
        return _signature(self._paths) != self._signature

    async def watch(self) -> None:
        """Reload whenever a file changes; runs until cancelled."""
        interval = self._cfg.reload.total_seconds()
        while True:
            await asyncio.sleep(interval)
            if self.changed():
                self.reload()
