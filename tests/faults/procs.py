"""The processes a fault test runs and hurts: the hub (`python -m broker serve`) and room clients, each stopped by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT = 15.0
# Liveness: a hub or room process must be up within this (generous: the machine may be loaded).
START_TIMEOUT = 60.0


def _signal(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, sig)


def _end(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGCONT (in case it is stopped) and SIGTERM, SIGKILL if it is still there after timeout; its exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    return proc.returncode


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=STOP_TIMEOUT)


def port_open(port: int) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class HubProcess:
    """`python -m broker serve --config <toml>` on a fixed loopback port, so that it can be restarted on the same one."""

    config: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def pid(self) -> int:
        """PID of the running hub."""
        if self.proc is None:
            raise RuntimeError("the hub is not running")
        return self.proc.pid

    @property
    def target(self) -> str:
        """The gRPC address."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the hub and wait until it accepts connections (it listens only once JetStream is ready)."""
        if self.proc is not None:
            raise RuntimeError("the hub is already running")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "broker", "--log-level", "WARNING", "serve", "--config", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"the hub exited with {code}; see {self.log}")
            if port_open(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"the hub did not listen within {timeout} s; see {self.log}")

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is drained or flushed."""
        if self.proc is not None:
            _kill(self.proc)
            self.proc = None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (the hub drains), SIGKILL after timeout."""
        if self.proc is not None:
            _end(self.proc, timeout)
            self.proc = None


@dataclass(frozen=True)
class Delivered:
    """One delivery a room's application received, and which personal data its copy held (tests/faults/room.py view_of)."""

    distribution_id: str
    incident: str
    seq: int
    attempt: int
    stream_seq: int
    view: str = ""


@dataclass(frozen=True)
class Arrived:
    """One delivery as it arrived at a room's client, before the client dropped copies by distribution id."""

    distribution_id: str
    attempt: int
    sequence: int


@dataclass
class RoomLog:
    """What a room process wrote: deliveries as they arrived and as handed over (in order), sessions, the inbox's counters."""

    arrivals: list[Arrived] = field(default_factory=list)
    deliveries: list[Delivered] = field(default_factory=list)
    sessions: int = 0
    duplicates_dropped: int = 0
    reconnects: int = 0
    closed_cleanly: bool = False
    errors: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> RoomLog:
        """Read the complete lines of a room file (a last line being written is left out)."""
        log = cls()
        for line in text.split("\n")[:-1]:
            kind, _, rest = line.partition(" ")
            parts = rest.split(" ")
            if kind == "A":
                dist, attempt, sequence = parts
                log.arrivals.append(Arrived(dist, int(attempt), int(sequence)))
            elif kind == "D":
                dist, incident, seq, attempt, stream_seq, view = parts
                log.deliveries.append(Delivered(dist, incident, int(seq), int(attempt), int(stream_seq), view))
            elif kind == "O":
                log.sessions += 1
            elif kind in ("S", "F"):
                log.duplicates_dropped, log.reconnects = int(parts[0]), int(parts[1])
                log.closed_cleanly = kind == "F"
            elif kind == "E":
                log.errors.append(rest)
        return log


@dataclass
class RoomProcess:
    """A room's client (tests/faults/room.py) in its own process, so that it can be paused and killed."""

    agency_id: str
    target: str
    ca: Path
    cert: Path
    key: Path
    out: Path
    log: Path
    window: int = 1024
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """PID of the running room client."""
        if self.proc is None:
            raise RuntimeError("the room is not running")
        return self.proc.pid

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the client and wait until its first session is open."""
        if self.proc is not None:
            raise RuntimeError("the room is already running")
        sessions = self.read().sessions
        command = [sys.executable, "-m", "tests.faults.room", "--target", self.target, "--out", str(self.out)]
        command += ["--ca", str(self.ca), "--cert", str(self.cert), "--key", str(self.key)]
        command += ["--window", str(self.window)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"room {self.agency_id} exited with {code}; see {self.log}")
            if self.read().sessions > sessions:
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"room {self.agency_id} opened no session within {timeout} s; see {self.log}")

    def pause(self) -> None:
        """SIGSTOP: the process is frozen, its connections stay open."""
        _signal(self.proc, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        _signal(self.proc, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL."""
        if self.proc is not None:
            _kill(self.proc)
            self.proc = None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM: the client sends its pending acknowledgements and closes; SIGKILL after timeout."""
        code = 0
        if self.proc is not None:
            code = _end(self.proc, timeout)
            self.proc = None
        return code

    def read(self) -> RoomLog:
        """What the room wrote so far."""
        if not self.out.exists():
            return RoomLog()
        return RoomLog.parse(self.out.read_text(encoding="utf-8"))


@dataclass
class Processes:
    """Stoppers of everything a test started, called in reverse order at teardown (each stops its own PID)."""

    stoppers: list[Callable[[], object]] = field(default_factory=list)

    def keep(self, stopper: Callable[[], object]) -> None:
        """Call stopper at teardown."""
        self.stoppers.append(stopper)

    def stop_all(self) -> list[BaseException]:
        """Stop everything, newest first; the errors met on the way."""
        errors: list[BaseException] = []
        while self.stoppers:
            stopper = self.stoppers.pop()
            try:
                stopper()
            except Exception as exc:
                errors.append(exc)
        return errors
