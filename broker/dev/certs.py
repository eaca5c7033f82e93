"""A development PKI: a local CA, the hub's server certificate and one client certificate per agency.

Agency certificates carry the agency id as a URI subject alternative name
`urn:opsroom:agency:<id>` (and as the common name, for humans). Production agencies get their
certificates from their own PKI with the same URI; `opsroom dev-certs` is for the embedded
default, the demo and the tests only.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker import ids
from broker.audit.chain import generate_key

_VALIDITY = timedelta(days=365)
# The hub's user in nats-server's authorization (hub config: nats.user, nats.password_file).
NATS_HUB_USER = "opsroom-hub"


@dataclass(frozen=True)
class KeyPair:
    """PEM paths of a certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class DevPki:
    """Where the development PKI's files are."""

    root: Path
    ca: Path
    hub: KeyPair
    # Where the audit signing key is when not in root (e.g. where a hub config names it).
    audit_key_file: Path | None = None

    @classmethod
    def at(cls, root: Path, audit_key: Path | None = None) -> DevPki:
        """The layout of a development PKI under root: ca.pem, hub.pem, hub-key.pem, agencies/<id>.pem."""
        return cls(root, root / "ca.pem", KeyPair(root / "hub.pem", root / "hub-key.pem"), audit_key)

    @property
    def audit_key(self) -> Path:
        """The hub's Ed25519 audit signing key (default root/audit-key.pem; its public half beside it, .pub.pem)."""
        return self.audit_key_file or self.root / "audit-key.pem"

    @property
    def crl(self) -> Path:
        """The development CA's certificate revocation list (crl.pem; `opsroom dev-certs --revoke` writes it)."""
        return self.root / "crl.pem"

    @property
    def nats_auth(self) -> Path:
        """nats-server's authorization for the hub (nats-auth.conf, for an `include` in its config)."""
        return self.root / "nats-auth.conf"

    @property
    def nats_password(self) -> Path:
        """The hub's development NATS password (nats-hub.password; nats-server's authorization names it)."""
        return self.root / "nats-hub.password"

    def agency(self, agency_id: str) -> KeyPair:
        """The certificate pair of an agency."""
        base = self.root / "agencies" / agency_id
        return KeyPair(Path(f"{base}.pem"), Path(f"{base}-key.pem"))


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


def _load_ca(root: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert_path, ca_key_path = root / "ca.pem", root / "ca-key.pem"
    if ca_cert_path.exists() and ca_key_path.exists():
        cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{ca_key_path}: expected an EC key")
        return cert, key
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opsroom development CA")])
    cert = (
        _builder("opsroom development CA", name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(ca_key_path, key)
    _write_cert(ca_cert_path, cert)
    return cert, key


def _issue(
    pair: KeyPair,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> None:
    if pair.cert.exists() and pair.key.exists():
        return
    key = _key()
    cert = (
        _builder(common_name, ca[0].subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca[1], hashes.SHA256())
    )
    _write_key(pair.key, key)
    _write_cert(pair.cert, cert)


def make_dev_pki(
    root: Path,
    agencies: Iterable[str],
    hosts: Iterable[str] = ("localhost", "127.0.0.1"),
    *,
    audit_key: Path | None = None,
) -> DevPki:
    """Create (or complete) a development PKI under root; existing files are kept.

    The audit signing key goes to audit_key if given (where a hub config names it), else root/audit-key.pem.
    """
    root.mkdir(parents=True, exist_ok=True)
    ca = _load_ca(root)
    pki = DevPki.at(root, audit_key)
    host_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            host_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            host_names.append(x509.DNSName(host))
    _issue(pki.hub, ca, "opsroom hub", host_names, ExtendedKeyUsageOID.SERVER_AUTH)
    for agency_id in agencies:
        if not ids.is_agency_id(agency_id):
            raise ValueError(f"not an agency id: {agency_id!r}")
        uri = x509.UniformResourceIdentifier(ids.AGENCY_URI_PREFIX + agency_id)
        _issue(pki.agency(agency_id), ca, agency_id, [uri], ExtendedKeyUsageOID.CLIENT_AUTH)
    if not pki.audit_key.exists():
        generate_key(pki.audit_key)
    if not pki.nats_password.exists():
        pki.nats_password.write_text(secrets.token_urlsafe(32) + "\n")
        pki.nats_password.chmod(0o600)
    pki.nats_auth.write_text(nats_authorization(pki.nats_password.read_text().strip()))
    pki.nats_auth.chmod(0o600)
    return pki


def hub_permissions(stream: str = "OPSROOM", prefix: str = "opsroom") -> tuple[list[str], list[str]]:
    """The subjects the hub may publish to and subscribe to: its own subjects, and the JetStream API of its streams.

    Its streams are <stream>, <stream>_BULK and <stream>_AUDIT; nothing else in the account
    (another stream, the account's streams list, another application's subjects) is reachable.
    """
    streams = (stream, f"{stream}_BULK", f"{stream}_AUDIT")
    publish = [f"{prefix}.>"]
    for name in streams:
        publish += [
            f"$JS.API.STREAM.*.{name}",  # CREATE, UPDATE, INFO, PURGE
            f"$JS.API.CONSUMER.*.{name}",  # LIST
            f"$JS.API.CONSUMER.*.{name}.>",  # CREATE, DELETE, INFO
            f"$JS.API.CONSUMER.MSG.NEXT.{name}.*",  # pull
            f"$JS.API.DIRECT.GET.{name}",
            f"$JS.API.DIRECT.GET.{name}.>",
            f"$JS.ACK.{name}.>",
        ]
    return publish, ["_INBOX.>", f"{prefix}.>"]


def nats_authorization(password: str, stream: str = "OPSROOM", prefix: str = "opsroom", extra_users: str = "") -> str:
    """nats-server config text: an account OPSROOM with JetStream, whose one user is the hub, limited to its subjects.

    A client without these credentials is refused at connect (no user has no password, and
    there is no default user); extra_users is config text for more users of the account (tests).
    """
    publish, subscribe = hub_permissions(stream, prefix)

    def quoted(subjects: list[str]) -> str:
        return ", ".join(f'"{s}"' for s in subjects)

    return f"""# The hub's NATS account and user (written by opsroom dev-certs; hub: nats.user, nats.password_file).
# Rooms never get NATS credentials: they reach the hub over gRPC with mTLS only.
accounts {{
  OPSROOM {{
    jetstream: enabled
    users: [
      {{
        user: "{NATS_HUB_USER}"
        password: "{password}"
        permissions: {{
          publish: {{ allow: [{quoted(publish)}] }}
          subscribe: {{ allow: [{quoted(subscribe)}] }}
        }}
      }}
{extra_users}    ]
  }}
}}
"""


def write_crl(
    root: Path, revoke: Iterable[str] = (), reinstate: Iterable[str] = (), *, next_update: timedelta = timedelta(days=7)
) -> Path:
    """Write root/crl.pem signed by the development CA, with the agencies in revoke added; returns its path.

    The serials it listed before stay, plus the current certificates of the agencies in revoke,
    less those of the agencies in reinstate. An empty list is a valid CRL too (nothing revoked).
    """
    ca_cert, ca_key = _load_ca(root)
    pki = DevPki.at(root)
    serials: set[int] = set()
    if pki.crl.exists():
        serials = {entry.serial_number for entry in x509.load_pem_x509_crl(pki.crl.read_bytes())}

    def serial_of(agency_id: str) -> int:
        return x509.load_pem_x509_certificate(pki.agency(agency_id).cert.read_bytes()).serial_number

    serials |= {serial_of(a) for a in revoke}
    serials -= {serial_of(a) for a in reinstate}
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + next_update)
    )
    for serial in sorted(serials):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - timedelta(minutes=5)).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    tmp = pki.crl.with_suffix(".tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    tmp.replace(pki.crl)  # the hub never reads half a file
    return pki.crl
