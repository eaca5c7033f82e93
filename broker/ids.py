"""Formats of the identifiers the hub relies on (agency, distribution, incident) and their subject-safe forms."""

from __future__ import annotations

import re

# Hierarchical agency ids in the EDXL/EMSI style: a country code, then lowercase segments of
# letters, digits and inner hyphens. "it.pl.001272", "it.cc.cp.to", "it.nue.cur.to".
AGENCY_ID_RE = re.compile(r"[a-z]{2}(?:\.[a-z0-9]+(?:-[a-z0-9]+)*){1,6}")
AGENCY_ID_MAX = 64
# A client certificate names its agency by one URI SAN: this prefix and the agency id.
AGENCY_URI_PREFIX = "urn:opsroom:agency:"

# Lowercase canonical RFC 4122 UUID (any version).
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Shared incident ids: UUIDs (UCRI2) or EIDO URNs (urn:emergency:uid:incidentid:...:domain).
INCIDENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._@-]{0,127}")

# Staff, workstation and unit identifiers.
LOCAL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")


def is_agency_id(value: str) -> bool:
    """True if value is a well-formed agency id."""
    return len(value) <= AGENCY_ID_MAX and AGENCY_ID_RE.fullmatch(value) is not None


def is_uuid(value: str) -> bool:
    """True if value is a lowercase canonical UUID."""
    return UUID_RE.fullmatch(value) is not None


def agency_token(agency_id: str) -> str:
    """The agency id as one NATS subject token and consumer-name part ("it.pl.001272" -> "it_pl_001272").

    Agency ids have no underscore, so the mapping is one to one.
    """
    return agency_id.replace(".", "_")


def agency_from_token(token: str) -> str:
    """Inverse of agency_token."""
    return token.replace("_", ".")
