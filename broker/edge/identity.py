"""The calling agency, read from the verified client certificate of the mTLS connection; never from a message."""

from __future__ import annotations

from collections import OrderedDict

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from broker import ids
from broker.audit.records import Caller
from broker.errors import Reason, Unauthenticated
from broker.policy.revocation import CertificateFacts, certificate_facts


def agency_from_certificate(pem: bytes) -> str | None:
    """The agency id in the certificate's `urn:opsroom:agency:` URI SAN; None if absent, repeated or malformed."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    found = [
        uri.removeprefix(ids.AGENCY_URI_PREFIX)
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(ids.AGENCY_URI_PREFIX)
    ]
    if len(found) != 1 or not ids.is_agency_id(found[0]):
        return None
    return found[0]


def certificate_sha256(pem: bytes) -> str:
    """The SHA-256 fingerprint of a PEM certificate, hex; empty if it does not parse."""
    try:
        return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()
    except ValueError:
        return ""


def _identified(pem: bytes) -> tuple[Caller, CertificateFacts] | None:
    """The caller a PEM certificate names, and its facts for the revocation check; None if it names no agency."""
    agency = agency_from_certificate(pem)
    if agency is None:
        return None
    cert = x509.load_pem_x509_certificate(pem)
    facts = certificate_facts(cert, agency)
    return Caller(agency, facts.sha256), facts


class IdentityResolver:
    """Maps a call's peer certificate to its agency id, caching the parse per certificate."""

    def __init__(self, cache_size: int = 1024) -> None:
        """An empty cache of at most cache_size certificates."""
        self._cache: OrderedDict[bytes, tuple[Caller, CertificateFacts] | None] = OrderedDict()
        self._size = cache_size

    def agency(self, context: grpc.aio.ServicerContext[object, object]) -> str:
        """The agency of the call; raises Unauthenticated if the certificate names none."""
        return self.caller(context).agency_id

    def caller(self, context: grpc.aio.ServicerContext[object, object]) -> Caller:
        """The agency of the call and its certificate's fingerprint; raises Unauthenticated if it names none."""
        return self.identify(context)[0]

    def identify(self, context: grpc.aio.ServicerContext[object, object]) -> tuple[Caller, CertificateFacts]:
        """The caller, and its certificate's issuer, serial and fingerprint; raises Unauthenticated if it names none."""
        auth = context.auth_context()
        pems = list(auth.get("x509_pem_cert") or ())
        if not pems:
            raise Unauthenticated(
                Reason.CERTIFICATE_WITHOUT_AGENCY,
                "no client certificate: connect with the agency's certificate",
            )
        pem = pems[0]
        if pem in self._cache:
            self._cache.move_to_end(pem)
            caller = self._cache[pem]
        else:
            caller = _identified(pem)
            self._cache[pem] = caller
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        if caller is None:
            raise Unauthenticated(
                Reason.CERTIFICATE_WITHOUT_AGENCY,
                f"the client certificate has no single {ids.AGENCY_URI_PREFIX}<agency id> URI",
            )
        return caller
