"""The audit chain: entry hashing, Ed25519 checkpoints and manifests, key files, and what verify finds (pure).

Chains are built here the way the writer (broker/audit/log.py) builds them: positions 1.., each
entry linked to the SHA-256 of the previous stored bytes (32 zero bytes before the first), signed
entries sealed with chain.seal, unsigned ones serialized deterministically. Each tampering test
asserts the exact findings (kind, position, sequence) verify reports.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from opsroom.audit.v1 import audit_pb2

from broker.audit import chain
from broker.audit.chain import GENESIS, entry_sha256, seal
from broker.audit.log import Draft
from broker.audit.records import hub_record
from broker.audit.verify import Head, Kind, Report, Stored, verify

STREAM = "OPSROOM_AUDIT"
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()  # not trusted
KEYS: dict[str, Ed25519PublicKey] = {chain.key_id(KEY.public_key()): KEY.public_key()}

Tweak = Callable[[audit_pb2.AuditEntry], None]


def _ts(at: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(at)
    return out


def record(position: int) -> audit_pb2.AuditRecord:
    """An ordinary record for the entry at position."""
    return hub_record(audit_pb2.ACTION_CONSULTATION, T0 + timedelta(seconds=position), f"entry {position}")


def build(
    n: int,
    *,
    signed: Collection[int] | None = None,
    records: Mapping[int, Sequence[audit_pb2.AuditRecord]] | None = None,
    signer: Mapping[int, Ed25519PrivateKey] | None = None,
    after_seal: Mapping[int, Tweak] | None = None,
    stream: str = STREAM,
) -> list[Stored]:
    """A chain of n entries at positions 1..n stored at seqs 1..n, as the writer makes it.

    signed: the positions that carry a checkpoint (default: all); signer: a key other than KEY for
    some positions; after_seal: a change to an entry after it was sealed (a forged signature), which
    the following entries then link to, as a forger writing the chain would do.
    """
    signed_at = set(range(1, n + 1)) if signed is None else set(signed)
    out: list[Stored] = []
    prev = GENESIS
    for position in range(1, n + 1):
        written = _ts(T0 + timedelta(seconds=position))
        entry = audit_pb2.AuditEntry(
            position=position,
            prev_sha256=prev,
            written_at=written,
            writer="hub-a",
            records=(records or {}).get(position, [record(position)]),
        )
        if position in signed_at:
            key = (signer or {}).get(position, KEY)
            data = seal(stream, entry, key, written)
        else:
            data = entry.SerializeToString(deterministic=True)
        tweak = (after_seal or {}).get(position)
        if tweak is not None:
            tweak(entry)
            data = entry.SerializeToString(deterministic=True)
        out.append(Stored(position, data))
        prev = entry_sha256(data)
    return out


def parse(item: Stored) -> audit_pb2.AuditEntry:
    return audit_pb2.AuditEntry.FromString(item.data)


def altered(item: Stored, change: Tweak) -> Stored:
    """The stored entry with its content changed and re-serialized (its checkpoint, if any, kept)."""
    entry = parse(item)
    change(entry)
    return Stored(item.seq, entry.SerializeToString(deterministic=True))


def change_writer(entry: audit_pb2.AuditEntry) -> None:
    entry.writer = "hub-forged"


def flip_signature(entry: audit_pb2.AuditEntry) -> None:
    sig = bytearray(entry.checkpoint.signature)
    sig[0] ^= 0x01
    entry.checkpoint.signature = bytes(sig)


def found(report: Report) -> list[tuple[Kind, int | None, int | None]]:
    """The findings as (kind, position, seq)."""
    return [(f.kind, f.position, f.seq) for f in report.findings]


def manifest_for(items: Sequence[Stored], key: Ed25519PrivateKey = KEY) -> audit_pb2.ExportManifest:
    last = parse(items[-1])
    manifest = audit_pb2.ExportManifest(
        stream=STREAM,
        first_seq=items[0].seq,
        last_seq=items[-1].seq,
        last_position=last.position,
        last_sha256=entry_sha256(items[-1].data),
        exported_at=_ts(T0 + timedelta(days=1)),
    )
    return chain.sign_manifest(manifest, key)


def erasure(first: int, last: int, next_position: int) -> audit_pb2.AuditRecord:
    out = hub_record(audit_pb2.ACTION_ERASURE, T0 + timedelta(days=30), f"purged {first}-{last}")
    out.erased.CopyFrom(
        audit_pb2.Erasure(
            first_position=first,
            last_position=last,
            first_seq=first,
            last_seq=last,
            next_position=next_position,
            older_than=_ts(T0 + timedelta(days=1)),
        )
    )
    return out


# -- chain primitives ---------------------------------------------------------------------------------------------


def test_entry_sha256_is_sha256_of_the_bytes() -> None:
    """entry_sha256 is plain SHA-256 (a known test vector), and GENESIS is 32 zero bytes."""
    assert entry_sha256(b"abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert bytes(32) == GENESIS


def test_key_id_is_16_hex_digits_of_the_raw_key_hash() -> None:
    """key_id is the first 16 hex digits of SHA-256(raw public key), the same for the same key."""
    raw = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert chain.key_id(KEY.public_key()) == entry_sha256(raw).hex()[:16]
    assert len(chain.key_id(KEY.public_key())) == 16
    assert chain.key_id(KEY.public_key()) != chain.key_id(OTHER_KEY.public_key())


def test_seal_signs_the_entry_without_its_checkpoint() -> None:
    """A sealed entry's checkpoint names its position, the hash of the entry without checkpoint, and KEY."""
    entry = audit_pb2.AuditEntry(position=7, prev_sha256=b"\x01" * 32, writer="hub-a", records=[record(7)])
    plain = entry.SerializeToString(deterministic=True)
    data = seal(STREAM, entry, KEY, _ts(T0))
    stored = audit_pb2.AuditEntry.FromString(data)
    assert stored.checkpoint.position == 7
    assert stored.checkpoint.head_sha256 == entry_sha256(plain)
    assert stored.checkpoint.key_id == chain.key_id(KEY.public_key())
    assert stored.checkpoint.signed_at == _ts(T0)
    assert chain.seal_problem(STREAM, stored, KEYS) == ""


_records = st.lists(
    st.builds(
        audit_pb2.AuditRecord,
        action=st.sampled_from([audit_pb2.ACTION_COLLECTION, audit_pb2.ACTION_DISCLOSURE]),
        distribution_id=st.text(max_size=40),
        recipient=st.text(max_size=20),
        fields=st.lists(st.text(max_size=30), max_size=5),
        data_sha256=st.binary(max_size=32),
    ),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(records=_records, position=st.integers(1, 2**40), writer=st.text(max_size=12), sign=st.booleans())
def test_an_entry_put_together_from_drafted_records_is_its_deterministic_encoding(
    records: list[audit_pb2.AuditRecord], position: int, writer: str, sign: bool
) -> None:
    """The writer's byte assembly (header fields + Draft.of's records + checkpoint) is what seal and protobuf make."""
    head = audit_pb2.AuditEntry(position=position, prev_sha256=b"\x02" * 32, written_at=_ts(T0), writer=writer)
    unsigned = head.SerializeToString(deterministic=True) + Draft.of(records).records
    entry = audit_pb2.AuditEntry()
    entry.CopyFrom(head)
    entry.records.extend(records)
    assert unsigned == entry.SerializeToString(deterministic=True)
    if sign:
        data = chain.seal_bytes(STREAM, unsigned, position, KEY, _ts(T0))
        assert data == seal(STREAM, entry, KEY, _ts(T0))
        assert data == audit_pb2.AuditEntry.FromString(data).SerializeToString(deterministic=True)
        assert chain.seal_problem(STREAM, audit_pb2.AuditEntry.FromString(data), KEYS) == ""


def test_seal_problem_names_each_fault() -> None:
    """seal_problem says why: unknown key, another stream, a bad signature, or content changed."""
    entry = audit_pb2.AuditEntry(position=3, prev_sha256=GENESIS, records=[record(3)])
    sealed = audit_pb2.AuditEntry.FromString(seal(STREAM, entry, KEY, _ts(T0)))
    assert chain.seal_problem(STREAM, sealed, {}) == f"signed with an unknown key {chain.key_id(KEY.public_key())}"
    assert chain.seal_problem("OTHER_STREAM", sealed, KEYS) == "its signature does not verify"
    bad_sig = audit_pb2.AuditEntry()
    bad_sig.CopyFrom(sealed)
    flip_signature(bad_sig)
    assert chain.seal_problem(STREAM, bad_sig, KEYS) == "its signature does not verify"
    changed = audit_pb2.AuditEntry()
    changed.CopyFrom(sealed)
    changed.writer = "someone"
    assert chain.seal_problem(STREAM, changed, KEYS) == "its content differs from what its signature covers"
    moved = audit_pb2.AuditEntry()
    moved.CopyFrom(sealed)
    moved.position = 4
    assert chain.seal_problem(STREAM, moved, KEYS) == "its content differs from what its signature covers"


def test_manifest_signature_round_trip_and_faults() -> None:
    """A signed manifest verifies; unknown key, changed field or flipped signature do not."""
    items = build(3)
    manifest = manifest_for(items)
    assert manifest.key_id == chain.key_id(KEY.public_key())
    assert len(manifest.signature) == 64
    assert chain.manifest_problem(manifest, KEYS) == ""
    assert chain.manifest_problem(manifest, {}).startswith("signed with an unknown key")
    changed = audit_pb2.ExportManifest()
    changed.CopyFrom(manifest)
    changed.last_position = 2
    assert chain.manifest_problem(changed, KEYS) == "its signature does not verify"
    assert chain.manifest_problem(manifest_for(items, OTHER_KEY), KEYS) == (
        f"signed with an unknown key {chain.key_id(OTHER_KEY.public_key())}"
    )


# -- key files ----------------------------------------------------------------------------------------------------


def test_generate_load_round_trip(tmp_path: Path) -> None:
    """generate_key writes a 0600 private PEM and a .pub.pem; both load to the same key id."""
    private = tmp_path / "keys" / "audit.pem"
    public = chain.generate_key(private)
    assert chain.public_path(private) == tmp_path / "keys" / "audit.pub.pem"
    assert chain.public_path(private).exists()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    loaded = chain.load_private_key(private)
    kid = chain.key_id(public)
    assert chain.key_id(loaded.public_key()) == kid
    from_public = chain.load_public_keys([chain.public_path(private)])
    from_private = chain.load_public_keys([private])
    assert list(from_public) == [kid]
    assert list(from_private) == [kid]
    # The loaded keys verify what the loaded private key signs.
    entry = audit_pb2.AuditEntry(position=1, prev_sha256=GENESIS, records=[record(1)])
    sealed = audit_pb2.AuditEntry.FromString(seal(STREAM, entry, loaded, _ts(T0)))
    assert chain.seal_problem(STREAM, sealed, from_public) == ""
    # Loading again gives the same id: it depends on the key only.
    assert chain.key_id(chain.load_private_key(private).public_key()) == kid


def test_load_public_keys_indexes_several_keys_by_id(tmp_path: Path) -> None:
    """Several key files give one entry per key id."""
    a = chain.generate_key(tmp_path / "a.pem")
    b = chain.generate_key(tmp_path / "b.pem")
    keys = chain.load_public_keys([tmp_path / "a.pub.pem", tmp_path / "b.pub.pem", tmp_path / "a.pem"])
    assert set(keys) == {chain.key_id(a), chain.key_id(b)}


def test_load_rejects_keys_that_are_not_ed25519(tmp_path: Path) -> None:
    """An EC key file is refused by both loaders with a TypeError."""
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(TypeError, match="not an Ed25519 private key"):
        chain.load_private_key(path)
    with pytest.raises(TypeError, match="not an Ed25519 key"):
        chain.load_public_keys([path])


# -- verify: clean chains -----------------------------------------------------------------------------------------


def test_untouched_chain_all_signed_verifies() -> None:
    """Ten entries, every one signed: no finding, and the counts describe the chain."""
    report = verify(STREAM, build(10), KEYS, last_seq=10)
    assert found(report) == []
    assert report.ok
    assert (report.entries, report.records, report.signed) == (10, 10, 10)
    assert (report.first_position, report.last_position, report.last_signed_position) == (1, 10, 10)
    assert not report.anchored_by_checkpoint
    assert report.summary().endswith("the chain verifies.")


def test_untouched_chain_signed_every_nth_and_last_verifies() -> None:
    """Signed every 4th entry and the last (11): clean, with 3 signatures counted."""
    report = verify(STREAM, build(11, signed={4, 8, 11}), KEYS, last_seq=11)
    assert found(report) == []
    assert (report.entries, report.signed, report.last_signed_position, report.last_position) == (11, 3, 11, 11)


def test_single_signed_entry_verifies() -> None:
    """A log of one signed entry at position 1 verifies."""
    report = verify(STREAM, build(1), KEYS, last_seq=1)
    assert found(report) == []
    assert (report.entries, report.first_position, report.last_position) == (1, 1, 1)


def test_empty_log_is_clean_unless_the_stream_had_entries() -> None:
    """No entries and no last_seq: clean; with last_seq: TRUNCATED without a position."""
    assert found(verify(STREAM, [], KEYS)) == []
    assert found(verify(STREAM, [], KEYS, last_seq=4)) == [(Kind.TRUNCATED, None, None)]


# -- verify: altered ----------------------------------------------------------------------------------------------


def test_altered_unsigned_middle_entry_is_altered_at_its_position() -> None:
    """Entry 3 (unsigned) changed: the next entry no longer links to it -> ALTERED at position 3, seq 3."""
    items = build(6, signed={6})
    items[2] = altered(items[2], change_writer)
    report = verify(STREAM, items, KEYS, last_seq=6)
    assert found(report) == [(Kind.ALTERED, 3, 3)]
    assert "entry 3 (seq 3) was altered" in report.findings[0].message


def test_altered_signed_middle_entry_is_altered_and_forged() -> None:
    """Entry 3 (signed) changed: its signature no longer covers it, and entry 4 does not link to it."""
    items = build(6)
    items[2] = altered(items[2], lambda e: e.records[0].__setattr__("detail", "rewritten"))
    report = verify(STREAM, items, KEYS, last_seq=6)
    assert found(report) == [(Kind.FORGED_CHECKPOINT, 3, 3), (Kind.ALTERED, 3, 3)]
    assert "differs from what its signature covers" in report.findings[0].message


def test_altered_last_entry_is_forged() -> None:
    """The last entry (signed) changed: FORGED_CHECKPOINT at it, and the tail is left unsigned."""
    items = build(4)
    items[3] = altered(items[3], change_writer)
    report = verify(STREAM, items, KEYS, last_seq=4)
    assert found(report) == [(Kind.FORGED_CHECKPOINT, 4, 4), (Kind.UNSIGNED_TAIL, 4, 4)]


# -- verify: removed, reordered, inserted -------------------------------------------------------------------------


def test_removed_entry_is_named() -> None:
    """Entry 3 deleted from the stream (seqs kept): REMOVED at the entry after the gap, naming 3."""
    items = build(6)
    del items[2]
    report = verify(STREAM, items, KEYS, last_seq=6)
    assert found(report) == [(Kind.REMOVED, 4, 4)]
    assert "entries 3 are missing (between seqs 2 and 4)" in report.findings[0].message


def test_removed_run_of_entries_is_named() -> None:
    """Entries 3 and 4 deleted: one REMOVED at 5 naming the range 3 to 4."""
    items = build(7, signed={2, 5, 7})
    del items[2:4]
    report = verify(STREAM, items, KEYS, last_seq=7)
    assert found(report) == [(Kind.REMOVED, 5, 5)]
    assert "entries 3 to 4 are missing" in report.findings[0].message


def test_removed_first_entry_is_unanchored() -> None:
    """Entry 1 deleted and no erasure record: UNANCHORED at 2 (the first left)."""
    items = build(4)[1:]
    report = verify(STREAM, items, KEYS, last_seq=4)
    assert found(report) == [(Kind.UNANCHORED, 2, 2)]


def test_reordered_adjacent_pair() -> None:
    """Entries 3 and 4 in each other's place: REORDERED at position 4 (stored at seq 3)."""
    items = build(6)
    e3, e4 = items[2], items[3]
    items[2], items[3] = Stored(3, e4.data), Stored(4, e3.data)
    report = verify(STREAM, items, KEYS, last_seq=6)
    assert found(report) == [(Kind.REORDERED, 4, 3)]
    assert "entries 3 and 4 are in each other's place (seqs 4 and 3)" in report.findings[0].message
    assert report.last_position == 6


def test_reordered_last_pair() -> None:
    """The last two entries swapped: REORDERED at position 5 (seq 4)."""
    items = build(5, signed={2, 5})
    e4, e5 = items[3], items[4]
    items[3], items[4] = Stored(4, e5.data), Stored(5, e4.data)
    report = verify(STREAM, items, KEYS, last_seq=5)
    assert found(report) == [(Kind.REORDERED, 5, 4)]


def test_inserted_foreign_entry_before_the_genuine_one() -> None:
    """A foreign entry claiming position 3 (not linked to 2) before the genuine 3: INSERTED at its seq."""
    genuine = build(5)
    foreign = audit_pb2.AuditEntry(position=3, prev_sha256=b"\x07" * 32, writer="intruder", records=[record(3)])
    items = [*genuine[:2], Stored(3, seal(STREAM, foreign, OTHER_KEY, _ts(T0)))]
    items += [Stored(item.seq + 1, item.data) for item in genuine[2:]]
    report = verify(STREAM, items, KEYS, last_seq=6)
    assert found(report) == [(Kind.INSERTED, 3, 3)]
    assert "the genuine entry 3 follows at seq 4" in report.findings[0].message
    assert (report.entries, report.last_position, report.signed) == (6, 5, 5)


def test_inserted_fork_linked_to_the_previous_entry() -> None:
    """A foreign unsigned entry that links to 2 and claims 3, stored before the genuine 3: INSERTED at it."""
    genuine = build(5)
    fork = audit_pb2.AuditEntry(
        position=3, prev_sha256=entry_sha256(genuine[1].data), writer="intruder", records=[record(3)]
    )
    items = [*genuine[:2], Stored(3, fork.SerializeToString(deterministic=True))]
    items += [Stored(item.seq + 1, item.data) for item in genuine[2:]]
    report = verify(STREAM, items, KEYS, last_seq=6)
    assert found(report) == [(Kind.INSERTED, 3, 3)]
    assert "the chain continues from the entry at seq 4" in report.findings[0].message


def test_inserted_entry_claiming_an_earlier_position() -> None:
    """A copy of entry 1 stored again after entry 3: INSERTED at position 1, seq 4."""
    genuine = build(5)
    items = [*genuine[:3], Stored(4, genuine[0].data)]
    items += [Stored(item.seq + 1, item.data) for item in genuine[3:]]
    report = verify(STREAM, items, KEYS, last_seq=6)
    assert found(report) == [(Kind.INSERTED, 1, 4)]
    assert "claims position 1, which is not where it stands (after position 3)" in report.findings[0].message


def test_inserted_entry_claiming_a_later_position_names_only_it() -> None:
    """A foreign entry claiming position 99, stored between genuine 2 and 3: one INSERTED naming it."""
    genuine = build(5)
    foreign = audit_pb2.AuditEntry(position=99, prev_sha256=b"\x07" * 32, writer="intruder", records=[record(99)])
    items = [*genuine[:2], Stored(3, foreign.SerializeToString(deterministic=True))]
    items += [Stored(item.seq + 1, item.data) for item in genuine[2:]]
    report = verify(STREAM, items, KEYS, last_seq=6)
    assert found(report) == [(Kind.INSERTED, 99, 3)]
    assert report.last_position == 5


# -- verify: truncated --------------------------------------------------------------------------------------------


def test_truncated_tail_by_last_seq() -> None:
    """Entries 4 and 5 gone while the stream went to seq 5: TRUNCATED at the last left (3)."""
    items = build(5)[:3]
    report = verify(STREAM, items, KEYS, last_seq=5)
    assert found(report) == [(Kind.TRUNCATED, 3, 3)]
    assert "the stream went up to seq 5" in report.findings[0].message


def test_last_seq_equal_to_the_last_entry_is_not_truncated() -> None:
    """last_seq == the last entry's seq is the normal case."""
    assert found(verify(STREAM, build(3), KEYS, last_seq=3)) == []


def test_truncated_tail_by_known_head() -> None:
    """An earlier verification saw entry 5; the log ends at 3: TRUNCATED at 3."""
    full = build(5)
    known = Head(5, entry_sha256(full[4].data))
    report = verify(STREAM, full[:3], KEYS, known=known)
    assert found(report) == [(Kind.TRUNCATED, 3, 3)]
    assert "an earlier verification saw entry 5" in report.findings[0].message


def test_known_head_still_present_is_clean() -> None:
    """The entry seen earlier is still there, unchanged: no finding."""
    items = build(5)
    assert found(verify(STREAM, items, KEYS, known=Head(3, entry_sha256(items[2].data)))) == []


def test_known_head_with_a_different_hash_is_altered() -> None:
    """Entry 3 is not the one seen earlier (the whole chain rewritten and re-signed): ALTERED at 3."""
    items = build(5)
    report = verify(STREAM, items, KEYS, known=Head(3, b"\x42" * 32))
    assert found(report) == [(Kind.ALTERED, 3, 3)]
    assert "entry 3 is not the one an earlier verification saw" in report.findings[0].message


# -- verify: forged checkpoints, unsigned tail, unreadable --------------------------------------------------------


def test_checkpoint_signed_by_an_untrusted_key_is_forged() -> None:
    """Entry 3 signed by a key that is not trusted: FORGED_CHECKPOINT at 3, naming the unknown key."""
    report = verify(STREAM, build(5, signer={3: OTHER_KEY}), KEYS, last_seq=5)
    assert found(report) == [(Kind.FORGED_CHECKPOINT, 3, 3)]
    assert f"unknown key {chain.key_id(OTHER_KEY.public_key())}" in report.findings[0].message
    assert report.signed == 4


def test_last_entry_signed_by_an_untrusted_key_is_forged_and_unsigned_tail() -> None:
    """The last entry signed by an untrusted key: FORGED at 5, and entries 5..5 carry no valid signature."""
    report = verify(STREAM, build(5, signed={2, 5}, signer={5: OTHER_KEY}), KEYS, last_seq=5)
    assert found(report) == [(Kind.FORGED_CHECKPOINT, 5, 5), (Kind.UNSIGNED_TAIL, 5, 5)]
    assert "entries 3 to 5 carry no valid signature" in report.findings[1].message


def test_flipped_signature_is_forged() -> None:
    """Entry 3's signature with one bit flipped (the chain written after it): FORGED_CHECKPOINT at 3."""
    report = verify(STREAM, build(5, after_seal={3: flip_signature}), KEYS, last_seq=5)
    assert found(report) == [(Kind.FORGED_CHECKPOINT, 3, 3)]
    assert "its signature does not verify" in report.findings[0].message


def test_checkpoint_from_another_stream_is_forged() -> None:
    """A chain sealed for another stream's name does not verify as this stream."""
    report = verify(STREAM, build(3, signed={3}, stream="OTHER_AUDIT"), KEYS, last_seq=3)
    assert found(report) == [(Kind.FORGED_CHECKPOINT, 3, 3), (Kind.UNSIGNED_TAIL, 3, 3)]


def test_no_trusted_keys_makes_every_checkpoint_forged() -> None:
    """With no trusted key, every signed entry is FORGED and the whole log is an unsigned tail."""
    report = verify(STREAM, build(2), {}, last_seq=2)
    assert found(report) == [(Kind.FORGED_CHECKPOINT, 1, 1), (Kind.FORGED_CHECKPOINT, 2, 2), (Kind.UNSIGNED_TAIL, 2, 2)]


def test_unsigned_tail() -> None:
    """Entries 4 and 5 unsigned (the last signature at 3): UNSIGNED_TAIL at 5, naming 4 to 5."""
    report = verify(STREAM, build(5, signed={1, 3}), KEYS, last_seq=5)
    assert found(report) == [(Kind.UNSIGNED_TAIL, 5, 5)]
    assert "entries 4 to 5 carry no valid signature" in report.findings[0].message
    assert report.last_signed_position == 3


def test_unreadable_message() -> None:
    """Bytes that are not an AuditEntry, appended at seq 5: UNREADABLE at seq 5, without a position."""
    items = [*build(4), Stored(5, b"\xff\xff\xff")]
    report = verify(STREAM, items, KEYS)
    assert found(report) == [(Kind.UNREADABLE, None, 5)]
    assert report.entries == 4


def test_unreadable_message_in_place_of_an_entry() -> None:
    """Entry 3's bytes replaced by garbage: UNREADABLE at seq 3, and entry 3 missing before 4."""
    items = build(5)
    items[2] = Stored(3, b"not an audit entry")
    report = verify(STREAM, items, KEYS, last_seq=5)
    assert found(report) == [(Kind.UNREADABLE, None, 3), (Kind.REMOVED, 4, 4)]


# -- verify: retention purge (anchored by a checkpoint) -----------------------------------------------------------


def test_purged_front_with_erasure_record_verifies() -> None:
    """Entries 1-4 purged, the log starts at signed 5, entry 8 records the erasure: clean, anchored."""
    items = build(8, signed={3, 5, 6, 8}, records={8: [erasure(1, 4, 5)]})[4:]
    report = verify(STREAM, items, KEYS, last_seq=8)
    assert found(report) == []
    assert report.anchored_by_checkpoint
    assert (report.first_position, report.last_position, report.entries) == (5, 8, 4)
    assert "anchored by a signed entry" in report.summary()


def test_purged_front_without_erasure_record_is_unanchored() -> None:
    """Entries 1-4 removed, the log starts at signed 5, but no erasure record: UNANCHORED at 5."""
    items = build(8, signed={5, 8})[4:]
    report = verify(STREAM, items, KEYS, last_seq=8)
    assert found(report) == [(Kind.UNANCHORED, 5, 5)]
    assert "no erasure record says that entries 1 to 4 were purged" in report.findings[0].message


def test_purged_front_with_erasure_record_for_another_position_is_unanchored() -> None:
    """The erasure says the log restarts at 5, but it starts at 7 (5 and 6 removed too): UNANCHORED at 7."""
    items = build(9, signed={5, 7, 9}, records={9: [erasure(1, 4, 5)]})[6:]
    report = verify(STREAM, items, KEYS, last_seq=9)
    assert found(report) == [(Kind.UNANCHORED, 7, 7)]


def test_log_starting_at_an_unsigned_entry_is_unanchored() -> None:
    """The log starts at unsigned 5 (even with an erasure record): UNANCHORED at 5."""
    items = build(8, signed={4, 8}, records={8: [erasure(1, 4, 5)]})[4:]
    report = verify(STREAM, items, KEYS, last_seq=8)
    assert found(report) == [(Kind.UNANCHORED, 5, 5)]
    assert not report.anchored_by_checkpoint
    assert "no valid signature vouches for what came before" in report.findings[0].message


def test_known_head_purged_under_retention_is_clean() -> None:
    """An earlier verification saw entry 2; a retention purge removed it since: no finding."""
    full = build(8, signed={2, 5, 8}, records={8: [erasure(1, 4, 5)]})
    report = verify(STREAM, full[4:], KEYS, known=Head(2, entry_sha256(full[1].data)))
    assert found(report) == []


def test_segment_is_checked_from_its_first_entry_without_anchor() -> None:
    """segment=True: a slice starting at unsigned 5, no erasure record, verifies clean (not UNANCHORED)."""
    items = build(8, signed={4, 8})[4:]
    report = verify(STREAM, items, KEYS, last_seq=8, segment=True)
    assert found(report) == []
    assert not report.anchored_by_checkpoint
    assert (report.first_position, report.last_position) == (5, 8)


def test_segment_still_finds_tampering_inside() -> None:
    """segment=True does not excuse a gap inside the slice: REMOVED at 7."""
    items = build(8)[4:]
    del items[1]
    report = verify(STREAM, items, KEYS, last_seq=8, segment=True)
    assert found(report) == [(Kind.REMOVED, 7, 7)]


# -- verify: export manifest --------------------------------------------------------------------------------------


def test_valid_export_manifest_is_clean() -> None:
    """An export with its manifest signed by a trusted key: clean."""
    items = build(5, signed={2, 5})
    assert found(verify(STREAM, items, KEYS, manifest=manifest_for(items))) == []


def test_manifest_signed_by_another_key_is_forged() -> None:
    """A manifest signed by an untrusted key: FORGED_CHECKPOINT for the log (no position)."""
    items = build(5)
    report = verify(STREAM, items, KEYS, manifest=manifest_for(items, OTHER_KEY))
    assert found(report) == [(Kind.FORGED_CHECKPOINT, None, None)]
    assert "the export manifest is not valid" in report.findings[0].message


def test_manifest_changed_after_signing_is_forged() -> None:
    """A manifest whose last_position was edited after signing: FORGED_CHECKPOINT."""
    items = build(5)
    manifest = manifest_for(items)
    manifest.last_position = 3
    report = verify(STREAM, items[:3], KEYS, manifest=manifest)
    assert found(report) == [(Kind.FORGED_CHECKPOINT, None, None)]


def test_manifest_beyond_the_end_is_truncated() -> None:
    """The manifest was made up to position 5; the export ends at 3: TRUNCATED at 3."""
    items = build(5)
    report = verify(STREAM, items[:3], KEYS, manifest=manifest_for(items))
    assert found(report) == [(Kind.TRUNCATED, 3, 3)]
    assert "the export was made up to position 5; it ends at 3" in report.findings[0].message


def test_manifest_of_another_last_entry_is_altered() -> None:
    """The export's last entry is not the one the manifest signed (same position, other hash): ALTERED."""
    items = build(5)
    other = build(5, signed={5})  # another chain, same positions
    report = verify(STREAM, items, KEYS, manifest=manifest_for(other))
    assert found(report) == [(Kind.ALTERED, 5, 5)]


# -- verify: tamper reported --------------------------------------------------------------------------------------


def test_tamper_detected_record_is_reported() -> None:
    """A TAMPER_DETECTED record in entry 4: TAMPER_REPORTED at 4, with its detail."""
    tamper = hub_record(audit_pb2.ACTION_TAMPER_DETECTED, T0, "entries 2 to 3 not vouched for")
    report = verify(STREAM, build(5, records={4: [record(4), tamper]}), KEYS, last_seq=5)
    assert found(report) == [(Kind.TAMPER_REPORTED, 4, 4)]
    assert "entries 2 to 3 not vouched for" in report.findings[0].message
    assert report.records == 6


def test_tamper_detected_record_in_the_first_entry_is_reported() -> None:
    """A TAMPER_DETECTED record in entry 1 is reported too."""
    tamper = hub_record(audit_pb2.ACTION_TAMPER_DETECTED, T0, "x")
    report = verify(STREAM, build(3, records={1: [tamper]}), KEYS, last_seq=3)
    assert found(report) == [(Kind.TAMPER_REPORTED, 1, 1)]


def test_tamper_detected_record_in_a_reordered_entry_is_reported() -> None:
    """Entries 3 and 4 swapped, entry 3 holding a TAMPER_DETECTED record: REORDERED and TAMPER_REPORTED at 3."""
    tamper = hub_record(audit_pb2.ACTION_TAMPER_DETECTED, T0, "entry 2 not vouched for")
    items = build(5, records={3: [tamper]})
    e3, e4 = items[2], items[3]
    items[2], items[3] = Stored(3, e4.data), Stored(4, e3.data)
    report = verify(STREAM, items, KEYS, last_seq=5)
    assert sorted(found(report), key=str) == sorted([(Kind.REORDERED, 4, 3), (Kind.TAMPER_REPORTED, 3, 4)], key=str)


# -- property: any one tampering is found -------------------------------------------------------------------------


@st.composite
def chains_and_tampering(draw: st.DrawFn) -> tuple[int, frozenset[int], str, int]:
    n = draw(st.integers(1, 30))
    signed = frozenset(draw(st.sets(st.integers(1, n))) | {n})
    kinds = ["alter"] if n == 1 else ["remove", "swap", "alter"]
    how = draw(st.sampled_from(kinds))
    where = draw(st.integers(0, n - 2 if how == "swap" else n - 1))
    return n, signed, how, where


@settings(max_examples=150, deadline=None)
@given(chains_and_tampering())
def test_any_single_tampering_is_found(case: tuple[int, frozenset[int], str, int]) -> None:
    """Remove one entry, swap two adjacent ones, or alter one: verify (knowing the stream's last seq) is not ok."""
    n, signed, how, where = case
    items = build(n, signed=signed)
    assert verify(STREAM, items, KEYS, last_seq=n).ok  # the untouched chain verifies
    if how == "remove":
        del items[where]
    elif how == "swap":
        a, b = items[where], items[where + 1]
        items[where], items[where + 1] = Stored(a.seq, b.data), Stored(b.seq, a.data)
    else:
        items[where] = altered(items[where], change_writer)
    report = verify(STREAM, items, KEYS, last_seq=n)
    assert not report.ok
    assert report.findings
