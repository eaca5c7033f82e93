"""A room's client in its own process: it writes every delivery it receives, and every one its inbox hands over, to a file.

    python -m tests.faults.room --target 127.0.0.1:7443 --ca ca.pem --cert room.pem --key room-key.pem --out room.log

Lines (space-separated, one flushed line each):
    O <session id>                                     a session opened (again after each reconnect)
    A <distribution id> <attempt> <sequence>           a delivery arrived from the hub, before the client drops copies
    D <distribution id> <incident id> <seq> <attempt> <sequence> <view>
                                                       a delivery handed to the application, then acked
                                                       (for a plate read: its chain and counter, chain_of)
    S <duplicates dropped> <reconnects> <handed>       the inbox's counters, when they changed
    F <duplicates dropped> <reconnects> <handed>       the same, at exit after a clean close
    E <error>                                          the inbox failed for good

<view> says which personal data the room's copy holds (view_of), never the data itself.
SIGTERM closes the client cleanly (pending acknowledgements are sent and recorded by the hub).
It is meant to be SIGSTOPped, SIGCONTed and SIGKILLed by the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import TextIO

from opsroom.envelope.v1 import envelope_pb2
from opsroom.hub.v1 import hub_pb2
from opsroom_client import Credentials, HubClient, Inbox

REPORT_EVERY = 0.25


def chain_of(env: envelope_pb2.Envelope) -> tuple[str, str]:
    """(incident or chain id, counter) of an event: the incident's id and local reference, or a plate read's parameters."""
    if env.WhichOneof("payload") == "alert":
        params = {p.name: p.value for info in env.alert.infos for p in info.parameters}
        return params.get("fault-chain", "-"), params.get("fault-seq", "0")
    return env.incident.id, env.incident.local_reference


def view_of(env: envelope_pb2.Envelope) -> str:
    """The categories of personal data a copy holds, one letter each (tests/faults/agreement.py VIEWS); "-" for none.

    c caller, n network location, p persons, v vehicle plates, t free text, m media, s staff ids;
    for an alert "A:" and v plates, t headline or description, m resources, s staff ids.
    """
    if env.WhichOneof("payload") == "alert":
        alert = env.alert
        held = {
            "v": any(v.plate for v in alert.vehicles),
            "t": any(i.headline or i.description for i in alert.infos),
            "m": any(i.resources for i in alert.infos),
            "s": bool(env.sender.operator_id),
        }
        return "A:" + "".join(letter for letter, present in held.items() if present)
    incident = env.incident
    held = {
        "c": incident.call.HasField("caller"),
        "n": incident.call.HasField("network_location"),
        "p": bool(incident.persons),
        "v": any(v.plate for v in incident.vehicles),
        "t": bool(incident.description) or any(n.text for n in incident.notes),
        "m": bool(incident.media),
        "s": bool(env.sender.operator_id) or any(n.author_operator_id for n in incident.notes),
    }
    return "".join(letter for letter, present in held.items() if present) or "-"


class _RecordingInbox(Inbox):
    """The client library's inbox, writing each delivery as it arrives, before the library drops copies by id."""

    out: TextIO | None = None

    def _put(self, item: hub_pb2.Delivery | BaseException) -> None:
        if isinstance(item, hub_pb2.Delivery) and self.out is not None:
            self.out.write(f"A {item.envelope.distribution_id} {item.attempt} {item.sequence}\n")
        super()._put(item)


class _Room:
    def __init__(self, inbox: Inbox, out: TextIO) -> None:
        self.inbox = inbox
        self.out = out
        self.handed = 0

    def counters(self) -> str:
        return f"{self.inbox.duplicates_dropped} {self.inbox.reconnects} {self.handed}"

    async def receive(self) -> None:
        async for delivery in self.inbox:
            env = delivery.envelope
            chain, seq = chain_of(env)
            self.out.write(
                f"D {env.distribution_id} {chain} {seq} {delivery.attempt} {delivery.sequence} {view_of(env)}\n"
            )
            self.inbox.ack(delivery)
            self.handed += 1

    async def report(self) -> None:
        session, counters = "", ""
        while True:
            if self.inbox.session_id != session and self.inbox.opened.is_set():
                session = self.inbox.session_id
                self.out.write(f"O {session}\n")
            if self.counters() != counters:
                counters = self.counters()
                self.out.write(f"S {counters}\n")
            await asyncio.sleep(REPORT_EVERY)


async def run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    creds = Credentials.from_files(args.ca, args.cert, args.key)
    with Path(args.out).open("a", buffering=1, encoding="utf-8") as out:  # line-buffered: one write per line
        client = HubClient(args.target, creds, server_name="localhost")
        inbox = client.inbox(max_batch=args.max_batch, window=args.window, max_reconnects=1000, kind=_RecordingInbox)
        assert isinstance(inbox, _RecordingInbox)
        inbox.out = out
        room = _Room(inbox, out)
        receiving = loop.create_task(room.receive())
        reporting = loop.create_task(room.report())
        stopping = loop.create_task(stop.wait())
        await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        status = 0
        if receiving.done() and not stopping.done():
            error = receiving.exception()
            out.write(f"E {type(error).__name__}: {error}\n" if error else "E the inbox ended\n")
            status = 1
        await client.close()  # sends pending acks and ends the session cleanly
        for task in (receiving, reporting, stopping):
            task.cancel()
        await asyncio.gather(receiving, reporting, stopping, return_exceptions=True)
        out.write(f"F {room.counters()}\n")
        return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--window", type=int, default=1024)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
