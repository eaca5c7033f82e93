"""The audit chain's cryptography: entry hashes, Ed25519 signatures of entries and exports, key files."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.timestamp_pb2 import Timestamp
from opsroom.audit.v1 import audit_pb2

from broker.errors import ConfigError

GENESIS = bytes(32)


def entry_sha256(data: bytes) -> bytes:
    """The hash that links an entry to the next: SHA-256 of its stored bytes."""
    return hashlib.sha256(data).digest()


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def statement(stream: str, position: int, head: bytes, signed_at: Timestamp, kid: str) -> bytes:
    """The bytes a checkpoint signs."""
    message = audit_pb2.CheckpointStatement(
        stream=stream, position=position, head_sha256=head, signed_at=signed_at, key_id=kid
    )
    return message.SerializeToString(deterministic=True)


def sign_checkpoint(
    stream: str, position: int, head: bytes, signed_at: Timestamp, key: Ed25519PrivateKey
) -> audit_pb2.Checkpoint:
    """A checkpoint over the chain up to position, whose entry hashes to head."""
    kid = key_id(key.public_key())
    signature = key.sign(statement(stream, position, head, signed_at, kid))
    return audit_pb2.Checkpoint(
        position=position, head_sha256=head, signed_at=signed_at, key_id=kid, signature=signature
    )


def checkpoint_problem(stream: str, checkpoint: audit_pb2.Checkpoint, keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Why the checkpoint's signature is not valid ("" when it is)."""
    key = keys.get(checkpoint.key_id)
    if key is None:
        return f"signed with an unknown key {checkpoint.key_id or '(none)'}"
    data = statement(stream, checkpoint.position, checkpoint.head_sha256, checkpoint.signed_at, checkpoint.key_id)
    try:
        key.verify(checkpoint.signature, data)
    except InvalidSignature:
        return "its signature does not verify"
    return ""


def sign_manifest(manifest: audit_pb2.ExportManifest, key: Ed25519PrivateKey) -> audit_pb2.ExportManifest:
    """The manifest with key id and signature set."""
    signed = audit_pb2.ExportManifest()
    signed.CopyFrom(manifest)
    signed.key_id = key_id(key.public_key())
    signed.signature = b""
    signed.signature = key.sign(signed.SerializeToString(deterministic=True))
    return signed


def manifest_problem(manifest: audit_pb2.ExportManifest, keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Why the manifest's signature is not valid ("" when it is)."""
    key = keys.get(manifest.key_id)
    if key is None:
        return f"signed with an unknown key {manifest.key_id or '(none)'}"
    unsigned = audit_pb2.ExportManifest()
    unsigned.CopyFrom(manifest)
    unsigned.signature = b""
    try:
        key.verify(manifest.signature, unsigned.SerializeToString(deterministic=True))
    except InvalidSignature:
        return "its signature does not verify"
    return ""


def generate_key(private_path: Path) -> Ed25519PublicKey:
    """Write a new Ed25519 private key (PKCS#8 PEM, mode 600) and its public key beside it (.pub.pem)."""
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private_path.chmod(0o600)
    public_path(private_path).write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key.public_key()


def public_path(private_path: Path) -> Path:
    """Where the public key of a private key file is kept."""
    return private_path.with_name(private_path.name.removesuffix(".pem") + ".pub.pem")


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError(f"{path}: not an Ed25519 private key")
    return key


def load_public_keys(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """Ed25519 public keys from PEM files (public keys, or private keys whose public half is taken), by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        data = path.read_bytes()
        try:
            loaded: object = serialization.load_pem_public_key(data)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=None).public_key()
        if not isinstance(loaded, Ed25519PublicKey):
            raise TypeError(f"{path}: not an Ed25519 key")
        keys[key_id(loaded)] = loaded
    return keys


def load_keys(
    private_path: Path, trusted_paths: Iterable[Path]
) -> tuple[Ed25519PrivateKey, dict[str, Ed25519PublicKey]]:
    """A writer's signing key, and the keys it trusts (the given ones and its own public half).

    Raises ConfigError naming the problem.
    """
    try:
        key = load_private_key(private_path)
        trusted = load_public_keys(trusted_paths)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"audit keys: {exc} (make one with `opsroom audit keygen --out FILE`)") from exc
    trusted[key_id(key.public_key())] = key.public_key()
    return key, trusted


def seal(stream: str, entry: audit_pb2.AuditEntry, key: Ed25519PrivateKey, signed_at: Timestamp) -> bytes:
    """The entry's stored bytes, with a checkpoint signing the entry itself (and so the chain up to it).

    The checkpoint is set on entry too.
    """
    entry.ClearField("checkpoint")
    unsigned = entry.SerializeToString(deterministic=True)
    data = seal_bytes(stream, unsigned, entry.position, key, signed_at)
    entry.MergeFromString(data[len(unsigned) :])
    return data


def seal_bytes(stream: str, unsigned: bytes, position: int, key: Ed25519PrivateKey, signed_at: Timestamp) -> bytes:
    """seal() for an entry already serialized without its checkpoint (unsigned), at position.

    The checkpoint is the entry's last field (6), so appending its encoding gives the
    deterministic serialization of the signed entry.
    """
    checkpoint = sign_checkpoint(stream, position, entry_sha256(unsigned), signed_at, key)
    return unsigned + audit_pb2.AuditEntry(checkpoint=checkpoint).SerializeToString(deterministic=True)


def seal_problem(stream: str, entry: audit_pb2.AuditEntry, keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Why the entry's checkpoint does not vouch for it ("" when it does)."""
    checkpoint = entry.checkpoint
    unsigned = audit_pb2.AuditEntry()
    unsigned.CopyFrom(entry)
    unsigned.ClearField("checkpoint")
    head = entry_sha256(unsigned.SerializeToString(deterministic=True))
    if checkpoint.position != entry.position or checkpoint.head_sha256 != head:
        problem = checkpoint_problem(stream, checkpoint, keys)
        return problem or "its content differs from what its signature covers"
    return checkpoint_problem(stream, checkpoint, keys)
