"""broker.dev.certs (development PKI) and broker.edge.identity (the agency named by a client certificate)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.dev.certs import DevPki, make_dev_pki
from broker.edge.identity import IdentityResolver, agency_from_certificate
from broker.errors import Reason, Unauthenticated
from broker.ids import AGENCY_URI_PREFIX
from tests import factories as f

AGENCIES = (f.CUR, f.CC)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def self_signed(san: list[x509.GeneralName] | None, common_name: str = "test") -> bytes:
    """A PEM certificate with the given subject alternative names (none: no SAN extension), signed by a new key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def uri(value: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(value)


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return make_dev_pki(tmp_path / "pki", AGENCIES)


# -- make_dev_pki --------------------------------------------------------------------------


def test_make_dev_pki_creates_ca_hub_and_agency_files(tmp_path: Path, pki: DevPki) -> None:
    """The CA, the hub pair and one pair per agency are written, keys readable by the owner only."""
    root = tmp_path / "pki"
    assert (root, root / "ca.pem", root / "hub.pem", root / "hub-key.pem") == (
        pki.root,
        pki.ca,
        pki.hub.cert,
        pki.hub.key,
    )
    paths = [pki.ca, root / "ca-key.pem", pki.hub.cert, pki.hub.key, root / "audit-key.pub.pem", pki.audit_key]
    for agency in AGENCIES:
        pair = pki.agency(agency)
        assert (root / "agencies" / f"{agency}.pem", root / "agencies" / f"{agency}-key.pem") == (pair.cert, pair.key)
        paths += [pair.cert, pair.key]
    paths += [pki.nats_auth, pki.nats_password]  # the hub's NATS account (for nats-server) and password
    assert [True] * len(paths) == [p.is_file() for p in paths]
    assert len(paths) == len(all_files(root))
    assert 0o600 == pki.nats_auth.stat().st_mode & 0o777
    assert pki.nats_password.read_text().strip() in pki.nats_auth.read_text()
    for key_path in paths[1::2]:
        assert 0o600 == key_path.stat().st_mode & 0o777, key_path


def test_make_dev_pki_twice_keeps_existing_files(tmp_path: Path, pki: DevPki) -> None:
    """A second run over the same folder leaves every existing file byte for byte."""
    before = all_files(pki.root)
    again = make_dev_pki(pki.root, AGENCIES)
    assert pki == again
    assert before == all_files(pki.root)


def test_make_dev_pki_adds_new_agencies_and_keeps_the_ca(tmp_path: Path, pki: DevPki) -> None:
    """A run with one more agency adds its pair, issued by the same CA, and changes no existing file."""
    before = all_files(pki.root)
    make_dev_pki(pki.root, [*AGENCIES, f.QUESTURA])
    after = all_files(pki.root)
    assert before == {name: after[name] for name in before}
    assert 2 == len(after) - len(before)
    new = load(pki.agency(f.QUESTURA).cert)
    new.verify_directly_issued_by(load(pki.ca))
    assert f.QUESTURA == agency_from_certificate(pki.agency(f.QUESTURA).cert.read_bytes())


@pytest.mark.parametrize("bad", ["IT.PL.001272", "it", "it..pl", "it.pl_001272", "../it.pl.1", "it.pl.1/x", ""])
def test_make_dev_pki_rejects_malformed_agency_id(tmp_path: Path, bad: str) -> None:
    """An agency id that is not well formed is refused with ValueError naming it."""
    with pytest.raises(ValueError, match="not an agency id") as info:
        make_dev_pki(tmp_path, [f.CUR, bad])
    assert repr(bad) in str(info.value)


def test_certificates_are_issued_by_the_ca(pki: DevPki) -> None:
    """The hub and agency certificates verify against the CA, which is a CA; they are not."""
    ca = load(pki.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for path in (pki.hub.cert, *(pki.agency(a).cert for a in AGENCIES)):
        cert = load(path)
        cert.verify_directly_issued_by(ca)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_hub_certificate_names_and_usage(pki: DevPki) -> None:
    """The hub certificate is for localhost and 127.0.0.1, for server authentication."""
    hub = load(pki.hub.cert)
    san = hub.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ["localhost"] == san.get_values_for_type(x509.DNSName)
    assert [ipaddress.ip_address("127.0.0.1")] == san.get_values_for_type(x509.IPAddress)
    assert [] == san.get_values_for_type(x509.UniformResourceIdentifier)
    assert [ExtendedKeyUsageOID.SERVER_AUTH] == eku(hub)


def test_hub_certificate_with_custom_hosts(tmp_path: Path) -> None:
    """hosts become DNS or IP address names as they parse."""
    pki = make_dev_pki(tmp_path, [], hosts=("hub.opsroom.test", "10.1.2.3", "::1"))
    san = load(pki.hub.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ["hub.opsroom.test"] == san.get_values_for_type(x509.DNSName)
    assert [ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("::1")] == san.get_values_for_type(x509.IPAddress)


def test_agency_certificate_names_and_usage(pki: DevPki) -> None:
    """An agency certificate carries its agency URI and common name, for client authentication."""
    for agency in AGENCIES:
        cert = load(pki.agency(agency).cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [AGENCY_URI_PREFIX + agency] == san.get_values_for_type(x509.UniformResourceIdentifier)
        assert [agency] == [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        assert [ExtendedKeyUsageOID.CLIENT_AUTH] == eku(cert)


def test_agency_key_matches_its_certificate(pki: DevPki) -> None:
    """Each agency's key file holds the private key of its certificate."""
    for agency in AGENCIES:
        pair = pki.agency(agency)
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
        assert load(pair.cert).public_key() == key.public_key()


def test_agencies_differing_in_last_segment_get_their_own_certificates(tmp_path: Path) -> None:
    """Agencies whose ids differ only after the last dot get distinct certificate files naming each of them."""
    # Regression: DevPki.agency() used Path.with_suffix(".pem") (eb3c521), giving both agencies/it.pl.pem.
    pki = make_dev_pki(tmp_path, [f.PL, f.PL_MILANO])
    assert pki.agency(f.PL).cert != pki.agency(f.PL_MILANO).cert
    for agency in (f.PL, f.PL_MILANO):
        pair = pki.agency(agency)
        assert agency == agency_from_certificate(pair.cert.read_bytes())
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
        assert load(pair.cert).public_key() == key.public_key()


# -- agency_from_certificate ---------------------------------------------------------------


def test_agency_from_agency_certificate(pki: DevPki) -> None:
    """The agency certificate yields its agency id."""
    for agency in AGENCIES:
        assert agency == agency_from_certificate(pki.agency(agency).cert.read_bytes())


def test_hub_certificate_names_no_agency(pki: DevPki) -> None:
    """The hub certificate has no agency URI, so it names no agency."""
    assert agency_from_certificate(pki.hub.cert.read_bytes()) is None


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"\x30\x82\x01\x00" + bytes(200),
    ],
)
def test_garbage_names_no_agency(garbage: bytes) -> None:
    """Bytes that are not a PEM certificate name no agency."""
    assert agency_from_certificate(garbage) is None


def test_key_file_names_no_agency(pki: DevPki) -> None:
    """A PEM private key is not a certificate and names no agency."""
    assert agency_from_certificate(pki.agency(f.CUR).key.read_bytes()) is None


def test_certificate_signed_by_any_key_with_one_agency_uri() -> None:
    """The parse reads the URI whoever signed it (trust is the TLS layer's job); other URIs are ignored."""
    pem = self_signed([uri("https://example.org/x"), uri(AGENCY_URI_PREFIX + f.PL), x509.DNSName("pl.example")])
    assert f.PL == agency_from_certificate(pem)


@pytest.mark.parametrize(
    "san",
    [
        pytest.param([uri(AGENCY_URI_PREFIX + f.PL), uri(AGENCY_URI_PREFIX + f.CC)], id="two-agencies"),
        pytest.param([uri(AGENCY_URI_PREFIX + f.PL), uri(AGENCY_URI_PREFIX + f.PL)], id="same-agency-twice"),
        pytest.param([uri(AGENCY_URI_PREFIX + "IT.PL.001272")], id="uppercase-id"),
        pytest.param([uri(AGENCY_URI_PREFIX + "it.pl_001272")], id="underscore-id"),
        pytest.param([uri(AGENCY_URI_PREFIX)], id="empty-id"),
        pytest.param([uri(AGENCY_URI_PREFIX + "it.pl.001272 ")], id="trailing-space"),
        pytest.param([uri(AGENCY_URI_PREFIX + "it.a." + "b" * 60)], id="too-long"),
        pytest.param([uri("urn:opsroom:agent:" + f.PL)], id="other-urn"),
        pytest.param([x509.DNSName(f.PL)], id="dns-only"),
        pytest.param(None, id="no-san"),
    ],
)
def test_certificate_without_a_single_well_formed_agency(san: list[x509.GeneralName] | None) -> None:
    """Two agency URIs, a malformed id, or no agency URI at all: no agency."""
    assert agency_from_certificate(self_signed(san, common_name=f.PL)) is None


# -- IdentityResolver ----------------------------------------------------------------------


class FakeContext:
    """The part of a grpc.aio.ServicerContext the resolver uses."""

    def __init__(self, *pems: bytes) -> None:
        self.pems = list(pems)

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": self.pems} if self.pems else {}


def test_resolver_returns_the_certificate_agency(pki: DevPki) -> None:
    """The resolver names the agency of the peer certificate, from the cache the second time."""
    resolver = IdentityResolver(cache_size=1)
    pem = pki.agency(f.CC).cert.read_bytes()
    assert [f.CC, f.CC] == [resolver.agency(FakeContext(pem)) for _ in range(2)]  # type: ignore[arg-type]
    assert f.CUR == resolver.agency(FakeContext(pki.agency(f.CUR).cert.read_bytes()))  # type: ignore[arg-type]


@pytest.mark.parametrize("which", ["none", "hub"])
def test_resolver_refuses_a_call_without_agency(pki: DevPki, which: str) -> None:
    """No client certificate, or one naming no agency, is CERTIFICATE_WITHOUT_AGENCY."""
    context = FakeContext() if which == "none" else FakeContext(pki.hub.cert.read_bytes())
    resolver = IdentityResolver()
    for _ in range(2):  # the second time from the cache
        with pytest.raises(Unauthenticated) as info:
            resolver.agency(context)  # type: ignore[arg-type]
        assert Reason.CERTIFICATE_WITHOUT_AGENCY == info.value.reason
