"""The revocation lists (broker.policy.revocation): CRLs checked against the CA, the deny file's entries, the check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from broker.dev.certs import make_dev_pki, write_crl
from broker.policy.revocation import (
    CertificateFacts,
    RevocationInvalid,
    Revocations,
    certificate_facts,
    load,
    load_cas,
    parse_crls,
    parse_deny,
)

NOW = datetime.now(UTC)
PL, CUR = "it.pl.001272", "it.nue.cur.to"


def _facts(pki_root: Path, agency: str) -> CertificateFacts:
    cert = x509.load_pem_x509_certificate((pki_root / "agencies" / f"{agency}.pem").read_bytes())
    return certificate_facts(cert, agency)


def test_a_crl_revokes_exactly_the_serials_it_lists(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "pki", [PL, CUR])
    crl = write_crl(pki.root, revoke=[PL])
    revocations, warnings = load(crl, None, load_cas(pki.ca), NOW)
    assert [] == warnings
    assert "revocation list" in (revocations.revoked(_facts(pki.root, PL)) or "")
    assert revocations.revoked(_facts(pki.root, CUR)) is None
    assert 1 == revocations.size
    reinstated, _ = load(write_crl(pki.root, reinstate=[PL]), None, load_cas(pki.ca), NOW)
    assert reinstated.revoked(_facts(pki.root, PL)) is None
    assert reinstated.digest != revocations.digest


def test_the_same_serial_from_another_issuer_is_not_revoked(tmp_path: Path) -> None:
    """A CRL entry names (issuer, serial): another CA's certificate with that serial stays trusted."""
    pki = make_dev_pki(tmp_path / "pki", [PL])
    revocations, _ = load(write_crl(pki.root, revoke=[PL]), None, load_cas(pki.ca), NOW)
    facts = _facts(pki.root, PL)
    other = CertificateFacts(facts.agency_id, b"another issuer", facts.serial, facts.sha256[::-1])
    assert revocations.revoked(other) is None


def test_a_crl_signed_by_another_ca_is_refused(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "pki", [PL])
    other = make_dev_pki(tmp_path / "other", [PL])
    with pytest.raises(RevocationInvalid, match=r"not signed by a CA of tls\.ca_file"):
        parse_crls(write_crl(other.root, revoke=[PL]).read_bytes(), "crl.pem", load_cas(pki.ca), NOW)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"],
    ids=["empty", "not a crl", "bad pem"],
)
def test_a_malformed_crl_is_refused(tmp_path: Path, data: bytes) -> None:
    pki = make_dev_pki(tmp_path / "pki", [])
    with pytest.raises(RevocationInvalid, match=r"crl\.pem"):
        parse_crls(data, "crl.pem", load_cas(pki.ca), NOW)


def test_a_crl_past_its_next_update_still_revokes_with_a_warning(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "pki", [PL])
    crl = write_crl(pki.root, revoke=[PL], next_update=timedelta(seconds=1))
    revocations, warnings = load(crl, None, load_cas(pki.ca), NOW + timedelta(days=1))
    assert revocations.revoked(_facts(pki.root, PL)) is not None
    assert ["past its next update"] == [w.split(": ")[-1].split(" (")[0] for w in warnings]


def test_a_der_crl_is_read_too(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "pki", [PL])
    pem = write_crl(pki.root, revoke=[PL]).read_bytes()
    der = x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER)
    entries, _ = parse_crls(der, "crl.der", load_cas(pki.ca), NOW)
    assert 1 == len(entries)


def test_the_deny_file_names_agencies_serials_and_fingerprints() -> None:
    agencies, serials, fingerprints = parse_deny(
        f'agencies = ["{PL}"]\nserials = ["0x1A:2B", "ff"]\nfingerprints = ["{"AB" * 32}"]\n', "deny.toml"
    )
    assert ({PL}, {0x1A2B, 0xFF}, {"ab" * 32}) == (agencies, serials, fingerprints)
    revocations = Revocations(agencies=agencies, serials=serials, fingerprints=fingerprints)
    assert "agency" in (revocations.revoked(CertificateFacts(PL, b"ca", 1, "00" * 32)) or "")
    assert "serial" in (revocations.revoked(CertificateFacts(CUR, b"ca", 0xFF, "00" * 32)) or "")
    assert "fingerprint" in (revocations.revoked(CertificateFacts(CUR, b"ca", 2, "ab" * 32)) or "")
    assert revocations.revoked(CertificateFacts(CUR, b"ca", 2, "00" * 32)) is None
    assert Revocations().revoked(CertificateFacts(PL, b"ca", 0xFF, "ab" * 32)) is None


def test_a_bad_deny_file_names_every_problem() -> None:
    text = 'agencies = ["not an agency"]\nserials = ["xyz", 7]\nfingerprints = ["abcd"]\nextra = 1\n'
    with pytest.raises(RevocationInvalid) as caught:
        parse_deny(text, "deny.toml")
    problems = caught.value.problems
    assert any("extra: is not a known key" in p for p in problems)
    assert any("serials: must be a list of strings" in p for p in problems)
    assert any("agencies[0]: must be an agency id" in p for p in problems)
    assert any("fingerprints[0]: must be a SHA-256" in p for p in problems)
    with pytest.raises(RevocationInvalid, match=r"deny\.toml"):
        parse_deny("agencies = [", "deny.toml")


def test_a_set_with_one_bad_file_is_refused_whole(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "pki", [PL])
    crl = write_crl(pki.root, revoke=[PL])
    deny = tmp_path / "deny.toml"
    deny.write_text("serials = [1]\n")
    with pytest.raises(RevocationInvalid, match="serials"):
        load(crl, deny, load_cas(pki.ca), NOW)
    with pytest.raises(RevocationInvalid, match="cannot read"):
        load(tmp_path / "missing.pem", None, load_cas(pki.ca), NOW)
