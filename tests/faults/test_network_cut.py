"""The network between the hub process and nats-server cut under sustained load: between an envelope's writes, and as a partition.

The hub reaches nats-server through a proxy (tests/natsproxy.py) in the test's event loop.
Three cuts, each once acknowledgements flow again after the previous one:

1. every connection dropped just before a delivery to the Carabinieri is written: never an
   envelope's first delivery (the Questura, named first, always is), so the envelope is cut
   between its messages (with single writes; with an atomic batch, the batch is cut);
2. the same before a delivery to the Guardia di Finanza (the third recipient of some envelopes);
3. a partition: the connections dropped and new ones refused for two seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.ids import agency_token
from tests.faults.agreement import CC, GDF
from tests.faults.load import MODES, Load, Mode, until
from tests.faults.procs import Processes
from tests.faults.rig import RecordCounts, Rig, make_rig, start_nats, under_load

pytestmark = [pytest.mark.faults, pytest.mark.soak, pytest.mark.timeout(600)]

PARTITION = 2.0  # seconds during which the hub cannot reach nats-server at all


def delivery_to(rig: Rig, agency_id: str) -> Callable[[str], bool]:
    """A predicate on subjects: a delivery to agency_id, on either lane."""
    head = f"{rig.cfg.nats.subject_prefix}.dlv.{agency_token(agency_id)}."
    return lambda subject: subject.startswith(head)


@pytest.mark.parametrize("mode", MODES, ids=str)
async def test_network_cut_under_load(
    tmp_path: Path, processes: Processes, rigs: list[Rig], record_counts: RecordCounts, mode: Mode
) -> None:
    """Writes cut half way are completed by the senders' retries; after a partition everything goes on.

    Every acknowledged event is stored for every recipient of its acceptance, delivered once, in
    order, and logged; what was stored of an unanswered publish reaches its rooms too.
    """
    nats = await start_nats(tmp_path, processes)
    rig = await make_rig(tmp_path, processes, [nats], proxy=True)
    rigs.append(rig)
    proxy = rig.proxy
    assert proxy is not None
    cuts: list[str] = []

    async def cut(rig: Rig, load: Load) -> None:
        for step, victim in enumerate((CC, GDF), start=1):
            await load.until_acked(load.planned * step // 4)  # acknowledgements flow (again)
            done = proxy.cut_before(delivery_to(rig, victim))
            await until(f"a write of a delivery to {victim} to be cut", done.is_set, lambda: load.acked)
            cuts.append(victim)
        await load.until_acked(load.planned * 3 // 4)
        proxy.refuse(refusing=True)
        proxy.cut_now()
        await asyncio.sleep(PARTITION)
        proxy.refuse(refusing=False)
        cuts.append("partition")

    await under_load(rig, record_counts, name="network cut hub-nats", mode=mode, fault=cut)
    assert [CC, GDF, "partition"] == cuts
    assert 3 == proxy.cuts
