"""Revoked client certificates (pure): the hub's certificate revocation list and deny list, read and checked.

Two files may say a certificate is no longer trusted, both optional and named in the hub
config's [tls] section:

- crl_file: X.509 certificate revocation lists (PEM, one or more, or a single DER), each
  signed by a CA of tls.ca_file; a certificate is revoked when its issuer's list names its
  serial number.
- deny_file: a small TOML file the hub's operators write by hand: whole agencies, certificate
  serial numbers (hex, as `openssl x509 -serial` prints them) and SHA-256 fingerprints (hex).

A file that does not parse, or a CRL no trusted CA signed, makes the whole set invalid
(RevocationInvalid, naming each problem): the caller keeps the list it had. The check itself
(Revocations.revoked) is a few set lookups, done on every call at the edge.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from broker import ids

# The keys a deny file may hold.
DENY_KEYS = ("agencies", "serials", "fingerprints")
T = TypeVar("T")
_HEX = re.compile(r"^[0-9a-f]+$")


class RevocationInvalid(Exception):
    """The revocation files are not usable; problems names each (file, and what is wrong)."""

    def __init__(self, problems: Sequence[str]) -> None:
        """One line per problem."""
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class CertificateFacts:
    """What the revocation check needs of a client certificate: its agency, issuer, serial and fingerprint."""

    agency_id: str
    issuer: bytes  # the DER of the issuer's name
    serial: int
    sha256: str  # hex, lower case


def certificate_facts(cert: x509.Certificate, agency_id: str) -> CertificateFacts:
    """The facts of a parsed certificate whose agency is agency_id."""
    return CertificateFacts(
        agency_id, cert.issuer.public_bytes(), cert.serial_number, cert.fingerprint(hashes.SHA256()).hex()
    )


@dataclass(frozen=True)
class Revocations:
    """The certificates refused although their CA signed them; empty: none."""

    # (issuer DER, serial) of every certificate a CRL names.
    crl_entries: frozenset[tuple[bytes, int]] = frozenset()
    agencies: frozenset[str] = frozenset()
    serials: frozenset[int] = frozenset()
    fingerprints: frozenset[str] = frozenset()
    # Changes whenever the content does: a reload that finds the same content changes nothing.
    digest: str = field(default="", compare=False)

    @property
    def size(self) -> int:
        """How many entries (CRL entries, agencies, serials and fingerprints) the lists hold."""
        return len(self.crl_entries) + len(self.agencies) + len(self.serials) + len(self.fingerprints)

    def revoked(self, cert: CertificateFacts) -> str | None:
        """Why cert is refused (a short phrase without identifying values), or None if it is not."""
        if (cert.issuer, cert.serial) in self.crl_entries:
            return "its serial number is on its CA's revocation list"
        if cert.serial in self.serials:
            return "its serial number is on the hub's deny list"
        if cert.sha256 in self.fingerprints:
            return "its fingerprint is on the hub's deny list"
        if cert.agency_id in self.agencies:
            return "its agency is on the hub's deny list"
        return None


_CRL_SIGNING_KEYS = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)


def _signed_by(crl: x509.CertificateRevocationList, cas: Iterable[x509.Certificate]) -> bool:
    """Whether a CA of cas with the CRL's issuer name signed it."""
    for ca in cas:
        if ca.subject != crl.issuer:
            continue
        key = ca.public_key()
        if not isinstance(key, _CRL_SIGNING_KEYS):
            continue
        try:
            if crl.is_signature_valid(key):
                return True
        except (InvalidSignature, TypeError, ValueError):
            continue
    return False


def parse_crls(
    data: bytes, source: str, cas: Sequence[x509.Certificate], now: datetime
) -> tuple[frozenset[tuple[bytes, int]], list[str]]:
    """The (issuer, serial) entries of the CRLs in data, and warnings (a list past its next update).

    Raises RevocationInvalid if data holds no CRL, a CRL does not parse, or no CA of cas signed one.
    """
    crls: list[x509.CertificateRevocationList] = []
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            blocks = re.findall(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", data, re.DOTALL)
            crls = [x509.load_pem_x509_crl(block) for block in blocks]
        elif data.strip():
            crls = [x509.load_der_x509_crl(data)]
    except ValueError as exc:
        raise RevocationInvalid([f"{source}: not a certificate revocation list (PEM or DER): {exc}"]) from exc
    if not crls:
        raise RevocationInvalid([f"{source}: holds no certificate revocation list"])
    entries: set[tuple[bytes, int]] = set()
    warnings: list[str] = []
    for i, crl in enumerate(crls):
        if not _signed_by(crl, cas):
            raise RevocationInvalid([f"{source}: list {i + 1}: not signed by a CA of tls.ca_file"])
        issuer = crl.issuer.public_bytes()
        entries.update((issuer, revoked.serial_number) for revoked in crl)
        next_update = crl.next_update_utc
        if next_update is not None and next_update < now:
            warnings.append(f"{source}: list {i + 1}: past its next update ({next_update.isoformat()})")
    return frozenset(entries), warnings


def _hex(value: str) -> str:
    return value.strip().lower().replace(":", "").removeprefix("0x")


def _entries(source: str, key: str, values: list[str], parse: Callable[[str], T | None], rule: str) -> set[T]:
    """Each value of a deny file's list parsed; RevocationInvalid naming every one that is not `rule`."""
    out: set[T] = set()
    problems: list[str] = []
    for i, value in enumerate(values):
        parsed = parse(value)
        if parsed is None:
            problems.append(f"{source}: {key}[{i}]: must be {rule}")
        else:
            out.add(parsed)
    if problems:
        raise RevocationInvalid(problems)
    return out


def _agency(value: str) -> str | None:
    return value if ids.is_agency_id(value) else None


def _serial(value: str) -> int | None:
    digits = _hex(value)
    return int(digits, 16) if _HEX.match(digits) and len(digits) <= 40 else None  # RFC 5280: at most 20 octets


def _fingerprint(value: str) -> str | None:
    digits = _hex(value)
    return digits if _HEX.match(digits) and len(digits) == 64 else None


def parse_deny(text: str, source: str) -> tuple[frozenset[str], frozenset[int], frozenset[str]]:
    """The agencies, serial numbers and fingerprints of a deny file; RevocationInvalid naming each bad entry."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RevocationInvalid([f"{source}: {exc}"]) from exc
    known = ", ".join(DENY_KEYS)
    problems = [f"{source}: {key}: is not a known key (use {known})" for key in data if key not in DENY_KEYS]
    lists: dict[str, list[str]] = {}
    for key in DENY_KEYS:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{source}: {key}: must be a list of strings")
            value = []
        lists[key] = value
    found: list[set[Any]] = []
    for key, parse, rule in (
        ("agencies", _agency, "an agency id such as it.pl.001272"),
        ("serials", _serial, "a serial number in hex (at most 20 bytes)"),
        ("fingerprints", _fingerprint, "a SHA-256 fingerprint in hex (64 digits)"),
    ):
        try:
            found.append(_entries(source, key, lists[key], parse, rule))
        except RevocationInvalid as exc:
            problems += exc.problems
    if problems:
        raise RevocationInvalid(problems)
    agencies, serials, fingerprints = found
    return frozenset(agencies), frozenset(serials), frozenset(fingerprints)


def load_cas(ca_file: Path) -> list[x509.Certificate]:
    """The CA certificates of a PEM bundle (tls.ca_file); the CRLs must be signed by one of them."""
    try:
        return x509.load_pem_x509_certificates(ca_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise RevocationInvalid([f"{ca_file}: cannot read the CA certificates: {exc}"]) from exc


def load(
    crl_file: Path | None, deny_file: Path | None, cas: Sequence[x509.Certificate], now: datetime
) -> tuple[Revocations, list[str]]:
    """Read the files (either may be None); returns the lists and warnings, or raises RevocationInvalid whole."""
    digest = hashlib.sha256()
    entries: frozenset[tuple[bytes, int]] = frozenset()
    agencies: frozenset[str] = frozenset()
    serials: frozenset[int] = frozenset()
    fingerprints: frozenset[str] = frozenset()
    warnings: list[str] = []
    problems: list[str] = []
    if crl_file is not None:
        try:
            data = crl_file.read_bytes()
            digest.update(data)
            entries, warnings = parse_crls(data, str(crl_file), cas, now)
        except OSError as exc:
            problems.append(f"{crl_file}: cannot read: {exc.strerror}")
        except RevocationInvalid as exc:
            problems += exc.problems
    digest.update(b"\0")
    if deny_file is not None:
        try:
            text = deny_file.read_text(encoding="utf-8")
            digest.update(text.encode())
            agencies, serials, fingerprints = parse_deny(text, str(deny_file))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{deny_file}: cannot read: {exc}")
        except RevocationInvalid as exc:
            problems += exc.problems
    if problems:
        raise RevocationInvalid(problems)
    return Revocations(entries, agencies, serials, fingerprints, digest.hexdigest()), warnings
