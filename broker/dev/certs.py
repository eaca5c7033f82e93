"""A development PKI: a local CA, the hub's server certificate and one client certificate per agency.

Agency certificates carry the agency id as a URI subject alternative name
`urn:opsroom:agency:<id>` (and as the common name, for humans). Production agencies get their
certificates from their own PKI with the same URI; `opsroom dev-certs` is for the embedded
default, the demo and the tests only.
"""

from __future__ import annotations

import ipaddress
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
    return pki
