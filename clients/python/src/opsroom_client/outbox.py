"""Owns Outbox: envelopes an agency decided to send, kept on disk until the hub has answered each.

An agency's program calls put() when an operator sends something; the envelope is in a SQLite
file (synchronous=FULL: on disk when put() returns) before anything goes on the wire. send()
publishes what waits, oldest first, one at a time, and takes each out once the hub answered:

- accepted: removed (the hub stored it; the acceptance is in the report);
- refused for good (a validation error, a policy refusal, a reused id): moved to the refused
  table with the hub's code, reason and message, for an operator to look at; later envelopes go on;
- not answered (hub unreachable, retries spent): left where it is, and send() stops there, so
  that the events of an incident never reach the hub out of order. The next send() starts again
  with it.

An envelope that was handed to the hub once is sent again marked resend: after a crash between
the hub's acceptance and the removal, the hub answers from its store and records nothing new,
so the envelope is stored and delivered once. Putting the same distribution id twice keeps the
first. The file holds personal data: it is created readable by its owner only.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self

from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2

from opsroom_client.errors import HubError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS waiting (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  distribution_id TEXT NOT NULL UNIQUE,
  envelope BLOB NOT NULL,
  handed INTEGER NOT NULL DEFAULT 0,
  put_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
  distribution_id TEXT PRIMARY KEY,
  envelope BLOB NOT NULL,
  code TEXT NOT NULL,
  reason TEXT NOT NULL,
  message TEXT NOT NULL,
  refused_at REAL NOT NULL
);
"""


class Publishes(Protocol):
    """What the outbox needs of a client: HubClient.publish."""

    async def publish(self, envelope: envelope_pb2.Envelope, *, resend: bool = False) -> hub_pb2.Acceptance:
        """Publish one envelope (retrying transient failures), or raise HubError."""
        ...


@dataclass(frozen=True)
class Refused:
    """An envelope the hub refused for good, as the outbox keeps it."""

    distribution_id: str
    envelope: envelope_pb2.Envelope
    code: str
    reason: str
    message: str
    refused_at: float


@dataclass
class OutboxReport:
    """What one send() did: accepted and refused envelopes, and what still waits (and why it stopped)."""

    accepted: list[hub_pb2.Acceptance] = field(default_factory=list)
    refused: list[tuple[str, HubError]] = field(default_factory=list)
    waiting: int = 0
    stopped_by: HubError | None = None


class Outbox:
    """A durable queue of envelopes to publish, in a SQLite file of the agency's program."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        """Open (or create, owner-only) the outbox file at path; clock gives the recorded times (seconds)."""
        self._path = Path(path)
        self._clock = clock
        if not self._path.exists():
            self._path.touch(mode=0o600)
        self._db = sqlite3.connect(self._path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def __enter__(self) -> Self:
        """Use as a context manager (closes the file at the end)."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close."""
        self.close()

    def close(self) -> None:
        """Close the file; what waits stays in it."""
        self._db.close()

    def put(self, envelope: envelope_pb2.Envelope) -> bool:
        """Keep envelope until the hub answers it; False if its distribution id is already waiting or refused."""
        dist = envelope.distribution_id
        if not dist:
            raise ValueError("the envelope has no distribution_id")
        with self._db:
            if self._db.execute("SELECT 1 FROM refused WHERE distribution_id = ?", (dist,)).fetchone():
                return False
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO waiting (distribution_id, envelope, put_at) VALUES (?, ?, ?)",
                (dist, envelope.SerializeToString(), self._clock()),
            )
        return cursor.rowcount == 1

    def waiting(self) -> int:
        """How many envelopes wait to be answered."""
        row = self._db.execute("SELECT count(*) FROM waiting").fetchone()
        return int(row[0])

    def waiting_ids(self) -> list[str]:
        """The distribution ids that wait, oldest first."""
        return [r[0] for r in self._db.execute("SELECT distribution_id FROM waiting ORDER BY seq")]

    def refused(self) -> list[Refused]:
        """The envelopes the hub refused for good, oldest first."""
        rows = self._db.execute(
            "SELECT distribution_id, envelope, code, reason, message, refused_at FROM refused ORDER BY refused_at"
        )
        return [Refused(d, envelope_pb2.Envelope.FromString(e), c, r, m, at) for d, e, c, r, m, at in rows]

    def forget_refused(self, distribution_id: str) -> bool:
        """Drop a refused envelope once an operator dealt with it; False if there was none."""
        with self._db:
            cursor = self._db.execute("DELETE FROM refused WHERE distribution_id = ?", (distribution_id,))
        return cursor.rowcount == 1

    async def send(self, client: Publishes, *, limit: int | None = None) -> OutboxReport:
        """Publish what waits, oldest first (at most limit), until done or the hub does not answer."""
        report = OutboxReport()
        rows = self._db.execute("SELECT seq, envelope, handed FROM waiting ORDER BY seq").fetchall()
        for seq, data, handed in rows[:limit]:
            envelope = envelope_pb2.Envelope.FromString(data)
            if not handed:
                with self._db:
                    self._db.execute("UPDATE waiting SET handed = 1 WHERE seq = ?", (seq,))
            try:
                acceptance = await client.publish(envelope, resend=bool(handed))
            except HubError as error:
                if error.retryable or error.stream_broken:
                    report.stopped_by = error
                    break
                self._refuse(seq, envelope, data, error)
                report.refused.append((envelope.distribution_id, error))
                continue
            with self._db:
                self._db.execute("DELETE FROM waiting WHERE seq = ?", (seq,))
            report.accepted.append(acceptance)
        report.waiting = self.waiting()
        return report

    def _refuse(self, seq: int, envelope: envelope_pb2.Envelope, data: bytes, error: HubError) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO refused VALUES (?, ?, ?, ?, ?, ?)",
                (envelope.distribution_id, data, error.code.name, error.reason, error.message, self._clock()),
            )
            self._db.execute("DELETE FROM waiting WHERE seq = ?", (seq,))
