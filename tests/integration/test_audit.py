"""The audit log through the real hub and nats-server: what traffic records, and tampering that verify catches.

The tampering goes through the NATS API, as an administrator of the NATS account could do it:
lift the stream's deny_delete and delete a message, or purge the stream and publish entries
again (altered, reordered, with one inserted, without the tail, or re-signed with another key).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opsroom.audit.v1 import audit_pb2
from opsroom.common.v1 import common_pb2

from broker.audit import chain, tools
from broker.audit.log import AuditLog
from broker.audit.retention import Retention
from broker.audit.verify import Kind, Report, Stored, verify
from broker.dev.testing import LocalHub, local_hub
from broker.ops.metrics import Metrics
from broker.store.jetstream import JetStream
from tests import factories as f
from tests.integration.conftest import nothing_more, take
from tests.integration.test_policy import AGENCIES, AGREEMENT, report

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def audited(tmp_path: Path) -> AsyncIterator[LocalHub]:
    """The hub with the Torino test agreement, its audit log on."""
    folder = tmp_path / "agreements"
    folder.mkdir()
    (folder / "torino.yaml").write_text(AGREEMENT)
    async with local_hub(tmp_path / "run", AGENCIES, (), agreements=folder) as env:
        yield env


def write_config(env: LocalHub, path: Path) -> Path:
    """A hub.toml for the running local hub, for the `opsroom audit` command."""
    pki = env.pki
    path.write_text(
        f"""
[hub]
listen = "127.0.0.1:0"
[tls]
ca_file = "{pki.ca}"
cert_file = "{pki.hub.cert}"
key_file = "{pki.hub.key}"
[nats]
servers = ["{env.nats.url}"]
monitor_urls = ["{env.nats.monitor_url}"]
[audit]
signing_key = "{pki.audit_key}"
[[agencies]]
id = "{f.CUR}"
[[allow]]
from = ["{f.CUR}"]
to = ["{f.CUR}"]
""",
        encoding="utf-8",
    )
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`opsroom audit ...` in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "broker", "audit", *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
        check=False,
    )  # fmt: skip


async def stored(js: JetStream) -> list[Stored]:
    return (await tools.read_log(js)).items


async def check(env: LocalHub, **kwargs: object) -> Report:
    log = await tools.read_log(env.hub.js)
    assert env.hub.audit is not None
    return verify(log.stream, log.items, env.hub.audit.trusted, last_seq=log.last_seq, **kwargs)  # type: ignore[arg-type]


def records(items: list[Stored]) -> list[audit_pb2.AuditRecord]:
    return [r for item in items for r in audit_pb2.AuditEntry.FromString(item.data).records]


# -- what traffic records -----------------------------------------------------------------------


async def test_traffic_leaves_one_collection_per_publish_and_one_disclosure_per_delivery(audited: LocalHub) -> None:
    """Several rooms publish at once (with a retry); the audit holds exactly what was accepted and delivered."""
    rooms = {agency: audited.client(agency) for agency in AGENCIES}
    try:
        inboxes = {agency: rooms[agency].inbox() for agency in (f.QUESTURA, f.PL, f.CC)}
        reports = [report((f.QUESTURA, f.CC)) for _ in range(30)]
        alerts = [f.envelope(f.PL, (), alert=f.alert()) for _ in range(20)]
        update = f.envelope(
            f.CUR, (f.QUESTURA,), kind=common_pb2.KIND_UPDATE, references=((reports[0].distribution_id, f.CUR),)
        )
        cur, pl = rooms[f.CUR].stream_publisher(), rooms[f.PL].stream_publisher()
        accepted = await asyncio.gather(
            *(cur.publish(e) for e in reports), *(pl.publish(e) for e in alerts), cur.publish(update)
        )
        again = await rooms[f.CUR].publish(reports[3], resend=True)  # a retry: replayed, nothing new
        assert again.replayed
        await cur.close()
        await pl.close()
        expected = Counter((a.distribution_id, r) for a in accepted for r in a.recipients)
        received = Counter[tuple[str, str]]()
        for agency, inbox in inboxes.items():
            count = sum(1 for dist, r in expected if r == agency)
            for delivery in await take(inbox, count, timeout=30):
                received[(delivery.envelope.distribution_id, agency)] += 1
        assert expected == received
        await asyncio.sleep(0.3)  # the last consultation records of the sessions
        items = await stored(audited.hub.js)
    finally:
        for client in rooms.values():
            await client.close()
    found = records(items)
    collections = Counter(r.distribution_id for r in found if r.action == audit_pb2.ACTION_COLLECTION)
    assert Counter({a.distribution_id: 1 for a in accepted}) == collections
    disclosures = Counter((r.distribution_id, r.recipient) for r in found if r.action == audit_pb2.ACTION_DISCLOSURE)
    assert expected == disclosures
    alterations = [r for r in found if r.action == audit_pb2.ACTION_ALTERATION]
    assert [update.distribution_id] == [r.distribution_id for r in alterations]
    assert [reports[0].distribution_id] == list(alterations[0].linked)
    consultations = {r.actor.agency_id for r in found if r.action == audit_pb2.ACTION_CONSULTATION}
    assert {f.QUESTURA, f.PL, f.CC} <= consultations
    # The Carabinieri role gets no personal data under the test agreement: the caller is withheld.
    report_ids = {e.distribution_id for e in reports}
    cc = next(
        r for r in found
        if r.action == audit_pb2.ACTION_DISCLOSURE and r.recipient == f.CC and r.distribution_id in report_ids
    )  # fmt: skip
    assert "incident.call.caller.phone" in cc.withheld
    assert "incident.call.caller.phone" not in cc.fields
    assert "torino-test" == cc.why.agreement_id
    assert "d.l. 14/2017 art. 2" == cc.why.law
    everything = b"".join(item.data for item in items)
    for value in f.PERSONAL_VALUES:
        assert value.encode() not in everything, value
    assert (await check(audited)).ok


async def test_a_refused_publish_leaves_no_record(audited: LocalHub) -> None:
    """A publish refused before any write (no agreement selects a recipient) is not a collection."""
    cur = audited.client(f.CUR)
    try:
        fire = f.envelope(f.PL, (), alert=f.alert())
        fire.alert.infos[0].categories[0] = 2  # FIRE: no rule
        pl = audited.client(f.PL)
        with pytest.raises(Exception):  # noqa: B017 - the refusal itself is tested in test_policy
            await pl.publish(fire)
        await pl.close()
        ok = await cur.publish(report((f.QUESTURA,)))
    finally:
        await cur.close()
    dists = {r.distribution_id for r in records(await stored(audited.hub.js))}
    assert ok.distribution_id in dists
    assert fire.distribution_id not in dists


async def test_a_resend_of_a_stored_envelope_is_answered_from_the_store_and_records_nothing(
    audited: LocalHub,
) -> None:
    """resend: a stored envelope gets its first answer and no new record; a new one is stored and recorded once.

    An unmarked copy of a stored envelope is replayed too (never delivered twice) and records
    nothing either: the commit loop finds its distribution id taken before writing its records.
    """
    cur = audited.client(f.CUR)
    try:
        env = report((f.QUESTURA,))
        first = await cur.publish(env)
        before = len(await stored(audited.hub.js))
        again = await cur.publish(env, resend=True)
        assert again.replayed
        assert first.accepted_at == again.accepted_at
        assert before == len(await stored(audited.hub.js))

        fresh = report((f.QUESTURA,))
        assert not (await cur.publish(fresh, resend=True)).replayed  # never stored: written as usual

        copy = await cur.publish(env)  # not marked
        assert copy.replayed
    finally:
        await cur.close()
    collections = Counter(
        r.distribution_id for r in records(await stored(audited.hub.js)) if r.action == audit_pb2.ACTION_COLLECTION
    )
    assert 1 == collections[fresh.distribution_id]
    assert 1 == collections[env.distribution_id]
    room = audited.client(f.QUESTURA)
    try:
        inbox = room.inbox()
        got = await take(inbox, 2)
        assert [env.distribution_id, fresh.distribution_id] == [d.envelope.distribution_id for d in got]
        await nothing_more(inbox, 0.3)
    finally:
        await room.close()


# -- tampering ----------------------------------------------------------------------------------


async def traffic(env: LocalHub, count: int = 8) -> list[Stored]:
    """Some accepted envelopes (one per entry), then the stored log."""
    cur = env.client(f.CUR)
    try:
        for _ in range(count):
            await cur.publish(report((f.QUESTURA,)))
    finally:
        await cur.close()
    items = await stored(env.hub.js)
    assert len(items) >= count
    return items


async def rewrite(js: JetStream, datas: list[bytes]) -> None:
    """Purge the audit stream and publish these entries instead (the NATS API, no hub)."""
    stream = js.audit_stream
    reply = await js.api(f"STREAM.PURGE.{stream}", {})
    assert reply.get("success"), reply
    for data in datas:
        ack = json.loads((await js.nc.request(js.layout.audit_subject, data, timeout=5)).data)
        assert "seq" in ack, ack


async def allow_delete(js: JetStream) -> list[Stored]:
    """deny_delete cannot be lifted: delete the stream, create it again without it, publish the entries back."""
    config = js.audit_stream_config(86400)
    config["deny_delete"] = False
    refused = await js.api(f"STREAM.UPDATE.{js.audit_stream}", config)
    assert "can not cancel deny message deletes" in refused["error"]["description"]
    items = await stored(js)
    assert (await js.api(f"STREAM.DELETE.{js.audit_stream}")).get("success")
    assert "error" not in await js.api(f"STREAM.CREATE.{js.audit_stream}", config)
    for item in items:
        ack = json.loads((await js.nc.request(js.layout.audit_subject, item.data, timeout=5)).data)
        assert "seq" in ack, ack
    return await stored(js)


def entry(data: bytes) -> audit_pb2.AuditEntry:
    return audit_pb2.AuditEntry.FromString(data)


def kinds(report: Report) -> set[Kind]:
    return {finding.kind for finding in report.findings}


async def test_untouched_log_verifies_clean_online_and_from_an_export(audited: LocalHub, tmp_path: Path) -> None:
    """The command verifies the live log, exports it, and verifies the export with the public key only."""
    await traffic(audited, 4)
    config = write_config(audited, tmp_path / "hub.toml")
    online = cli("verify", "--config", str(config), "--witness", str(tmp_path / "witness.json"))
    assert 0 == online.returncode, online.stdout + online.stderr
    assert "the chain verifies" in online.stdout
    assert json.loads((tmp_path / "witness.json").read_text())["position"] >= 4
    out = tmp_path / "export"
    exported = cli("export", "--config", str(config), "--out", str(out), "--as", "dpo-1", "--reason", "annual check")
    assert 0 == exported.returncode, exported.stderr
    public = chain.public_path(audited.pki.audit_key)
    offline = cli("verify", "--export", str(out), "--key", str(public))
    assert 0 == offline.returncode, offline.stdout + offline.stderr
    # The export itself was recorded, with who and why.
    export_records = [r for r in records(await stored(audited.hub.js)) if "audit export" in r.detail]
    assert [("dpo-1", "annual check")] == [(r.actor.operator_id, r.why.law) for r in export_records]
    # An export edited afterwards fails offline verification.
    lines = (out / tools.ENTRIES).read_text().splitlines()
    del lines[1]
    (out / tools.ENTRIES).write_text("\n".join(lines) + "\n")
    broken = cli("verify", "--export", str(out), "--key", str(public))
    assert 1 == broken.returncode
    assert "removed (position 3" in broken.stdout


async def test_deleted_record_is_caught(audited: LocalHub, tmp_path: Path) -> None:
    """A message deleted from the middle (after lifting deny_delete): verify names the missing position."""
    items = await traffic(audited)
    js = audited.hub.js
    refused = await js.api(f"STREAM.MSG.DELETE.{js.audit_stream}", {"seq": items[3].seq})
    assert "error" in refused  # the hub's stream denies deletes
    victim = (await allow_delete(js))[3]
    reply = await js.api(f"STREAM.MSG.DELETE.{js.audit_stream}", {"seq": victim.seq})
    assert reply.get("success"), reply
    result = cli("verify", "--config", str(write_config(audited, tmp_path / "hub.toml")))
    assert 1 == result.returncode
    assert f"removed (position {entry(victim.data).position + 1}" in result.stdout, result.stdout
    assert f"entries {entry(victim.data).position} are missing" in result.stdout


async def test_altered_record_is_caught(audited: LocalHub) -> None:
    """A record republished with a changed recipient: the altered entry is named."""
    items = await traffic(audited)
    datas = [i.data for i in items]
    changed = entry(datas[4])
    for record in changed.records:
        if record.recipient:
            record.recipient = f.CC
    datas[4] = changed.SerializeToString(deterministic=True)
    await rewrite(audited.hub.js, datas)
    result = await check(audited)
    assert Kind.ALTERED in kinds(result)
    assert changed.position in {x.position for x in result.findings if x.kind in (Kind.ALTERED, Kind.FORGED_CHECKPOINT)}


async def test_reordered_pair_is_caught(audited: LocalHub) -> None:
    """Two entries republished in each other's place."""
    items = await traffic(audited)
    datas = [i.data for i in items]
    datas[2], datas[3] = datas[3], datas[2]
    await rewrite(audited.hub.js, datas)
    result = await check(audited)
    [reordered] = [x for x in result.findings if x.kind is Kind.REORDERED]
    assert entry(datas[2]).position == reordered.position


async def test_inserted_record_is_caught(audited: LocalHub) -> None:
    """A forged entry slipped in between two real ones, linked to the one before it."""
    items = await traffic(audited)
    datas = [i.data for i in items]
    before = entry(datas[4])
    forged = audit_pb2.AuditEntry(
        position=before.position + 1, prev_sha256=chain.entry_sha256(datas[4]), writer="intruder",
        records=[audit_pb2.AuditRecord(action=audit_pb2.ACTION_DISCLOSURE, distribution_id="invented")],
    )  # fmt: skip
    datas.insert(5, forged.SerializeToString(deterministic=True))
    await rewrite(audited.hub.js, datas)
    result = await check(audited)
    [inserted] = [x for x in result.findings if x.kind is Kind.INSERTED]
    assert before.position + 1 == inserted.position


async def test_truncated_tail_is_caught(audited: LocalHub, tmp_path: Path) -> None:
    """The last entries cut: by deleting them (the stream remembers its last sequence), or by rewriting a
    shorter log (the witness of the previous verification remembers the last entry)."""
    items = await traffic(audited)
    config = write_config(audited, tmp_path / "hub.toml")
    witness = tmp_path / "witness.json"
    assert 0 == cli("verify", "--config", str(config), "--witness", str(witness)).returncode
    js = audited.hub.js
    items = await allow_delete(js)
    for item in items[-2:]:
        assert (await js.api(f"STREAM.MSG.DELETE.{js.audit_stream}", {"seq": item.seq})).get("success")
    result = await check(audited)
    assert Kind.TRUNCATED in kinds(result)
    await rewrite(js, [i.data for i in items[:-2]])
    result = await check(audited)  # no witness: a shorter, consistent log looks whole
    assert Kind.TRUNCATED not in kinds(result)
    with_witness = cli("verify", "--config", str(config), "--witness", str(witness))
    assert 1 == with_witness.returncode
    assert "truncated" in with_witness.stdout
    assert "its tail was cut" in with_witness.stdout


async def test_forged_checkpoint_is_caught(audited: LocalHub) -> None:
    """The last entry altered and signed again with a key nobody trusts."""
    items = await traffic(audited)
    datas = [i.data for i in items]
    last = entry(datas[-1])
    last.records[0].distribution_id = "rewritten"
    datas[-1] = chain.seal(audited.hub.js.audit_stream, last, Ed25519PrivateKey.generate(), last.checkpoint.signed_at)
    await rewrite(audited.hub.js, datas)
    result = await check(audited)
    [forged] = [x for x in result.findings if x.kind is Kind.FORGED_CHECKPOINT]
    assert last.position == forged.position
    assert "not trusted" in forged.message or "key" in forged.message


async def test_the_hub_reports_entries_it_did_not_write(audited: LocalHub) -> None:
    """An unsigned entry appended behind the hub's back: the hub's next write records a tamper alert."""
    items = await traffic(audited, 3)
    js = audited.hub.js
    tail = items[-1]
    intruder = audit_pb2.AuditEntry(position=entry(tail.data).position + 1, prev_sha256=chain.entry_sha256(tail.data))
    ack = json.loads((await js.nc.request(js.layout.audit_subject, intruder.SerializeToString(), timeout=5)).data)
    assert "seq" in ack
    await traffic(audited, 1)
    found = records(await stored(js))
    alerts = [r for r in found if r.action == audit_pb2.ACTION_TAMPER_DETECTED]
    assert 1 == len(alerts)
    assert f"entries {entry(tail.data).position + 1}" in alerts[0].detail
    assert Kind.TAMPER_REPORTED in kinds(await check(audited))


# -- queries and retention ----------------------------------------------------------------------


async def test_query_answers_who_received_an_incident_and_is_recorded(audited: LocalHub, tmp_path: Path) -> None:
    """Who received incident X and which fields, as JSON; the query itself lands in the log."""
    cur = audited.client(f.CUR)
    try:
        env = report((f.QUESTURA, f.CC))
        env.incident_ids[:] = ["INC-AUDIT-7"]
        env.incident.id = "INC-AUDIT-7"
        await cur.publish(env)
    finally:
        await cur.close()
    config = write_config(audited, tmp_path / "hub.toml")
    result = cli(
        "query", "--config", str(config), "--incident", "INC-AUDIT-7", "--action", "disclosure",
        "--format", "json", "--as", "dpo-2", "--reason", "request of the Garante",
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr
    answer = json.loads(result.stdout)
    got = {r["recipient"]: r for r in answer["records"]}
    assert {f.QUESTURA, f.CC, f.PL} == set(got)  # the PL by the territory rule
    assert "incident.call.caller.phone" in got[f.QUESTURA]["fields"]
    assert "incident.call.caller.phone" in got[f.CC]["withheld"]
    assert 2 == cli("query", "--config", str(config), "--incident", "X").returncode  # who and why are required
    queries = [r for r in records(await stored(audited.hub.js)) if r.detail.startswith("audit query")]
    assert ["incident=INC-AUDIT-7 actions=disclosure"] == [r.detail.removeprefix("audit query: ") for r in queries]
    assert ("dpo-2", "request of the Garante") == (queries[0].actor.operator_id, queries[0].why.law)


async def test_retention_purge_is_recorded_and_the_log_still_verifies(audited: LocalHub) -> None:
    """Entries past retention are purged in front of a signed entry; the erasure is recorded; verify passes."""
    await traffic(audited, 6)
    assert audited.hub.audit is not None
    later = audited.hub.clock() + timedelta(days=400)
    purge = await Retention(audited.hub.js, audited.hub.audit, lambda: later, timedelta(days=365)).purge()
    assert purge.erasure is not None
    assert purge.removed >= 5  # the last signed entry before the cutoff stays, as the anchor
    items = await stored(audited.hub.js)
    assert purge.erasure.next_position == entry(items[0].data).position
    result = await check(audited)
    assert result.ok, result.findings
    assert result.anchored_by_checkpoint
    erasures = [r for r in records(items) if r.action == audit_pb2.ACTION_ERASURE]
    assert 1 == len(erasures)
    # Without its erasure record, the same cut is a removal.
    js = audited.hub.js
    await rewrite(js, [i.data for i in items[1:]])
    assert Kind.UNANCHORED in kinds(await check(audited))


async def test_two_writers_keep_one_chain(audited: LocalHub) -> None:
    """A second writer (another replica, same trusted key) appends concurrently: one chain, verified clean."""
    assert audited.hub.audit is not None

    other = AuditLog(audited.hub.js, audited.hub.audit.key, audited.hub.audit.trusted, Metrics(),
                     audited.hub.clock, writer="replica-2")  # fmt: skip
    await other.open()
    rec = audit_pb2.AuditRecord(action=audit_pb2.ACTION_CONSULTATION, detail="replica-2 test")

    async def replica() -> None:
        for _ in range(20):
            await other.append([rec])

    await asyncio.gather(replica(), traffic(audited, 20))
    result = await check(audited)
    assert result.ok, result.findings
    writers = Counter(entry(i.data).writer for i in await stored(audited.hub.js))
    assert 20 == writers["replica-2"]
