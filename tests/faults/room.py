"""A room's client in its own process: it writes every delivery its inbox hands over to a file, one flushed line each.

    python -m tests.faults.room --target 127.0.0.1:7443 --ca ca.pem --cert room.pem --key room-key.pem --out room.log

Lines (space-separated):
    O <session id>                                            a session opened (again after each reconnect)
    D <distribution id> <incident id> <seq> <attempt> <stream seq>   a delivery handed to the application, then acked
    S <duplicates dropped> <reconnects> <handed>              the inbox's counters, when they changed
    F <duplicates dropped> <reconnects> <handed>              the same, at exit after a clean close
    E <error>                                                 the inbox failed for good

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

from broker.client import Credentials, HubClient, Inbox

REPORT_EVERY = 0.25


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
            self.out.write(
                f"D {env.distribution_id} {env.incident.id} {env.incident.local_reference} "
                f"{delivery.attempt} {delivery.sequence}\n"
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
        room = _Room(client.inbox(max_batch=args.max_batch, window=args.window), out)
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
