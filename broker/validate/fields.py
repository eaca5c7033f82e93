"""The validation's building blocks (pure): limits, context, formats, code sets, and the Fields base.

Fields records violations and checks one value at a time (text, codes, enums, timestamps, ids);
the rule classes (incident, request, alert, and the envelope's own in checker.py) build on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from opsroom.alert.v1 import alert_pb2
from opsroom.common.v1 import common_pb2
from opsroom.incident.v1 import incident_pb2

from broker import ids
from broker.errors import Violation
from broker.validate.codelists import CodeLists

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_TS_MIN = -62135596800
_TS_MAX = 253402300799

_PHONE_RE = re.compile(r"\+?[0-9]{3,15}")  # E.164: at most 15 digits
_IMSI_RE = re.compile(r"[0-9]{14,15}")
_LANGUAGE_RE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8}){0,3}")
_PLATE_RE = re.compile(r"[A-Z0-9]{1,12}")
_COUNTRY_RE = re.compile(r"[A-Z]{2}")
_VIN_RE = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SHA1_RE = re.compile(r"[0-9a-f]{40}")
_MEDIA_TYPE_RE = re.compile(r"[a-z]+/[A-Za-z0-9.+-]{1,100}")
_POSTAL_RE = re.compile(r"[0-9]{5}")
_CODE_RE = re.compile(r"[A-Z0-9_]{1,64}")
_AGREEMENT_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
_CIVIC_RE = re.compile(r"[A-Za-z0-9/ -]{1,16}")
# Control characters (C0, DEL, C1) other than tab, line feed and carriage return.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

_KIND_PAYLOADS: dict[int, frozenset[str]] = {
    common_pb2.KIND_REPORT: frozenset({"incident", "alert"}),
    common_pb2.KIND_UPDATE: frozenset({"incident", "alert", "closure"}),
    common_pb2.KIND_CANCEL: frozenset({"incident", "alert", "assistance_request", "handover_request"}),
    common_pb2.KIND_REQUEST: frozenset({"assistance_request", "handover_request"}),
    common_pb2.KIND_RESPONSE: frozenset({"assistance_response", "handover_response"}),
    common_pb2.KIND_ACK: frozenset({"acknowledgement"}),
    common_pb2.KIND_ERROR: frozenset({"acknowledgement"}),
}
# Every rule id a Violation may carry (documented in docs/errors.md).
RULES = frozenset(
    {
        "required", "format", "agency_id_format", "code_list", "enum", "range", "max_length", "max_items",
        "control_characters", "unique", "not_sender", "not_self", "registered", "timestamp_range", "future",
        "too_old", "after_sent_at", "kind_payload", "incident_id_mismatch", "polygon",
    }
)  # fmt: skip
# Kinds that act on an earlier message and so must reference it.
KINDS_WITH_REFERENCE = frozenset(
    {common_pb2.KIND_CANCEL, common_pb2.KIND_RESPONSE, common_pb2.KIND_ACK, common_pb2.KIND_ERROR}
)


@dataclass(frozen=True)
class Limits:
    """Sizes and clock bounds; the defaults suit a regional hub and are set in the hub config."""

    max_recipients: int = 64
    max_target_areas: int = 64
    max_incident_ids: int = 16
    max_references: int = 16
    max_items: int = 64
    max_media: int = 16
    max_text: int = 4000
    max_unmapped: int = 256
    max_short: int = 200
    max_future_skew: timedelta = timedelta(minutes=5)
    max_sent_age: timedelta = timedelta(days=7)


@dataclass(frozen=True)
class ValidationContext:
    """What validation needs besides the envelope: code lists, limits and the agency registry."""

    codes: CodeLists
    is_registered: Callable[[str], bool]
    limits: Limits = field(default_factory=Limits)


def _enum_values(enum_type: object) -> frozenset[int]:
    return frozenset(enum_type.values())  # type: ignore[attr-defined]


_STATUS = _enum_values(common_pb2.Status)
_KIND = _enum_values(common_pb2.Kind)
_CONFIDENTIALITY = _enum_values(common_pb2.Confidentiality)
_PURPOSE = _enum_values(common_pb2.Purpose)
_PRIORITY = _enum_values(common_pb2.Priority)
_OUTCOME = _enum_values(common_pb2.Outcome)
_LOCATION_SOURCE = _enum_values(common_pb2.LocationSource)
_INCIDENT_STATUS = _enum_values(incident_pb2.IncidentStatus)
_COMPLETION = _enum_values(incident_pb2.CompletionStatus)
_SCOPE = _enum_values(alert_pb2.Scope)
_CATEGORY = _enum_values(alert_pb2.Category)
_URGENCY = _enum_values(alert_pb2.Urgency)
_SEVERITY = _enum_values(alert_pb2.Severity)
_CERTAINTY = _enum_values(alert_pb2.Certainty)
_MAX_CATEGORIES = len(_CATEGORY) - 1  # each CAP category once at most


def _ts_seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


class Fields:
    """Accumulates violations and checks single values; the rule classes build on it."""

    __slots__ = ("ctx", "incident_ids", "limits", "now", "out")

    def __init__(self, ctx: ValidationContext, now: datetime) -> None:
        """An empty record of violations, for one envelope checked at now."""
        self.ctx = ctx
        self.limits = ctx.limits
        self.now = now.timestamp()
        self.out: list[Violation] = []
        self.incident_ids: frozenset[str] = frozenset()

    def fail(self, path: str, rule: str, description: str) -> None:
        """Check the fail at path; record each violation."""
        self.out.append(Violation(path, rule, description))

    # -- scalar helpers ------------------------------------------------------------------

    def text(self, path: str, value: str, *, required: bool = False, max_len: int | None = None) -> None:
        """Check the text at path; record each violation."""
        if not value:
            if required:
                self.fail(path, "required", "is required")
            return
        limit = max_len if max_len is not None else self.limits.max_short
        if len(value) > limit:
            self.fail(path, "max_length", f"must be at most {limit} characters")
        if _CONTROL_RE.search(value):
            self.fail(path, "control_characters", "must not contain control characters")

    def pattern(self, path: str, value: str, regex: re.Pattern[str], what: str, *, required: bool = False) -> None:
        """Check the pattern at path; record each violation."""
        if not value:
            if required:
                self.fail(path, "required", "is required")
            return
        if regex.fullmatch(value) is None:
            self.fail(path, "format", f"must be {what}")

    def code(self, path: str, value: str, allowed: Collection[str], what: str, *, required: bool = False) -> None:
        """Check the code at path; record each violation."""
        if not value:
            if required:
                self.fail(path, "required", "is required")
            return
        if value not in allowed:
            self.fail(path, "code_list", f"must be a value of {what}")

    def enum(self, path: str, value: int, allowed: frozenset[int], *, required: bool = True) -> None:
        """Check the enum at path; record each violation."""
        if value == 0:
            if required:
                self.fail(path, "required", "must be set (the _UNSPECIFIED value is refused)")
            return
        if value not in allowed:
            self.fail(path, "enum", "is not a value of the enum")

    def timestamp(self, path: str, ts: Timestamp, *, present: bool, required: bool = False) -> bool:
        """Checks range; returns True when a valid timestamp is present."""
        if not present:
            if required:
                self.fail(path, "required", "is required")
            return False
        if not (_TS_MIN <= ts.seconds <= _TS_MAX) or not (0 <= ts.nanos <= 999_999_999):
            self.fail(path, "timestamp_range", "is not a valid timestamp")
            return False
        return True

    def max_items(self, path: str, items: Sequence[object], limit: int) -> None:
        """Check the max items at path; record each violation."""
        if len(items) > limit:
            self.fail(path, "max_items", f"must have at most {limit} items")

    def agency(self, path: str, value: str, *, required: bool = True) -> bool:
        """Check the agency at path; record each violation."""
        if not value:
            if required:
                self.fail(path, "required", "is required")
            return False
        if not ids.is_agency_id(value):
            self.fail(path, "agency_id_format", "must be an agency id such as it.pl.001272")
            return False
        return True

    def comune(self, path: str, value: str, *, required: bool = False) -> None:
        """Check the comune at path; record each violation."""
        self.code(path, value, self.ctx.codes.comuni, "the ISTAT comuni (six digits)", required=required)

    def incident_ref(self, path: str, value: str) -> None:
        """Check the incident ref at path; record each violation."""
        if not value:
            self.fail(path, "required", "is required")
        elif value not in self.incident_ids:
            self.fail(path, "incident_id_mismatch", "must be one of the envelope's incident_ids")

    # -- envelope ------------------------------------------------------------------------
