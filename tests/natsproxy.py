"""A TCP proxy between NATS clients and nats-server on 127.0.0.1 that cuts the wire on cue (test helper).

    proxy = NatsProxy(upstream_port=nats.port)
    await proxy.start()                       # clients connect to 127.0.0.1:proxy.port
    cut = proxy.cut_before(lambda subject: subject.startswith("opsroom.dlv."), nth=2)
    ...                                       # the 2nd matching PUB/HPUB never reaches the server
    await asyncio.wait_for(cut.wait(), 10)    # every connection through the proxy was dropped then

It reads the client-to-server byte stream as NATS protocol commands (CONNECT, PUB, HPUB, SUB,
UNSUB, PING, PONG) and forwards each whole command; the server-to-client stream passes through
untouched. A cut is deterministic: it happens exactly before the chosen command, whatever the
TCP chunking, and drops every connection at once, as a dying nats-server would. Clients that
reconnect afterwards go through normally (a cut fires once). `cut_now()` drops the connections
at once; `refuse(True)` turns new connections away (a network partition) until `refuse(False)`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

_CRLF = b"\r\n"


@dataclass
class _Cut:
    matches: Callable[[str], bool]
    nth: int
    seen: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class NatsProxy:
    """A loopback proxy to one nats-server; start() it, point clients at its port, stop() it."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        """A proxy to the nats-server at upstream_host:upstream_port."""
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections = 0  # accepted since start
        self.cuts = 0  # times the connections were dropped
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._cuts: list[_Cut] = []
        self._refusing = False

    @property
    def url(self) -> str:
        """The client URL of the proxy."""
        return f"nats://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1 (port 0: a free one)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._drop_all()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._handlers:  # each ends once its pipes did
            await asyncio.wait(self._handlers, timeout=5)

    def cut_before(self, matches: Callable[[str], bool], nth: int = 1) -> asyncio.Event:
        """Drop every connection just before the nth PUB/HPUB whose subject matches; the event is set then."""
        cut = _Cut(matches, nth)
        self._cuts.append(cut)
        return cut.done

    def cut_now(self) -> None:
        """Drop every connection now (clients reconnect through the proxy)."""
        self._drop_all()

    def refuse(self, refusing: bool) -> None:
        """Turn new connections away (True) or let them through again (False)."""
        self._refusing = refusing

    def _drop_all(self) -> None:
        self.cuts += 1
        for writer in list(self._writers):
            writer.transport.abort()  # RST, no flush: what the peer sees when the server dies
        self._writers.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._serve(client_r, client_w)
        except asyncio.CancelledError:
            client_w.transport.abort()  # the loop is closing: asyncio's stream callback must not see a cancelled task
        finally:
            self._handlers.discard(handler)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._refusing:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        self.connections += 1
        self._writers.update((client_w, server_w))
        up = asyncio.get_running_loop().create_task(self._client_to_server(client_r, server_w))
        down = asyncio.get_running_loop().create_task(_copy(server_r, client_w))
        self._pipes.update((up, down))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            self._pipes.difference_update((up, down))
            for writer in (client_w, server_w):
                self._writers.discard(writer)
                writer.transport.abort()

    async def _client_to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward whole commands; cut before the one a pending cut names."""
        buffer = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buffer += chunk
            out = bytearray()
            while True:
                size, subject = _next_command(buffer)
                if size == 0:
                    break
                if subject is not None and self._should_cut(subject):
                    if out:
                        writer.write(bytes(out))
                        with contextlib.suppress(ConnectionError):
                            await writer.drain()
                    self._drop_all()
                    return
                out += buffer[:size]
                buffer = buffer[size:]
            if out:
                writer.write(bytes(out))
                await writer.drain()

    def _should_cut(self, subject: str) -> bool:
        for cut in self._cuts:
            if cut.done.is_set() or not cut.matches(subject):
                continue
            cut.seen += 1
            if cut.seen == cut.nth:
                cut.done.set()
                return True
        return False


def _next_command(buffer: bytes) -> tuple[int, str | None]:
    """(size in bytes, subject for PUB/HPUB) of the first whole command in buffer; (0, None) if incomplete."""
    end = buffer.find(_CRLF)
    if end < 0:
        return 0, None
    line = buffer[:end].decode("latin-1")
    parts = line.split()
    verb = parts[0].upper() if parts else ""
    if verb == "PUB":
        payload = int(parts[-1])
    elif verb == "HPUB":
        payload = int(parts[-1])  # total of headers and payload
    else:
        return end + 2, None
    size = end + 2 + payload + 2
    if len(buffer) < size:
        return 0, None
    return size, parts[1]


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return
        writer.write(chunk)
        await writer.drain()
