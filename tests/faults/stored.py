"""Reading back what nats-server stored, after a fault test: every delivery message of both lane streams.

The scan reads each lane's stream by sequence, first to last (batched direct gets), and keeps
the delivery messages. A delivery the scan did not find for a recipient an acceptance names is
looked for again, first as the hub does (the envelope's deliveries, last per subject, in both
streams), then through the stream leader (STREAM.MSG.GET, which no lagging replica answers):
only what none of the three finds counts as not stored.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.lanes import LANES
from broker.store.jetstream import JetStream
from broker.store.layout import RULE_HEADER
from broker.store.model import StoredMsg
from tests.faults.counts import Pair, Store, StoredDelivery


async def read_store(js: JetStream) -> Store:
    """Every delivery message of both lane streams, by (distribution id, agency)."""
    store = Store()
    head = f"{js.layout.prefix}.dlv."
    for lane in LANES:
        stream = js.stream_of(lane)
        state = await js.stream_state(stream)
        first, last = int(state.get("first_seq", 1)) or 1, int(state.get("last_seq", 0))
        for message in await js.read_through(stream, first, last):
            if message.subject.startswith(head):
                store.add(_delivery(js, message))
    return store


async def look_again(js: JetStream, store: Store, pairs: Iterable[Pair]) -> None:
    """Look up each (distribution id, agency) the scan did not find, per envelope and then through the leader; add what is found."""
    wanted = sorted(set(pairs) - store.deliveries.keys())
    for distribution_id in sorted({d for d, _ in wanted}):
        for lane in LANES:
            found = await js.last_per_subject(
                js.layout.deliveries_of_envelope(distribution_id), stream=js.stream_of(lane)
            )
            for message in found:
                delivery = _delivery(js, message)
                if (delivery.distribution_id, delivery.agency) not in store.deliveries:
                    store.add(delivery)
    for distribution_id, agency in wanted:
        if (distribution_id, agency) in store.deliveries:
            continue
        for lane in LANES:
            subject = js.layout.delivery_subject(agency, lane, distribution_id)
            reply = await js.api(f"STREAM.MSG.GET.{js.stream_of(lane)}", {"last_by_subj": subject})
            got = reply.get("message")
            if got:
                store.add(StoredDelivery(distribution_id, agency, lane.value, int(got["seq"]), "(leader)"))


def _delivery(js: JetStream, message: StoredMsg) -> StoredDelivery:
    agency, lane, distribution_id = js.layout.parse_delivery(message.subject)
    return StoredDelivery(distribution_id, agency, lane.value, message.seq, message.headers.get(RULE_HEADER, ""))
